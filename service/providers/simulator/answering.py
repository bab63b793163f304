"""How a simulated model answers a question and how a simulated judge judges.

Part of the provider test double; pure functions of (world, model, prompt, sample).
The ``sample`` number (a request's ``seed``, or a draw from the server's RNG when the
request has none) selects one of the model's possible replies, so a reply is
reproducible given the world seed, the model, the question and the sample.

Simulated models and judges read answers by the newest normaliser (scoring's default,
``CURRENT_NORMALIZER``) whatever version the asking run records: they play models,
and the service grades what they say by the run's own version.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import msgspec

from service.domain.judging import (
    JudgeCandidate,
    JudgeOutput,
    JudgeTask,
    JudgeVerdict,
    parse_judge_task,
)
from service.domain.scoring import answers_match, extract_answer, normalize_answer
from service.providers.simulator.bank import Question
from service.providers.simulator.draws import STANDARD_NORMAL, normal, pick_index, text_key, uniform
from service.providers.simulator.expressions import parse_arithmetic
from service.providers.simulator.world import ModelSpec, World

JUDGE_TASK_MARKER = "<fusion-judge-task>"
# How often a skilled judge, seeing no right candidate, writes the right answer itself.
SELF_FIX_SHARE = 0.3

_LEADS = {
    "arithmetic": (
        "Working through the operations in order.",
        "Multiplication first, then the rest.",
        "Computing it step by step.",
    ),
    "multiple_choice": (
        "Comparing the options one by one.",
        "Ruling out the options that do not fit.",
        "Checking each option in turn.",
    ),
    "two_choice": (
        "Reading the sentence with each option in the blank.",
        "The blank refers to whoever the clause describes.",
        "Trying both options in the sentence.",
    ),
    "code": (
        "Tracing the snippet line by line.",
        "Running the code in my head.",
        "Following the loop carefully.",
    ),
    "short_fact": ("From what I recall.", "As far as I know.", "Drawing on geography."),
}
_ENCODER = msgspec.json.Encoder()
_INTEGER = re.compile(r"(?<![\w.])-?\d{1,9}(?![\w.])")


def reply(world: World, model: ModelSpec, prompt: str, sample: int) -> str:
    """The model's reply to a prompt (the last user message): judge, bank (or computed
    arithmetic) or unknown."""
    if JUDGE_TASK_MARKER in prompt:
        task = parse_judge_task(prompt)
        if task is not None:
            return judge_reply(world, model, task, sample)
    question = known_question(world, prompt)
    if question is not None:
        return panel_reply(world, model, question, sample)
    return unknown_reply(world, model, prompt, sample)


def known_question(world: World, prompt: str) -> Question | None:
    """The bank question with this text, else, for a simple arithmetic expression outside
    the bank ("What is 17 + 25 * 2?"), a question with the computed answer that models
    answer with their arithmetic accuracy. Its difficulty is a draw keyed by the world
    seed and the text, so it is the same on every run of a world."""
    question = world.bank.lookup(prompt)
    if question is not None:
        return question
    computed = parse_arithmetic(prompt)
    if computed is None:
        return None
    key = text_key(computed.expression)
    latent = normal(world.seed, "expression", key)
    return Question(
        id=f"ex-{key}",
        category="arithmetic",
        prompt=prompt.strip(),
        expected=computed.expected,
        difficulty=STANDARD_NORMAL.cdf(latent),
        distractor=computed.wrong_answers[0],
        wrong_answers=computed.wrong_answers,
        latent=latent,
    )


# --- panel answers --------------------------------------------------------------------


def p_correct(world: World, model: ModelSpec, question: Question) -> float:
    """Chance that ``model`` answers ``question`` right, given only its difficulty."""
    accuracy = model.accuracy.get(question.category, model.default_accuracy)
    if accuracy <= 0.0 or accuracy >= 1.0:
        return accuracy
    rho = world.category(question.category).shared_difficulty
    threshold = STANDARD_NORMAL.inv_cdf(accuracy)
    return STANDARD_NORMAL.cdf((threshold - math.sqrt(rho) * question.latent) / math.sqrt(1 - rho))


def is_correct(world: World, model: ModelSpec, question: Question, sample: int) -> bool:
    """Whether this sample of the model's answer is right (see world.py for the model)."""
    accuracy = model.accuracy.get(question.category, model.default_accuracy)
    if accuracy <= 0.0 or accuracy >= 1.0:
        return accuracy >= 1.0
    rho = world.category(question.category).shared_difficulty
    share = world.sample_variation
    noise = math.sqrt(1 - share) * normal(world.seed, "m", model.name, question.id)
    if share > 0.0:
        noise += math.sqrt(share) * normal(world.seed, "s", model.name, question.id, sample)
    latent = math.sqrt(rho) * question.latent + math.sqrt(1 - rho) * noise
    return latent < STANDARD_NORMAL.inv_cdf(accuracy)


def short_answer(world: World, model: ModelSpec, question: Question, sample: int) -> str:
    """The short answer this sample gives: right, else usually the attractive distractor."""
    if is_correct(world, model, question, sample):
        return question.expected
    wrong = question.wrong_answers
    pull = world.category(question.category).distractor_pull
    u = uniform(world.seed, "w", model.name, question.id, sample)
    if len(wrong) == 1 or u < pull:
        return wrong[0]
    return wrong[1 + min(int((u - pull) / (1 - pull) * (len(wrong) - 1)), len(wrong) - 2)]


def panel_reply(world: World, model: ModelSpec, question: Question, sample: int) -> str:
    """A short reasoning line, then ``Answer: <short answer>``."""
    leads = _LEADS[question.category]
    lead = leads[(sample + len(model.name)) % len(leads)]
    return f"{lead}\nAnswer: {short_answer(world, model, question, sample)}"


def unknown_reply(world: World, model: ModelSpec, prompt: str, sample: int) -> str:
    """A plausible, deterministic reply to a prompt that is not in the bank.

    Models agree on a consensus answer derived from the text about as often as their
    mean accuracy, and otherwise give a variant of it.
    """
    key = text_key(prompt)
    consensus, variant = _unknown_answers(prompt, key)
    accuracies = model.accuracy.values()
    agree = sum(accuracies) / len(accuracies) if accuracies else model.default_accuracy
    chosen = consensus if uniform(world.seed, "u", model.name, key, sample) < agree else variant
    return f"I considered the question carefully.\nAnswer: {chosen}"


def _unknown_answers(prompt: str, key: str) -> tuple[str, str]:
    letters = [c for c in "ABCD" if f"\n{c})" in prompt or f"Option {c}" in prompt]
    if len(letters) >= 2:
        first = pick_index(len(letters), key, "letter")
        return letters[first], letters[(first + 1) % len(letters)]
    numbers = [int(found) for found in _INTEGER.findall(prompt)]
    if numbers:
        return str(sum(numbers)), str(sum(numbers) + 1)
    return ("yes", "no") if pick_index(2, key, "yes") else ("no", "yes")


# --- judges ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JudgeChoice:
    """What a simulated judge settles on."""

    final: str  # the short final answer
    chosen: str | None  # label of the candidate backed; None when it wrote its own answer


def judge_choice(world: World, judge: ModelSpec, task: JudgeTask, sample: int) -> JudgeChoice:
    """With chance ``judge_skill`` back a right candidate (or, for synthesize and rarely,
    write the right answer); otherwise the (track-record weighted) plurality or a random
    candidate."""
    candidates = task.candidates
    if not candidates:
        return JudgeChoice(final="no candidate answered", chosen=None)
    key = _ballot_key(world, judge, task, sample)
    question = known_question(world, task.question)
    if question is not None and uniform(*key, "skill") < judge.judge_skill:
        right = [c for c in candidates if answers_match(c.answer, question.expected)]
        if right:
            pick = right[pick_index(len(right), *key, "right")]
            return JudgeChoice(final=extract_answer(pick.answer), chosen=pick.label)
        if task.task == "synthesize" and uniform(*key, "fix") < judge.judge_skill * SELF_FIX_SHARE:
            return JudgeChoice(final=question.expected, chosen=None)
    if uniform(*key, "style") < 0.5:
        pick = candidates[pick_index(len(candidates), *key, "random")]
    else:
        pick = _plurality(task, key)
    return JudgeChoice(final=extract_answer(pick.answer), chosen=pick.label)


def _ballot_key(world: World, judge: ModelSpec, task: JudgeTask, sample: int) -> tuple[object, ...]:
    ballot = "\x1f".join([task.question, *(c.answer for c in task.candidates)])
    return (world.seed, "judge", judge.name, text_key(ballot), sample)


def _plurality(task: JudgeTask, key: tuple[object, ...]) -> JudgeCandidate:
    tally: dict[str, float] = {}
    first: dict[str, JudgeCandidate] = {}
    for candidate in task.candidates:
        answer = normalize_answer(candidate.answer)
        weight = 1.0 if candidate.track_record is None else max(candidate.track_record, 0.01)
        tally[answer] = tally.get(answer, 0.0) + weight
        first.setdefault(answer, candidate)
    best = max(tally.values())
    tied = [answer for answer, weight in tally.items() if weight >= best - 1e-12]
    return first[tied[pick_index(len(tied), *key, "tie")]]


def judge_reply(world: World, judge: ModelSpec, task: JudgeTask, sample: int) -> str:
    """The judge's reply: a JudgeOutput JSON object, or invalid JSON at ``malformed_rate``."""
    if judge.malformed_rate > 0.0:
        u = uniform(*_ballot_key(world, judge, task, sample), "malformed")
        if u < judge.malformed_rate:
            if u < judge.malformed_rate / 2:
                return "I would go with the first candidate; it reads most convincingly."
            return '{"final_answer": "' + (task.candidates[0].answer if task.candidates else "")
    choice = judge_choice(world, judge, task, sample)
    final = normalize_answer(choice.final)
    verdicts = [_verdict(c, final) for c in task.candidates]
    if task.task == "select" and choice.chosen is not None:
        texts = {c.label: c.answer for c in task.candidates}
        final_text, chosen = texts[choice.chosen], choice.chosen
    else:
        final_text, chosen = f"Weighing the candidates.\nAnswer: {choice.final}", None
    supporters = sum(v.agrees for v in verdicts)
    output = JudgeOutput(
        final_answer=final_text,
        verdicts=verdicts,
        chosen=chosen,
        rationale=f"{supporters} of {len(verdicts)} candidates support {choice.final!r}.",
    )
    return _ENCODER.encode(output).decode()


def _verdict(candidate: JudgeCandidate, final: str) -> JudgeVerdict:
    agrees = normalize_answer(candidate.answer) == final
    return JudgeVerdict(label=candidate.label, agrees=agrees, score=0.9 if agrees else 0.1)
