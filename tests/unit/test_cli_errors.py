"""The command line's errors are one line and a meaningful exit code, never a
traceback, when no database is needed to show it: a service answering HTML, an API
key to send, a database that cannot be reached, a bad environment setting."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from service.cli import main
from service.settings import Settings
from tests.unit.http_double import local_http

CLI = Path(sys.executable).parent / "fusion-ledger"
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/x"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed command as a user runs it (its own process: the logging set-up of
    `worker` and `rebuild` stays out of this one), 80 columns wide, with no
    FUSION_LEDGER_* or DATABASE_URL setting but those given."""
    command = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "service"]
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FUSION_LEDGER_") and k != "DATABASE_URL"
    }
    return subprocess.run(
        [*command, *args],
        env={**clean, "COLUMNS": "80", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_error_line(stderr: str) -> str:
    """The single line a failed command printed on stderr."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0].removeprefix("error: ")


@dataclass
class FakeService:
    """A local HTTP server that answers every request alike and keeps what it got."""

    url: str
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)


@contextlib.contextmanager
def fake_service(status: int, content_type: str, body: str) -> Iterator[FakeService]:
    service = FakeService("")

    def answer(method: str, path: str, headers: Message, _: bytes) -> tuple[int, str, bytes]:
        service.requests.append((method, path, headers.get("authorization")))
        return status, content_type, body.encode()

    with local_http(answer) as url:
        service.url = url
        yield service


def invoke(*args: str, env: dict[str, str | None] | None = None) -> Result:
    """In this process; FUSION_LEDGER_API_KEY unset unless given."""
    return CliRunner(env={"COLUMNS": "80", "FUSION_LEDGER_API_KEY": None, **(env or {})}).invoke(
        main, list(args)
    )


# --- fuse on a page that is not JSON ------------------------------------------------

NGINX_501 = """<html>
<head><title>501 Not Implemented</title></head>
<body>
<center><h1>501 Not Implemented</h1></center>
<hr><center>nginx [see the docs]</center>
</body>
</html>
"""


def test_fuse_on_an_html_error_page_names_the_status_and_the_page_in_one_line() -> None:
    with fake_service(501, "text/html", NGINX_501) as service:
        result = invoke("fuse", "2+2?", "--url", service.url)
        as_json = invoke("fuse", "2+2?", "--url", service.url, "--json")
    for r in (result, as_json):
        assert r.exit_code == 2, r.output
        assert isinstance(r.exception, SystemExit)  # not a JSONDecodeError
        line = one_error_line(r.stderr)
        assert line.startswith("HTTP 501: <html> <head><title>501 Not Implemented</title>")
        assert "nginx [see the docs]" in line  # the page's text, not read as markup
    assert as_json.stdout == ""


# --- the API key --------------------------------------------------------------------

UNAUTHORIZED = json.dumps({"status": 401, "title": "Unauthorized", "detail": "no API key"})


def test_fuse_and_replay_send_the_api_key_from_the_option_or_the_environment() -> None:
    with fake_service(401, "application/problem+json", UNAUTHORIZED) as service:
        url = ["--url", service.url]
        batch_key: dict[str, str | None] = {"FUSION_LEDGER_API_KEY": "fl_batch"}
        results = [
            invoke("fuse", "2+2?", *url, "--api-key", "fl_option"),
            invoke("fuse", "2+2?", *url, env={"FUSION_LEDGER_API_KEY": "fl_env"}),
            invoke("fuse", "2+2?", *url),
            invoke("replay", "--judge", "vote", "--run", "r1", *url, "--api-key", "fl_one"),
            invoke("replay", "--judge", "vote", "--since", "1d", *url, env=batch_key),
        ]
    assert service.requests == [
        ("POST", "/v1/fusions", "Bearer fl_option"),
        ("POST", "/v1/fusions", "Bearer fl_env"),
        ("POST", "/v1/fusions", None),
        ("POST", "/v1/runs/r1/replays", "Bearer fl_one"),
        # a batch first asks whether the key may read its progress: refused, no batch
        ("GET", "/v1/replays/00000000-0000-4000-8000-000000000000", "Bearer fl_batch"),
    ]
    for r in results:
        assert r.exit_code == 2, r.output
        assert one_error_line(r.stderr) == "Unauthorized: no API key"


def test_fuse_and_replay_document_the_option() -> None:
    for command in ("fuse", "replay"):
        shown = invoke(command, "--help", env={"COLUMNS": "200"})
        assert "--api-key" in shown.stdout and "$FUSION_LEDGER_API_KEY" in shown.stdout


# --- option values that cannot work ------------------------------------------------


def test_bad_option_values_are_refused_before_anything_is_sent() -> None:
    # each was a traceback, and --poll -1 only after the batch was submitted
    with fake_service(202, "application/json", '{"batch_id": "x"}') as service:
        for args, says in (
            (["fuse", "2+2?", "--timeout", "-1"], "--timeout"),
            (["replay", "--judge", "vote", "--poll", "-1"], "--poll"),
            (["replay", "--judge", "vote", "--since", "99999999d"], "beyond any date"),
            (["replay", "--judge", "vote", "--force"], "--force makes a new replay"),
        ):
            done = invoke(*args, "--url", service.url)
            assert done.exit_code == 2, (args, done.output)
            assert says in done.output and "Traceback" not in done.output
        assert service.requests == []


def test_the_banner_shows_a_request_that_works_with_keys_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from types import SimpleNamespace

    from service.cli import _banner

    _banner(SimpleNamespace(simulator_url=None), "http://127.0.0.1:8000", keys=True)
    shown = capsys.readouterr().err
    assert "fusion-ledger keys create" in shown  # serve wants keys: say how to get one
    assert 'authorization: Bearer $FUSION_LEDGER_API_KEY" ' in shown
    _banner(SimpleNamespace(simulator_url=None), "http://127.0.0.1:8000")
    local = capsys.readouterr().err
    assert "authorization" not in local and "warning" not in local  # `up`: keys off


@pytest.mark.parametrize("url", ["http://0.0.0.0:8000", "http://10.1.2.3:80", "http://box:80"])
def test_the_banner_warns_when_keys_are_off_beyond_this_machine(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    from types import SimpleNamespace

    from service.cli import _banner

    _banner(SimpleNamespace(simulator_url=None), url)
    assert "anyone who reaches it" in capsys.readouterr().err
    _banner(SimpleNamespace(simulator_url=None), url, keys=True)
    assert "anyone who reaches it" not in capsys.readouterr().err


# --- a database that cannot be reached ----------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["worker", "--once"],
        ["projections", "rebuild"],
        ["route", "explain", "00000000-0000-4000-8000-000000000001"],
        ["verify"],
        ["keys", "list"],
        ["stats", "failures"],
    ],
    ids=" ".join,
)
def test_an_unreachable_database_is_one_line_and_exit_2(command: list[str]) -> None:
    done = run_cli(*command, env={"FUSION_LEDGER_DATABASE_URL": UNREACHABLE})
    assert done.returncode == 2, done.stderr
    assert one_error_line(done.stderr).startswith("cannot connect to the database: ")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    "command",
    [["verify"], ["stats", "judges"], ["keys", "list"], ["projections", "status"], ["migrate"]],
    ids=" ".join,
)
def test_the_database_url_may_follow_the_command(command: list[str]) -> None:
    # `fusion-ledger verify --database-url …` said "No such option"
    done = run_cli(*command, "--database-url", UNREACHABLE)
    assert done.returncode == 2, done.stderr
    assert one_error_line(done.stderr).startswith("cannot connect to the database: ")


def test_the_projects_own_database_variable_comes_first_as_in_the_settings() -> None:
    both = {
        "FUSION_LEDGER_DATABASE_URL": UNREACHABLE,
        "DATABASE_URL": UNREACHABLE.replace(":1/", ":2/"),
    }
    done = run_cli("stats", "failures", env=both)
    assert done.returncode == 2, done.stderr
    assert "'127.0.0.1', 1)" in one_error_line(done.stderr)  # port 1: FUSION_LEDGER_…


def test_serve_says_what_stops_it_starting_in_one_line() -> None:
    # Each used to print the banner, then a traceback (exit 1 or 3).
    ports = ["--port", str(free_port()), "--simulator-port", str(free_port())]
    unreachable = run_cli("serve", *ports, env={"FUSION_LEDGER_DATABASE_URL": UNREACHABLE})
    assert unreachable.returncode == 2, unreachable.stderr
    assert one_error_line(unreachable.stderr).startswith("cannot connect to the database: ")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for busy, what in ((["--port", port, ports[2], ports[3]], "the API"),
                           ([*ports[:2], "--simulator-port", port], "the simulator")):  # fmt: skip
            done = run_cli("serve", *busy, env={"FUSION_LEDGER_DATABASE_URL": UNREACHABLE})
            assert done.returncode == 2, done.stderr
            line = one_error_line(done.stderr)
            assert line.startswith(f"cannot listen on 127.0.0.1:{port} for {what}"), line
    wrapped = run_cli("serve", "--port", "70000")  # it listened on 70000 - 65536 before
    assert wrapped.returncode == 2 and "70000 is not in the range" in wrapped.stderr


# --- bad settings -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("FUSION_LEDGER_PORT", "80OO", "FUSION_LEDGER_PORT: not an integer ('80OO')"),
        ("FUSION_LEDGER_PORT", "70000", "FUSION_LEDGER_PORT: must be from 1 to 65535 ('70000')"),
        ("FUSION_LEDGER_POOL_SIZE", "ten", "FUSION_LEDGER_POOL_SIZE: not an integer ('ten')"),
        ("FUSION_LEDGER_POOL_SIZE", "3", "FUSION_LEDGER_POOL_SIZE: must be at least 4 ('3')"),
        (
            "FUSION_LEDGER_MAX_OPEN_RUNS",
            "-1",
            "FUSION_LEDGER_MAX_OPEN_RUNS: must be at least 0 ('-1')",
        ),
        (
            "FUSION_LEDGER_LOG_LEVEL",
            "verbose",
            "FUSION_LEDGER_LOG_LEVEL: must be one of debug, info, warning, error, critical "
            "('verbose')",
        ),
    ],
)
def test_a_bad_setting_is_named_with_its_value(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:  # a SettingsError
        Settings.from_env({name: value})
    assert str(raised.value) == message


def test_settings_that_are_fine_stay_fine() -> None:
    settings = Settings.from_env(
        {"FUSION_LEDGER_LOG_LEVEL": "WARNING", "FUSION_LEDGER_PORT": " 9000 "}
    )
    assert settings.log_level == "warning" and settings.port == 9000
    assert Settings.from_env({"FUSION_LEDGER_PORT": ""}).port == 8000  # empty: the default
    small = Settings.from_env({"FUSION_LEDGER_POOL_SIZE": "4"})
    assert (small.pool_min_size, small.pool_max_size) == (2, 4)


@pytest.mark.parametrize(
    ("env", "command", "message"),
    [
        ({"FUSION_LEDGER_PORT": "80OO"}, ["fuse", "hi"], "FUSION_LEDGER_PORT: not an integer"),
        (
            {"FUSION_LEDGER_LOG_LEVEL": "verbose", "FUSION_LEDGER_DATABASE_URL": UNREACHABLE},
            ["worker", "--once"],
            "FUSION_LEDGER_LOG_LEVEL: must be one of",
        ),
        # `up` would have run with keys off: its default, and "yes" was not "on" (the
        # database is given so that `up` starts no embedded one if this ever regresses)
        (
            {"FUSION_LEDGER_AUTH": "yes", "DATABASE_URL": UNREACHABLE},
            ["up"],
            "FUSION_LEDGER_AUTH: must be on or off",
        ),
        (
            {"FUSION_LEDGER_LOG_FORMAT": "consol", "FUSION_LEDGER_DATABASE_URL": UNREACHABLE},
            ["serve"],
            "FUSION_LEDGER_LOG_FORMAT: must be one of auto, json, console ('consol')",
        ),
    ],
    ids=["port", "log-level", "auth-up", "log-format"],
)
def test_a_bad_setting_stops_every_command_with_one_line(
    env: dict[str, str], command: list[str], message: str
) -> None:
    done = run_cli(*command, env=env)
    assert done.returncode == 2, done.stderr
    assert one_error_line(done.stderr).startswith(message)


# --- a provider key that is not there -----------------------------------------------

KEYED_CONFIG = """
[providers.keyed]
base_url = "http://keyed.test/v1"
api_key_env = "FUSION_LEDGER_TEST_PROVIDER_KEY"
[models.a]
provider = "keyed"
[presets.default]
panel = ["a"]
judge = { kind = "vote" }
"""


@pytest.mark.parametrize(
    ("command", "env"),
    [
        (["serve"], {"FUSION_LEDGER_DATABASE_URL": UNREACHABLE}),
        (["up"], {"DATABASE_URL": UNREACHABLE}),
        (
            ["serve"],
            {"FUSION_LEDGER_DATABASE_URL": UNREACHABLE, "FUSION_LEDGER_TEST_PROVIDER_KEY": ""},
        ),
    ],
    ids=["serve", "up", "serve-empty-key"],
)
def test_a_provider_key_variable_that_is_unset_stops_the_start(
    tmp_path: Path, command: list[str], env: dict[str, str]
) -> None:
    """Settings copy the environment once: every call would fail until a restart."""
    path = tmp_path / "keyed.toml"
    path.write_text(KEYED_CONFIG)
    done = run_cli(*command, "--config", str(path), env=env)  # FUSION_LEDGER_* unset
    assert done.returncode == 2, done.stderr
    assert one_error_line(done.stderr) == (
        "provider 'keyed': api_key_env FUSION_LEDGER_TEST_PROVIDER_KEY is not set in the "
        "environment"
    )


def test_a_provider_key_that_is_set_and_the_simulator_without_keys_start() -> None:
    from service.cli import _check_provider_keys
    from service.config import Config, parse_config

    keyed = parse_config(KEYED_CONFIG)
    _check_provider_keys(Settings(environ={"FUSION_LEDGER_TEST_PROVIDER_KEY": "k"}), keyed)
    _check_provider_keys(Settings(environ={}), Config())  # no provider: the simulator
    with pytest.raises(SystemExit):
        _check_provider_keys(Settings(environ={}), keyed)


def test_not_answered_in_time_is_not_unreachable(tmp_path: Path) -> None:
    # A fuse with --timeout 0.01 said "cannot reach the service" of a service that had
    # received the request (its run goes on); eval took --timeout 0 and then said so.
    import httpx

    from service.cli_http import unanswered

    late = unanswered("http://h:1", httpx.ReadTimeout("timed out"))
    assert "did not answer within the timeout" in late and "goes on there" in late
    assert "cannot reach" in unanswered("http://h:1", httpx.ConnectError("refused"))
    dataset = tmp_path / "d.jsonl"
    dataset.write_text('{"prompt": "2+2?", "category": "arithmetic", "expected": "4"}\n')
    refused = invoke("eval", str(dataset), "--timeout", "0")
    assert refused.exit_code == 2 and "--timeout" in refused.output


def test_ctrl_c_while_fuse_waits_says_what_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    # It printed click's "Aborted!" with exit 1.
    import httpx

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(httpx, "post", interrupted)
    done = invoke("fuse", "2+2?", "--url", "http://127.0.0.1:9")
    assert done.exit_code == 130 and "goes on there" in done.output, done.output
