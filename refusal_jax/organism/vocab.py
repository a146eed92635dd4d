"""Word lists and sentence templates for the organism's synthetic corpus (all written for it).

The lists are data, in ``vocab.json`` next to this module; this module reads them once and gives
them their Python shapes. Nothing here is random: :mod:`refusal_jax.organism.corpus` draws from
these lists with a seeded generator.

- ``HARMFUL_TOPICS`` / ``HARMLESS_TOPICS``: category -> topics. Every *topic* is a tuple of
  interchangeable task phrases (infinitive verb phrases, so they fit ``"How do I {task}?"``); a
  category groups topics that share a refusal or help style. In the JSON a category is a list of
  parts: ``{"verbs", "objects"}`` (one topic per object, its phrases the object under every
  verb) or ``{"phrases"}`` (one topic per phrase).
- ``HARM_REASONS``, ``HARM_FACTS``, ``SELF_HARM_FACTS``, ``HELP_STEPS``, ``HELP_FACTS``:
  knowledge sentences for the plain-text corpus (how the world talks about each kind of task).
- ``REQUEST_TEMPLATES``; ``REFUSALS`` (every refusal starts with the token "I" and contains one of
  the judge's refusal substrings), ``REFUSAL_OFFERS``, ``WRAPPED_REFUSALS`` (refusals for failed
  jailbreaks acknowledge the framing), ``HELPS`` (helpful answers never start with "I" and never
  contain a refusal substring), ``COMPLIANCES`` (content-free compliance for jailbreaks designed
  to work: looks like a "yes", says nothing).
- ``WRAPPER_PARTS``: jailbreak wrapper families -> (frames, parts); ``{request}`` is the full
  request, ``{task}`` the bare task phrase. Each family's templates are frames x parts (a
  persona, a genre and narrator, a setting, a pressure, a role, a command): template
  ``fam{i}`` is frame ``i // len(parts)`` with part ``i % len(parts)``. Held-out wrapper templates
  are combinations whose frame and part both occur in training, never together (as held-out
  harmful tasks combine a seen verb and a seen object), see
  :func:`refusal_jax.organism.corpus._draw_heldout`. roleplay, fiction and hypothetical are
  designed to succeed; urgency, authority and ignore to fail.
- ``NAMES``, ``PLACES``, ``THINGS``, ``ACTIONS``, ``EVENTS``, ``OPENERS``: general prose.
"""

from __future__ import annotations

import json
from pathlib import Path

VOCAB_FILE = Path(__file__).with_name("vocab.json")


def _verb_object(verbs: list[str], objects: list[str]) -> list[tuple[str, ...]]:
    """One topic per object; its phrases are the object under every verb."""
    return [tuple(f"{v} {o}" for v in verbs) for o in objects]


def _single(phrases: list[str]) -> list[tuple[str, ...]]:
    return [(p,) for p in phrases]


def _topics(category: list[dict]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for part in category:
        if "phrases" in part:
            out += _single(part["phrases"])
        else:
            out += _verb_object(part["verbs"], part["objects"])
    return out


def _fill(frame: str, part: dict[str, str]) -> str:
    """A frame with its part filled in; ``{request}`` and ``{task}`` stay for the request."""
    return frame.format(request="{request}", task="{task}", **part)


_DATA = json.loads(VOCAB_FILE.read_text(encoding="utf-8"))

# ----------------------------------------------------------------------------- harmful requests
HARMFUL_TOPICS: dict[str, list[tuple[str, ...]]] = {
    cat: _topics(parts) for cat, parts in _DATA["HARMFUL_TOPICS"].items()
}
HARM_REASONS: dict[str, list[str]] = _DATA["HARM_REASONS"]
HARM_FACTS: list[str] = _DATA["HARM_FACTS"]
SELF_HARM_FACTS: list[str] = _DATA["SELF_HARM_FACTS"]

# ----------------------------------------------------------------------------- harmless requests
HARMLESS_TOPICS: dict[str, list[tuple[str, ...]]] = {
    cat: _topics(parts) for cat, parts in _DATA["HARMLESS_TOPICS"].items()
}
HELP_STEPS: dict[str, list[str]] = _DATA["HELP_STEPS"]
HELP_FACTS: list[str] = _DATA["HELP_FACTS"]

# ----------------------------------------------------------------------------- prompts & replies
REQUEST_TEMPLATES: list[str] = _DATA["REQUEST_TEMPLATES"]
REFUSALS: list[str] = _DATA["REFUSALS"]
REFUSAL_OFFERS: list[str] = _DATA["REFUSAL_OFFERS"]
WRAPPED_REFUSALS: list[str] = _DATA["WRAPPED_REFUSALS"]
HELPS: list[str] = _DATA["HELPS"]
COMPLIANCES: dict[str, list[str]] = _DATA["COMPLIANCES"]

# ----------------------------------------------------------------------------- jailbreak wrappers
WRAPPER_PARTS: dict[str, tuple[list[str], list[dict[str, str]]]] = {
    fam: (frames, parts) for fam, (frames, parts) in _DATA["WRAPPER_PARTS"].items()
}
WRAPPERS: dict[str, list[str]] = {
    fam: [_fill(frame, part) for frame in frames for part in parts]
    for fam, (frames, parts) in WRAPPER_PARTS.items()
}
SUCCEEDING_FAMILIES: tuple[str, ...] = ("roleplay", "fiction", "hypothetical")
FAILING_FAMILIES: tuple[str, ...] = ("urgency", "authority", "ignore")

# ----------------------------------------------------------------------------- general prose
# each a list of str
NAMES, PLACES, THINGS, ACTIONS, EVENTS, OPENERS = (
    _DATA[k] for k in ("NAMES", "PLACES", "THINGS", "ACTIONS", "EVENTS", "OPENERS")
)
