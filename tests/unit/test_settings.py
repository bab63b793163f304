"""Settings from the environment: the switches operators set per deployment."""

from __future__ import annotations

import pytest

from service.settings import Settings, SettingsError, switch


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


@pytest.mark.parametrize("name", ["FUSION_LEDGER_AUTH", "FUSION_LEDGER_PROJECTIONS"])
@pytest.mark.parametrize("value", ["yes", "enabled", "no", "of"])
def test_a_switch_is_on_or_off_never_a_guess(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({name: value})
    assert str(raised.value) == f"{name}: must be on or off (or 1/0, true/false) ({value!r})"


def test_switches_take_on_off_1_0_true_false_in_any_case_and_empty_is_the_default() -> None:
    for value, expected in [("ON", True), ("1", True), ("True", True), ("Off", False)]:
        assert Settings.from_env({"FUSION_LEDGER_AUTH": value}).auth_required is expected
    assert Settings.from_env({"FUSION_LEDGER_PROJECTIONS": "0"}).run_projections is False
    assert Settings.from_env({"FUSION_LEDGER_AUTH": " "}).auth_required is True
    assert switch({}, "FUSION_LEDGER_AUTH", default=False) is False  # `up`'s default


def test_the_log_format_is_json_console_or_auto() -> None:
    assert Settings.from_env({}).log_format == "auto"
    assert Settings.from_env({"FUSION_LEDGER_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"FUSION_LEDGER_LOG_FORMAT": "consol"})
    assert str(raised.value) == (
        "FUSION_LEDGER_LOG_FORMAT: must be one of auto, json, console ('consol')"
    )


def test_the_answer_normaliser_of_new_runs_is_a_known_version() -> None:
    assert Settings.from_env({}).answer_normalizer == 3
    assert Settings.from_env({"FUSION_LEDGER_ANSWER_NORMALIZER": "1"}).answer_normalizer == 1
    assert Settings.from_env({"FUSION_LEDGER_ANSWER_NORMALIZER": "2"}).answer_normalizer == 2
    for value in ("0", "4", "two"):
        with pytest.raises(SettingsError, match="FUSION_LEDGER_ANSWER_NORMALIZER"):
            Settings.from_env({"FUSION_LEDGER_ANSWER_NORMALIZER": value})
