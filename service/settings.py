"""One frozen settings object; the only module that reads the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from service.domain.scoring import CURRENT_NORMALIZER, NORMALIZERS

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("auto", "json", "console")
SWITCH_VALUES = {"on": True, "1": True, "true": True, "off": False, "0": False, "false": False}
_POOL_MIN_SIZE = 2


class SettingsError(ValueError):
    """An environment variable with a value that cannot be used; the message names
    both, on one line."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Process-wide settings; build with ``Settings.from_env()``."""

    database_url: str | None = None
    config_path: Path | None = None
    data_dir: Path = Path(".fusion-ledger")
    host: str = "127.0.0.1"
    port: int = 8000
    log_format: str = "auto"  # auto | json | console
    log_level: str = "info"
    pool_min_size: int = _POOL_MIN_SIZE
    pool_max_size: int = 10
    auth_required: bool = False  # from_env turns it on unless FUSION_LEDGER_AUTH=off
    run_projections: bool = True  # FUSION_LEDGER_PROJECTIONS=off: leave them to `worker`
    max_open_runs: int = 256  # FUSION_LEDGER_MAX_OPEN_RUNS; past it fusions get 503 (0: none)
    # FUSION_LEDGER_ANSWER_NORMALIZER: the answer normaliser new runs record. 1 during a
    # rolling upgrade from a release without versions, whose replicas ignore the field
    # and grade every run by version 1 (ops/runbook.md).
    answer_normalizer: int = CURRENT_NORMALIZER
    environ: Mapping[str, str] | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from environment variables (``FUSION_LEDGER_*``, ``DATABASE_URL``)."""
        env = dict(os.environ if environ is None else environ)
        config = env.get("FUSION_LEDGER_CONFIG")
        # The projection worker and the router each hold one connection for good, and
        # batch replays take up to half the pool: below four they can starve each other.
        pool_max_size = _integer(env, "FUSION_LEDGER_POOL_SIZE", 10, minimum=4)
        return cls(
            database_url=env.get("FUSION_LEDGER_DATABASE_URL") or env.get("DATABASE_URL") or None,
            config_path=Path(config) if config else None,
            data_dir=Path(env.get("FUSION_LEDGER_DATA_DIR", ".fusion-ledger")),
            host=env.get("FUSION_LEDGER_HOST", "127.0.0.1"),
            port=_integer(env, "FUSION_LEDGER_PORT", 8000, minimum=1, maximum=65535),
            log_format=_choice(env, "FUSION_LEDGER_LOG_FORMAT", LOG_FORMATS, "auto"),
            log_level=_choice(env, "FUSION_LEDGER_LOG_LEVEL", LOG_LEVELS, "info"),
            pool_min_size=min(_POOL_MIN_SIZE, pool_max_size),  # asyncpg wants min <= max
            pool_max_size=pool_max_size,
            auth_required=switch(env, "FUSION_LEDGER_AUTH", default=True),
            run_projections=switch(env, "FUSION_LEDGER_PROJECTIONS", default=True),
            max_open_runs=_integer(env, "FUSION_LEDGER_MAX_OPEN_RUNS", 256, minimum=0),
            answer_normalizer=_integer(
                env,
                "FUSION_LEDGER_ANSWER_NORMALIZER",
                CURRENT_NORMALIZER,
                minimum=min(NORMALIZERS),
                maximum=max(NORMALIZERS),
            ),
            environ=env,
        )

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields replaced (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]

    def secret(self, name: str) -> str | None:
        """The value of a named environment variable holding a secret (provider keys)."""
        return (self.environ or {}).get(name)


def _integer(
    env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int | None = None
) -> int:
    """An integer setting; unset or empty is the default."""
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise SettingsError(f"{name}: not an integer ({env[name]!r})") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"at least {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise SettingsError(f"{name}: must be {bound} ({env[name]!r})")
    return value


def switch(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    """An on/off setting (on|off, 1|0, true|false, any case); unset or empty is the
    default; anything else is a ``SettingsError``, never silently on or off."""
    text = env.get(name, "").strip().lower()
    if not text:
        return default
    if text not in SWITCH_VALUES:
        raise SettingsError(f"{name}: must be on or off (or 1/0, true/false) ({env[name]!r})")
    return SWITCH_VALUES[text]


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    """One of ``choices`` (any case; empty: the default), else SettingsError."""
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise SettingsError(f"{name}: must be one of {', '.join(choices)} ({env[name]!r})")
    return value
