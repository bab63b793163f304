"""Judges as pure functions: the prompt an LLM judge gets, strict parsing of its
reply, and the deterministic vote.

The judge prompt carries a machine-readable task block between <fusion-judge-task>
tags (``JudgeTask``); the built-in simulator reads it to play a judge of a given
skill, and real models read the same text.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

import msgspec

from service.domain.events import Message, Verdict
from service.domain.scoring import CURRENT_NORMALIZER, extract_answer, normalize_extracted

PROMPT_VERSION = "judge-v1"
_TASK_BLOCK = re.compile(r"<fusion-judge-task>\s*(\{.*\})\s*</fusion-judge-task>", re.DOTALL)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


class JudgeCandidate(msgspec.Struct, frozen=True, kw_only=True):
    label: str
    answer: str
    track_record: float | None = None  # posterior accuracy in this category, when informed


class JudgeTask(msgspec.Struct, frozen=True, kw_only=True):
    version: str = PROMPT_VERSION
    task: str  # "synthesize" | "select"
    question: str
    candidates: list[JudgeCandidate]


class JudgeVerdict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    label: str
    agrees: bool
    score: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None  # as the prompt asks


class JudgeOutput(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    final_answer: str
    verdicts: list[JudgeVerdict]
    chosen: str | None = None
    rationale: str = ""


class JudgeOutputError(ValueError):
    """The judge's reply is not the structured output it was asked for."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A successful panel answer, before anonymisation."""

    member_id: str
    text: str


@dataclass(frozen=True, slots=True)
class Ballot:
    """An anonymised, shuffled candidate list: label -> member_id."""

    task: JudgeTask
    labels: dict[str, str]
    texts: dict[str, str]


@dataclass(frozen=True, slots=True)
class Decision:
    """What a judge decided, in member terms."""

    final_answer: str
    verdicts: list[Verdict]
    rationale: str


_SYSTEM = {
    "synthesize": (
        "You are an impartial judge. Several anonymous assistants answered the same "
        "question. Weigh their answers, then write the single best final answer. Reply "
        'with only a JSON object: {"final_answer": str, "verdicts": [{"label": str, '
        '"agrees": bool, "score": number between 0 and 1}], "rationale": str}. '
        "End the final answer with a line 'Answer: <short answer>'."
    ),
    "select": (
        "You are an impartial judge. Several anonymous assistants answered the same "
        'question. Pick the best answer. Reply with only a JSON object: {"chosen": '
        'label, "final_answer": the chosen answer\'s text, "verdicts": [{"label": str, '
        '"agrees": bool, "score": number between 0 and 1}], "rationale": str}.'
    ),
}


def question_text(messages: Sequence[Message]) -> str:
    """The question a panel was asked: the last user message."""
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    return messages[-1].content if messages else ""


def build_ballot(
    kind: str,
    question: str,
    candidates: Sequence[Candidate],
    seed: int,
    track_records: Mapping[str, float] | None = None,
) -> Ballot:
    """Anonymise and shuffle candidates (limits position and self-preference bias)."""
    order = list(candidates)
    random.Random(seed).shuffle(order)
    labels: dict[str, str] = {}
    texts: dict[str, str] = {}
    listed: list[JudgeCandidate] = []
    for index, candidate in enumerate(order):
        label = _label(index)
        labels[label] = candidate.member_id
        texts[label] = candidate.text
        record = None if track_records is None else track_records.get(candidate.member_id)
        listed.append(JudgeCandidate(label=label, answer=candidate.text, track_record=record))
    task = JudgeTask(task=kind, question=question, candidates=listed)
    return Ballot(task=task, labels=labels, texts=texts)


def _label(index: int) -> str:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return letters[index] if index < 26 else f"C{index + 1}"


def judge_messages(ballot: Ballot) -> list[Message]:
    """The chat messages sent to an LLM judge."""
    lines = [f"Question:\n{ballot.task.question}\n", "Candidate answers:"]
    for c in ballot.task.candidates:
        record = "" if c.track_record is None else f" (track record here: {c.track_record:.0%})"
        lines.append(f"[{c.label}]{record}\n{c.answer}\n")
    block = msgspec.json.encode(ballot.task).decode()
    lines.append(f"<fusion-judge-task>\n{block}\n</fusion-judge-task>")
    return [
        Message(role="system", content=_SYSTEM[ballot.task.task]),
        Message(role="user", content="\n".join(lines)),
    ]


def parse_judge_task(text: str) -> JudgeTask | None:
    """Read the task block from a judge prompt (used by the simulator)."""
    match = _TASK_BLOCK.search(text)
    if match is None:
        return None
    try:
        return msgspec.json.decode(match.group(1), type=JudgeTask)
    except msgspec.DecodeError:
        return None


def parse_judge_output(raw: str, ballot: Ballot) -> Decision:
    """Strictly parse a judge's reply; raises JudgeOutputError on anything off."""
    body = raw.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        output = msgspec.json.decode(body, type=JudgeOutput)
    except msgspec.DecodeError as exc:
        raise JudgeOutputError(f"judge reply is not the requested JSON: {exc}") from exc
    known = ballot.labels
    seen = [v.label for v in output.verdicts]
    if unknown := [label for label in seen if label not in known]:
        raise JudgeOutputError(f"judge named unknown candidates {unknown}")
    if len(set(seen)) != len(seen):
        raise JudgeOutputError("judge gave two verdicts for one candidate")
    final = output.final_answer
    if ballot.task.task == "select":
        if output.chosen not in known:
            raise JudgeOutputError(f"judge chose {output.chosen!r}, not a candidate label")
        if any(v.label == output.chosen and not v.agrees for v in output.verdicts):
            # Recorded as it is, it would count against the model the judge picked.
            raise JudgeOutputError(f"judge chose {output.chosen} and judged it wrong")
        final = ballot.texts[output.chosen]
    if not final.strip():
        raise JudgeOutputError("judge gave an empty final answer")
    verdicts = [
        Verdict(member_id=known[v.label], agrees=v.agrees, score=v.score) for v in output.verdicts
    ]
    return Decision(final_answer=final, verdicts=verdicts, rationale=output.rationale)


def vote(
    candidates: Sequence[Candidate],
    weights: Mapping[str, float] | None = None,
    *,
    normalizer: int = CURRENT_NORMALIZER,
) -> Decision:
    """Majority over normalised short answers, optionally weighted; deterministic.

    Ties go to the answer whose first supporter comes first in panel order. Answers are
    read and normalised with the run's ``normalizer`` version, so a replay of an old
    run counts its votes as the original did.
    """
    if not candidates:
        raise ValueError("vote needs at least one candidate")
    tally: dict[str, float] = {}
    first_seen: dict[str, int] = {}
    normal: dict[str, str] = {}
    stated: dict[str, str] = {}
    for index, candidate in enumerate(candidates):
        stated[candidate.member_id] = extract_answer(candidate.text, normalizer)
        key = normalize_extracted(stated[candidate.member_id], normalizer)
        normal[candidate.member_id] = key
        weight = 1.0 if weights is None else weights.get(candidate.member_id, 0.5)
        tally[key] = tally.get(key, 0.0) + weight
        first_seen.setdefault(key, index)
    winner = min(tally, key=lambda k: (-tally[k], first_seen[k]))
    verdicts = [
        Verdict(member_id=c.member_id, agrees=normal[c.member_id] == winner) for c in candidates
    ]
    supporters = [c for c in candidates if normal[c.member_id] == winner]
    rationale = f"{len(supporters)} of {len(candidates)} members answered {winner!r}"
    final = stated[supporters[0].member_id] or winner
    return Decision(final_answer=final, verdicts=verdicts, rationale=rationale)
