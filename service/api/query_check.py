"""Query strings are checked like bodies: a parameter the route does not take, or one
given twice, is a 400 that names it (a misspelt filter answered as if absent: every
run instead of the ones asked for)."""

from __future__ import annotations

from functools import cache
from typing import Any

from litestar import Request
from litestar.handlers import HTTPRouteHandler
from litestar.params import ParameterKwarg

from service.api.errors import Problem

# Handler arguments Litestar fills from elsewhere than the query string.
_NOT_QUERY = frozenset({"request", "data", "state", "scope", "headers", "cookies", "query",
                        "body", "socket"})  # fmt: skip


async def check_query(request: Request[Any, Any, Any]) -> None:
    """Litestar's before_request hook: refuse unknown and repeated query parameters of
    the API's routes (/v1/)."""
    if not request.query_params or not request.url.path.startswith("/v1/"):
        return
    known = _query_names(request.route_handler)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise Problem(
            400,
            "Bad request",
            f"unknown query parameter {', '.join(unknown)} (this route takes: {takes})",
        )
    repeated = sorted(k for k in request.query_params if len(request.query_params.getall(k)) > 1)
    if repeated:
        raise Problem(
            400,
            "Bad request",
            f"{', '.join(repeated)} given more than once: give each once (a list as "
            "comma-separated values where one is taken)",
        )


@cache
def _query_names(handler: HTTPRouteHandler) -> frozenset[str]:
    """The query parameters a handler declares (their aliases where given)."""
    path_params = {p for path in handler.paths for p in _path_params(path)}
    dependencies = handler.dependencies or {}
    names = set()
    for name, field in handler.parsed_fn_signature.parameters.items():
        kwarg = field.kwarg_definition
        if name in _NOT_QUERY or name in path_params or name in dependencies:
            continue
        if isinstance(kwarg, ParameterKwarg):
            if kwarg.header or kwarg.cookie:
                continue
            names.add(kwarg.query or name)
        elif kwarg is None:
            names.add(name)
    return frozenset(names)


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{")]
