"""The ``fusion-ledger`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import signal
import socket
import sys
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import asyncpg
import click
import msgspec
from rich.console import Console

from service.cli_http import api_key_option, bearer, fail_response, unanswered
from service.cli_output import DataTable, console, err_console, fail, inline, shown
from service.settings import Settings, SettingsError, switch
from service.store import database
from service.store.migrations import MigrationError, migrate
from service.store.verify import Digest, check_digest, take_digest, verify_chains

if TYPE_CHECKING:
    from service.config import Config

T = TypeVar("T")

NOT_MIGRATED = "the database is not migrated: run `fusion-ledger migrate`"


def _run(coro: Awaitable[T], *, needs_schema: bool = True) -> T:
    """Run a command's database work. What the database refuses is one line and exit 2,
    for every command (never exit 1, which `verify` and `digest` keep for tampering):
    a database without the schema it reads (never migrated, or by an older release),
    a role without the grants the command needs, a connection lost midway. Connection
    failures are caught where connections open (`_connected`)."""
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except asyncpg.PostgresError as exc:
        if not needs_schema:
            raise  # the caller says what it means (migrate)
        if isinstance(exc, asyncpg.UndefinedTableError):
            fail(NOT_MIGRATED)
        if isinstance(exc, asyncpg.InsufficientPrivilegeError):
            fail(f"the database refused: {exc} (this role lacks the grants the command "
                 "needs; see ops/runbook.md, database roles)")  # fmt: skip
        fail(f"the database refused: {exc}")
    except (asyncpg.InterfaceError, ConnectionError) as exc:
        fail(f"lost the database: {exc}")


def _emit_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


def _database_url(ctx: click.Context) -> str:
    settings: Settings = ctx.obj["settings"]
    url = ctx.obj["database_url"] or settings.database_url or running_embedded(settings.data_dir)
    if not url:
        fail(
            "no database given: set DATABASE_URL or pass --database-url (or run "
            "`fusion-ledger up`, whose embedded Postgres the commands then find)"
        )
    return str(url)


def running_embedded(data_dir: Path) -> str | None:
    """The URL of the embedded Postgres that `up` runs in data_dir, while it runs: read
    from its postmaster.pid (port, socket directory), so the other commands need no
    --database-url beside `up`."""
    try:
        lines = (data_dir / "postgres" / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    if len(lines) < 5 or not lines[3].strip().isdigit() or not lines[4].strip():
        return None
    query = urllib.parse.urlencode({"host": lines[4].strip(), "port": lines[3].strip()})
    return f"postgresql://postgres:@/postgres?{query}"


async def _connected(opening: Awaitable[T]) -> T:
    """A connection or pool being opened; any failure is one line and exit 2."""
    try:
        return await opening
    except Exception as exc:  # asyncpg raises many kinds on connect (OSError among them)
        fail(f"cannot connect to the database: {exc}")


async def _open_pool(url: str, min_size: int, max_size: int) -> asyncpg.Pool:
    """A pool for a command (close it when done)."""
    return await _connected(database.create_pool(url, min_size, max_size))


async def _with_connection(url: str, work: Callable[[Any], Awaitable[T]]) -> T:
    conn = await _connected(database.connect(url))
    try:
        return await work(conn)
    finally:
        await conn.close()


def _set_database_url(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    if value is not None:  # the group's context shares this dict with its commands
        ctx.ensure_object(dict)["database_url"] = value


# The same option after the command (`fusion-ledger verify --database-url …`), where
# people put it too; the group's own option, before the command, also reads the
# environment.
database_url_option = click.option(
    "--database-url",
    default=None,
    expose_value=False,
    callback=_set_database_url,
    help="Postgres URL (as before the command; default: the environment's).",
)


@click.group()
@click.option(
    "--database-url",
    # The settings' order: the project's own variable first.
    envvar=["FUSION_LEDGER_DATABASE_URL", "DATABASE_URL"],
    default=None,
    help="Postgres URL (default: $FUSION_LEDGER_DATABASE_URL, else $DATABASE_URL).",
)
@click.pass_context
def main(ctx: click.Context, database_url: str | None) -> None:
    """Fusion Ledger: auditable LLM fusion on an immutable Postgres event log."""
    ctx.ensure_object(dict)
    try:
        ctx.obj["settings"] = Settings.from_env()
    except SettingsError as exc:
        fail(str(exc))
    ctx.obj["database_url"] = database_url


@main.command("migrate")
@database_url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def migrate_command(ctx: click.Context, as_json: bool) -> None:
    """Apply pending schema migrations (safe to run twice or concurrently)."""
    url = _database_url(ctx)
    try:
        applied = _run(_with_connection(url, migrate), needs_schema=False)  # it makes it
    except (MigrationError, asyncpg.PostgresError) as exc:
        _migration_failed(exc)
    if as_json:
        _emit_json({"applied": applied})
    elif applied:
        for name in applied:
            console.print(f"applied {name}")
    else:
        console.print("database is up to date")


@main.command("verify")
@database_url_option
@click.option(
    "--digest",
    "digest_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also prove the log still extends this saved digest.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def verify_command(ctx: click.Context, digest_file: Path | None, as_json: bool) -> None:
    """Recompute every stream's hash chain; exit 1 when anything was tampered with."""
    url = _database_url(ctx)
    digest = None
    if digest_file is not None:
        try:
            digest = msgspec.json.decode(digest_file.read_bytes(), type=Digest)
        except msgspec.DecodeError as exc:
            fail(f"{digest_file} is not a fusion-ledger digest: {exc}")

    async def work(conn: Any) -> tuple[Any, Any]:
        with console.status("verifying hash chains…") if not as_json else _nothing():
            report = await verify_chains(conn)
        check = await check_digest(conn, digest) if digest is not None else None
        return report, check

    report, check = _run(_with_connection(url, work))
    ok = report.ok and (check is None or check.ok)
    if as_json:
        _emit_json(
            {
                "ok": ok,
                "events": report.events,
                "streams": report.streams,
                "problems": [
                    p.__dict__ if hasattr(p, "__dict__") else _problem(p) for p in report.problems
                ],
                "digest": None
                if check is None
                else {"ok": check.ok, "message": check.message, "events_now": check.events_now},
            }
        )
    else:
        console.print(f"checked {report.events} events in {report.streams} streams")
        # A line a problem, not a table: the ids are long and the reason longer, and a
        # table at 80 columns (a CI log, a pipe) squeezed the reason to nothing.
        for p in report.problems:
            where = f"{p.stream_id} v{p.stream_version or '-'} position {p.global_position or '-'}"
            event = f" event {p.event_id}" if p.event_id else ""
            console.print(shown(f"{where}{event}: {p.reason}"), soft_wrap=True)
        if check is not None:
            console.print(("[green]" if check.ok else "[red]") + inline(check.message))
        console.print("[green]OK[/green]" if ok else "[red]TAMPERED[/red]")
    raise SystemExit(0 if ok else 1)


def _problem(p: Any) -> dict[str, Any]:
    return {
        "stream_id": p.stream_id,
        "stream_version": p.stream_version,
        "global_position": p.global_position,
        "event_id": p.event_id,
        "reason": p.reason,
    }


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


@main.command("digest")
@database_url_option
@click.option(
    "--position",
    type=click.IntRange(min=1),
    default=None,
    help="Only events up to this global position.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the digest to this file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the digest itself).")
@click.pass_context
def digest_command(
    ctx: click.Context, position: int | None, output: Path | None, as_json: bool
) -> None:
    """Print a digest (checkpoint and root hash) of the log, to keep elsewhere."""
    url = _database_url(ctx)
    digest = _run(_with_connection(url, lambda conn: take_digest(conn, position)))
    encoded = msgspec.json.encode(digest)
    if output is not None:
        try:
            output.write_bytes(encoded + b"\n")
        except OSError as exc:
            fail(f"cannot write the digest to {output}: {exc.strerror or exc}")
    if as_json or (output is None and not sys.stdout.isatty()):
        sys.stdout.write(encoded.decode() + "\n")
    else:
        console.print(
            f"events {digest.events} in {digest.streams} streams, up to position "
            f"{digest.global_position} (transaction {digest.transaction_id})"
        )
        console.print(f"root {digest.root}")
        if output is not None:
            console.print(f"written to {output}")


def _banner(running: Any, url: str, *, keys: bool = False) -> None:
    out = Console(stderr=True, soft_wrap=True)  # no wrapping: lines stay copy-pasteable
    if running.simulator_url:
        out.print(
            f"[yellow]no provider configured:[/yellow] using the built-in simulator "
            f"(a test double of remote model providers) at {running.simulator_url}"
        )
    out.print(f"Fusion Ledger listening on [bold]{url}[/bold]  (OpenAPI: {url}/schema)")
    key = ""
    if keys:  # else the example below gets a 401
        out.print(
            "API keys are required: `fusion-ledger keys create --tenant default --scopes "
            "fuse,read,label` prints one; export FUSION_LEDGER_API_KEY=<that key>"
        )
        key = '-H "authorization: Bearer $FUSION_LEDGER_API_KEY" '
    elif not _loopback(url):
        out.print(
            "[yellow]warning:[/yellow] API keys are off and the API listens beyond this "
            "machine: anyone who reaches it can run (paid) fusions and read every run; "
            "set FUSION_LEDGER_AUTH=on"
        )
    out.print(
        "try:  curl -s " + url + "/v1/fusions " + key + "-H 'content-type: application/json' "
        '-d \'{"prompt": "What is 17 + 25 * 2? Reply with the number."}\''
    )


def _loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve anywhere
        return False


PORT = click.IntRange(1, 65535)


@main.command("serve")
@database_url_option
@click.option(
    "--host",
    default=None,
    help="Interface to listen on (default $FUSION_LEDGER_HOST, else 127.0.0.1).",
)
@click.option(
    "--port", type=PORT, default=None, help="Port (default $FUSION_LEDGER_PORT, else 8000)."
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="TOML configuration (or FUSION_LEDGER_CONFIG).",
)
@click.option(
    "--simulator-port",
    type=PORT,
    default=8001,
    show_default=True,
    help="Port of the built-in simulator, when no provider is configured.",
)
@click.pass_context
def serve_command(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    config_path: Path | None,
    simulator_port: int,
) -> None:
    """Run the HTTP API (and the simulator beside it when no provider is configured).

    API keys are required unless FUSION_LEDGER_AUTH=off; migrates a database with
    pending migrations; runs the projection worker unless FUSION_LEDGER_PROJECTIONS=off."""
    settings = ctx.obj["settings"].with_overrides(database_url=ctx.obj["database_url"])
    _serve(settings, config_path, host, port, simulator_port)


def _serve(
    settings: Settings,
    config_path: Path | None,
    host: str | None,
    port: int | None,
    simulator_port: int,
) -> None:
    from service.config import ConfigError
    from service.logging import configure_logging
    from service.serving import SIMULATOR_HOST, read_config, run_server, serve

    configure_logging(settings.log_format, settings.log_level)
    if not settings.database_url:
        fail(
            "no database given: set DATABASE_URL or pass --database-url "
            "(or use `fusion-ledger up` for an embedded one)"
        )
    try:
        config = read_config(settings, config_path)
    except ConfigError as exc:
        fail(str(exc))
    _check_provider_keys(settings, config)
    host = host or settings.host
    port = port if port is not None else settings.port
    # What would otherwise surface as a traceback once the server is starting (and
    # after its banner): a port taken, a database out of reach or not migrated.
    _check_port(host, port, "the API")
    if not config.providers:
        _check_port(SIMULATOR_HOST, simulator_port, "the simulator (--simulator-port)")
    _run(_with_connection(settings.database_url, _migrated_or_fail), needs_schema=False)
    with contextlib.suppress(KeyboardInterrupt):
        run_server(
            serve(
                settings,
                config,
                host=host,
                port=port,
                simulator_port=simulator_port,
                announce=functools.partial(_banner, keys=settings.auth_required),
            )
        )


def _check_port(host: str, port: int, what: str) -> None:
    """One line and exit 2 unless the server could listen there now."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind(address)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port} for {what}: {exc.strerror or exc}")


async def _migrated_or_fail(conn: Any) -> None:
    """Migrate when a migration is pending (as the server's start does), or say why not."""
    try:
        await migrate(conn, newer_ok=True)
    except (MigrationError, asyncpg.PostgresError) as exc:
        _migration_failed(exc)


def _migration_failed(exc: Exception) -> NoReturn:
    """One line for a migration that did not happen (migrate, and serve's start)."""
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        fail(
            f"the database is not migrated and this role cannot migrate it ({exc}): "
            "run `fusion-ledger migrate` as the schema's owner"
        )
    if isinstance(exc, MigrationError):  # e.g. the database is a newer release's
        fail(str(exc))
    fail(f"migration failed: {exc}")


def _check_provider_keys(settings: Settings, config: Config) -> None:
    """Refuse to start with a provider whose key variable is unset: the settings hold
    the environment as it was at start, so every call to it would fail until a restart
    (and /readyz would not say so)."""
    missing = [
        f"provider {name!r}: api_key_env {provider.api_key_env} is not set in the environment"
        for name, provider in config.providers.items()
        if provider.api_key_env and not settings.secret(provider.api_key_env)
    ]
    if missing:
        fail("; ".join(missing))


@main.command("up")
@database_url_option
@click.option(
    "--host",
    default=None,
    help="Interface to listen on (default $FUSION_LEDGER_HOST, else 127.0.0.1).",
)
@click.option(
    "--port", type=PORT, default=None, help="Port (default $FUSION_LEDGER_PORT, else 8000)."
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="TOML configuration (or FUSION_LEDGER_CONFIG).",
)
@click.option(
    "--simulator-port",
    type=PORT,
    default=8001,
    show_default=True,
    help="Port of the built-in simulator, when no provider is configured.",
)
@click.pass_context
def up_command(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    config_path: Path | None,
    simulator_port: int,
) -> None:
    """Everything on one machine: embedded Postgres (kept in .fusion-ledger/, or
    $FUSION_LEDGER_DATA_DIR) unless a database URL is given, the simulator unless
    providers are configured, the API and the projection worker. API keys are off
    unless FUSION_LEDGER_AUTH=on."""
    from service.serving import embedded_postgres

    settings: Settings = ctx.obj["settings"].with_overrides(database_url=ctx.obj["database_url"])
    # One machine, one user: keys are off unless asked for (FUSION_LEDGER_AUTH=on).
    # Settings.from_env has refused a value that is neither on nor off.
    wanted = switch(settings.environ or {}, "FUSION_LEDGER_AUTH", default=False)
    settings = replace(settings, auth_required=wanted)
    if settings.database_url:
        _serve(settings, config_path, host, port, simulator_port)
        return
    err_console.print(f"starting the embedded Postgres in {settings.data_dir / 'postgres'} …")
    # Stopped by SIGTERM (a service manager, `kill`), the server shuts down and then
    # re-raises the signal, whose default action ended the process before the embedded
    # Postgres was stopped: as Ctrl-C does, it now unwinds and stops it.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with embedded_postgres(settings.data_dir) as url:
            err_console.print(
                f"embedded Postgres: {url} (while `up` runs, the other commands started "
                "in this folder find it without DATABASE_URL)",
                soft_wrap=True,
                markup=False,
            )
            _serve(
                settings.with_overrides(database_url=url), config_path, host, port, simulator_port
            )
    except RuntimeError as exc:
        fail(str(exc))


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


@main.command("fuse")
@click.argument("prompt")
@click.option(
    "--url",
    envvar="FUSION_LEDGER_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="The service's base URL.",
)
@click.option("--preset", default=None)
@click.option("--panel", default=None, help="Comma-separated model ids.")
@click.option("--judge", default=None, help="vote, or KIND:MODEL (synthesize:sim/judge-strong).")
@click.option("--category", default=None)
@api_key_option("the fuse scope")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=120.0,
              show_default=True, help="Seconds to wait for the answer.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the full JSON answer.")
def fuse_command(
    prompt: str,
    url: str,
    preset: str | None,
    panel: str | None,
    judge: str | None,
    category: str | None,
    api_key: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Run one fusion through a running service; print the answer and the panel."""
    import httpx

    body: dict[str, Any] = {"prompt": prompt}
    if preset:
        body["preset"] = preset
    if panel:
        body["panel"] = [p.strip() for p in panel.split(",") if p.strip()]
    if category:
        body["category"] = category
    if judge:
        kind, _, model = judge.partition(":")
        body["judge"] = {"kind": kind, **({"model": model} if model else {})}
    try:
        response = httpx.post(
            f"{url.rstrip('/')}/v1/fusions", json=body, headers=bearer(api_key), timeout=timeout
        )
    except httpx.HTTPError as exc:
        fail(unanswered(url, exc))
    except KeyboardInterrupt:  # click's own "Aborted!" said nothing of the run
        fail("interrupted; a run the service received goes on there (GET /v1/runs)", 130)
    try:
        result = response.json()
    except ValueError:
        result = None
    if not isinstance(result, dict):  # not the service's JSON: an HTML error page, say
        fail_response(response)
    if as_json:
        _emit_json(result)
        # As without --json: 1 for a run that failed, 2 for a request refused (no run).
        raise SystemExit(0 if response.is_success else 1 if "run_id" in result else 2)
    if "run_id" not in result:
        fail_response(response)
    answer = result.get("answer")
    failed = f"[red]run failed: {inline(result.get('failure_reason'))}"
    console.print(shown(answer) if answer else failed)
    table = DataTable("member", "model", "status", "error", "latency ms", "cost $")
    for m in result["members"]:
        table.add_row(
            m["member_id"],
            m["model"],
            m["status"],
            m["error_kind"] or "",
            f"{m['latency_ms'] or 0:.0f}",
            f"{m['cost_usd']:.6f}",
        )
    console.print(table)
    judge_view = result.get("judge") or {}
    judged = (
        f"judge {judge_view.get('kind')} {judge_view.get('model') or ''} "
        f"({judge_view.get('decided_by')})  "
        if judge_view.get("kind")
        else "no judge  "  # the run ended before one was asked
    )
    console.print(
        f"{judged}run {result['run_id']}  "
        f"cost ${result['cost_usd']:.6f}  latency {result['latency_ms'] or 0:.0f} ms"
    )
    raise SystemExit(0 if response.is_success else 1)


def _register_commands() -> None:
    from service.cli_eval import eval_command
    from service.cli_keys import keys_group
    from service.cli_replay import replay_command
    from service.cli_route import route_group
    from service.cli_stats import COMMANDS as STATS_COMMANDS
    from service.providers.simulator.command import simulate_command

    main.add_command(simulate_command)
    main.add_command(replay_command)
    main.add_command(keys_group)
    main.add_command(route_group)
    main.add_command(eval_command)
    for command in STATS_COMMANDS:
        main.add_command(command)


_register_commands()

if __name__ == "__main__":
    main()
