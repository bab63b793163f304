"""The TOML configuration: what loads, what is refused (and how it says so), overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import (
    Config,
    ConfigError,
    PanelEntry,
    UnknownModel,
    UnknownPreset,
    infer_category,
    load_config,
    parse_config,
)
from service.domain.events import GenerationParams

VALID = r"""
default_preset = "default"

[providers.sim]
base_url = "http://127.0.0.1:8001/v1"
api_key_env = "SIM_API_KEY"
timeout_s = 30.0
max_concurrency = 64
max_attempts = 3
backoff_base_s = 0.2
backoff_max_s = 5.0

[providers.open-router]
base_url = "https://openrouter.ai/api/v1"

[models."sim/model-a"]
provider = "sim"
upstream = "model-a"
input_price = 10.0
output_price = 30.0

[models."sim/model-b"]
provider = "sim"

[models."sim/model-c"]
provider = "sim"

[models."sim/judge-strong"]
provider = "sim"
input_price = 1.0
output_price = 2.0

[models."or/llama"]
provider = "open-router"

[presets.default]
panel = ["sim/model-b", { model = "sim/model-c", samples = 2, params = { temperature = 0.7 } }]
judge = { kind = "synthesize", model = "sim/judge-strong", fallback = "vote" }
min_successes = 2
timeout_s = 60.0
member_timeout_s = 30.0

[presets.routed]
panel = "auto"
judge = { kind = "vote" }
router = { k = 2, candidates = ["sim/model-a", "sim/model-b"], max_cost_usd = 0.01 }

[categories]
default = "general"
rules = [
  { category = "arithmetic", pattern = "\\d+\\s*[-+*/x]\\s*\\d+" },
  { category = "multiple_choice", keywords = ["(A)", "(B)"], match = "all" },
  { category = "translation", keywords = ["Translate", "in French"] },
]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fusion-ledger.toml"
    path.write_text(text)
    return path


def test_a_valid_file_loads_with_defaults_filled_in(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID))

    sim = config.providers["sim"]
    assert (sim.base_url, sim.api_key_env, sim.max_attempts) == (
        "http://127.0.0.1:8001/v1",
        "SIM_API_KEY",
        3,
    )
    assert config.providers["open-router"].api_key_env is None
    assert config.model("sim/model-a").upstream == "model-a"
    assert config.model("sim/model-b").upstream == "sim/model-b"  # defaults to the id
    assert config.model("sim/model-a").price.cost_usd(1_000_000, 1_000_000) == pytest.approx(40.0)

    preset = config.preset("default")
    assert preset.panel_entries() == [
        PanelEntry(model="sim/model-b"),
        PanelEntry(model="sim/model-c", samples=2, params=GenerationParams(temperature=0.7)),
    ]
    spec = preset.judge_spec()
    assert (spec.kind, spec.model, spec.fallback, spec.allow_panel_model) == (
        "synthesize",
        "sim/judge-strong",
        "vote",
        False,
    )
    routed = config.preset("routed")
    assert routed.panel == "auto" and routed.panel_entries() == []
    assert (routed.router.k, routed.router.max_cost_usd) == (2, 0.01)
    assert config.default_preset == "default"


def test_lookups_of_undefined_names_raise_typed_errors() -> None:
    config = parse_config(VALID)
    with pytest.raises(UnknownModel) as model_error:
        config.model("sim/nope")
    assert model_error.value.model_id == "sim/nope"
    with pytest.raises(UnknownPreset) as preset_error:
        config.preset("fast")
    assert preset_error.value.name == "fast"


def test_an_empty_file_is_a_valid_empty_configuration() -> None:
    assert parse_config("") == Config()


def test_a_missing_file_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=r"absent\.toml: cannot read"):
        load_config(path)


def replace_once(old: str, new: str) -> str:
    assert VALID.count(old) == 1, old
    return VALID.replace(old, new)


BAD_FILES = {
    "toml syntax": (replace_once("[presets.routed]", "[presets.routed"), "(at line 43, column 16)"),
    "misspelt key": (
        replace_once("timeout_s = 30.0\nmax_c", "timout_s = 30.0\nmax_c"),
        "unknown field `timout_s` - at `$.providers.sim`",
    ),
    "wrong type": (
        replace_once("max_attempts = 3", 'max_attempts = "three"'),
        "Expected `int`, got `str` - at `$.providers.sim.max_attempts`",
    ),
    "zero max_attempts": (
        replace_once("max_attempts = 3", "max_attempts = 0"),
        ">= 1 - at `$.providers.sim.max_attempts`",
    ),
    "negative price": (
        replace_once("input_price = 1.0", "input_price = -1.0"),
        ">= 0",
    ),
    "not an http url": (
        replace_once('"http://127.0.0.1:8001/v1"', '"127.0.0.1:8001"'),
        "providers.sim.base_url: expected an http(s) URL",
    ),
    "model of an undefined provider": (
        replace_once(
            '[models."sim/model-b"]\nprovider = "sim"', '[models."sim/model-b"]\nprovider = "simm"'
        ),
        "models.'sim/model-b'.provider: no provider named 'simm'",
    ),
    "panel of an undefined model": (
        replace_once('panel = ["sim/model-b",', 'panel = ["sim/model-x",'),
        "presets.default.panel: unknown model 'sim/model-x'",
    ),
    "empty panel": (
        replace_once('panel = "auto"', "panel = []"),
        "presets.routed.panel: empty panel",
    ),
    "panel is neither a list nor auto": (
        replace_once('panel = "auto"', 'panel = "all"'),
        "Invalid enum value 'all' - at `$.presets.routed.panel`",
    ),
    "judge of an undefined model": (
        replace_once('model = "sim/judge-strong"', 'model = "sim/judge-weak"'),
        "presets.default.judge.model: unknown model 'sim/judge-weak'",
    ),
    "llm judge without a model": (
        replace_once('kind = "vote"', 'kind = "select"'),
        "presets.routed.judge.model: a 'select' judge needs a model",
    ),
    "judge that sits on the panel": (
        replace_once('model = "sim/judge-strong"', 'model = "sim/model-b"'),
        "presets.default.judge.model: 'sim/model-b' also sits on the panel",
    ),
    "router candidate undefined": (
        replace_once('candidates = ["sim/model-a",', 'candidates = ["sim/model-z",'),
        "presets.routed.router.candidates: unknown model 'sim/model-z'",
    ),
    "router k above its candidates": (
        replace_once("k = 2", "k = 3"),
        "presets.routed.router.k: 3 exceeds the 2 candidates",
    ),
    "min_successes zero": (
        replace_once("min_successes = 2", "min_successes = 0"),
        ">= 1 - at `$.presets.default.min_successes`",
    ),
    "min_successes above the seats": (
        replace_once("min_successes = 2", "min_successes = 4"),
        "presets.default.min_successes: 4 exceeds the panel's 3 seats",
    ),
    "invalid regex": (
        replace_once('pattern = "\\\\d+', 'pattern = "(\\\\d+'),
        "categories.rules[0].pattern: invalid regex",
    ),
    "rule with neither pattern nor keywords": (
        replace_once('keywords = ["Translate", "in French"]', "keywords = []"),
        "categories.rules[2]: give exactly one of `pattern` or `keywords`",
    ),
    "undefined default preset": (
        replace_once('default_preset = "default"', 'default_preset = "fast"'),
        "default_preset: no preset named 'fast'",
    ),
    # What the planner refuses on every request is refused once, at load, naming the
    # preset: a config error is the operator's to fix, not a 422 blamed on each client.
    "judge fallback the planner does not know": (
        replace_once('fallback = "vote"', 'fallback = "votes"'),
        "presets.default.judge.fallback: 'votes' is not one of vote, first_success, fail",
    ),
    "preset timeout beyond the request cap": (
        replace_once("timeout_s = 60.0", "timeout_s = 900.0"),
        "presets.default.timeout_s: 900 exceeds the limit of 600 seconds",
    ),
    "panel entry beyond the seat limit": (
        replace_once("samples = 2,", "samples = 20,"),
        "presets.default.panel[1].samples: 20 exceeds the limit of 16 seats",
    ),
    "panel beyond the seat limit in total": (
        replace_once("samples = 2,", "samples = 16,"),
        "presets.default.panel: 17 seats exceed the limit of 16",
    ),
    "misspelt panel params": (
        replace_once("params = { temperature = 0.7 }", "params = { temprature = 0.1 }"),
        "unknown field `temprature` - at `$.presets.default.panel[1].params`",
    ),
    "temperature out of range": (
        replace_once("params = { temperature = 0.7 }", "params = { temperature = 7.0 }"),
        "<= 2.0 - at `$.presets.default.panel[1].params.temperature`",
    ),
    "max_tokens below one": (
        replace_once("params = { temperature = 0.7 }", "params = { max_tokens = -5 }"),
        ">= 1 - at `$.presets.default.panel[1].params.max_tokens`",
    ),
    "top_p out of range": (
        replace_once("params = { temperature = 0.7 }", "params = { top_p = 1.5 }"),
        "<= 1.0 - at `$.presets.default.panel[1].params.top_p`",
    ),
    "models without any preset": (
        VALID[: VALID.index("[presets.default]")],
        "default_preset: no preset named 'default' (defined: none)",
    ),
    # TOML puts a key written after [categories] into that table.
    "top-level key after a table": (
        replace_once('default_preset = "default"\n', "") + 'default_preset = "default"\n',
        "unknown field `default_preset` - at `$.categories`",
    ),
}


@pytest.mark.parametrize("text,problem", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_a_bad_file_is_a_config_error_naming_the_file_and_the_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: ")
    assert problem in str(error.value)


def test_every_problem_is_reported_at_once() -> None:
    text = replace_once('panel = ["sim/model-b",', 'panel = ["sim/model-x",').replace(
        'default_preset = "default"', 'default_preset = "fast"'
    )
    with pytest.raises(ConfigError) as error:
        parse_config(text)
    assert "unknown model 'sim/model-x'" in error.value.problem
    assert "no preset named 'fast'" in error.value.problem


def test_a_panel_judge_is_accepted_when_the_preset_allows_it() -> None:
    text = replace_once('model = "sim/judge-strong"', 'model = "sim/model-b"').replace(
        "member_timeout_s = 30.0", "member_timeout_s = 30.0\nallow_panel_judge = true"
    )
    preset = parse_config(text).preset("default")
    assert preset.judge_spec().allow_panel_model is True


def test_the_environment_overrides_a_providers_base_url(tmp_path: Path) -> None:
    environ = {
        "FUSION_LEDGER_PROVIDER_SIM_BASE_URL": "http://10.0.0.5:9000/v1",
        "FUSION_LEDGER_PROVIDER_OPEN_ROUTER_BASE_URL": "https://proxy.internal/or/v1",
        "FUSION_LEDGER_PROVIDER_OTHER_BASE_URL": "http://ignored",
    }
    config = load_config(write(tmp_path, VALID), environ)
    assert config.providers["sim"].base_url == "http://10.0.0.5:9000/v1"
    assert config.providers["open-router"].base_url == "https://proxy.internal/or/v1"
    assert load_config(write(tmp_path, VALID)).providers["sim"].base_url == (
        "http://127.0.0.1:8001/v1"
    )


def test_an_overridden_base_url_is_validated_too() -> None:
    with pytest.raises(ConfigError, match=r"providers\.sim\.base_url: expected an http\(s\) URL"):
        parse_config(VALID, environ={"FUSION_LEDGER_PROVIDER_SIM_BASE_URL": "not a url"})


@pytest.mark.parametrize(
    "text,expected",
    [
        ("What is 12 * 7?", ("arithmetic", "inferred", "regex:\\d+\\s*[-+*/x]\\s*\\d+")),
        ("Pick one: (A) red (B) blue", ("multiple_choice", "inferred", "keywords:(A),(B)")),
        # "all": one of the two keywords is not enough
        ("Pick (A) if you agree", ("general", "default", None)),
        (
            "translate this IN FRENCH please",
            ("translation", "inferred", "keywords:Translate,in French"),
        ),
        ("Who wrote Hamlet?", ("general", "default", None)),
        # rules are tried in order: the first that fires names the category
        ("(A) 3 + 4 (B) 8", ("arithmetic", "inferred", "regex:\\d+\\s*[-+*/x]\\s*\\d+")),
    ],
)
def test_categories_are_inferred_by_the_first_rule_that_fires(
    text: str, expected: tuple[str, str, str | None]
) -> None:
    assert infer_category(parse_config(VALID), text) == expected


def test_without_rules_every_prompt_gets_the_default_category() -> None:
    assert infer_category(Config(), "2 + 2") == ("general", "default", None)


def test_panel_params_within_bounds_are_kept() -> None:
    text = replace_once(
        "params = { temperature = 0.7 }",
        "params = { temperature = 2.0, top_p = 0.0, max_tokens = 1, seed = 7 }",
    )
    entry = parse_config(text).preset("default").panel_entries()[1]
    assert entry.params == GenerationParams(temperature=2.0, top_p=0.0, max_tokens=1, seed=7)


def test_the_limits_are_the_planners() -> None:
    from service.orchestration import planning

    assert parse_config(replace_once("samples = 2,", "samples = 15,"))  # 16 seats: the limit
    assert parse_config(replace_once("timeout_s = 60.0", f"timeout_s = {planning.MAX_TIMEOUT_S}"))


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    """The TOML example in README.md's "Configuration" section, as the README shows it."""
    section = README.read_text().split("## Configuration", 1)[1]
    return section.split("```toml\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_loads() -> None:
    config = parse_config(readme_example())
    assert [e.model for e in config.preset("default").panel_entries()] == [
        "gpt-4o-mini",
        "llama-3.1-70b",
        "qwen-2.5-72b",
    ]
    assert config.model("claude-3.5-haiku").upstream == "anthropic/claude-3.5-haiku"
    assert infer_category(config, "What is 3 + 4?")[0] == "arithmetic"
