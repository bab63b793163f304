"""The versioned answer normaliser: version 1 pinned as the log's record of old runs
(known gaps included), version 2's fixes, and the run's version reaching every place
that normalises (the vote, the judge's fallback, grading). Version 3's exact numbers:
test_exact_numbers.py."""

from __future__ import annotations

from typing import cast

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.events import (
    AnswerFinalized,
    JudgeSpec,
    Message,
    PanelCallSucceeded,
    PanelMember,
    PanelSelected,
    RunRequested,
)
from service.domain.grading import grade_against
from service.domain.judging import Candidate, vote
from service.domain.runs import fold
from service.domain.scoring import (
    CURRENT_NORMALIZER,
    UnknownNormalizer,
    answers_match,
    extract_answer,
    normalize_answer,
)
from service.orchestration.caller import ModelCaller
from service.orchestration.judge import run_judge

# Version 1 exactly as every answer_normalized and expected_normalized written before
# versions existed was made. The wrong ones are wrong on purpose: they are what the
# log's old values mean. Do not "fix" a row here; add a version.
V1_NORMALIZED = [
    ("B", "B"),
    ("Answer: (b)", "B"),
    ("answer: C.", "C"),
    ("b)", "B"),
    ("(e).", "E"),
    ("42", "42"),
    ("Answer: 3.50", "3.5"),
    ("12.0", "12"),
    ("-7", "-7"),
    ("+7", "7"),
    ("1e3", "1000"),
    ("1e20", "1e+20"),
    ("0.1", "0.1"),
    ("1,000", "1000"),
    ("The answer is  New   York!", "new york"),
    ("**B** .", "b**"),
    ("", ""),
    (".", ""),
    # the known gaps version 2 closes
    (".5", "5"),  # the leading point is stripped as punctuation
    ("Answer: .25", "25"),
    ("3,5", "35"),  # commas dropped before the number check
    ("12,34", "1234"),
    ("1,0,0", "100"),
    ("B) two", "b) two"),  # a choice letter with its text stays text
    ("(B) two", "(b) two"),
    ("B. two", "b. two"),
    ("50%", "50%"),  # percentages compare as text
    ("50.0%", "50.0%"),
    ("\u22125", "\u22125"),  # the Unicode minus is not a minus
]
V1_EXTRACTED = [
    ("Answer: .5", "5"),
    ("The answer is 42.", "42"),
    ("**B** .", "B**"),
    ("Answer: B) two", "B) two"),
    ("...5", "5"),
]
V1_MATCHES = [
    (".5", "5", True),
    ("3,5", "35", True),
    ("50%", "50.0%", False),
    ("B) two", "B", False),
    ("\u22125", "-5", False),
    # Stored as "0.30000000000000004" and "0.3", texts the SQL never matched; answers_match
    # used to call them equal (floats within 1e-9), it compares the same texts now.
    ("0.30000000000000004", "0.3", False),
    ("Answer: b", "B", True),
    ("41", "42", False),
]


@pytest.mark.parametrize(("reply", "normal"), V1_NORMALIZED)
def test_version_1_normalises_exactly_as_the_old_answers_were_stored(
    reply: str, normal: str
) -> None:
    assert normalize_answer(reply, 1) == normal


@pytest.mark.parametrize(("reply", "stated"), V1_EXTRACTED)
def test_version_1_extracts_exactly_as_before(reply: str, stated: str) -> None:
    assert extract_answer(reply, 1) == stated


@pytest.mark.parametrize(("answer", "expected", "match"), V1_MATCHES)
def test_version_1_matches_exactly_as_before(answer: str, expected: str, match: bool) -> None:
    assert answers_match(answer, expected, 1) is match


@pytest.mark.parametrize(
    ("reply", "normal"),
    [
        (".5", "0.5"),
        ("Answer: .25", "0.25"),
        ("-.5", "-0.5"),
        ("...5", "5"),  # an ellipsis is punctuation, not a point
        ("1,000", "1000"),
        ("1,234,567.5", "1234567.5"),
        ("3,5", "3,5"),  # not a thousands separator: stays text, not 35
        ("12,34", "12,34"),
        ("1,0,0", "1,0,0"),
        ("B) two", "B"),
        ("(B) two", "B"),
        ("B. two", "B"),
        ("Answer: **(c) the third one**", "C"),
        ("e. coli", "e. coli"),  # the dot form needs a capital letter
        ("50%", "50%"),
        ("50.0%", "50%"),
        ("50.0 %", "50%"),
        ("12.50%", "12.5%"),
        ("\u22125", "-5"),
        ("\u22120.5", "-0.5"),
        ("\uff0d3", "-3"),
        ("**B** .", "B"),
        # unchanged from version 1
        ("Answer: (b)", "B"),
        ("Answer: 3.50", "3.5"),
        ("The answer is  New   York!", "new york"),
        (".", ""),
    ],
)
def test_version_2_closes_the_known_gaps(reply: str, normal: str) -> None:
    assert normalize_answer(reply, 2) == normal


# Version 2 reads numbers through a float; its runs' stored values mean that, so these
# stay as they are too (version 3 reads them exactly).
V2_FLOAT_NUMBERS = [
    ("9007199254740993", "9007199254740992.0"),
    ("12345678901234567890", "1.2345678901234567e+19"),
    ("1e15", "1000000000000000.0"),
    ("999999999999999", "999999999999999"),
    ("1e20", "1e+20"),
    ("0.30000000000000004", "0.30000000000000004"),
    ("0.00001", "1e-05"),
    ("1e999", "inf"),
    ("-0", "0"),
    ("12.0000000001", "12.0000000001"),
]


@pytest.mark.parametrize(("reply", "normal"), V2_FLOAT_NUMBERS)
def test_version_2_keeps_reading_numbers_through_a_float(reply: str, normal: str) -> None:
    assert normalize_answer(reply, 2) == normal


def test_version_2_matches_what_version_1_got_wrong() -> None:
    assert not answers_match(".5", "5", 2)
    assert answers_match(".5", "0.5", 2)
    assert not answers_match("3,5", "35", 2)
    assert answers_match("1,000", "1000", 2)
    assert answers_match("B) two", "B", 2)
    assert answers_match("50%", "50.0%", 2)
    assert not answers_match("12.5%", "12.500000000001%", 2)  # other numbers, whatever close
    assert not answers_match("50%", "50", 2)
    assert not answers_match("50%", "0.5", 2)
    assert answers_match("\u22125", "-5", 2)


def test_new_answers_use_version_3_and_unknown_versions_are_refused() -> None:
    assert CURRENT_NORMALIZER == 3
    assert normalize_answer(".5") == "0.5"
    assert normalize_answer("9007199254740993") == "9007199254740993"
    for call in (
        lambda: normalize_answer("B", 4),
        lambda: extract_answer("B", 0),
        lambda: answers_match("B", "B", 4),
    ):
        with pytest.raises(UnknownNormalizer, match="version"):
            call()


# --- properties of version 2 ------------------------------------------------------------

DIGITS = st.text("0123456789", min_size=1, max_size=12)
FINITE = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)


@given(st.integers(-(10**12), 10**12))
def test_thousands_separators_do_not_change_a_number(n: int) -> None:
    assert normalize_answer(f"{n:,}", 2) == normalize_answer(str(n), 2) == str(n)


@given(DIGITS, DIGITS.filter(lambda d: len(d) != 3))
def test_a_comma_that_is_not_a_thousands_separator_is_never_dropped(a: str, b: str) -> None:
    assert not answers_match(f"{a},{b}", a + b, 2)


@given(DIGITS)
def test_a_leading_point_keeps_its_meaning(fraction: str) -> None:
    assert normalize_answer(f".{fraction}", 2) == normalize_answer(f"0.{fraction}", 2)
    assert normalize_answer(f"Answer: -.{fraction}.", 2) == normalize_answer(f"-0.{fraction}", 2)


@given(FINITE)
def test_percentages_and_the_unicode_minus_read_as_numbers(x: float) -> None:
    text = repr(x)
    assert answers_match(f"{text}%", f"{x:.17g} %", 2)  # the same float, written otherwise
    assert not answers_match(f"{text}%", text, 2)
    if text.startswith("-"):
        assert normalize_answer("\u2212" + text[1:], 2) == normalize_answer(text, 2)


# An option's text has a letter or digit: all punctuation ("a. ?") trims away to the
# bare letter "a.", which is a choice in either case.
OPTION_TEXT = st.text(
    st.characters(exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp")), min_size=1
).filter(lambda t: "answer" not in t.lower() and any(c.isalnum() for c in t))


@given(
    st.sampled_from("ABCDE"),
    st.sampled_from(["({}) {}", "{}) {}", "{}. {}", "Answer: {}) {}", "**{}. {}**"]),
    OPTION_TEXT,
)
def test_a_choice_letter_followed_by_its_text_is_the_letter(
    letter: str, shape: str, text: str
) -> None:
    assert normalize_answer(shape.format(letter, text), 2) == letter
    lower = normalize_answer(shape.format(letter.lower(), text), 2)
    if "." in shape:  # "e. coli" is text; a bracket reads in either case
        assert lower != letter
    else:
        assert lower == letter


@given(
    st.one_of(
        st.integers(-(10**15), 10**15).map(str),
        st.sampled_from("ABCDEabcde"),
        st.from_regex(r"[a-z]+( [a-z]+)*", fullmatch=True),
        st.from_regex(r"-?[1-9][0-9]{0,5}\.[0-9]*[1-9]", fullmatch=True),
    ),
    st.sampled_from(["{}", "Answer: {}", "The answer is {}.", "Reasoning.\nFinal answer: {}"]),
)
def test_plain_answers_normalise_alike_in_both_versions(answer: str, shape: str) -> None:
    reply = shape.format(answer)
    assert normalize_answer(reply, 2) == normalize_answer(reply, 1)
    assert extract_answer(reply, 2) == extract_answer(reply, 1)


# --- the run's version reaches the vote, the judge's fallback and grading ----------------

# Votes ".5", "5", "0.5": version 1 reads two fives, version 2 two halves.
HALVES = [
    Candidate("m1", "Answer: .5"),
    Candidate("m2", "Answer: 5"),
    Candidate("m3", "Answer: 0.5"),
]


def test_the_vote_counts_with_the_runs_version() -> None:
    old = vote(HALVES, normalizer=1)
    assert old.final_answer == "5"
    assert [v.agrees for v in old.verdicts] == [True, True, False]
    new = vote(HALVES, normalizer=2)
    assert new.final_answer == ".5"
    assert [v.agrees for v in new.verdicts] == [True, False, True]
    assert vote(HALVES) == new


async def test_run_judge_votes_and_falls_back_with_the_runs_version() -> None:
    unused = cast(ModelCaller, None)  # a vote, and a judge out of time, call no model
    voted = await run_judge(
        unused, JudgeSpec(kind="vote"), "q", HALVES, seed=1, timeout_s=1.0, normalizer=1
    )
    assert voted.decision is not None and voted.decision.final_answer == "5"
    late = JudgeSpec(kind="synthesize", model="mock/judge", fallback="vote")
    fell_back = await run_judge(unused, late, "q", HALVES, seed=1, timeout_s=0.0, normalizer=1)
    assert fell_back.decided_by == "fallback:vote"
    assert fell_back.decision is not None and fell_back.decision.final_answer == "5"
    current = await run_judge(unused, late, "q", HALVES, seed=1, timeout_s=0.0)
    assert current.decision is not None and current.decision.final_answer == ".5"


def _closed_run(normalizer: int | None) -> RunRequested:
    """A run's request; None: as recorded before versions existed (no such field)."""
    requested = RunRequested(
        run_id="r",
        messages=[Message(role="user", content="Half of one?")],
        category="arithmetic",
        panel="auto",
        judge=JudgeSpec(kind="vote"),
    )
    if normalizer is None:
        return requested
    return msgspec.structs.replace(requested, normalizer=normalizer)


def _graded(requested: RunRequested, expected: str) -> tuple[bool | None, list[bool | None], str]:
    members = [PanelMember(member_id=c.member_id, model=f"m/{c.member_id}") for c in HALVES]
    calls = [
        PanelCallSucceeded(
            member_id=c.member_id,
            model=f"m/{c.member_id}",
            provider="p",
            text=c.text,
            finish_reason="stop",
            input_tokens=1,
            output_tokens=1,
            cost_usd=0.0,
            latency_ms=1.0,
            attempts=[],
        )
        for c in HALVES
    ]
    final = AnswerFinalized(
        answer=".5", answer_sha256="x", decided_by="judge", latency_ms=1.0, cost_usd=0.0
    )
    state = fold([requested, PanelSelected(members=members, method="fixed"), *calls, final])
    outcome = grade_against(state, expected, source="dataset", recorded_by="test")
    assert outcome.expected_normalized is not None
    return outcome.final_correct, [m.correct for m in outcome.members], outcome.expected_normalized


def test_an_old_run_is_graded_with_version_1_and_a_new_one_with_its_own() -> None:
    assert _graded(_closed_run(None), "5") == (True, [True, True, False], "5")
    assert _graded(_closed_run(1), "5") == (True, [True, True, False], "5")
    assert _graded(_closed_run(2), "5") == (False, [False, True, False], "5")
    assert _graded(_closed_run(2), "0.5") == (True, [True, False, True], "0.5")
    assert _graded(_closed_run(3), "0.50") == (True, [True, False, True], "0.5")
    with pytest.raises(UnknownNormalizer):
        _graded(_closed_run(4), "5")


def test_a_run_requested_stored_before_versions_decodes_as_version_1() -> None:
    current = msgspec.to_builtins(_closed_run(2))
    del current["normalizer"]
    old = msgspec.json.decode(msgspec.json.encode(current), type=RunRequested)
    assert old.normalizer == 1
    assert msgspec.to_builtins(_closed_run(2))["normalizer"] == 2
