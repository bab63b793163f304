"""Answer normalisation and correctness: choice letters, numbers, exact strings.

The rule is versioned, because normalised answers are stored (answer.finalized's
``answer_normalized``, outcome.recorded's ``expected_normalized``) and compared in SQL.
A run's first event names its version (run.requested ``normalizer``) and everything
derived from that run uses it, so stored values are only ever compared within one
version. Two answers match when their normalised texts are equal, in every version:
the very comparison the SQL makes, so outcomes, replay reports and the statistics
grade alike.

Version 1 is the rule every event written before versions existed was made by: it
stays exactly as it is, known gaps included. Version 2 closes them: a leading point
stays (``.5`` is 0.5), commas count only as thousands separators (``1,000`` is 1000,
``3,5`` stays text), a choice letter followed by its text (``B) two``, ``(B) two``,
``B. two``) is ``B``, percentages are numbers (``50.0%`` is ``50%``) and the Unicode
minus signs are ``-``. Its one cost: an answer that starts like ``A. Lincoln`` reads as
the choice ``A``. Versions 1 and 2 read numbers through a float, which keeps about 16
significant digits (``9007199254740993`` is ``9007199254740992``).

Version 3 is version 2 with numbers read exactly, as decimals: every digit counts
(``0.30000000000000004`` is not 0.3), an integer keeps all its digits whatever its
size, and only trailing zeros go (``12.50`` is 12.5, ``1e3`` is 1000, ``-0`` is 0). A
number is written plainly (``1000000000000000``, ``0.0001``) unless that takes more
than 15 trailing zeros or more than 4 zeros after the point; then it is written as
Python writes floats, one digit before the point (``1e+16``, ``1.5e-05``). An
exponent of more than 15 digits makes no number: the answer stays text.
"""

from __future__ import annotations

import decimal
import math
import re
from collections.abc import Callable
from typing import NamedTuple

CURRENT_NORMALIZER = 3  # what new runs record; never change what an existing version does

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
# Version 3: where plain notation ends (float repr's small end; its large end moved up
# to 15 trailing zeros, so that no integer written in full is shortened), and the
# longest exponent a number may have (Decimal's exponents end at 18 digits; 15 keeps
# the arithmetic on them far from that end).
_PLAIN_MIN_ADJUSTED_V3 = -4
_PLAIN_MAX_TRAILING_ZEROS_V3 = 15
_MAX_EXPONENT_DIGITS_V3 = 15


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
    # not. Every version shares this part.
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
    """True when the two answers' normalised texts are equal (what the SQL compares)."""
    return normalize_answer(answer, version) == normalize_answer(expected, version)


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
    return _normalize_with(core, _number_text)


def _normalize_v3(core: str) -> str:
    return _normalize_with(core, _exact_number_text)


def _normalize_with(core: str, number_text: Callable[[str], str | None]) -> str:
    """Version 2's reading of choices, percentages and grouping, numbers by ``number_text``."""
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
        text = number_text(number)
        if text is not None:
            return text + unit
    return _SPACES.sub(" ", core).lower()


class _Rule(NamedTuple):
    trim: Callable[[str], str]  # the answer line without what surrounds the answer
    normalize: Callable[[str], str]  # that answer's canonical short form


# Every version there is, in one place; an existing entry never changes.
_RULES = {
    1: _Rule(_trim_v1, _normalize_v1),
    2: _Rule(_trim_v2, _normalize_v2),
    3: _Rule(_trim_v2, _normalize_v3),
}
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


def _exact_number_text(number: str) -> str | None:
    """The canonical text of a ``_NUMBER`` match, exact; None when its exponent is too long."""
    exponent = number.lower().partition("e")[2].lstrip("+-").lstrip("0")
    if len(exponent) > _MAX_EXPONENT_DIGITS_V3:
        return None
    with decimal.localcontext() as context:
        # Precision for every digit given, so normalize() drops trailing zeros and
        # never rounds; the widest exponent range, so it never overflows.
        context.prec = len(number)
        context.Emax, context.Emin = decimal.MAX_EMAX, decimal.MIN_EMIN
        value = decimal.Decimal(number).normalize()
    if value.is_zero():
        return "0"  # also -0
    # "d.ddde+x" holds every significant digit once and is as long as the input at
    # most; plain notation below is built only when its padding is short.
    digits = format(value.copy_abs(), "e").partition("e")[0].replace(".", "")
    adjusted = value.adjusted()  # the power of ten of the first digit
    trailing_zeros = adjusted - len(digits) + 1
    sign = "-" if value.is_signed() else ""
    if adjusted < _PLAIN_MIN_ADJUSTED_V3 or trailing_zeros > _PLAIN_MAX_TRAILING_ZEROS_V3:
        point = "." if len(digits) > 1 else ""
        return f"{sign}{digits[0]}{point}{digits[1:]}e{adjusted:+03d}"
    if trailing_zeros >= 0:
        return sign + digits + "0" * trailing_zeros
    if adjusted >= 0:
        return f"{sign}{digits[: adjusted + 1]}.{digits[adjusted + 1 :]}"
    return f"{sign}0.{'0' * (-adjusted - 1)}{digits}"
