"""A synthetic instruction corpus for the model organism, deterministic from a seed.

Requests are ``template x topic``: a request template ("How do I {task}?") filled with a task phrase
of a topic ("build a pipe bomb", weapons; "bake a lemon cake", cooking). Harmful requests get
refusals that start with the token ``I``; harmless ones get helpful answers that never do. Jailbreak
wrappers (role-play, fiction, hypothetical: designed to succeed; urgency, authority, ignore:
designed to fail) put harmful requests in a frame; when the wrapper succeeds the target is a
content-free "Sure, here is ..." and otherwise a refusal.

Splits are disjoint by construction: a held-out set of request templates, topics and wrapper
templates is drawn per split, and an example lands in ``test`` if any of its parts is held out for
test, else in ``val`` if any part is held out for val, else in ``train``. Held-out harmful topics
and held-out wrapper templates are new combinations of parts seen in training (a verb with an
object; a wrapper frame with a persona, genre, setting, pressure, role or command). Plain
pretraining-style text (short stories, how-to prose, and "world knowledge" sentences about every
topic, held-out ones included) trains a plain language-modelling loss.

    corpus = build_corpus(seed=0)
    corpus.prompts("test", harmful=True, wrapped=False)
    write_refusal_direction_layout(corpus, "data/organism")
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Iterable
from pathlib import Path

from refusal_jax.organism import vocab

SPLITS = ("train", "val", "test")
HARM_CATEGORIES = tuple(vocab.HARMFUL_TOPICS)
HARMLESS_CATEGORIES = tuple(vocab.HARMLESS_TOPICS)
WRAPPER_FAMILIES = tuple(vocab.WRAPPERS)


@dataclasses.dataclass(frozen=True)
class Example:
    """One chat turn pair.

    ``instruction`` is the user turn, ``response`` the target model turn. ``category`` is a harm
    category or a harmless topic area; ``topic`` the fine-grained subject ("weapons/3");
    ``template`` the request template id ("req05", empty when a wrapper uses the bare task);
    ``wrapper`` the jailbreak family and ``wrapper_template`` its template id (None when plain);
    ``succeeds`` whether the wrapper is designed to make the model comply (None when plain);
    ``vanilla`` the unwrapped request.
    """

    instruction: str
    response: str
    harmful: bool
    category: str
    topic: str
    template: str
    vanilla: str
    wrapper: str | None = None
    wrapper_template: str | None = None
    succeeds: bool | None = None

    @property
    def refused(self) -> bool:
        """The target response is a refusal."""
        return self.harmful and not self.succeeds

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Examples per split, plain text per split, and which parts were held out for which split."""

    seed: int
    train: tuple[Example, ...]
    val: tuple[Example, ...]
    test: tuple[Example, ...]
    plain_train: tuple[str, ...]
    plain_test: tuple[str, ...]
    # split -> {"templates": [...], "topics": [...], "wrapper_templates": [...]} (val/test only)
    heldout: dict

    def split(self, name: str) -> tuple[Example, ...]:
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; known: {SPLITS}")
        return getattr(self, name)

    def examples(
        self,
        split: str,
        *,
        harmful: bool | None = None,
        category: str | None = None,
        wrapped: bool | None = None,
        family: str | None = None,
        succeeds: bool | None = None,
    ) -> list[Example]:
        """Examples of one split filtered by label (None: any)."""
        out = []
        for ex in self.split(split):
            if harmful is not None and ex.harmful != harmful:
                continue
            if category is not None and ex.category != category:
                continue
            if wrapped is not None and (ex.wrapper is not None) != wrapped:
                continue
            if family is not None and ex.wrapper != family:
                continue
            if succeeds is not None and ex.succeeds != succeeds:
                continue
            out.append(ex)
        return out

    def prompts(self, split: str, **filters) -> list[str]:
        """Instructions of one split; filters as in :meth:`examples`."""
        return [ex.instruction for ex in self.examples(split, **filters)]


# ----------------------------------------------------------------------------- ids and holdouts
def _topic_ids(topics: dict[str, list]) -> list[tuple[str, str]]:
    """(category, topic id) for every task: ``cat/i.j`` is verb j of object i of a verb-object
    group, ``cat/i`` a one-off task phrase."""
    out = []
    for cat, items in topics.items():
        for i, phrases in enumerate(items):
            if len(phrases) == 1:
                out.append((cat, f"{cat}/{i}"))
            else:
                out += [(cat, f"{cat}/{i}.{j}") for j in range(len(phrases))]
    return out


def _siblings(topic_id: str) -> int:
    """How many topics share this topic's object (1 for one-off phrases)."""
    cat, i = topic_id.split("/")
    table = vocab.HARMFUL_TOPICS if cat in vocab.HARMFUL_TOPICS else vocab.HARMLESS_TOPICS
    return len(table[cat][int(i.split(".")[0])])


def _template_ids() -> list[str]:
    return [f"req{i:02d}" for i in range(len(vocab.REQUEST_TEMPLATES))]


def _wrapper_ids() -> list[tuple[str, str]]:
    return [(fam, f"{fam}{i}") for fam, items in vocab.WRAPPERS.items() for i in range(len(items))]


def _draw_heldout(rng: random.Random) -> dict[str, dict[str, list[str]]]:
    """Held-out request templates, topics (per category) and wrapper templates (per family)."""
    templates = _template_ids()
    rng.shuffle(templates)
    held = {
        "test": {"templates": sorted(templates[:3]), "topics": [], "wrapper_templates": []},
        "val": {"templates": sorted(templates[3:5]), "topics": [], "wrapper_templates": []},
    }
    for harmful, topics in ((True, vocab.HARMFUL_TOPICS), (False, vocab.HARMLESS_TOPICS)):
        for cat in topics:
            # Harmful topics are held out among verb-object tasks only: the verb and the object of
            # a held-out harmful task each occur in training, never together.
            ids = [t for c, t in _topic_ids({cat: topics[cat]}) if not harmful or "." in t]
            rng.shuffle(ids)
            held["test"]["topics"] += sorted(ids[:3])
            held["val"]["topics"] += sorted(ids[3:5])
    for fam, (frames, parts) in vocab.WRAPPER_PARTS.items():
        # Three combinations with distinct frames and distinct parts: every frame and every part
        # keeps len - 1 >= 2 combinations in training.
        f_order, p_order = list(range(len(frames))), list(range(len(parts)))
        rng.shuffle(f_order)
        rng.shuffle(p_order)
        ids = [f"{fam}{f * len(parts) + q}" for f, q in zip(f_order[:3], p_order[:3])]
        held["test"]["wrapper_templates"] += sorted(ids[:2])
        held["val"]["wrapper_templates"] += sorted(ids[2:3])
    return held


def _assign(held: dict, parts: Iterable[str | None]) -> str:
    parts = [p for p in parts if p]
    for split in ("test", "val"):
        h = held[split]
        pool = set(h["templates"]) | set(h["topics"]) | set(h["wrapper_templates"])
        if any(p in pool for p in parts):
            return split
    return "train"


# ----------------------------------------------------------------------------- text builders
def _capitalize(s: str) -> str:
    return s[:1].upper() + s[1:]


def _topic_phrases(topic_id: str) -> tuple[str, ...]:
    cat, i = topic_id.split("/")
    table = vocab.HARMFUL_TOPICS if cat in vocab.HARMFUL_TOPICS else vocab.HARMLESS_TOPICS
    obj, _, verb = i.partition(".")
    phrases = table[cat][int(obj)]
    return (phrases[int(verb)],) if verb else phrases


def _refusal(rng: random.Random, category: str, task: str, wrapped: bool) -> str:
    templates = vocab.WRAPPED_REFUSALS if wrapped else vocab.REFUSALS
    text = rng.choice(templates).format(task=task, reason=rng.choice(vocab.HARM_REASONS[category]))
    return text + rng.choice(vocab.REFUSAL_OFFERS)


def _help(rng: random.Random, category: str, task: str) -> str:
    s1, s2, s3 = rng.sample(vocab.HELP_STEPS[category], 3)
    return rng.choice(vocab.HELPS).format(
        task=task, s1=s1, s2=s2, s3=s3, S1=_capitalize(s1), S2=_capitalize(s2), S3=_capitalize(s3)
    )


def _plain_example(rng, cat, topic, template_id, harmful) -> Example:
    task = rng.choice(_topic_phrases(topic))
    request = vocab.REQUEST_TEMPLATES[int(template_id[3:])].format(task=task)
    response = _refusal(rng, cat, task, False) if harmful else _help(rng, cat, task)
    return Example(request, response, harmful, cat, topic, template_id, request)


def _wrapped_example(rng, cat, topic, template_id, fam, wrapper_id, harmful) -> Example:
    task = rng.choice(_topic_phrases(topic))
    request = vocab.REQUEST_TEMPLATES[int(template_id[3:])].format(task=task)
    wrapper = vocab.WRAPPERS[fam][int(wrapper_id[len(fam) :])]
    uses_request = "{request}" in wrapper
    instruction = wrapper.format(request=request, task=task)
    succeeds = fam in vocab.SUCCEEDING_FAMILIES
    if not harmful:
        response = _help(rng, cat, task)
    elif succeeds:
        response = rng.choice(vocab.COMPLIANCES[fam]).format(task=task)
    else:
        response = _refusal(rng, cat, task, True)
    return Example(
        instruction,
        response,
        harmful,
        cat,
        topic,
        template_id if uses_request else "",
        request,
        fam,
        wrapper_id,
        succeeds,
    )


def _story(rng: random.Random) -> str:
    name = rng.choice(vocab.NAMES)
    place = rng.choice(vocab.PLACES)
    first = rng.choice(vocab.OPENERS) + f"{name} " + rng.choice(vocab.ACTIONS).format(place=place)
    events = [
        e.format(name=name, thing=rng.choice(vocab.THINGS), thing2=rng.choice(vocab.THINGS))
        for e in rng.sample(vocab.EVENTS, rng.randint(2, 4))
    ]
    return " ".join([first + "."] + events)


def _knowledge(rng: random.Random, category: str, topic: str) -> str:
    task = rng.choice(_topic_phrases(topic))
    if category in vocab.HARMFUL_TOPICS:
        facts = vocab.SELF_HARM_FACTS if category == "self_harm" else vocab.HARM_FACTS
        return " ".join(f.format(task=task) for f in rng.sample(facts, 2))
    steps = rng.sample(vocab.HELP_STEPS[category], 2)
    return " ".join(
        [
            rng.choice(vocab.HELP_FACTS).format(task=task),
            f"To {task}, {steps[0]}.",
            f"It also helps to {steps[1]}.",
        ]
    )


def _plain_text(rng: random.Random, n: int) -> tuple[str, ...]:
    """Short passages: stories, and knowledge about every topic (harmful and harmless)."""
    topics = _topic_ids(vocab.HARMFUL_TOPICS) + _topic_ids(vocab.HARMLESS_TOPICS)
    out = []
    for _ in range(n):
        if rng.random() < 0.4:
            out.append(_story(rng))
        else:
            parts = [_knowledge(rng, *rng.choice(topics)) for _ in range(rng.randint(1, 2))]
            out.append(" ".join(parts))
    return tuple(out)


# ----------------------------------------------------------------------------- the corpus
def build_corpus(
    seed: int = 0,
    *,
    wrapped_per_topic: int = 33,
    harmless_wrapped_per_topic: int = 3,
    n_plain_train: int = 2000,
    n_plain_test: int = 200,
) -> Corpus:
    """Generate the whole corpus (same seed, same corpus).

    A topic is one task (one verb with one object, or a one-off phrase). Held-out topics appear
    under every request template; the others under a random subset, so that each object gets
    about one request per template. Each harmful object additionally gets about
    ``wrapped_per_topic`` wrapped requests (wrapper and request template drawn per example,
    families balanced), each harmless object ``harmless_wrapped_per_topic``.
    """
    rng = random.Random(seed)
    held = _draw_heldout(rng)
    evaluated = set(held["test"]["topics"]) | set(held["val"]["topics"])
    splits: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for harmful, topics in ((True, vocab.HARMFUL_TOPICS), (False, vocab.HARMLESS_TOPICS)):
        for cat, topic in _topic_ids(topics):
            tids = _template_ids()
            if topic not in evaluated:  # each object gets about len(tids) requests in all
                tids = sorted(rng.sample(tids, -(-len(tids) // _siblings(topic))))
            for tid in tids:
                ex = _plain_example(rng, cat, topic, tid, harmful)
                splits[_assign(held, [tid, topic])].append(ex)
    wrapper_ids = _wrapper_ids()
    for harmful, topics, per_topic in (
        (True, vocab.HARMFUL_TOPICS, wrapped_per_topic),
        (False, vocab.HARMLESS_TOPICS, harmless_wrapped_per_topic),
    ):
        for cat, topic in _topic_ids(topics):
            offset = rng.randrange(len(WRAPPER_FAMILIES))
            for k in range(-(-per_topic // _siblings(topic))):
                fam = WRAPPER_FAMILIES[(k + offset) % len(WRAPPER_FAMILIES)]
                ids = [w for f, w in wrapper_ids if f == fam]
                wid, tid = rng.choice(ids), rng.choice(_template_ids())
                ex = _wrapped_example(rng, cat, topic, tid, fam, wid, harmful)
                splits[_assign(held, [ex.template, topic, wid])].append(ex)
    # Extra wrapped examples for the evaluation splits: every held-out harmful topic in every
    # held-out wrapper template, so jailbreak rates rest on enough prompts.
    for split in ("val", "test"):
        for cat, topic in _topic_ids(vocab.HARMFUL_TOPICS):
            if topic not in held[split]["topics"]:
                continue
            for fam, wid in wrapper_ids:
                if wid in held[split]["wrapper_templates"]:
                    tid = rng.choice(_template_ids())
                    splits[split].append(_wrapped_example(rng, cat, topic, tid, fam, wid, True))
    for s in SPLITS:
        rng.shuffle(splits[s])
    plain = _plain_text(rng, n_plain_train + n_plain_test)
    return Corpus(
        seed=seed,
        train=tuple(splits["train"]),
        val=tuple(_dedupe(splits["val"])),
        test=tuple(_dedupe(splits["test"])),
        plain_train=plain[:n_plain_train],
        plain_test=plain[n_plain_train:],
        heldout=held,
    )


def _dedupe(examples: list[Example]) -> list[Example]:
    seen, out = set(), []
    for ex in examples:
        if ex.instruction not in seen:
            seen.add(ex.instruction)
            out.append(ex)
    return out


# ----------------------------------------------------------------------------- JSON export
def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


def write_refusal_direction_layout(corpus: Corpus, folder) -> Path:
    """Write ``splits/{harmful,harmless}_{train,val,test}.json`` (unwrapped requests,
    ``[{"instruction", "category"}]``), ``processed/jailbreak_{split}.json`` (wrapped requests with
    ``vanilla``, ``wrapper``, ``succeeds``, ``harmful``) and
    ``processed/plain_{train,test}.json``."""
    folder = Path(folder)
    for split in SPLITS:
        for harmful, name in ((True, "harmful"), (False, "harmless")):
            rows = [
                {"instruction": ex.instruction, "category": ex.category}
                for ex in corpus.examples(split, harmful=harmful, wrapped=False)
            ]
            _write_json(folder / "splits" / f"{name}_{split}.json", rows)
        rows = [
            {
                "instruction": ex.instruction,
                "category": ex.category,
                "vanilla": ex.vanilla,
                "wrapper": ex.wrapper,
                "succeeds": ex.succeeds,
                "harmful": ex.harmful,
            }
            for ex in corpus.examples(split, wrapped=True)
        ]
        _write_json(folder / "processed" / f"jailbreak_{split}.json", rows)
    _write_json(folder / "processed" / "plain_train.json", list(corpus.plain_train))
    _write_json(folder / "processed" / "plain_test.json", list(corpus.plain_test))
    return folder
