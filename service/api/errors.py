"""RFC 9457 problem details for every error the API returns."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec
import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec

from service.domain.scoring import UnknownNormalizer
from service.store.database import CONNECTION_LOST, connection_lost

PROBLEM_JSON = "application/problem+json"
log = structlog.get_logger("api")


class Problem(HTTPException):
    """An error answered as problem details; ``extra`` fields are added to the body."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.title = title
        self.fields = extra


# The OpenAI-compatible routes: the official clients show an error's `error.message`
# (and read its type, code and param), not problem details' `detail`.
OPENAI_PATHS = ("/v1/chat/completions", "/v1/models")


class ProblemBody(msgspec.Struct, kw_only=True):
    """An error answer (RFC 9457 problem details), for the OpenAPI document. Some add
    fields (``field``: the request field at fault; ``errors``; a run's ``run_id`` and
    ``failure_reason``); the OpenAI-compatible routes add OpenAI's ``error`` object."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    field: str | None = None


# What every /v1 route can answer: a query or body it refuses, no key or no scope
# (when keys are on), the key's rate spent, and 503 (the database out of reach; the
# process shutting down or at its bounds).
COMMON_PROBLEMS = (400, 401, 403, 429, 503)


def problems(*codes: int) -> dict[int, ResponseSpec]:
    """The error answers a route documents in OpenAPI: COMMON_PROBLEMS and ``codes``."""
    return {
        code: ResponseSpec(
            ProblemBody, description=_title(code), media_type=PROBLEM_JSON, generate_examples=False
        )
        for code in sorted({*COMMON_PROBLEMS, *codes})
    }


def problem_body(status: int, title: str, detail: str, path: str, **extra: Any) -> dict[str, Any]:
    """Problem details; on the OpenAI-compatible routes with OpenAI's `error` object too."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    if path.startswith(OPENAI_PATHS):
        kind = "invalid_request_error"
        if status == 429 or status >= 500:
            kind = "rate_limit_error" if status == 429 else "server_error"
        body["error"] = {
            "message": detail,
            "type": kind,
            "code": extra.get("code"),
            "param": extra.get("field"),
        }
    return body


def problem_response(
    request: Request[Any, Any, Any],
    status: int,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response[Any]:
    """A problem-details response to the request."""
    body = problem_body(status, title, detail, request.url.path, **extra)
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def handle_problem(request: Request[Any, Any, Any], exc: Problem) -> Response[Any]:
    return problem_response(
        request, exc.status_code, exc.title, exc.detail, headers=exc.headers, **exc.fields
    )


def handle_validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    errors = exc.extra if isinstance(exc.extra, list) else []
    # "data" is the handlers' name for the body, not a field a client knows of.
    detail = "; ".join(
        f"{'body' if e.get('key') in (None, '', 'data') else e.get('key')}: {e.get('message')}"
        for e in errors
        if isinstance(e, dict)
    ) or str(exc.detail)
    return problem_response(request, 400, "Bad request", detail, errors=errors)


def handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    return problem_response(request, exc.status_code, _title(exc.status_code), str(exc.detail))


def handle_unstorable_text(
    request: Request[Any, Any, Any], exc: asyncpg.CharacterNotInRepertoireError
) -> Response[Any]:
    # Postgres text cannot hold NUL, so a filter or field carrying one can match or
    # store nothing: the request is at fault, and the statement failed before writing.
    named = sorted({k for k, v in request.query_params.items() if "\x00" in k + v})
    where = f"{', '.join(named)}: " if named else "a text value in the request "
    return problem_response(
        request, 400, "Bad request", f"{where}holds the NUL character, which is not allowed"
    )


def handle_unknown_normalizer(
    request: Request[Any, Any, Any], exc: UnknownNormalizer
) -> Response[Any]:
    # A newer release recorded the run (its answers are normalised by a rule this
    # replica lacks): an upgraded replica can answer; this one must not guess.
    return problem_response(
        request, 503, "Run needs a newer service", f"{exc}; retry on an upgraded replica"
    )


def handle_recursion(request: Request[Any, Any, Any], exc: RecursionError) -> Response[Any]:
    # msgspec's decoder gives up on a body nested deeper than it recurses: the body's
    # fault. Any other RecursionError is the service's.
    if "deserializ" not in str(exc):
        return handle_internal(request, exc)
    return problem_response(request, 400, "Bad request", "the JSON body is nested too deeply")


def handle_database_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if not (connection_lost(exc) or isinstance(exc, asyncpg.TooManyConnectionsError)):
        return handle_internal(request, exc)  # an OSError or asyncpg error of another kind
    # The database could not be reached or took the connection away under a statement
    # (the store sends appends and reads again first, for about 1.3 s): not the service's
    # failure nor the request's, and a retry may well succeed. What a request wrote
    # before is found again by a retry with the same Idempotency-Key.
    log.warning("api.database_unavailable", path=request.url.path, error=repr(exc))
    return problem_response(
        request,
        503,
        "Database unavailable",
        "the service could not reach its database; retry",
        headers={"retry-after": "1"},
    )


def handle_internal(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("api.internal_error", path=request.url.path)
    return problem_response(request, 500, "Internal error", "the service failed; see its logs")


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


EXCEPTION_HANDLERS: dict[Any, Any] = {
    Problem: handle_problem,
    ValidationException: handle_validation,
    HTTPException: handle_http,
    asyncpg.CharacterNotInRepertoireError: handle_unstorable_text,
    UnknownNormalizer: handle_unknown_normalizer,
    RecursionError: handle_recursion,
    **dict.fromkeys(
        (*CONNECTION_LOST, OSError, asyncpg.InternalClientError, asyncpg.TooManyConnectionsError),
        handle_database_unavailable,
    ),
    Exception: handle_internal,
}

__all__ = [
    "EXCEPTION_HANDLERS",
    "PROBLEM_JSON",
    "MediaType",
    "Problem",
    "problem_body",
    "problem_response",
    "problems",
]
