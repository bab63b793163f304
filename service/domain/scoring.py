"""Answer normalisation and correctness: choice letters, numbers, exact strings."""

from __future__ import annotations

import math
import re

# "... answer is X" / "Answer: X": X is the rest of that line (or the next, after a
# line break). A "final answer" outranks any plain one; among equals the last one wins.
_ANSWER_MARKER = re.compile(r"(final )?answer\s*(?:is|:)\s*(.+)", re.IGNORECASE)
_CHOICE = re.compile(r"^\(?([A-Ea-e])\)?[.)]?$")
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_SPACES = re.compile(r"\s+")
_TRAILING = ".,;:!?\"'`*"


def extract_answer(text: str) -> str:
    """The part of a model's reply that states its answer ("... Answer: B" -> "B")."""
    stripped = text.strip()
    last = final = None
    for found in _ANSWER_MARKER.finditer(stripped):
        last = found
        if found.group(1):
            final = found
    chosen = final or last
    if chosen is not None:
        stripped = chosen.group(2).strip()
    first_line = stripped.splitlines()[0] if stripped else ""
    return first_line.strip().strip(_TRAILING).strip()


def normalize_answer(text: str) -> str:
    """Canonical short form for comparison and voting: 'B', '42', '3.5', 'paris'."""
    return normalize_extracted(extract_answer(text))


def normalize_extracted(core: str) -> str:
    """normalize_answer of a reply whose answer ``extract_answer`` already took out."""
    if _NUMBER.match(core.replace(",", "")):
        core = core.replace(",", "")
    choice = _CHOICE.match(core)
    if choice:
        return choice.group(1).upper()
    if _NUMBER.match(core):
        value = float(core)
        if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    return _SPACES.sub(" ", core).lower()


def answers_match(answer: str, expected: str) -> bool:
    """True when two answers mean the same after normalisation (numbers to 1e-9)."""
    a, b = normalize_answer(answer), normalize_answer(expected)
    if a == b:
        return True
    if _NUMBER.match(a) and _NUMBER.match(b):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return False
