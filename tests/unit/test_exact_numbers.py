"""Normaliser version 3: numbers read exactly as decimals, never through a float, and
written in one canonical form per value; everything else as version 2."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from service.domain.scoring import answers_match, normalize_answer


@pytest.mark.parametrize(
    ("reply", "normal"),
    [
        ("9007199254740993", "9007199254740993"),  # 2**53 + 1: a float makes it 2**53
        ("9007199254740992", "9007199254740992"),
        ("123456789012345678901234567890", "123456789012345678901234567890"),
        ("-123456789012345678901", "-123456789012345678901"),
        ("1e15", "1000000000000000"),  # version 2: "1000000000000000.0"
        ("1000000000000000", "1000000000000000"),
        ("1.5e16", "15000000000000000"),
        ("1e16", "1e+16"),  # more than 15 trailing zeros: scientific
        ("10000000000000000", "1e+16"),
        ("12.50", "12.5"),
        ("Answer: 3.50", "3.5"),
        ("1e3", "1000"),
        ("1.0E2", "100"),
        ("-0", "0"),
        ("-0.000", "0"),
        ("0e7", "0"),
        ("+7", "7"),
        ("0.30000000000000004", "0.30000000000000004"),
        ("12.0000000001", "12.0000000001"),
        ("1e-13", "1e-13"),
        ("0.0001", "0.0001"),
        ("0.00001", "1e-05"),  # more than 4 zeros after the point: scientific
        ("0.000012340", "1.234e-05"),
        ("5e-324", "5e-324"),
        ("1e999999999", "1e+999999999"),
        ("-2.5E-999999999", "-2.5e-999999999"),
        ("1e000000000000000000000005", "100000"),  # leading zeros of an exponent count nothing
        # version 2's reading of everything else
        (".5", "0.5"),
        ("\u22120.5", "-0.5"),
        ("1,234,567.50", "1234567.5"),
        ("3,5", "3,5"),
        ("50.0 %", "50%"),
        ("12.50%", "12.5%"),
        ("B) two", "B"),
        ("The answer is  New   York!", "new york"),
    ],
)
def test_version_3_writes_each_number_exactly_and_canonically(reply: str, normal: str) -> None:
    assert normalize_answer(reply, 3) == normal


def test_big_integers_that_a_float_confuses_are_different_answers() -> None:
    assert normalize_answer("9007199254740993", 2) == normalize_answer("9007199254740992", 2)
    assert not answers_match("9007199254740993", "9007199254740992", 3)
    assert not answers_match("12345678901234567891", "12345678901234567890", 3)
    assert answers_match("12,345,678,901,234,567,891", "12345678901234567891", 3)
    assert answers_match("1.2345678901234567891e19", "12345678901234567891", 3)


@pytest.mark.parametrize(
    "exponent", ["999999999", "-999999999", "9" * 15, "-" + "9" * 15, "9" * 16, "9" * 5000]
)
def test_a_pathological_exponent_is_read_without_building_the_number(exponent: str) -> None:
    # Written out, 1e999999999 is a gigabyte; an int of 5,000 digits is refused by int().
    normal = normalize_answer(f"Answer: 1.5e{exponent}", 3)
    assert len(normal) < 30 or normal == f"1.5e{exponent}"  # 16 digits and more: text
    assert normalize_answer(f"25e{exponent}", 3) != normalize_answer(f"2.5e{exponent}", 3)


# --- properties -------------------------------------------------------------------------

NUMBER_TEXTS = st.one_of(
    st.from_regex(r"[-+]?(\d{1,40}(\.\d{0,40})?|\.\d{1,40})([eE][-+]?\d{1,12})?", fullmatch=True),
    st.builds(
        "{}.{}e{}".format,
        st.integers(-(10**40), 10**40),
        st.integers(0, 10**40),
        st.integers(-(10**12), 10**12),
    ),
)


@given(NUMBER_TEXTS)
@example("-1234567890123456789012345678901234567890.5e7")  # more digits than Decimal's 28
def test_the_text_has_exactly_the_numbers_value_and_stays_short(number: str) -> None:
    normal = normalize_answer(number, 3)
    assert Decimal(normal) == Decimal(number)  # so two values never share a text
    assert len(normal) <= len(number) + 21  # at most 15 zeros padded, "0.0000", a sign


@given(
    st.integers(-(10**30), 10**30),
    st.integers(-(10**9), 10**9),
    st.integers(0, 30),
)
def test_every_spelling_of_a_value_has_the_same_text(
    coefficient: int, exponent: int, zeros: int
) -> None:
    value = Decimal(f"{coefficient}e{exponent}")  # exact, whatever the context
    spellings = [
        f"{coefficient}e{exponent}",
        f"{coefficient}{'0' * zeros}e{exponent - zeros}",
        f"{coefficient}.{'0' * zeros}E{exponent:+d}",
        str(value),
    ]
    if abs(exponent) <= 40:
        spellings.append(f"{value:f}")
    assert len({normalize_answer(s, 3) for s in spellings}) == 1


@given(
    st.one_of(
        st.floats(allow_nan=False, allow_infinity=False, max_value=1e15, min_value=-1e15)
        .filter(lambda x: abs(x) < 1e15)
        .map(repr),
        st.integers(-(10**15) + 1, 10**15 - 1).map(str),
        st.sampled_from(["B", "(b) one", ".5", "1,000", "50.0%", "\u22125", "e. coli", "paris"]),
    ),
    st.sampled_from(["{}", "Answer: {}", "The answer is {}.", "Reasoning.\nFinal answer: {}"]),
)
def test_ordinary_answers_normalise_as_in_version_2(answer: str, shape: str) -> None:
    reply = shape.format(answer)
    assert normalize_answer(reply, 3) == normalize_answer(reply, 2)
