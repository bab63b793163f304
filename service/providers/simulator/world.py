"""The simulated world: which models exist, what they cost, how well they answer each
category, how slow and unreliable they are. Part of a test double for remote model
providers, not the service's logic.

How correctness is drawn (``answering.is_correct``): every question has a latent
difficulty ``z`` (a standard normal quantile, shared by all models). Model ``m``
answers correctly when

    sqrt(rho) * z + sqrt(1 - rho) * e  <  Phi^-1(accuracy[m, category])

where ``rho`` is the category's ``shared_difficulty`` and ``e`` is standard normal
noise private to the model (partly fixed per model and question, partly per sample,
split by ``sample_variation``). So each model's accuracy is exactly its configured
figure, and ``rho`` alone sets how strongly errors coincide across models.

A world loads from TOML (``load_world``); every key is optional except model names:

    seed = 7                       # world seed: bank and every draw derive from it
    questions_per_category = 1000  # size of the generated bank
    sample_variation = 0.3         # share of a model's noise redrawn per sample
    fixed_latency_ms = 20          # every model answers in exactly this time (benchmarks)
    echo_key_in_errors = false     # error bodies echo the Authorization key (security tests)
    timeout_s = 120                # how long a simulated timeout hangs

    [categories.multiple_choice]
    shared_difficulty = 0.66       # rho above; 0 = independent errors
    distractor_pull = 0.6          # how often a wrong answer is the attractive distractor

    [[models]]
    name = "model-a"
    role = "panel"                 # "panel" | "judge" | "fault" (failure doubles)
    input_price_per_m = 8.6        # USD per million input tokens
    output_price_per_m = 25.7
    accuracy = { multiple_choice = 0.945, two_choice = 0.859 }
    default_accuracy = 0.5         # for categories not listed and unknown prompts
    latency_median_ms = 900        # lognormal latency: median and sigma
    latency_sigma = 0.35
    timeout_rate = 0.0             # per request: hang for timeout_s
    rate_limited_rate = 0.0        # 429 with Retry-After: retry_after_s
    server_error_rate = 0.0        # 500
    malformed_body_rate = 0.0      # 200 with a body that is not a chat completion
    retry_after_s = 1
    failure_cycle = ""             # e.g. "R." = 429, then success, then 429, ... (overrides rates)
    judge_skill = 0.5              # judge prompts: chance of backing a right candidate
    malformed_rate = 0.0           # judge prompts: chance of replying with invalid JSON

Categories are the bank's: arithmetic, multiple_choice, two_choice, code, short_fact.
"""

from __future__ import annotations

import dataclasses
import functools
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from service.providers.simulator.bank import CATEGORIES, QuestionBank, generate_bank

LABEL = "simulated provider (a test double for remote model providers)"

Rate = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0.0)]
FailureCycle = Annotated[str, msgspec.Meta(pattern=r"^[.RETM]*$")]
Role = Literal["panel", "judge", "fault"]


class ModelSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One simulated model (see the module docstring for each field)."""

    name: str
    role: Role = "panel"
    input_price_per_m: NonNegative = 0.0
    output_price_per_m: NonNegative = 0.0
    accuracy: dict[str, Rate] = {}
    default_accuracy: Rate = 0.5
    latency_median_ms: NonNegative = 500.0
    latency_sigma: NonNegative = 0.3
    timeout_rate: Rate = 0.0
    rate_limited_rate: Rate = 0.0
    server_error_rate: Rate = 0.0
    malformed_body_rate: Rate = 0.0
    retry_after_s: NonNegative = 1.0
    failure_cycle: FailureCycle = ""
    judge_skill: Rate = 0.5
    malformed_rate: Rate = 0.0


class CategorySpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How errors behave in one category."""

    shared_difficulty: Annotated[float, msgspec.Meta(ge=0.0, lt=1.0)] = 0.5
    distractor_pull: Rate = 0.6


class WorldFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A world as written in TOML."""

    seed: int = 0
    questions_per_category: Annotated[int, msgspec.Meta(ge=4)] = 1000
    sample_variation: Rate = 0.3
    fixed_latency_ms: NonNegative | None = None
    echo_key_in_errors: bool = False
    timeout_s: NonNegative = 120.0
    categories: dict[str, CategorySpec] = {}
    models: list[ModelSpec] = []


class WorldError(ValueError):
    """A world definition that cannot be simulated."""


@dataclass
class World:
    """Models and categories of a simulation; models can change at run time."""

    models: dict[str, ModelSpec]
    categories: dict[str, CategorySpec] = field(default_factory=dict)
    seed: int = 0
    questions_per_category: int = 1000
    sample_variation: float = 0.3
    fixed_latency_ms: float | None = None
    echo_key_in_errors: bool = False
    timeout_s: float = 120.0
    _bank: QuestionBank | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in self.categories:
            _check_category(name, "categories")
        for spec in self.models.values():
            for category in spec.accuracy:
                _check_category(category, f"model {spec.name!r} accuracy")

    @property
    def bank(self) -> QuestionBank:
        """The world's question bank, generated on first use."""
        bank = self._bank
        if bank is None or bank.seed != self.seed or len(bank) != self._bank_size():
            bank = self._bank = _shared_bank(self.seed, self.questions_per_category)
        return bank

    def _bank_size(self) -> int:
        return self.questions_per_category * len(CATEGORIES)

    def model(self, name: str) -> ModelSpec | None:
        """The model called ``name``, if the world has one."""
        return self.models.get(name)

    def category(self, name: str) -> CategorySpec:
        """The category's error behaviour (defaults when the world does not say)."""
        return self.categories.get(name) or _DEFAULT_CATEGORY

    def true_accuracy(self, model: str, category: str) -> float:
        """The probability that ``model`` answers a random ``category`` question right."""
        spec = self.models[model]
        return spec.accuracy.get(category, spec.default_accuracy)

    def names(self, role: Role | None = None) -> list[str]:
        """Model names, optionally only those of one role, in world order."""
        return [n for n, spec in self.models.items() if role is None or spec.role == role]

    def update_model(self, name: str, changes: Mapping[str, Any]) -> ModelSpec:
        """Change some of a model's fields (validated); raises KeyError or WorldError."""
        current = self.models[name]
        if changes.get("name", name) != name:
            raise WorldError("a model cannot be renamed")
        merged = msgspec.structs.asdict(current) | dict(changes)
        try:
            updated = msgspec.convert(merged, ModelSpec)
        except msgspec.ValidationError as exc:
            raise WorldError(f"bad change to model {name!r}: {exc}") from exc
        for category in updated.accuracy:
            _check_category(category, f"model {name!r} accuracy")
        self.models[name] = updated
        return updated

    def with_models(self, names: Iterable[str]) -> World:
        """A copy of this world that keeps only the named models (in that order)."""
        wanted = list(names)
        if missing := [n for n in wanted if n not in self.models]:
            raise WorldError(f"the world has no models {missing}")
        return self.with_options(models={n: self.models[n] for n in wanted})

    def with_options(self, **options: Any) -> World:
        """A copy with some settings replaced (seed, fixed_latency_ms, models, ...)."""
        copied: dict[str, Any] = {"models": dict(self.models), "categories": dict(self.categories)}
        try:
            return dataclasses.replace(self, **(copied | options), _bank=None)
        except TypeError as exc:
            raise WorldError(f"unknown world option: {exc}") from exc

    def to_file(self) -> WorldFile:
        """This world as its TOML-shaped structure."""
        return WorldFile(
            seed=self.seed,
            questions_per_category=self.questions_per_category,
            sample_variation=self.sample_variation,
            fixed_latency_ms=self.fixed_latency_ms,
            echo_key_in_errors=self.echo_key_in_errors,
            timeout_s=self.timeout_s,
            categories={name: self.category(name) for name in CATEGORIES},
            models=list(self.models.values()),
        )

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description: settings, categories, every model's figures."""
        described: dict[str, Any] = msgspec.to_builtins(self.to_file())
        described["label"] = LABEL
        described["questions"] = len(self.bank)
        return described


_DEFAULT_CATEGORY = CategorySpec()


@functools.lru_cache(maxsize=8)
def _shared_bank(seed: int, per_category: int) -> QuestionBank:
    """Banks are immutable, so worlds with the same seed share one (tests make many)."""
    return generate_bank(seed, per_category)


def _check_category(name: str, where: str) -> None:
    if name not in CATEGORIES:
        raise WorldError(f"{where}: unknown category {name!r}; known: {', '.join(CATEGORIES)}")


def world_from_file(spec: WorldFile) -> World:
    """Build a world from its file structure; raises WorldError on inconsistencies."""
    models: dict[str, ModelSpec] = {}
    for model in spec.models:
        if model.name in models:
            raise WorldError(f"model {model.name!r} is defined twice")
        models[model.name] = model
    if not models:
        raise WorldError("a world needs at least one model")
    return World(
        models=models,
        categories=dict(spec.categories),
        seed=spec.seed,
        questions_per_category=spec.questions_per_category,
        sample_variation=spec.sample_variation,
        fixed_latency_ms=spec.fixed_latency_ms,
        echo_key_in_errors=spec.echo_key_in_errors,
        timeout_s=spec.timeout_s,
    )


def world_from_toml(text: str) -> World:
    """Parse a world from TOML text (format in the module docstring)."""
    try:
        raw = tomllib.loads(text)
        spec = msgspec.convert(raw, WorldFile)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise WorldError(f"invalid world: {exc}") from exc
    return world_from_file(spec)


def load_world(path: Path) -> World:
    """Read a world from a TOML file."""
    try:
        return world_from_toml(path.read_text(encoding="utf-8"))
    except WorldError as exc:
        raise WorldError(f"{path}: {exc}") from exc
