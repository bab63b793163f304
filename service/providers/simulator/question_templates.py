"""Question templates for the simulator's bank: each returns a prompt, the right
answer, and plausible wrong answers with the most attractive one (the distractor)
first.

Expected answers are computed, never typed in, so the exported bank is a valid
evaluation set for real models too (except short facts, which are about a fictional
world on purpose: no model can know them).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

LETTERS = "ABCD"


@dataclass(frozen=True, slots=True)
class Item:
    """A generated question before it gets an id and a difficulty."""

    prompt: str
    expected: str
    wrong: tuple[str, ...]  # distinct from expected; the attractive distractor first


Template = Callable[[random.Random, float], Item]


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _numbers_unlike(expected: int, candidates: list[int]) -> tuple[str, ...]:
    seen = {expected}
    kept: list[str] = []
    for value in candidates:
        if value not in seen:
            seen.add(value)
            kept.append(str(value))
    return tuple(kept)


# --- arithmetic ---------------------------------------------------------------------


def arithmetic(rng: random.Random, difficulty: float) -> Item:
    """Mixed + - * expressions; the distractor ignores operator precedence."""
    terms = 2 + round(difficulty * 2.4)
    top = 20 if difficulty < 0.4 else 99
    values = [rng.randint(2, top) for _ in range(terms)]
    ops = [rng.choice("+-*") for _ in range(terms - 1)]
    if terms >= 3 and "*" not in ops[1:]:
        ops[-1] = "*"  # so reading left to right is a tempting mistake
    expected = _with_precedence(values, ops)
    left_to_right = _left_to_right(values, ops)
    expression = " ".join(f"{v} {o}" for v, o in zip(values, ops, strict=False))
    expression = f"{expression} {values[-1]}"
    candidates = [left_to_right, expected + 10, expected - 1, expected + 1]
    return Item(
        prompt=f"What is {expression}? Reply with the number.",
        expected=str(expected),
        wrong=_numbers_unlike(expected, candidates),
    )


def _with_precedence(values: list[int], ops: list[str]) -> int:
    total, term = 0, values[0]
    sign = 1
    for op, value in zip(ops, values[1:], strict=True):
        if op == "*":
            term *= value
        else:
            total += sign * term
            sign, term = (1 if op == "+" else -1), value
    return total + sign * term


def _left_to_right(values: list[int], ops: list[str]) -> int:
    total = values[0]
    for op, value in zip(ops, values[1:], strict=True):
        total = total + value if op == "+" else total - value if op == "-" else total * value
    return total


# --- multiple choice (ARC-like) -------------------------------------------------------


def multiple_choice(rng: random.Random, difficulty: float) -> Item:
    """Four options A-D, one right; the distractor is a classic slip."""
    while True:
        stem, right, distractor, others = rng.choice(_MC_FAMILIES)(rng, difficulty)
        options = [right, distractor, *others[:2]]
        if len(set(options)) == 4:  # a rare numeric coincidence; draw again
            break
    order = list(range(4))
    rng.shuffle(order)
    letters = {index: LETTERS[slot] for slot, index in enumerate(order)}
    lines = [stem, *(f"{LETTERS[slot]}) {options[index]}" for slot, index in enumerate(order))]
    lines.append("Answer with the letter of the correct option.")
    wrong = (letters[1], letters[2], letters[3])
    return Item(prompt="\n".join(lines), expected=letters[0], wrong=wrong)


Choice = tuple[str, str, str, list[str]]


def _speed(rng: random.Random, difficulty: float) -> Choice:
    hours = rng.randint(2, 4 + round(difficulty * 8))
    speed = rng.randint(6, 30)
    km = speed * hours
    stem = f"A cyclist rides {km} km in {hours} hours at a steady pace. What is the average speed?"
    return stem, f"{speed} km/h", f"{km * hours} km/h", [f"{km + hours} km/h", f"{km - hours} km/h"]


def _grams(rng: random.Random, difficulty: float) -> Choice:
    kilos = rng.randint(2, 9 + round(difficulty * 90))
    stem = f"How many grams are in {kilos} kilograms?"
    return stem, f"{kilos * 1000} g", f"{kilos * 100} g", [f"{kilos * 10} g", f"{kilos * 10000} g"]


def _density(rng: random.Random, difficulty: float) -> Choice:
    volume = rng.randint(2, 6 + round(difficulty * 20))
    density = rng.randint(2, 11)
    mass = volume * density
    stem = f"A block has a mass of {mass} g and a volume of {volume} cm³. What is its density?"
    unit = "g/cm³"
    return (
        stem,
        f"{density} {unit}",
        f"{mass * volume} {unit}",
        [f"{mass + volume} {unit}", f"{mass - volume} {unit}"],
    )


_PRIMES = [p for p in range(11, 200) if all(p % d for d in range(2, math.isqrt(p) + 1))]
_LOOKS_PRIME = [n for n in range(21, 200, 2) if n % 3 and n % 5 and n not in _PRIMES]


def _prime(rng: random.Random, difficulty: float) -> Choice:
    prime = rng.choice(_PRIMES)
    tricky = rng.choice(_LOOKS_PRIME)  # odd, not divisible by 3 or 5, yet composite
    plain = rng.sample([n for n in range(12, 200, 2) if n != prime], 2)
    return "Which of these numbers is prime?", str(prime), str(tricky), [str(n) for n in plain]


def _fraction(rng: random.Random, difficulty: float) -> Choice:
    # The distractor has the biggest numerator and denominator but a smaller value.
    small = rng.randint(3, 6 + round(difficulty * 4))
    right = f"{small - 1}/{small}"
    big = small * rng.randint(2, small - 1)  # (k - 1) / k < (small - 1) / small
    tricky = f"{big - small}/{big}"
    others = [f"1/{small + 1}", f"{small - 1}/{2 * small}"]
    return "Which of these fractions is the largest?", right, tricky, others


_MC_FAMILIES: list[Callable[[random.Random, float], Choice]] = [
    _speed,
    _grams,
    _density,
    _prime,
    _fraction,
]


# --- two choice (Winogrande-like) ---------------------------------------------------

_NAMES = _words(
    "Anna Ben Carla David Elena Felix Grace Hugo Iris Jonas Kira Leo Maya Nico Olga "
    "Pavel Rosa Sami Tara Umar Vera Walt Xenia Yusuf Zoe Aldo Bea Cyril Dora Emil"
)
_CONTAINERS = _words("suitcase box drawer backpack bag cupboard crate basket envelope jar")
_OBJECTS = _words("trophy guitar lamp blanket painting helmet kettle ladder telescope umbrella")
# sentence with {first} {second}; the word that points at first, and the one at second
_PEOPLE_TEMPLATES = (
    ("{first} could not lift {second} because _ was too {word}.", "weak", "heavy"),
    ("{first} paid {second} back because _ had {word} the money.", "borrowed", "lent"),
    ("{first} thanked {second} because _ had {word} help.", "received", "given"),
    ("{first} beat {second} at chess because _ was the {word} player.", "stronger", "weaker"),
    ("{first} asked {second} for directions because _ was {word} in town.", "new", "born"),
)


def two_choice(rng: random.Random, difficulty: float) -> Item:
    """Fill-in-the-blank with two options; the distractor is the other option."""
    if rng.random() < 0.3:
        first, second = rng.choice(_OBJECTS), rng.choice(_CONTAINERS)
        points_first = rng.random() < 0.5
        word = "big" if points_first else "small"
        sentence = f"The {first} did not fit in the {second} because the _ was too {word}."
        options = [f"the {first}", f"the {second}"]
    else:
        first, second = rng.sample(_NAMES, 2)
        template, word_first, word_second = rng.choice(_PEOPLE_TEMPLATES)
        points_first = rng.random() < 0.5
        word = word_first if points_first else word_second
        sentence = template.format(first=first, second=second, word=word)
        options = [first, second]
    right = options[0] if points_first else options[1]
    if rng.random() < 0.5:
        options.reverse()
    expected = "A" if options[0] == right else "B"
    prompt = (
        f"Fill in the blank: {sentence}\nOption A: {options[0]}\nOption B: {options[1]}\n"
        "Answer with A or B."
    )
    return Item(prompt=prompt, expected=expected, wrong=("B" if expected == "A" else "A",))


# --- code (MBPP-like) -------------------------------------------------------------------


def code(rng: random.Random, difficulty: float) -> Item:
    """A small Python snippet; the distractor is an off-by-one reading of it."""
    snippet, expected, slip = rng.choice(_CODE_FAMILIES)(rng, difficulty)
    prompt = (
        "What does this Python snippet print? Reply with the printed value.\n"
        f"```python\n{snippet}\n```"
    )
    wrong = _numbers_unlike(expected, [slip, expected + 2, expected - 2, expected * 2])
    return Item(prompt=prompt, expected=str(expected), wrong=wrong)


Snippet = tuple[str, int, int]


def _loop_sum(rng: random.Random, difficulty: float) -> Snippet:
    start, stop = rng.randint(0, 5), rng.randint(6, 8 + round(difficulty * 20))
    factor = rng.randint(1, 4)
    text = f"total = 0\nfor i in range({start}, {stop}):\n    total += i * {factor}\nprint(total)"
    return text, factor * sum(range(start, stop)), factor * sum(range(start, stop + 1))


def _count_multiples(rng: random.Random, difficulty: float) -> Snippet:
    stop, step = rng.randint(10, 30 + round(difficulty * 70)), rng.randint(2, 7)
    text = f"print(len([x for x in range({stop}) if x % {step} == 0]))"
    expected = len(range(0, stop, step))
    return text, expected, stop // step if stop // step != expected else expected + 1


def _doubling(rng: random.Random, difficulty: float) -> Snippet:
    start, limit = rng.randint(1, 5), rng.randint(20, 100 + round(difficulty * 900))
    text = f"x = {start}\nn = 0\nwhile x < {limit}:\n    x *= 2\n    n += 1\nprint(n)"
    steps, x = 0, start
    while x < limit:
        x, steps = x * 2, steps + 1
    return text, steps, steps + 1


def _factorial(rng: random.Random, difficulty: float) -> Snippet:
    k = rng.randint(3, 5 + round(difficulty * 3))
    text = f"def f(n):\n    return 1 if n <= 1 else n * f(n - 1)\n\nprint(f({k}))"
    return text, math.factorial(k), math.factorial(k - 1)


def _slice_sum(rng: random.Random, difficulty: float) -> Snippet:
    values = [rng.randint(1, 9 + round(difficulty * 40)) for _ in range(rng.randint(5, 8))]
    lo, hi = rng.randint(0, 2), rng.randint(3, len(values) - 1)
    text = f"values = {values}\nprint(sum(values[{lo}:{hi}]))"
    return text, sum(values[lo:hi]), sum(values[lo : hi + 1])


_CODE_FAMILIES: list[Callable[[random.Random, float], Snippet]] = [
    _loop_sum,
    _count_multiples,
    _doubling,
    _factorial,
    _slice_sum,
]


# --- short fact (a fictional world) -------------------------------------------------

_SYLLABLES = _words(
    "ka lo ve ri ta mo sen dar el fi gor hal is jun ket mar "
    "nol or pra qui ros sal tor ul vin wes yar zel bre cas dru fen"
)
_COUNTRY_ENDINGS = ("ia", "and", "ora", "istan", "ene")
_CURRENCY_WORDS = ("crown", "mark", "florin", "shell", "talent")


@dataclass(frozen=True, slots=True)
class Country:
    """One row of the fictional world's fact table."""

    name: str
    capital: str
    largest_city: str
    currency: str
    language: str
    river: str


def fictional_world(rng: random.Random, count: int) -> list[Country]:
    """A fact table of ``count`` countries with unique names throughout."""
    used: set[str] = set()

    def word(parts: int, ending: str = "") -> str:
        while True:
            name = ("".join(rng.choice(_SYLLABLES) for _ in range(parts)) + ending).capitalize()
            if name not in used:
                used.add(name)
                return name

    return [
        Country(
            name=word(2, rng.choice(_COUNTRY_ENDINGS)),
            capital=word(2),
            largest_city=word(2),
            currency=f"{word(2)} {rng.choice(_CURRENCY_WORDS)}",
            language=word(2, "ic"),
            river=f"the {word(2)} river",
        )
        for _ in range(count)
    ]


def short_fact(countries: list[Country], index: int) -> Item:
    """Question ``index`` over the table; distractors are near-misses (largest city,
    a neighbour's fact)."""
    country = countries[index // 4 % len(countries)]
    neighbour = countries[(index // 4 + 1) % len(countries)]
    wrong: tuple[str, ...]
    match index % 4:
        case 0:
            question, right = f"What is the capital of {country.name}?", country.capital
            wrong = (country.largest_city, neighbour.capital, neighbour.largest_city)
        case 1:
            question, right = f"What is the currency of {country.name}?", country.currency
            wrong = (neighbour.currency, countries[index // 4 - 1].currency)
        case 2:
            question, right = (
                f"Which language is mostly spoken in {country.name}?",
                country.language,
            )
            wrong = (neighbour.language, countries[index // 4 - 1].language)
        case _:
            question, right = f"Which is the longest river of {country.name}?", country.river
            wrong = (neighbour.river, countries[index // 4 - 1].river)
    return Item(prompt=f"{question} Reply with the name only.", expected=right, wrong=wrong)
