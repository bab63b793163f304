"""Grading a closed run (pure): ground truth or explicit labels -> outcome.recorded.

Two ways in, one event out. With the expected answer, the final answer and every
member that answered are scored by ``scoring.answers_match`` with the run's normaliser
version (its run.requested's, so an old run keeps the rule its answers were stored
with and ``expected_normalized`` compares with them in SQL); a member whose call
failed (or never returned) has no answer, so its correctness is unknown (None), and
so is the final answer's on a run that failed. With explicit labels, the caller says
what was right; a member it does not mention stays unknown.
"""

from __future__ import annotations

from collections.abc import Mapping

from service.domain.events import MemberOutcome, OutcomeRecorded, OutcomeSource
from service.domain.runs import RunState
from service.domain.scoring import answers_match, normalize_answer


class OutcomeRejected(Exception):
    """The outcome cannot be recorded on this run; nothing may be written."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class RunStillOpen(OutcomeRejected):
    """The run has not ended yet: there is no final answer to grade."""


class UnknownMembers(OutcomeRejected):
    """Labels name members the run's panel does not have."""

    def __init__(self, member_ids: list[str]) -> None:
        super().__init__("members", f"no such member on this run: {', '.join(member_ids)}")
        self.member_ids = member_ids


class LabelWithoutAnswer(OutcomeRejected):
    """A label for something that never produced an answer."""


def grade_against(
    state: RunState,
    expected: str,
    *,
    source: OutcomeSource,
    recorded_by: str,
    label: str | None = None,
) -> OutcomeRecorded:
    """Score the final answer and each member's answer against the expected answer."""
    _require_closed(state)
    version = run_normalizer(state)
    final = state.finalized.answer if state.finalized is not None else None
    members = [
        MemberOutcome(
            member_id=m.member_id,
            correct=answers_match(m.text, expected, version)
            if m.status == "succeeded" and m.text is not None
            else None,
        )
        for m in state.members.values()
    ]
    return OutcomeRecorded(
        source=source,
        recorded_by=recorded_by,
        expected=expected,
        expected_normalized=normalize_answer(expected, version),
        label=label,
        final_correct=None if final is None else answers_match(final, expected, version),
        members=members,
    )


def run_normalizer(state: RunState) -> int:
    """The normaliser version this run's answers are graded with: its request's."""
    if state.request is None:  # a replay stream: its source run's version applies
        raise ValueError("only a run stream names its normaliser version")
    return state.request.normalizer


def record_labels(
    state: RunState,
    final_correct: bool | None,
    labels: Mapping[str, bool],
    *,
    source: OutcomeSource,
    recorded_by: str,
    label: str | None = None,
) -> OutcomeRecorded:
    """The caller's own verdicts on the final answer and on members' answers."""
    _require_closed(state)
    unknown = sorted(set(labels) - set(state.members))
    if unknown:
        raise UnknownMembers(unknown)
    silent = sorted(m for m in labels if state.members[m].status != "succeeded")
    if silent:
        raise LabelWithoutAnswer(
            "members", f"these members gave no answer to label: {', '.join(silent)}"
        )
    if final_correct is not None and state.finalized is None:
        raise LabelWithoutAnswer(
            "final_correct", "the run failed, so it has no final answer to label (send null)"
        )
    return OutcomeRecorded(
        source=source,
        recorded_by=recorded_by,
        label=label,
        final_correct=final_correct,
        members=[MemberOutcome(member_id=m, correct=labels.get(m)) for m in state.members],
    )


def _require_closed(state: RunState) -> None:
    if not state.closed:
        raise RunStillOpen("run", "the run is still open: grade it once it has ended")
