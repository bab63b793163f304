"""Cross-reference checks on a decoded ``Config``; ``service.config`` raises on them.

Types are checked by msgspec while decoding; what is left is what a type cannot say:
names that must refer to something defined elsewhere in the file, regexes, and the
limits the planner puts on every request (``service.orchestration.planning``), so a
preset that could never run is refused at load, not blamed on each client with a 422.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from service.config import Config, PresetConfig


def config_problems(config: Config) -> list[str]:
    """Every inconsistency in ``config``, each naming the table and field; empty if none."""
    problems: list[str] = []
    for name, provider in config.providers.items():
        url = urlsplit(provider.base_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            where = table_path("providers", name)
            problems.append(f"{where}.base_url: expected an http(s) URL, got {provider.base_url!r}")
    for model_id, model in config.models.items():
        if model.provider not in config.providers:
            problems.append(
                f"{table_path('models', model_id)}.provider: no provider named {model.provider!r} "
                f"(defined: {_names(config.providers)})"
            )
    for name, preset in config.presets.items():
        problems += _preset_problems(config, table_path("presets", name), preset)
    # Every request without a preset uses the default one, even with its own panel and
    # judge: models without it would answer nothing but 422s.
    if (config.presets or config.models) and config.default_preset not in config.presets:
        problems.append(
            f"default_preset: no preset named {config.default_preset!r} "
            f"(defined: {_names(config.presets)})"
        )
    for i, rule in enumerate(config.categories.rules):
        where = f"categories.rules[{i}]"
        if (rule.pattern is None) == (not rule.keywords):
            problems.append(f"{where}: give exactly one of `pattern` or `keywords`")
        elif rule.pattern is not None:
            try:
                re.compile(rule.pattern)
            except re.error as exc:
                problems.append(f"{where}.pattern: invalid regex {rule.pattern!r}: {exc}")
        elif any(not k for k in rule.keywords):
            problems.append(f"{where}.keywords: empty keyword")
    return problems


def _preset_problems(config: Config, where: str, preset: PresetConfig) -> list[str]:
    # Imported here: the planner imports service.config, which imports this module.
    from service.orchestration.judge import FALLBACKS
    from service.orchestration.planning import MAX_PANEL_SEATS, MAX_TIMEOUT_S

    problems: list[str] = []

    def unknown(field: str, model_id: str | None) -> None:
        if model_id is not None and model_id not in config.models:
            problems.append(f"{where}.{field}: unknown model {model_id!r}")

    entries = preset.panel_entries()
    if preset.panel == "auto":
        for candidate in preset.router.candidates:
            unknown("router.candidates", candidate)
        pool = len(set(preset.router.candidates or config.models))
        if preset.router.k > pool:
            problems.append(f"{where}.router.k: {preset.router.k} exceeds the {pool} candidates")
        seats = preset.router.k
    else:
        for index, entry in enumerate(entries):
            unknown("panel", entry.model)
            if entry.samples > MAX_PANEL_SEATS:
                problems.append(
                    f"{where}.panel[{index}].samples: {entry.samples} exceeds the limit of "
                    f"{MAX_PANEL_SEATS} seats"
                )
        seats = sum(e.samples for e in entries)
        if not entries:
            problems.append(f'{where}.panel: empty panel (list models, or "auto")')
        elif seats > MAX_PANEL_SEATS and all(e.samples <= MAX_PANEL_SEATS for e in entries):
            problems.append(f"{where}.panel: {seats} seats exceed the limit of {MAX_PANEL_SEATS}")
    if preset.timeout_s > MAX_TIMEOUT_S:
        problems.append(
            f"{where}.timeout_s: {preset.timeout_s:g} exceeds the limit of "
            f"{MAX_TIMEOUT_S:g} seconds"
        )
    if seats and preset.min_successes > seats:
        problems.append(
            f"{where}.min_successes: {preset.min_successes} exceeds the panel's {seats} seats"
        )
    judge = preset.judge
    if judge.kind in ("synthesize", "select") and judge.model is None:
        problems.append(f"{where}.judge.model: a {judge.kind!r} judge needs a model")
    unknown("judge.model", judge.model)
    if judge.fallback not in FALLBACKS:
        problems.append(
            f"{where}.judge.fallback: {judge.fallback!r} is not one of {', '.join(FALLBACKS)}"
        )
    panel_models = {e.model for e in entries}
    if judge.model in panel_models and not preset.allow_panel_judge:
        problems.append(
            f"{where}.judge.model: {judge.model!r} also sits on the panel; "
            "set allow_panel_judge = true to allow it"
        )
    return problems


def table_path(table: str, key: str) -> str:
    """``providers.sim``, or ``models.'sim/model-a'`` when the key needs quoting."""
    return f"{table}.{key}" if re.fullmatch(r"[A-Za-z0-9_-]+", key) else f"{table}.{key!r}"


def _names(table: Mapping[str, object]) -> str:
    return ", ".join(sorted(table)) or "none"
