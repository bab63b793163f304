"""Answer normalisation and correctness: choice letters, numbers, exact strings."""

from __future__ import annotations

import math
import re

_ANSWER_MARKER = re.compile(r"(?:final answer|answer)\s*(?:is|:)\s*(.+)", re.IGNORECASE | re.DOTALL)
_CHOICE = re.compile(r"^\(?([A-Ea-e])\)?[.)]?$")
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_SPACES = re.compile(r"\s+")
_TRAILING = ".,;:!?\"'`*"


def extract_answer(text: str) -> str:
    """The part of a model's reply that states its answer ("... Answer: B" -> "B")."""
    stripped = text.strip()
    # The first marker counts: its (.+) runs to the end of the text (DOTALL), and the
    # answer is the first line of that. Replies that state the answer first and explain
    # after read right; prose that says "the answer is ..." before the real answer does
    # not. Every answer_normalized in the log was made by this rule: change it only
    # with a versioned normaliser.
    marker = _ANSWER_MARKER.search(stripped)
    if marker:
        stripped = marker.group(1).strip()
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
