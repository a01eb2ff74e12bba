"""The tabletop task: what to do (`Task`), how it is said (templates) and how it is read back."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

BLOCKS: tuple[str, ...] = ("red", "green", "blue")
ZONES: tuple[str, ...] = ("yellow", "purple", "cyan")
VERBS: tuple[str, ...] = ("pick", "place")

# Instruction templates per task verb; `{block}` and `{zone}` are filled with colour names.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "pick": ("pick up the {block} block", "grab the {block} block"),
    "place": (
        "put the {block} block on the {zone} square",
        "place the {block} block in the {zone} square",
        "move the {block} block to the {zone} square",
    ),
}


@dataclass(frozen=True)
class Task:
    """One episode's goal.

    Attributes:
        verb: "pick" (grasp the block) or "place" (carry the block into the zone and release it).
        block: the block to act on, one of `BLOCKS`.
        zone: the target zone for "place", one of `ZONES`; None for "pick".

    Raises:
        ValueError: on an unknown verb, block or zone, or a zone that does not fit the verb.
    """

    verb: str
    block: str
    zone: str | None = None

    def __post_init__(self) -> None:
        if self.verb not in VERBS:
            raise ValueError(f"task: verb {self.verb!r} is not one of {VERBS}")
        if self.block not in BLOCKS:
            raise ValueError(f"task: block {self.block!r} is not one of {BLOCKS}")
        if self.verb == "place" and self.zone not in ZONES:
            raise ValueError(f"task: zone {self.zone!r} is not one of {ZONES} (needed by 'place')")
        if self.verb == "pick" and self.zone is not None:
            raise ValueError(f"task: zone {self.zone!r} given for 'pick'; leave it None")


def _vocabulary() -> tuple[str, ...]:
    words = set(BLOCKS) | set(ZONES)
    for template in (t for templates in TEMPLATES.values() for t in templates):
        words.update(w for w in template.split() if not w.startswith("{"))
    return tuple(sorted(words))


# Every word any template can produce, lower case and sorted: the policy's word vocabulary.
VOCABULARY: tuple[str, ...] = _vocabulary()


def _template_pattern(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    pattern = pattern.replace(re.escape("{block}"), f"(?P<block>{'|'.join(BLOCKS)})")
    pattern = pattern.replace(re.escape("{zone}"), f"(?P<zone>{'|'.join(ZONES)})")
    return re.compile(pattern)


_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (verb, _template_pattern(t)) for verb, templates in TEMPLATES.items() for t in templates
)


def sample_task(rng: np.random.Generator) -> Task:
    """Draw a task: "pick" or "place" with equal odds, block and zone uniformly.

    Args:
        rng: the random generator to draw from.

    Returns:
        The sampled task.
    """
    verb = "pick" if rng.random() < 0.5 else "place"
    block = BLOCKS[int(rng.integers(len(BLOCKS)))]
    zone = ZONES[int(rng.integers(len(ZONES)))] if verb == "place" else None
    return Task(verb, block, zone)


def instruction_for(task: Task, rng: np.random.Generator) -> str:
    """Say a task in words, with a template drawn at random for its verb.

    Args:
        task: the task to describe.
        rng: the random generator that picks the template.

    Returns:
        The instruction, e.g. ``"put the red block on the cyan square"``.
    """
    templates = TEMPLATES[task.verb]
    return templates[int(rng.integers(len(templates)))].format(block=task.block, zone=task.zone)


def parse_instruction(text: str) -> Task:
    """Read a task back from an instruction produced by any template.

    Case, surrounding spaces, repeated spaces and a final period are ignored.

    Args:
        text: the instruction.

    Returns:
        The task it describes.

    Raises:
        ValueError: if no template matches the text.

    Example:
        >>> parse_instruction("Grab the blue block.")
        Task(verb='pick', block='blue', zone=None)
    """
    normalized = " ".join(text.lower().split()).rstrip(".").strip()
    for verb, pattern in _PATTERNS:
        match = pattern.fullmatch(normalized)
        if match:
            return Task(verb, match["block"], match.groupdict().get("zone"))
    examples = f"{TEMPLATES['pick'][0]!r}, {TEMPLATES['place'][0]!r}"
    raise ValueError(f"instruction: {text!r} matches no template; write it like {examples}")
