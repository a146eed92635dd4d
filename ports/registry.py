"""Hub ids without a hub: models and SAE releases found in the local Hugging Face cache.

A model id (``google/gemma-2-2b-it``) or an SAE release name (``gemma-scope-2b-pt-res``,
``gemma-scope-2-1b-it``, ``llama_scope_lxr_8x``, ...) resolves to a folder of the cache that
``huggingface-cli download`` (or ``huggingface_hub``) filled, offline and without importing
``huggingface_hub``. The cache is ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``, laid out as::

    models--<org>--<name>/refs/<revision>        (a file holding the commit hash)
    models--<org>--<name>/snapshots/<commit>/... (the files, usually symlinks into blobs/)

Anything absent raises :class:`NotCachedError` whose one-line message is the command to run::

    from ports.registry import resolve_model, resolve_sae, resolve_sae_dir
    resolve_model("google/gemma-2-2b-it")            # -> .../snapshots/<commit>
    resolve_sae("gemma-scope-2-1b-it", layer=13, width="16k", l0="small")
    resolve_sae_dir("gemma-scope-2b-pt-res")         # the snapshot root, for load_sae_set

:data:`RELEASES` is the registry (in the spirit of SAELens's ``pretrained_saes.yaml``): release ->
hub repository, path template of one SAE, file format, the model it was trained on.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from ports.sae import find_gemmascope, find_gemmascope2


class NotCachedError(FileNotFoundError):
    """A hub model or SAE is not in the local Hugging Face cache; the message says what to
    download."""


@dataclasses.dataclass(frozen=True)
class Release:
    """One SAE release: ``repo`` on the hub, ``template`` the folder of one SAE inside it (with
    ``{layer}``, ``{width}``, ``{l0}``), ``format`` a :data:`ports.sae.LOADERS` key, ``model`` the
    hub id of the model its SAEs read, ``site`` the folder holding the per-layer SAEs (what
    ``--sae-dir`` resolves to)."""

    repo: str
    template: str
    format: str
    model: str
    site: str = ""


def _gemma_scope(size: str, kind: str, model: str) -> Release:
    return Release(
        f"google/gemma-scope-{size}-{kind}-res",
        "layer_{layer}/width_{width}/average_l0_{l0}",
        "gemmascope",
        model,
    )


def _gemma_scope_2(size: str, kind: str, site: str) -> Release:
    model = f"google/gemma-3-{size}" + ("" if (size, kind) == ("270m", "pt") else f"-{kind}")
    return Release(
        f"google/gemma-scope-2-{size}-{kind}",
        site + "/layer_{layer}_width_{width}_l0_{l0}",
        "gemmascope2",
        model,
        site,
    )


RELEASES: dict[str, Release] = {
    # GemmaScope (Gemma 2): the paper's Gemma-2-2B-it uses the base model's residual SAEs.
    "gemma-scope-2b-pt-res": _gemma_scope("2b", "pt", "google/gemma-2-2b"),
    "gemma-scope-9b-pt-res": _gemma_scope("9b", "pt", "google/gemma-2-9b"),
    "gemma-scope-9b-it-res": _gemma_scope("9b", "it", "google/gemma-2-9b-it"),
    # LlamaScope (Llama-3.1-8B base, residual stream; used by the paper for Llama-3.1-8B-Instruct)
    **{
        f"llama_scope_lxr_{x}": Release(
            f"fnlp/Llama3_1-8B-Base-LXR-{x}",
            "Llama3_1-8B-Base-L{layer}R-" + x,
            "llamascope",
            "meta-llama/Llama-3.1-8B",
        )
        for x in ("8x", "32x")
    },
}
# Gemma Scope 2 (Gemma 3): "gemma-scope-2-<size>-<pt|it>" and its SAELens spelling "...-res-all"
# are every layer (resid_post_all); SAELens's "...-res" is the resid_post site (fewer layers).
for _size in ("270m", "1b", "4b", "12b", "27b"):
    for _kind in ("pt", "it"):
        _name = f"gemma-scope-2-{_size}-{_kind}"
        RELEASES[_name] = _gemma_scope_2(_size, _kind, "resid_post_all")
        RELEASES[_name + "-res-all"] = _gemma_scope_2(_size, _kind, "resid_post_all")
        RELEASES[_name + "-res"] = _gemma_scope_2(_size, _kind, "resid_post")


def hf_cache_dir() -> Path:
    """``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def is_hub_id(name) -> bool:
    """True for ``org/name`` strings that are not an existing local path."""
    s = str(name)
    return bool(_REPO_RE.match(s)) and not Path(s).exists()


def snapshot(repo: str, revision: str = "main", cache=None, include: str | None = None) -> Path:
    """The cached snapshot folder of hub model repository ``repo`` at ``revision`` (a branch or
    tag under ``refs/``, or a commit hash). ``include`` (a file pattern) only shapes the
    download command of the error."""
    cache = Path(cache) if cache is not None else hf_cache_dir()
    base = cache / ("models--" + repo.replace("/", "--"))
    cmd = f"huggingface-cli download {repo}" + (f' --include "{include}"' if include else "")
    if revision != "main":
        cmd += f" --revision {revision}"
    if _COMMIT_RE.match(revision):
        commit = revision
    else:
        ref = base / "refs" / revision
        if not ref.is_file():
            raise NotCachedError(f"{repo} is not in the Hugging Face cache {cache}: run `{cmd}`")
        commit = ref.read_text().strip()
    folder = base / "snapshots" / commit
    if not folder.is_dir():
        raise NotCachedError(
            f"{repo}@{commit[:12]} has no snapshot in the Hugging Face cache {cache}: run `{cmd}`"
        )
    return folder


def resolve_model(name, revision: str = "main", cache=None) -> Path:
    """A local model folder for ``name``: an existing path as is, a hub id (``org/name``) through
    the cache (its snapshot must hold ``config.json``)."""
    if Path(name).exists() or not is_hub_id(name):
        return Path(name)
    folder = snapshot(str(name), revision, cache)
    if not (folder / "config.json").exists():
        raise NotCachedError(
            f"{name}: the cached snapshot {folder} has no config.json: run "
            f"`huggingface-cli download {name}`"
        )
    return folder


def _release(name: str) -> Release:
    if name not in RELEASES:
        raise KeyError(f"unknown SAE release {name!r}; known: {', '.join(sorted(RELEASES))}")
    return RELEASES[name]


def resolve_sae_dir(name, cache=None) -> Path:
    """A local folder of per-layer SAEs for ``--sae-dir``: an existing path as is, a release name
    of :data:`RELEASES` through the cache (the snapshot's SAE site, which
    :func:`ports.sae.load_sae_set` reads, with ``--sae-width`` / ``--target-l0`` choosing)."""
    if Path(name).exists() or str(name) not in RELEASES:
        return Path(name)
    rel = RELEASES[str(name)]
    pattern = rel.template.split("{layer}")[0] + "*"
    folder = snapshot(rel.repo, cache=cache, include=pattern) / rel.site
    if not folder.is_dir():
        raise NotCachedError(
            f"{name}: no {rel.site or 'SAE'} folder in the cached {rel.repo}: run "
            f'`huggingface-cli download {rel.repo} --include "{pattern}"`'
        )
    return folder


def resolve_sae(
    release: str, layer: int, width="16k", l0=None, cache=None, target_l0: float = 100
) -> Path:
    """The cached folder (or GemmaScope ``params.npz``) of one SAE of ``release`` at ``layer``.

    ``width`` is the folder tag ("16k", "65k", "262k", "1m"; ignored by LlamaScope), ``l0`` the
    release's L0 (GemmaScope: the average_l0 number, Gemma Scope 2: "small" / "medium" / "big");
    None picks the cached one closest to ``target_l0``."""
    rel = _release(release)
    tag = rel.template.format(layer=layer, width=width, l0="*" if l0 is None else l0)
    cmd = f'huggingface-cli download {rel.repo} --include "{tag}/*"'
    root = snapshot(rel.repo, cache=cache, include=f"{tag}/*")
    if l0 is None and rel.format == "gemmascope":
        try:
            return find_gemmascope(root, layer, width, target_l0)
        except FileNotFoundError:
            raise NotCachedError(f"{release}: {tag} is not in the cache: run `{cmd}`") from None
    if l0 is None and rel.format == "gemmascope2":
        try:
            return find_gemmascope2(root / rel.site, layer, width, target_l0)
        except FileNotFoundError:
            raise NotCachedError(f"{release}: {tag} is not in the cache: run `{cmd}`") from None
    folder = root / tag
    if not folder.is_dir():
        raise NotCachedError(f"{release}: {tag} is not in the cache: run `{cmd}`")
    return folder


__all__ = [
    "RELEASES",
    "NotCachedError",
    "Release",
    "hf_cache_dir",
    "is_hub_id",
    "resolve_model",
    "resolve_sae",
    "resolve_sae_dir",
    "snapshot",
]
