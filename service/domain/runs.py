"""A run's state, folded from its events (pure): what the API answers with."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from service.domain.events import (
    AnswerFinalized,
    Event,
    JudgeDecided,
    JudgeFailed,
    OutcomeRecorded,
    PanelCallFailed,
    PanelCallSucceeded,
    PanelMember,
    PanelSelected,
    ReplayRequested,
    RunFailed,
    RunRequested,
)

TERMINAL_TYPES = frozenset({AnswerFinalized.type, RunFailed.type})


@dataclass(slots=True)
class MemberState:
    """One panel seat and what became of its call."""

    member_id: str
    model: str
    sample_index: int = 0
    status: str = "pending"  # pending | succeeded | failed
    text: str | None = None
    error_kind: str | None = None
    latency_ms: float | None = None
    cost_usd: float = 0.0
    attempts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(slots=True)
class RunState:
    """Everything a client needs about one run or replay."""

    request: RunRequested | None = None
    replay: ReplayRequested | None = None
    members: dict[str, MemberState] = field(default_factory=dict)
    panel_method: str | None = None
    judge: JudgeDecided | None = None
    judge_failure: JudgeFailed | None = None
    finalized: AnswerFinalized | None = None
    failed: RunFailed | None = None
    outcomes: list[OutcomeRecorded] = field(default_factory=list)
    version: int = 0

    @property
    def closed(self) -> bool:
        """True once the run ended in answer.finalized or run.failed."""
        return self.finalized is not None or self.failed is not None

    @property
    def status(self) -> str:
        """running | finalized | failed."""
        if self.finalized is not None:
            return "finalized"
        return "failed" if self.failed is not None else "running"

    @property
    def succeeded(self) -> list[MemberState]:
        """Members whose call succeeded, in panel order."""
        return [m for m in self.members.values() if m.status == "succeeded"]

    def apply(self, event: Event) -> None:
        """Fold one event into the state."""
        self.version += 1
        match event:
            case RunRequested():
                self.request = event
            case ReplayRequested():
                self.replay = event
            case PanelSelected(members=members, method=method):
                self.panel_method = method
                for m in members:
                    self.members[m.member_id] = _seat(m)
            case PanelCallSucceeded():
                seat = self.members[event.member_id]
                seat.status, seat.text = "succeeded", event.text
                seat.latency_ms, seat.cost_usd = event.latency_ms, event.cost_usd
                seat.attempts = len(event.attempts)
                seat.input_tokens, seat.output_tokens = event.input_tokens, event.output_tokens
            case PanelCallFailed():
                seat = self.members[event.member_id]
                seat.status, seat.error_kind = "failed", event.error_kind
                seat.latency_ms, seat.attempts = event.latency_ms, len(event.attempts)
            case JudgeDecided():
                self.judge = event
            case JudgeFailed():
                self.judge_failure = event
            case AnswerFinalized():
                self.finalized = event
            case RunFailed():
                self.failed = event
            case OutcomeRecorded():
                self.outcomes.append(event)


def _seat(member: PanelMember) -> MemberState:
    return MemberState(member.member_id, member.model, member.sample_index)


def fold(events: Iterable[Event]) -> RunState:
    """The state after a sequence of events."""
    state = RunState()
    for event in events:
        state.apply(event)
    return state
