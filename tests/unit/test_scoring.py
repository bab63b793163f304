"""Answer extraction and normalisation: what the vote, outcomes and evaluation compare,
and answers_match grading exactly as the read models' SQL does."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.scoring import NORMALIZERS, answers_match, extract_answer, normalize_answer


@pytest.mark.parametrize(
    ("reply", "stated"),
    [
        ("B", "B"),
        ("Thinking it through step by step.\nAnswer: C", "C"),
        ("The answer is 42.", "42"),
        ("Answer:\n\n  Paris  \nbecause it is the capital", "Paris"),
        # the first statement of an answer counts; what follows is explanation
        ("Answer: B\nExplanation: A is wrong; its answer is off by one.", "B"),
        ("The answer is B.\nI checked: the answer isn't A.", "B"),
        ("Short answer: yes.\nLong answer: it depends on the season.", "yes"),
        ("Final answer: 7\nI am fairly sure the answer is right.", "7"),
        # known limit of the rule: prose that states an answer early wins over a later
        # one (stored answer_normalized values were all made by this rule)
        ("The answer is not obvious.\nAfter checking: the answer is D", "not obvious"),
        ("first line only\nsecond line", "first line only"),
        ("   ", ""),
    ],
)
def test_the_stated_answer_is_taken_out_of_a_reply(reply: str, stated: str) -> None:
    assert extract_answer(reply) == stated


@pytest.mark.parametrize(
    ("reply", "normal"),
    [
        ("Answer: (b)", "B"),
        ("answer: C.", "C"),
        ("1,000", "1000"),
        ("Answer: 3.50", "3.5"),
        ("12.0", "12"),
        ("The answer is  New   York!", "new york"),
    ],
)
def test_answers_normalise_to_a_short_canonical_form(reply: str, normal: str) -> None:
    assert normalize_answer(reply) == normal


def test_answers_match_when_their_normalised_texts_are_equal() -> None:
    assert answers_match("Answer: b", "B")
    assert answers_match("Answer: 12.50", "12.5")
    assert not answers_match("0.30000000000000004", "0.3")
    assert not answers_match("Answer: 41", "42")
    assert not answers_match("Paris", "Lyon")


# --- answers_match is the SQL's comparison, in every version ---------------------------
# The read models grade by answer_normalized = expected_normalized; outcomes, replay
# reports and batch comparisons grade by answers_match. They must never disagree.


@pytest.mark.parametrize("version", NORMALIZERS)
@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("12", "12.0000000001"),  # once equal within 1e-9 in Python, never in SQL
        ("0", "1e-13"),  # once equal within 1e-12
        ("Answer: 100%", "100.0000000001%"),
        ("0.30000000000000004", "0.3"),
    ],
)
def test_numbers_that_are_only_close_do_not_match(answer: str, expected: str, version: int) -> None:
    assert normalize_answer(answer, version) != normalize_answer(expected, version)
    assert not answers_match(answer, expected, version)


FINITE = st.floats(allow_nan=False, allow_infinity=False)
ANSWERS = st.one_of(
    st.from_regex(r"[-+\u2212]?\d{1,20}(\.\d{0,20})?([eE][-+]?\d{1,3})?( ?%)?", fullmatch=True),
    st.from_regex(r"\d{1,3}(,\d{3}){0,3}(\.\d{0,4})?", fullmatch=True),
    st.sampled_from(["B", "(b)", "B) two", "Answer: C.", "50%", "50.0%", ".5", "e. coli"]),
    st.text(max_size=12),
)
PAIRS = st.one_of(
    st.tuples(ANSWERS, ANSWERS),
    # neighbouring floats: far within any tolerance, different texts
    FINITE.map(lambda x: (repr(x), repr(math.nextafter(x, math.inf)))),
    FINITE.map(lambda x: (f"{x!r}%", f"{x:.17g} %")),
    ANSWERS.map(lambda a: (a, f"Answer: {a}.")),
)


@given(PAIRS, st.sampled_from(NORMALIZERS))
def test_two_answers_match_exactly_when_their_normalised_texts_are_equal(
    pair: tuple[str, str], version: int
) -> None:
    answer, expected = pair
    texts_equal = normalize_answer(answer, version) == normalize_answer(expected, version)
    assert answers_match(answer, expected, version) is texts_equal
