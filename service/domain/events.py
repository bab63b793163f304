"""The event catalog: every fact the log can hold, as frozen msgspec Structs.

Rules (DESIGN.md, "The event log"): type names are dotted and stable; a new field
gets a default; a field's type never changes; a breaking change is a new type plus an
upcaster in ``UPCASTERS``. ``schema/events/*.json`` is generated from this module.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgspec

ErrorKind = Literal[
    "timeout",
    "rate_limited",
    "server_error",
    "client_error",
    "connection",
    "malformed_response",
    "content_filter",
    "empty_response",
]
ERROR_KINDS: tuple[str, ...] = ErrorKind.__args__  # type: ignore[attr-defined]

JudgeKind = Literal["synthesize", "select", "vote"]
RunFailureReason = Literal[
    "quorum_not_met",
    "timeout",
    "cancelled",
    "client_disconnected",
    "shutdown",
    "abandoned",
    "judge_failed",
    "budget_exceeded",
    "internal_error",
]
OutcomeSource = Literal["dataset", "human", "evaluator"]


# gc=False: events and their parts hold only strings, numbers and containers of them,
# never a reference back to themselves, so they cannot be part of a reference cycle and
# the cycle collector need not track them. Readers that decode tens of thousands of
# events (batch replays, folds) spent about a fifth of their time in collections that
# walked them: reading 10,000 runs' events took 0.34-0.41 s of CPU, 0.25-0.28 s untracked.
class Part(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False, gc=False):
    """Base of the value objects nested in events."""


class Message(Part, frozen=True, kw_only=True):
    role: str
    content: str


class GenerationParams(Part, frozen=True, kw_only=True):
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    seed: int | None = None


class PanelRequest(Part, frozen=True, kw_only=True):
    model: str
    samples: int = 1
    params: GenerationParams = GenerationParams()


class JudgeSpec(Part, frozen=True, kw_only=True):
    kind: JudgeKind
    model: str | None = None
    weighted: bool = False
    informed: bool = False
    allow_panel_model: bool = False
    fallback: str = "vote"


class ClientIdentity(Part, frozen=True, kw_only=True):
    tenant: str = "default"
    actor: str = "anonymous"
    user_agent: str | None = None


class PanelMember(Part, frozen=True, kw_only=True):
    member_id: str
    model: str
    sample_index: int = 0
    params: GenerationParams = GenerationParams()


class CandidateScore(Part, frozen=True, kw_only=True):
    model: str
    score: float
    chosen: bool
    reason: str
    expected_cost_usd: float | None = None


class RouterDecision(Part, frozen=True, kw_only=True):
    version: str
    profile_checkpoint: str
    seed: int
    k: int
    candidates: list[CandidateScore]
    budget_usd: float | None = None


class Attempt(Part, frozen=True, kw_only=True):
    number: int
    outcome: Literal["ok"] | ErrorKind
    latency_ms: float
    http_status: int | None = None


class JudgeIdentity(Part, frozen=True, kw_only=True):
    kind: JudgeKind
    model: str | None
    prompt_version: str
    weighted: bool = False
    informed: bool = False


class Verdict(Part, frozen=True, kw_only=True):
    member_id: str
    agrees: bool
    score: float | None = None


class MemberOutcome(Part, frozen=True, kw_only=True):
    member_id: str
    correct: bool | None


class Event(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Base of every event; ``type`` and ``schema_version`` are stable identifiers."""

    type: ClassVar[str]
    schema_version: ClassVar[int] = 1


class RunRequested(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "run.requested"
    run_id: str
    messages: list[Message]
    category: str
    category_source: Literal["given", "inferred", "default"] = "given"
    category_rule: str | None = None
    tags: list[str] = []
    preset: str | None = None
    panel: Literal["auto"] | list[PanelRequest]
    judge: JudgeSpec
    params: GenerationParams = GenerationParams()
    client: ClientIdentity = ClientIdentity()
    idempotency_key: str | None = None
    max_cost_usd: float | None = None
    timeout_s: float | None = None
    min_successes: int = 1
    # The scoring.normalize_answer version every answer of this run (and of its replays
    # and outcomes) is normalised and graded with. Runs recorded before versions existed
    # have no such field and decode as 1, the rule they were made by; new runs record
    # scoring.CURRENT_NORMALIZER.
    normalizer: int = 1


class PanelSelected(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "panel.selected"
    members: list[PanelMember]
    method: Literal["fixed", "preset", "router"]
    router: RouterDecision | None = None


class PanelCallSucceeded(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "panel.call.succeeded"
    member_id: str
    model: str
    provider: str
    text: str
    finish_reason: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_ms: float
    attempts: list[Attempt]
    provider_response_id: str | None = None


class PanelCallFailed(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "panel.call.failed"
    member_id: str
    model: str
    provider: str
    error_kind: ErrorKind
    http_status: int | None
    attempts: list[Attempt]
    latency_ms: float
    message: str


class JudgeDecided(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "judge.decided"
    judge: JudgeIdentity
    final_answer: str
    verdicts: list[Verdict]
    rationale: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    raw_output: str = ""
    member_weights: dict[str, float] | None = None
    self_judging: bool = False


class JudgeFailed(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "judge.failed"
    judge: JudgeIdentity
    error_kind: str
    message: str
    fallback: str
    raw_output: str = ""
    cost_usd: float = 0.0
    latency_ms: float = 0.0


class AnswerFinalized(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "answer.finalized"
    answer: str
    answer_sha256: str
    decided_by: str
    latency_ms: float
    cost_usd: float
    panel_cost_usd: float = 0.0
    judge_cost_usd: float = 0.0
    # scoring.normalize_answer(answer) with the run's run.requested normalizer (a
    # replay's, its source run's): lets projections grade answers in SQL
    answer_normalized: str | None = None


class RunFailed(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "run.failed"
    reason: RunFailureReason
    message: str
    latency_ms: float = 0.0
    cost_usd: float = 0.0


class OutcomeRecorded(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "outcome.recorded"
    source: OutcomeSource
    recorded_by: str = "anonymous"
    expected: str | None = None
    # scoring.normalize_answer(expected) with the run's run.requested normalizer
    expected_normalized: str | None = None
    label: str | None = None
    final_correct: bool | None
    members: list[MemberOutcome] = []


class ReplayRequested(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "replay.requested"
    replay_id: str
    source_run_id: str
    source_stream_version: int
    judge: JudgeSpec
    batch_id: str | None = None
    force: bool = False


class ReplayFilter(Part, frozen=True, kw_only=True):
    """Which recorded runs a batch replays; times are ISO 8601 text."""

    since: str | None = None
    until: str | None = None
    category: str | None = None
    preset: str | None = None
    model: str | None = None
    has_ground_truth: bool | None = None


class SourceRun(Part, frozen=True, kw_only=True):
    """A run a batch replays, and the stream version its replay reads up to."""

    run_id: str
    stream_version: int


class ReplayBatchRequested(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "replay.batch.requested"
    batch_id: str
    filter: ReplayFilter
    judge: JudgeSpec
    concurrency: int
    runs: list[SourceRun]
    idempotency_key: str | None = None


class ReplayBatchCompleted(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "replay.batch.completed"
    replayed: int
    finalized: int
    failed: int


CATALOG: tuple[type[Event], ...] = (
    RunRequested,
    PanelSelected,
    PanelCallSucceeded,
    PanelCallFailed,
    JudgeDecided,
    JudgeFailed,
    AnswerFinalized,
    RunFailed,
    OutcomeRecorded,
    ReplayRequested,
    ReplayBatchRequested,
    ReplayBatchCompleted,
)
EVENT_TYPES: dict[str, type[Event]] = {cls.type: cls for cls in CATALOG}

# (event_type, stored schema_version) -> function turning old data into the next version.
UPCASTERS: dict[tuple[str, int], Any] = {}
