"""The simulator's question bank: generated, seeded, with known answers.

Part of the provider test double. Every question has a difficulty in (0, 1) that all
simulated models share, which is what makes their errors correlate. Difficulties are
stratified (exact quantiles, shuffled) so a bank of a few hundred questions per
category already has the intended difficulty distribution, and measured accuracies
land on the world's figures instead of wandering with the draw.

The simulator recognises a panel question by the exact text of the last user message
(``QuestionBank.lookup``). ``export_jsonl`` writes the bank as an evaluation dataset
(``{"id", "category", "prompt", "expected"}`` per line).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from service.providers.simulator import question_templates as templates
from service.providers.simulator.draws import STANDARD_NORMAL

CATEGORIES: tuple[str, ...] = ("arithmetic", "multiple_choice", "two_choice", "code", "short_fact")
_PREFIX = {
    "arithmetic": "ar",
    "multiple_choice": "mc",
    "two_choice": "tc",
    "code": "co",
    "short_fact": "sf",
}


@dataclass(frozen=True, slots=True)
class Question:
    """One bank question with its known answer."""

    id: str
    category: str
    prompt: str
    expected: str
    difficulty: float  # shared by every model; higher is harder
    distractor: str  # the most attractive wrong answer
    wrong_answers: tuple[str, ...]  # plausible wrong answers, the distractor first
    latent: float = field(repr=False)  # difficulty as a standard normal quantile


class DatasetRow(msgspec.Struct, frozen=True):
    """One line of the exported evaluation dataset."""

    id: str
    category: str
    prompt: str
    expected: str


@dataclass(frozen=True)
class QuestionBank:
    """All questions, indexed by prompt text and by id."""

    seed: int
    questions: tuple[Question, ...]
    by_text: dict[str, Question] = field(repr=False)
    by_id: dict[str, Question] = field(repr=False)

    def lookup(self, text: str) -> Question | None:
        """The question whose prompt is exactly this text (surrounding space ignored)."""
        found = self.by_text.get(text)
        return found if found is not None else self.by_text.get(text.strip())

    def in_category(self, category: str) -> list[Question]:
        """This category's questions, in bank order."""
        return [q for q in self.questions if q.category == category]

    def __iter__(self) -> Iterator[Question]:
        return iter(self.questions)

    def __len__(self) -> int:
        return len(self.questions)

    def to_jsonl(self) -> bytes:
        """The bank as an evaluation dataset, one JSON object per line."""
        encoder = msgspec.json.Encoder()
        rows = (DatasetRow(q.id, q.category, q.prompt, q.expected) for q in self.questions)
        return b"".join(encoder.encode(row) + b"\n" for row in rows)

    def export_jsonl(self, path: Path) -> int:
        """Write ``to_jsonl`` to ``path``; returns the number of questions written."""
        path.write_bytes(self.to_jsonl())
        return len(self.questions)


def generate_bank(
    seed: int, per_category: int = 1000, categories: Iterable[str] = CATEGORIES
) -> QuestionBank:
    """Generate ``per_category`` questions in each category; same seed, same bank."""
    if per_category < 4:
        raise ValueError("a bank needs at least 4 questions per category")
    questions: list[Question] = []
    for category in categories:
        if category not in _PREFIX:
            raise ValueError(f"unknown question category {category!r}; known: {CATEGORIES}")
        questions.extend(_generate_category(seed, category, per_category))
    by_text = {q.prompt: q for q in questions}
    return QuestionBank(
        seed=seed,
        questions=tuple(questions),
        by_text=by_text,
        by_id={q.id: q for q in questions},
    )


def _generate_category(seed: int, category: str, count: int) -> list[Question]:
    rng = random.Random(f"fusion-ledger-bank|{seed}|{category}")
    quantiles = [(i + 0.5) / count for i in range(count)]
    rng.shuffle(quantiles)
    countries = templates.fictional_world(rng, max(3, -(-count // 4)))
    seen: set[str] = set()
    questions: list[Question] = []
    for index, difficulty in enumerate(quantiles):
        item = _fresh_item(rng, category, difficulty, countries, index, seen)
        questions.append(
            Question(
                id=f"{_PREFIX[category]}-{index:05d}",
                category=category,
                prompt=item.prompt,
                expected=item.expected,
                difficulty=difficulty,
                distractor=item.wrong[0],
                wrong_answers=item.wrong,
                latent=STANDARD_NORMAL.inv_cdf(difficulty),
            )
        )
    return questions


def _fresh_item(
    rng: random.Random,
    category: str,
    difficulty: float,
    countries: list[templates.Country],
    index: int,
    seen: set[str],
) -> templates.Item:
    """A question whose prompt is not yet in the bank (prompts are the lookup key)."""
    for _ in range(200):
        item = _make_item(rng, category, difficulty, countries, index)
        if item.prompt not in seen:
            seen.add(item.prompt)
            return item
    raise RuntimeError(f"cannot generate {category} question {index} with a unique prompt")


def _make_item(
    rng: random.Random,
    category: str,
    difficulty: float,
    countries: list[templates.Country],
    index: int,
) -> templates.Item:
    match category:
        case "arithmetic":
            return templates.arithmetic(rng, difficulty)
        case "multiple_choice":
            return templates.multiple_choice(rng, difficulty)
        case "two_choice":
            return templates.two_choice(rng, difficulty)
        case "code":
            return templates.code(rng, difficulty)
        case _:
            return templates.short_fact(countries, index)
