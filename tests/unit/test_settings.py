"""Settings from the environment: the switches operators set per deployment."""

from __future__ import annotations

from service.settings import Settings


def test_defaults_run_everything_with_keys_on() -> None:
    settings = Settings.from_env({})
    assert settings.auth_required and settings.run_projections
    assert settings.database_url is None and settings.pool_max_size == 10
    assert settings.max_open_runs == 256


def test_operators_turn_projections_and_auth_off_and_name_the_database() -> None:
    settings = Settings.from_env(
        {
            "FUSION_LEDGER_PROJECTIONS": "off",
            "FUSION_LEDGER_AUTH": "false",
            "DATABASE_URL": "postgresql://db/x",
            "FUSION_LEDGER_POOL_SIZE": "4",
            "FUSION_LEDGER_MAX_OPEN_RUNS": "0",
        }
    )
    assert settings.max_open_runs == 0  # no bound
    assert not settings.run_projections and not settings.auth_required
    assert settings.database_url == "postgresql://db/x" and settings.pool_max_size == 4
    assert Settings.from_env({"FUSION_LEDGER_PROJECTIONS": "on"}).run_projections
