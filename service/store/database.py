"""Opening connections and pools, with the jsonb codec the store relies on.

The pool does not reset a session when a connection comes back (asyncpg's default
sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on every
release: a second round trip per query, and about half the client CPU of a short
one). Nothing on the request path changes session state: transactions end before
release (and asyncpg rolls back any that did not), settings are ``SET LOCAL``. The
few places that LISTEN, take session advisory locks or ``SET`` borrow their
connection through ``stateful``, which resets it in full before giving it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

log = structlog.get_logger("database")

T = TypeVar("T")

# A plain connection or one borrowed from the pool.
Connection = asyncpg.Connection | PoolConnectionProxy
# The connection went away under a statement: the server ended the session (a killed
# backend, a restart, a failover), the network reset it, or the server could not take
# a new one yet (connection_lost adds the cases an exception class alone cannot tell).
CONNECTION_LOST = (
    ConnectionError,  # reset, refused, aborted (not TimeoutError: a slow server is not gone)
    socket.gaierror,  # the server's name did not resolve (a DNS restart, a failover)
    asyncpg.PostgresConnectionError,  # 08xxx: ConnectionDoesNotExistError, ...
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
)
# No route to the server: plain OSErrors, told apart by their errno.
_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN}


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached, or the connection went
    away under a statement (see CONNECTION_LOST). asyncpg raises InternalClientError
    ("cannot switch to state ...") for a pooled connection whose server said goodbye
    while it sat idle, before the socket's close was read (the statement was never
    sent); it counts only with such messages about a connection's state: any other is
    a bug, not an outage."""
    if isinstance(exc, asyncpg.InternalClientError):
        return "state" in str(exc)
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE:
        return True
    return isinstance(exc, CONNECTION_LOST)


# The database went away or refused: what background loops retry (a bug is not).
# InternalClientError too (see connection_lost): without it, a loop that retries only
# these (the router's) would end for good at the first stale pooled connection.
DATABASE_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
# Pauses before each new attempt of a statement whose connection was lost: a killed
# session costs one short pause (the pool connects afresh), a restart or failover of a
# second or so is ridden out; a longer outage is the caller's error after ~1.3 s.
RETRY_PAUSES_S = (0.05, 0.25, 1.0)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb stays text both ways: the store encodes with msgspec, and verify needs
    # jsonb's own text form byte for byte.
    await conn.set_type_codec(
        "jsonb", encoder=lambda s: s, decoder=lambda s: s, schema="pg_catalog", format="text"
    )


async def connect(dsn: str) -> asyncpg.Connection:
    """One connection (CLI commands, migrations)."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


async def create_pool(dsn: str, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    """The process's one pool."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, reset=_keep_session
    )
    assert pool is not None
    return pool


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing beyond asyncpg's own rollback of an open
    transaction (see the module docstring)."""


@contextlib.asynccontextmanager
async def stateful(pool: asyncpg.Pool) -> AsyncIterator[PoolConnectionProxy]:
    """A pooled connection for code that changes its session (LISTEN, advisory locks,
    SET): reset in full before it goes back; closed instead if that fails, so a
    session that may still hold a lock never returns to the pool."""
    async with pool.acquire() as conn:
        try:
            yield conn
        finally:
            try:
                await conn.reset()  # asyncpg's own: rollback, then the full reset query
            except BaseException as exc:
                # What the block did (or raised, a cancellation too) stands; the session goes.
                was_open = _terminate(conn)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                if was_open:
                    log.warning("database.reset_failed", error=repr(exc))


def _terminate(conn: PoolConnectionProxy) -> bool:
    """Close the session now; False when it was closed already. asyncpg gives a
    connection the server closed back to the pool at once, and its proxy then refuses
    every call, terminate() included: that refusal must not replace what the block
    raised, nor swallow a cancellation (a stopping service then waited for a loop that
    carried on)."""
    try:
        conn.terminate()
    except asyncpg.InterfaceError:
        return False
    return True


async def again_if_lost(work: Callable[[], Awaitable[T]], what: str) -> T:
    """``work()``, one statement on the pool, sent again on a fresh connection when the
    connection was lost under it (CONNECTION_LOST), up to len(RETRY_PAUSES_S) times.

    Only for statements that are safe to repeat: reads, and appends (re-sent event ids
    return the original result). A lost connection does not say whether a statement
    committed; sent again, an append that did is found rather than reported failed.
    """
    for pause in RETRY_PAUSES_S:
        try:
            return await work()
        except Exception as exc:
            if not connection_lost(exc):
                raise
            log.warning("database.connection_lost", statement=what, retry_in_s=pause,
                        error=f"{type(exc).__name__}: {exc}")  # fmt: skip
        await asyncio.sleep(pause)
    return await work()


async def keep_running(
    pool: asyncpg.Pool,
    work: Callable[[], Awaitable[object]],
    *,
    pause_s: float,
    failure: str,
    retry_on: tuple[type[Exception], ...] = (Exception,),
) -> None:
    """A background loop: ``work()`` again and again, ``pause_s`` apart, until
    cancelled or until ``pool`` closes.

    A failure (one of ``retry_on``) is logged as ``failure`` and costs a pause, not
    the loop; once the pool is closing, a failure ends the loop quietly (shutdown:
    even when the cancellation that should have ended it was lost on the way).
    """
    while True:
        try:
            await work()
        except retry_on as exc:
            if pool.is_closing():
                return
            log.warning(failure, error=f"{type(exc).__name__}: {exc}", retry_in_s=pause_s,
                        exc_info=True)  # fmt: skip
        await asyncio.sleep(pause_s)
