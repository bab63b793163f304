"""Answer normalisation and correctness: choice letters, numbers, exact strings.

The rule is versioned, because normalised answers are stored (answer.finalized's
``answer_normalized``, outcome.recorded's ``expected_normalized``) and compared in SQL.
A run's first event names its version (run.requested ``normalizer``) and everything
derived from that run uses it, so stored values are only ever compared within one
version. Version 1 is the rule every event written before versions existed was made
by: it stays exactly as it is, known gaps included. Version 2 closes them: a leading
point stays (``.5`` is 0.5), commas count only as thousands separators (``1,000`` is
1000, ``3,5`` stays text), a choice letter followed by its text (``B) two``, ``(B)
two``, ``B. two``) is ``B``, percentages compare as numbers (``50.0%`` is ``50%``) and
the Unicode minus signs are ``-``. Its one cost: an answer that starts like ``A.
Lincoln`` reads as the choice ``A``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import NamedTuple

CURRENT_NORMALIZER = 2  # what new runs record; never change what an existing version does

_ANSWER_MARKER = re.compile(r"(?:final answer|answer)\s*(?:is|:)\s*(.+)", re.IGNORECASE | re.DOTALL)
_CHOICE = re.compile(r"^\(?([A-Ea-e])\)?[.)]?$")
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_SPACES = re.compile(r"\s+")
_TRAILING = ".,;:!?\"'`*"
# Version 2: a point before a digit is part of a number, not punctuation to strip.
_LEADING_V2 = re.compile(r"(?:[\s,;:!?\"'`*]|\.{2,}|\.(?!\d))*")
# "(B) two", "B) two", "B. two": the dot form only with a capital, as options are
# written ("e. coli" stays text).
_CHOICE_WITH_TEXT_V2 = re.compile(r"^(?:\(?([A-Ea-e])\)|([A-E])\.)\s+\S")
_GROUPED_V2 = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d*)?$")
_MINUS_V2 = str.maketrans({"\u2212": "-", "\ufe63": "-", "\uff0d": "-"})


class UnknownNormalizer(ValueError):
    """A run names a normaliser version this code does not have (a newer release's)."""

    def __init__(self, version: int) -> None:
        super().__init__(f"answer normaliser version {version} is unknown here")
        self.version = version


def extract_answer(text: str, version: int = CURRENT_NORMALIZER) -> str:
    """The part of a model's reply that states its answer ("... Answer: B" -> "B")."""
    stripped = text.strip()
    # The first marker counts: its (.+) runs to the end of the text (DOTALL), and the
    # answer is the first line of that. Replies that state the answer first and explain
    # after read right; prose that says "the answer is ..." before the real answer does
    # not. Both versions share this part.
    marker = _ANSWER_MARKER.search(stripped)
    if marker:
        stripped = marker.group(1).strip()
    first_line = stripped.splitlines()[0] if stripped else ""
    return _rule(version).trim(first_line)


def normalize_answer(text: str, version: int = CURRENT_NORMALIZER) -> str:
    """Canonical short form for comparison and voting: 'B', '42', '3.5', 'paris'."""
    return normalize_extracted(extract_answer(text, version), version)


def normalize_extracted(core: str, version: int = CURRENT_NORMALIZER) -> str:
    """normalize_answer of a reply whose answer ``extract_answer`` already took out."""
    return _rule(version).normalize(core)


def answers_match(answer: str, expected: str, version: int = CURRENT_NORMALIZER) -> bool:
    """True when two answers mean the same after normalisation (numbers to 1e-9)."""
    a, b = normalize_answer(answer, version), normalize_answer(expected, version)
    if a == b:
        return True
    if version >= 2 and a.endswith("%") and b.endswith("%"):
        a, b = a[:-1], b[:-1]
    if _NUMBER.match(a) and _NUMBER.match(b):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return False


def _trim_v1(line: str) -> str:
    return line.strip().strip(_TRAILING).strip()


def _normalize_v1(core: str) -> str:
    if _NUMBER.match(core.replace(",", "")):
        core = core.replace(",", "")
    choice = _CHOICE.match(core)
    if choice:
        return choice.group(1).upper()
    if _NUMBER.match(core):
        return _number_text(core)
    return _SPACES.sub(" ", core).lower()


def _trim_v2(line: str) -> str:
    """The line without the spaces and punctuation around it; a point before a digit stays."""
    end = len(line)
    # A loop, not a regex anchored at the end: that one is quadratic in a long run of
    # spaces inside the line, and this walks the edges only.
    while end and (line[end - 1] in _TRAILING or line[end - 1].isspace()):
        end -= 1
    leading = _LEADING_V2.match(line, 0, end)
    return line[leading.end() if leading else 0 : end]


def _normalize_v2(core: str) -> str:
    core = core.translate(_MINUS_V2)
    choice = _CHOICE.match(core)
    if choice:
        return choice.group(1).upper()
    with_text = _CHOICE_WITH_TEXT_V2.match(core)
    if with_text:
        return (with_text.group(1) or with_text.group(2)).upper()
    number, unit = (core[:-1].rstrip(), "%") if core.endswith("%") else (core, "")
    if _GROUPED_V2.match(number):
        number = number.replace(",", "")
    if _NUMBER.match(number):
        return _number_text(number) + unit
    return _SPACES.sub(" ", core).lower()


class _Rule(NamedTuple):
    trim: Callable[[str], str]  # the answer line without what surrounds the answer
    normalize: Callable[[str], str]  # that answer's canonical short form


# Every version there is, in one place; an existing entry never changes.
_RULES = {1: _Rule(_trim_v1, _normalize_v1), 2: _Rule(_trim_v2, _normalize_v2)}
NORMALIZERS = tuple(_RULES)


def _rule(version: int) -> _Rule:
    rule = _RULES.get(version)
    if rule is None:
        raise UnknownNormalizer(version)
    return rule


def _number_text(number: str) -> str:
    value = float(number)
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)
