"""Query strings are checked like bodies: a parameter the route does not take, or one
given twice, is a 400 that names it (a misspelt filter answered as if absent: every
run instead of the ones asked for)."""

from __future__ import annotations

from functools import cache
from typing import Any

from litestar import Request
from litestar.enums import ParamType
from litestar.handlers import HTTPRouteHandler
from litestar.params import ParameterKwarg

from service.api.errors import Problem

# Handler arguments Litestar fills from elsewhere than the query string.
_NOT_QUERY = frozenset({"request", "data", "state", "scope", "headers", "cookies", "query",
                        "body", "socket"})  # fmt: skip


async def check_query(request: Request[Any, Any, Any]) -> None:
    """Litestar's before_request hook: refuse unknown and repeated query parameters of
    the API's routes (/v1/; not Litestar's own OPTIONS answers)."""
    if (
        not request.query_params
        or request.method == "OPTIONS"
        or not request.url.path.startswith("/v1/")
    ):
        return
    known, lists = _query_names(request.route_handler)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise Problem(
            400,
            "Bad request",
            f"unknown query parameter {', '.join(unknown)} (this route takes: {takes})",
        )
    repeated = sorted(
        k
        for k in request.query_params
        if k not in lists and len(request.query_params.getall(k)) > 1
    )
    if repeated:
        raise Problem(
            400,
            "Bad request",
            f"{', '.join(repeated)} given more than once: give each once (a list as "
            "comma-separated values where one is taken)",
        )


@cache
def _query_names(handler: HTTPRouteHandler) -> tuple[frozenset[str], frozenset[str]]:
    """The query parameters a handler (or its dependencies' providers) declares, by the
    names a client sends (aliases where given); and those that take a list (repeats)."""
    path_params = {p for path in handler.paths for p in _path_params(path)}
    dependencies = handler.resolve_dependencies()
    fields = dict(handler.parsed_fn_signature.parameters)
    for provider in dependencies.values():  # what providers take from the query too
        fields.update(provider.parsed_fn_signature.parameters)
    names, lists = set(), set()
    for name, field in fields.items():
        kwarg = field.kwarg_definition
        if name in _NOT_QUERY or name in path_params or name in dependencies:
            continue
        if isinstance(kwarg, ParameterKwarg) and kwarg.param_type is not ParamType.QUERY:
            continue  # a header or a cookie
        if kwarg is not None and not isinstance(kwarg, ParameterKwarg):
            continue  # the body, a dependency marker
        alias = (kwarg.name if isinstance(kwarg, ParameterKwarg) else None) or name
        names.add(alias)
        if field.is_non_string_sequence:
            lists.add(alias)
    return frozenset(names), frozenset(lists)


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{")]
