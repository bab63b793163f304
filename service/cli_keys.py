"""`fusion-ledger keys`: create, list and revoke API keys."""

from __future__ import annotations

from typing import Any

import click

from service.auth import SCOPES, InvalidKeyRequest, create_key, revoke_key
from service.cli import _database_url, _emit_json, _run, _with_connection, database_url_option
from service.cli_output import DataTable, console, fail, id_column


@click.group("keys")
def keys_group() -> None:
    """Manage API keys (only a hash of each key is stored)."""


@keys_group.command("create")
@database_url_option
@click.option("--tenant", required=True, help="The tenant whose data the key may touch.")
@click.option(
    "--scopes",
    default="fuse,read",
    show_default=True,
    help=f"Comma-separated: {', '.join(SCOPES)}.",
)
@click.option("--name", default="", help="A label for people.")
@click.option(
    "--rate",
    type=click.IntRange(min=1),
    default=600,
    show_default=True,
    help="Requests per minute, counted by each API process (replicas each allow it).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def create_command(
    ctx: click.Context, tenant: str, scopes: str, name: str, rate: int, as_json: bool
) -> None:
    """Create a key; it is printed once and cannot be shown again."""
    wanted = [s.strip() for s in scopes.split(",") if s.strip()]

    async def work(conn: Any) -> tuple[str, str]:
        return await create_key(conn, tenant, wanted, name, rate)

    try:
        key_id, key = _run(_with_connection(_database_url(ctx), work))
    except InvalidKeyRequest as exc:
        fail(str(exc))
    if as_json:
        _emit_json({"key_id": key_id, "key": key, "tenant": tenant, "scopes": wanted})
    else:
        console.print(f"key {key_id} for tenant {tenant} ({', '.join(wanted)}):")
        console.print(key, soft_wrap=True)
        console.print("[yellow]store it now: it is not kept and cannot be shown again[/yellow]")


@keys_group.command("revoke")
@database_url_option
@click.argument("key_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def revoke_command(ctx: click.Context, key_id: str, as_json: bool) -> None:
    """Revoke a key. Running API processes refuse it within 5 s (each remembers a
    verified key that long)."""
    done = _run(_with_connection(_database_url(ctx), lambda conn: revoke_key(conn, key_id)))
    if as_json:
        _emit_json({"key_id": key_id, "revoked": done})
    elif done:
        console.print(f"revoked {key_id}")
    if not done:
        fail(f"no active key {key_id}")


@keys_group.command("list")
@database_url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_command(ctx: click.Context, as_json: bool) -> None:
    """Every key, with its tenant, scopes and state (never the secret)."""
    from service.auth import LIST_KEYS_SQL

    rows = _run(_with_connection(_database_url(ctx), lambda conn: conn.fetch(LIST_KEYS_SQL)))
    items = [
        {
            "key_id": r["key_id"],
            "tenant": r["tenant"],
            "name": r["name"],
            "scopes": list(r["scopes"]),
            "rate_per_minute": r["rate_per_minute"],
            "created_at": r["created_at"].isoformat(),
            "revoked_at": r["revoked_at"].isoformat() if r["revoked_at"] else None,
        }
        for r in rows
    ]
    if as_json:
        _emit_json(items)
        return
    ids = [i["key_id"] for i in items]
    table = DataTable(
        id_column("key id", ids), "tenant", "name", "scopes", "rate/min", "created", "revoked"
    )
    for i in items:
        table.add_row(
            i["key_id"],
            i["tenant"],
            i["name"],
            ",".join(i["scopes"]),
            str(i["rate_per_minute"]),
            i["created_at"][:19],
            (i["revoked_at"] or "")[:19],
        )
    console.print(table)
