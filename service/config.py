"""The TOML configuration: providers, models and prices, presets, category rules.

Decoded with ``msgspec.toml`` into frozen Structs, so a wrong type or an unknown key
is a ``ConfigError`` naming the file and the field; cross-references (a model's
provider, a preset's models, regexes) are checked after decoding.

Top-level keys (``default_preset``) must come before the first ``[table]``: TOML
puts a key written after ``[categories]`` inside that table.

Environment overrides (pass ``Settings.environ``; this module never reads
``os.environ`` itself):

- ``FUSION_LEDGER_PROVIDER_<NAME>_BASE_URL`` replaces provider ``<NAME>``'s
  ``base_url``; ``<NAME>`` is the provider's name upper-cased, with every character
  other than a letter or digit replaced by ``_`` (``open-router`` -> ``OPEN_ROUTER``).
- Provider keys are never in the file: ``api_key_env`` names the variable that holds
  one, read from the environment when the process starts (Settings.from_env).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

import msgspec

from service.config_validation import config_problems, table_path
from service.domain.events import GenerationParams, JudgeKind, JudgeSpec

Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]
# What providers take (OpenAI: a 32-bit token count, a 64-bit seed); a larger integer
# would also be more than an event can store (JSON numbers in the log are 64-bit).
TokenLimit = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
Seed = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
CategorySource = Literal["inferred", "default"]


class ConfigError(Exception):
    """The configuration file is unreadable or inconsistent; the message says where."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


class UnknownModel(LookupError):
    """A model id that the configuration does not define."""

    def __init__(self, model_id: str) -> None:
        super().__init__(f"unknown model {model_id!r}")
        self.model_id = model_id


class UnknownPreset(LookupError):
    """A preset name that the configuration does not define."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown preset {name!r}")
        self.name = name


class _Strict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of the config tables: a misspelt key is an error, not a silent default."""


class ProviderConfig(_Strict, frozen=True, kw_only=True):
    base_url: str
    api_key_env: str | None = None
    timeout_s: Positive = 30.0
    max_concurrency: AtLeastOne = 64
    max_attempts: AtLeastOne = 3  # total attempts, including the first
    backoff_base_s: NonNegative = 0.2
    backoff_max_s: NonNegative = 5.0


class Price(NamedTuple):
    """USD per million input and output tokens."""

    input_per_million: float
    output_per_million: float

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float:
        """The cost of one call with these token counts."""
        return (
            input_tokens * self.input_per_million + output_tokens * self.output_per_million
        ) / 1_000_000


class ModelConfig(_Strict, frozen=True, kw_only=True):
    provider: str
    upstream: str = ""  # the name sent to the provider; load_config fills it with the id
    input_price: NonNegative = 0.0
    output_price: NonNegative = 0.0

    @property
    def price(self) -> Price:
        """This model's prices per million tokens."""
        return Price(self.input_price, self.output_price)


Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
TopP = Annotated[float, msgspec.Meta(ge=0, le=1)]


class BoundedParams(_Strict, frozen=True, kw_only=True):
    """Generation parameters as a client or a preset may set them: the fields of
    ``GenerationParams`` (which accepts unknown ones, as events must), within the bounds
    providers accept. The HTTP API decodes them; the config only checks them."""

    temperature: Temperature | None = None
    max_tokens: TokenLimit | None = None
    top_p: TopP | None = None
    seed: Seed | None = None

    def generation(self) -> GenerationParams:
        """As the event catalog records them."""
        return GenerationParams(
            temperature=self.temperature, max_tokens=self.max_tokens, top_p=self.top_p,
            seed=self.seed,
        )  # fmt: skip


class PanelEntry(_Strict, frozen=True, kw_only=True):
    model: str
    samples: AtLeastOne = 1
    params: GenerationParams = GenerationParams()


class JudgeConfig(_Strict, frozen=True, kw_only=True):
    kind: JudgeKind
    model: str | None = None
    fallback: str = "vote"
    weighted: bool = False
    informed: bool = False


class RouterConfig(_Strict, frozen=True, kw_only=True):
    k: AtLeastOne = 3
    candidates: list[str] = []  # empty: every configured model
    max_cost_usd: NonNegative | None = None


class PresetConfig(_Strict, frozen=True, kw_only=True):
    panel: Literal["auto"] | list[str | PanelEntry]
    judge: JudgeConfig
    min_successes: AtLeastOne = 1
    timeout_s: Positive = 60.0
    member_timeout_s: Positive = 30.0
    allow_panel_judge: bool = False
    router: RouterConfig = RouterConfig()

    def panel_entries(self) -> list[PanelEntry]:
        """The fixed panel with bare model ids expanded; empty when the panel is "auto"."""
        if self.panel == "auto":
            return []
        return [PanelEntry(model=e) if isinstance(e, str) else e for e in self.panel]

    def judge_spec(self) -> JudgeSpec:
        """The judge as the event catalog records it."""
        j = self.judge
        return JudgeSpec(
            kind=j.kind,
            model=j.model,
            weighted=j.weighted,
            informed=j.informed,
            allow_panel_model=self.allow_panel_judge,
            fallback=j.fallback,
        )


class CategoryRule(_Strict, frozen=True, kw_only=True):
    category: str
    pattern: str | None = None  # a Python regex, searched anywhere in the text
    keywords: list[str] = []  # case-insensitive substrings
    match: Literal["any", "all"] = "any"  # for keywords: one of them, or every one

    @property
    def name(self) -> str:
        """How run.requested names this rule (``category_rule``)."""
        if self.pattern is not None:
            return f"regex:{self.pattern}"
        return f"keywords:{','.join(self.keywords)}"

    def matches(self, text: str) -> bool:
        """Whether this rule fires on ``text``."""
        if self.pattern is not None:
            return re.search(self.pattern, text) is not None  # re caches compiled patterns
        folded = text.casefold()
        hits = (k.casefold() in folded for k in self.keywords)
        return all(hits) if self.match == "all" else any(hits)


class CategoriesConfig(_Strict, frozen=True, kw_only=True):
    default: str = "general"
    rules: list[CategoryRule] = []


class Config(_Strict, frozen=True, kw_only=True):
    default_preset: str = "default"
    providers: dict[str, ProviderConfig] = {}
    models: dict[str, ModelConfig] = {}
    presets: dict[str, PresetConfig] = {}
    categories: CategoriesConfig = CategoriesConfig()

    def model(self, model_id: str) -> ModelConfig:
        """The model with this id, or ``UnknownModel``."""
        try:
            return self.models[model_id]
        except KeyError:
            raise UnknownModel(model_id) from None

    def preset(self, name: str) -> PresetConfig:
        """The preset with this name, or ``UnknownPreset``."""
        try:
            return self.presets[name]
        except KeyError:
            raise UnknownPreset(name) from None


def infer_category(config: Config, text: str) -> tuple[str, CategorySource, str | None]:
    """(category, source, rule name): the first rule that fires, else the default."""
    for rule in config.categories.rules:
        if rule.matches(text):
            return rule.category, "inferred", rule.name
    return config.categories.default, "default", None


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, decode, override from ``environ`` and validate the TOML file at ``path``."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from exc
    return parse_config(raw, source=str(path), environ=environ)


def parse_config(
    raw: bytes | str, *, source: str = "<config>", environ: Mapping[str, str] | None = None
) -> Config:
    """Decode TOML text into a validated ``Config``; errors name ``source`` and the field."""
    try:
        data = msgspec.toml.decode(raw)
        _check_named_entries(data)
        config = msgspec.convert(data, Config)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ConfigError(source, str(exc)) from exc
    config = apply_env_overrides(_fill_upstream_names(config), environ or {})
    problems = config_problems(config)
    if problems:
        raise ConfigError(source, "; ".join(problems))
    return config


def provider_env_name(provider: str) -> str:
    """The prefix of a provider's override variables: ``FUSION_LEDGER_PROVIDER_<NAME>_``."""
    return "FUSION_LEDGER_PROVIDER_" + re.sub(r"[^A-Za-z0-9]", "_", provider).upper() + "_"


def apply_env_overrides(config: Config, environ: Mapping[str, str]) -> Config:
    """A copy of ``config`` with ``FUSION_LEDGER_PROVIDER_<NAME>_BASE_URL`` applied."""
    providers = {}
    for name, provider in config.providers.items():
        base_url = environ.get(provider_env_name(name) + "BASE_URL")
        providers[name] = (
            msgspec.structs.replace(provider, base_url=base_url) if base_url else provider
        )
    return msgspec.structs.replace(config, providers=providers)


_NAMED_TABLES: dict[str, type[msgspec.Struct]] = {
    "providers": ProviderConfig,
    "models": ModelConfig,
    "presets": PresetConfig,
}


def _check_named_entries(data: object) -> None:
    """Decode each named entry alone, so an error names it (msgspec says ``[...]``)."""
    if not isinstance(data, dict):
        return
    for table, entry_type in _NAMED_TABLES.items():
        entries = data.get(table)
        if not isinstance(entries, dict):
            continue
        for key, value in entries.items():
            _check_entry(value, entry_type, "$." + table_path(table, key))
            if table == "presets" and isinstance(value, dict):
                _check_panel_params(value.get("panel"), "$." + table_path(table, key))


def _check_entry(value: object, entry_type: type[msgspec.Struct], where: str) -> None:
    try:
        msgspec.convert(value, entry_type)
    except msgspec.ValidationError as exc:
        message, _, at = str(exc).partition(" - at `$")
        raise msgspec.ValidationError(f"{message} - at `{where}{at.rstrip('`')}`") from exc


def _check_panel_params(panel: object, where: str) -> None:
    """A misspelt or out-of-range generation parameter is an error, not dropped or sent."""
    if not isinstance(panel, list):
        return
    for index, entry in enumerate(panel):
        if isinstance(entry, dict) and "params" in entry:
            _check_entry(entry["params"], BoundedParams, f"{where}.panel[{index}].params")


def _fill_upstream_names(config: Config) -> Config:
    models = {
        mid: m if m.upstream else msgspec.structs.replace(m, upstream=mid)
        for mid, m in config.models.items()
    }
    return msgspec.structs.replace(config, models=models)
