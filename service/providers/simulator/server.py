"""The simulator's HTTP server: a test double for remote model providers speaking the
OpenAI chat-completions protocol (aiohttp, kept lean for benchmark load).

Endpoints: ``POST /v1/chat/completions`` (also ``stream: true``), ``GET /v1/models``;
for tests and benchmarks ``GET /_sim/world``, ``POST /_sim/world`` (settings such as
``fixed_latency_ms``) and ``POST /_sim/models/{name}`` (change a model's failure rates,
latency, accuracy... at run time, e.g. ``{"server_error_rate": 1.0}``).

Per request: the outcome (success, timeout, 429, 500, malformed body) and the latency
come from the server's RNG, seeded by the world seed; the answer itself is a pure
function of the request's ``seed`` when it has one (see answering.py); ``temperature``
is accepted and does not change anything. The admin endpoints have no authentication:
the simulator listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
from aiohttp import web

from service.providers.simulator import protocol
from service.providers.simulator.answering import reply
from service.providers.simulator.world import LABEL, ModelSpec, NonNegative, World, WorldError

log = structlog.get_logger(__name__)

_CYCLE_OUTCOMES = {
    ".": "ok",
    "R": "rate_limited",
    "E": "server_error",
    "T": "timeout",
    "M": "malformed_body",
}
_JSON = "application/json"


@dataclass
class SimulatorState:
    """Mutable per-server state: the world, its RNG and request counters."""

    world: World
    rng: random.Random
    created: int = field(default_factory=lambda: int(time.time()))
    requests: int = 0
    cycle_positions: dict[str, int] = field(default_factory=dict)
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    def outcome(self, model: ModelSpec) -> str:
        """What happens to this request: ok, timeout, rate_limited, server_error, malformed_body."""
        if model.failure_cycle:
            position = self.cycle_positions.get(model.name, 0)
            self.cycle_positions[model.name] = position + 1
            return _CYCLE_OUTCOMES[model.failure_cycle[position % len(model.failure_cycle)]]
        u = self.rng.random()
        for kind, rate in (
            ("timeout", model.timeout_rate),
            ("rate_limited", model.rate_limited_rate),
            ("server_error", model.server_error_rate),
            ("malformed_body", model.malformed_body_rate),
        ):
            if u < rate:
                return kind
            u -= rate
        return "ok"

    def latency_s(self, model: ModelSpec) -> float:
        """Fixed when the world says so, else lognormal around the model's median."""
        if self.world.fixed_latency_ms is not None:
            return self.world.fixed_latency_ms / 1000
        if model.latency_sigma == 0:
            return model.latency_median_ms / 1000
        return model.latency_median_ms * math.exp(model.latency_sigma * self.rng.gauss()) / 1000


STATE = web.AppKey("simulator_state", SimulatorState)


def create_app(world: World) -> web.Application:
    """The simulator's aiohttp application for ``world``."""
    app = web.Application()
    app[STATE] = SimulatorState(world=world, rng=random.Random(f"sim-server|{world.seed}"))
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/_sim/world", show_world)
    app.router.add_post("/_sim/world", change_world)
    app.router.add_post("/_sim/models/{name}", change_model)
    return app


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Answer one chat completion the way the world says this model would."""
    state = request.app[STATE]
    try:
        body = protocol.REQUEST_DECODER.decode(await request.read())
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return _error(request, 400, f"invalid request body: {exc}", "invalid_request_error")
    model = state.world.models.get(body.model)
    if model is None:
        message = f"The model `{body.model}` does not exist or you do not have access to it."
        return _error(request, 404, message, "invalid_request_error", "model_not_found")
    if not body.messages:
        return _error(request, 400, "messages must not be empty", "invalid_request_error")
    outcome = state.outcome(model)
    if outcome == "rate_limited":
        return _error(
            request, 429, "Rate limit reached (simulated).", "rate_limit_error", "rate_limited",
            headers={"Retry-After": f"{model.retry_after_s:g}"},
        )  # fmt: skip
    if outcome == "timeout":
        # Hang until the client gives up (aiohttp then cancels this handler) or we close.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.closing.wait(), state.world.timeout_s)
        return _error(request, 504, "Upstream timed out (simulated).", "timeout", "timeout")
    latency = state.latency_s(model)
    if latency > 0:
        await asyncio.sleep(latency)
    if outcome == "server_error":
        return _error(request, 500, "Internal server error (simulated).", "server_error")
    if outcome == "malformed_body":
        return _malformed(state)
    return await _answer(request, state, model, body)


async def _answer(
    request: web.Request, state: SimulatorState, model: ModelSpec, body: protocol.ChatRequest
) -> web.StreamResponse:
    sample = body.seed if body.seed is not None else state.rng.getrandbits(31)
    content = reply(state.world, model, body.prompt(), sample)
    completion_tokens = protocol.count_tokens(content)
    finish = "stop"
    limit = body.token_limit()
    if limit is not None and completion_tokens > limit:
        content, completion_tokens, finish = content[: limit * 4], limit, "length"
    usage = protocol.usage(protocol.prompt_tokens(body), completion_tokens)
    state.requests += 1
    response_id = f"chatcmpl-sim-{state.requests}"
    if body.stream:
        return await _stream(request, state, body, response_id, content, finish, usage)
    payload = protocol.completion(response_id, state.created, body.model, content, finish, usage)
    return web.Response(body=protocol.ENCODER.encode(payload), content_type=_JSON)


async def _stream(
    request: web.Request,
    state: SimulatorState,
    body: protocol.ChatRequest,
    response_id: str,
    content: str,
    finish: str,
    usage: dict[str, int],
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    created, model = state.created, body.model
    await response.write(protocol.chunk(response_id, created, model, {"role": "assistant"}, None))
    await response.write(protocol.chunk(response_id, created, model, {"content": content}, None))
    await response.write(protocol.chunk(response_id, created, model, {}, finish))
    if body.stream_options is not None and body.stream_options.include_usage:
        await response.write(protocol.usage_chunk(response_id, created, model, usage))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _malformed(state: SimulatorState) -> web.Response:
    if state.rng.random() < 0.5:
        return web.Response(
            body=b"<html><body>upstream hiccup</body></html>", content_type="text/html"
        )
    # Valid JSON, but not a chat completion: no choices.
    return web.Response(
        body=b'{"id": "chatcmpl-sim-broken", "object": "chat.completion"}', content_type=_JSON
    )


def _error(
    request: web.Request,
    status: int,
    message: str,
    error_type: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    if request.app[STATE].world.echo_key_in_errors:
        # A careless provider: some real ones echo the key; the service must scrub it.
        key = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if key:
            message = f"{message} Request made with API key {key}."
    return web.Response(
        status=status,
        body=protocol.error_body(message, error_type, code),
        content_type=_JSON,
        headers=headers,
    )


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models`` in the OpenAI shape."""
    state = request.app[STATE]
    data = [
        {"id": name, "object": "model", "created": state.created, "owned_by": "simulator"}
        for name in state.world.models
    ]
    return _json({"object": "list", "data": data})


async def show_world(request: web.Request) -> web.Response:
    """``GET /_sim/world``: settings, categories and every model's figures."""
    return _json(request.app[STATE].world.describe())


class WorldChange(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    fixed_latency_ms: NonNegative | msgspec.UnsetType | None = msgspec.UNSET
    echo_key_in_errors: bool | msgspec.UnsetType = msgspec.UNSET
    timeout_s: NonNegative | msgspec.UnsetType = msgspec.UNSET


async def change_world(request: web.Request) -> web.Response:
    """``POST /_sim/world``: change world settings, e.g. ``{"fixed_latency_ms": 20}``."""
    world = request.app[STATE].world
    try:
        change = msgspec.json.decode(await request.read(), type=WorldChange)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return _error(request, 400, f"invalid world change: {exc}", "invalid_request_error")
    for name in change.__struct_fields__:
        value = getattr(change, name)
        if value is not msgspec.UNSET:
            setattr(world, name, value)
    log.info("simulator.world.changed", **msgspec.to_builtins(change))
    return _json(world.describe())


async def change_model(request: web.Request) -> web.Response:
    """``POST /_sim/models/{name}``: change some of a model's fields at run time."""
    world = request.app[STATE].world
    name = request.match_info["name"]
    try:
        changes = msgspec.json.decode(await request.read(), type=dict[str, Any])
        updated = world.update_model(name, changes)
    except KeyError:
        return _error(request, 404, f"no model {name!r} in the world", "invalid_request_error")
    except (msgspec.DecodeError, msgspec.ValidationError, WorldError) as exc:
        return _error(request, 400, str(exc), "invalid_request_error")
    log.info("simulator.model.changed", model=name, changes=changes)
    return _json(msgspec.to_builtins(updated))


def _json(value: Any) -> web.Response:
    return web.Response(body=protocol.ENCODER.encode(value), content_type=_JSON)


@dataclass
class SimulatorHandle:
    """A running simulator; ``base_url`` ends in ``/v1``, admin endpoints hang off ``root_url``."""

    world: World
    base_url: str
    root_url: str
    host: str
    port: int
    _runner: web.AppRunner = field(repr=False)
    _state: SimulatorState = field(repr=False)

    async def close(self) -> None:
        """Stop serving; requests hanging in a simulated timeout end at once."""
        self._state.closing.set()
        await self._runner.cleanup()
        log.info("simulator.stopped", base_url=self.base_url)


async def serve_simulator(
    world: World, host: str = "127.0.0.1", port: int = 8001
) -> SimulatorHandle:
    """Start the simulator on ``host:port`` (port 0 picks a free one) and return its handle."""
    world.bank  # noqa: B018 - generate the bank now, not on the first request
    app = create_app(world)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = _bound_port(runner, port)
    url_host = f"[{host}]" if ":" in host else host
    root_url = f"http://{url_host}:{bound_port}"
    handle = SimulatorHandle(
        world=world,
        base_url=f"{root_url}/v1",
        root_url=root_url,
        host=host,
        port=bound_port,
        _runner=runner,
        _state=app[STATE],
    )
    log.info(
        "simulator.started",
        note=LABEL,
        base_url=handle.base_url,
        models=len(world.models),
        questions=len(world.bank),
        seed=world.seed,
        fixed_latency_ms=world.fixed_latency_ms,
    )
    return handle


def _bound_port(runner: web.AppRunner, requested: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return requested
