"""What the commands that talk to a running service share (``fuse``, ``replay``,
``eval``): the ``--api-key`` option, the header it becomes, and the one-line error
for an answer that is not what was asked for."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click
import httpx

from service.cli_output import fail

F = TypeVar("F", bound=Callable[..., Any])


def api_key_option(scopes: str) -> Callable[[F], F]:
    """``--api-key`` (or ``$FUSION_LEDGER_API_KEY``); ``scopes`` says which the
    command needs, e.g. "the fuse scope"."""
    return click.option(
        "--api-key",
        envvar="FUSION_LEDGER_API_KEY",
        default=None,
        help=f"An API key with {scopes} (or $FUSION_LEDGER_API_KEY).",
    )


def unanswered(url: str, exc: httpx.HTTPError) -> str:
    """What went wrong on the way to the service, in one line: not reached at all, or
    reached and not answered in time (what it received, it still does)."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return f"cannot reach the service at {url}: {exc!r}"
    if isinstance(exc, httpx.TimeoutException):
        return (
            f"the service at {url} did not answer within the timeout ({type(exc).__name__}); "
            "what it received goes on there (GET /v1/runs lists runs; --timeout waits longer)"
        )
    return f"the connection to the service at {url} failed: {exc!r}"


def bearer(api_key: str | None) -> dict[str, str]:
    """The ``Authorization`` header for the key; none without one."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def fail_response(response: httpx.Response) -> NoReturn:
    """Exit 2 with the service's problem (title: detail), or, when the answer is not
    JSON (an HTML page from a proxy, say), its status and the start of its text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        fail(f"{body.get('title', response.status_code)}: {body.get('detail', response.text)}")
    fail(f"HTTP {response.status_code}: {' '.join(response.text.split())[:300]}")


# Requests the service answers 404 for, writing nothing, once a key passes: asked first,
# they tell a key without the scope apart before any paid work starts (a batch of
# replays submitted, then not followable; fusions run, then not gradable).
def scope_probe(scope: str) -> tuple[str, str, dict[str, Any] | None]:
    """(method, path, body) of a request that needs ``scope`` and changes nothing."""
    nobody = "00000000-0000-4000-8000-000000000000"
    if scope == "read":
        return "GET", f"/v1/replays/{nobody}", None
    if scope == "label":
        return "POST", f"/v1/runs/{nobody}/outcomes", {"expected": "-", "source": "dataset"}
    raise ValueError(f"no probe for the {scope!r} scope")


def refused_scope(response: httpx.Response) -> bool:
    """The probe's answer says the key may not (401, 403), rather than 'no such thing'."""
    return response.status_code in (401, 403)
