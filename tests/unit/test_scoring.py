"""Answer extraction and normalisation: what the vote, outcomes and evaluation compare."""

from __future__ import annotations

import pytest

from service.domain.scoring import answers_match, extract_answer, normalize_answer


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


def test_answers_match_after_normalisation_and_numbers_within_tolerance() -> None:
    assert answers_match("Answer: b", "B")
    assert answers_match("0.30000000000000004", "0.3")
    assert not answers_match("Answer: 41", "42")
    assert not answers_match("Paris", "Lyon")
