"""OpenAI-compatible chat completions: ``model`` is ``fusion`` or ``fusion/<preset>``.

The answer is a normal chat completion plus a ``fusion`` object and an
``x-fusion-run-id`` header; ``stream: true`` streams the final answer as server-sent
events once the judge has decided (the panel and judge are not streamed).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Container
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.response import ServerSentEvent

from service.api.deps import IdempotencyKey, Services, provide_services
from service.api.errors import Problem, problems
from service.api.fusions import client_identity, observe_overhead, received_at, run_ask
from service.api.views import fusion_view
from service.config import Seed, Temperature, TokenLimit, TopP
from service.domain.events import GenerationParams, Message
from service.domain.runs import RunState
from service.orchestration.planning import FusionAsk

_DEPS = {"services": Provide(provide_services, sync_to_thread=False)}


class ContentPart(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    text: str | None = None


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart] | None = None


class ChatRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
    stream: bool = False
    temperature: Temperature | None = None
    max_tokens: TokenLimit | None = None
    max_completion_tokens: TokenLimit | None = None
    top_p: TopP | None = None
    seed: Seed | None = None
    user: str | None = None
    n: int | None = None  # choices: a fusion gives one answer (null, as OpenAI's API takes)


def _text(message: ChatMessage) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    parts = [p.text for p in message.content if p.type == "text" and p.text is not None]
    if len(parts) != len(message.content):
        raise Problem(422, "Unsupported content", "only text content parts are supported")
    return "".join(parts)


def _preset(model: str, presets: Container[str]) -> str | None:
    """The preset a model name asks for (None: the default); 404 for any name that
    /v1/models does not list."""
    if model == "fusion":
        return None
    if model.startswith("fusion/") and model.removeprefix("fusion/") in presets:
        return model.removeprefix("fusion/")
    raise Problem(
        404,
        "Model not found",
        f"model {model!r} does not exist; use 'fusion' or 'fusion/<preset>'",
        code="model_not_found",
    )


def _completion(run_id: str, state: RunState, model: str) -> dict[str, Any]:
    answer = state.finalized.answer if state.finalized else ""
    prompt_tokens, completion_tokens = _tokens(state)
    view = fusion_view(run_id, state)
    return {
        "id": f"chatcmpl-{run_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "fusion": {
            "run_id": run_id,
            "panel": msgspec.to_builtins(view.members),
            "judge": msgspec.to_builtins(view.judge),
            "cost_usd": view.cost_usd,
            "latency_ms": view.latency_ms,
        },
    }


def _tokens(state: RunState) -> tuple[int, int]:
    """Tokens of the whole run: every member plus the judge."""
    judge = state.judge
    prompt = sum(m.input_tokens for m in state.members.values())
    completion = sum(m.output_tokens for m in state.members.values())
    return (
        prompt + (judge.input_tokens if judge else 0),
        completion + (judge.output_tokens if judge else 0),
    )


@post(
    "/v1/chat/completions",
    dependencies=_DEPS,
    status_code=200,
    summary="OpenAI-compatible chat completion through fusion",
    responses={
        **problems(404, 413, 422),
        502: ResponseSpec(dict[str, Any], description="The run failed (an OpenAI error object)"),
        504: ResponseSpec(dict[str, Any], description="The run's timeout cut it off"),
    },
)
async def chat_completions(
    request: Request[Any, Any, Any],
    data: JSONBody[ChatRequest],
    services: NamedDependency[Services],
    idempotency_key: IdempotencyKey = None,
) -> Response[Any]:
    """Run a fusion for the last user message and answer as a chat completion."""
    preset = _preset(data.model, services.config.presets)
    if data.n not in (None, 1):  # one choice came back whatever was asked
        raise Problem(400, "Bad request", f"n: a fusion answers with one choice, not {data.n}")
    params = GenerationParams(
        temperature=data.temperature, max_tokens=data.max_completion_tokens or data.max_tokens,
        top_p=data.top_p, seed=data.seed,
    )  # fmt: skip
    messages = [
        Message(role="system" if m.role == "developer" else m.role, content=_text(m))
        for m in data.messages
    ]
    ask = FusionAsk(
        messages=messages,
        preset=preset,
        params=params,
        client=client_identity(request),
        idempotency_key=idempotency_key,
    )
    run_id, fused = await run_ask(services, ask)
    state = fused.state
    observe_overhead(services, fused, received_at(request))
    headers = {"x-fusion-run-id": run_id}
    if state.finalized is None:
        # The run failed on record: a retry would be a new run, its panel paid again.
        # The official clients retry any 5xx twice unless told not to.
        headers["x-should-retry"] = "false"
        reason = state.failed.reason if state.failed else "unknown"
        status = 504 if reason == "timeout" else 502
        body = {
            "error": {
                "message": f"fusion run {run_id} failed: {reason}",
                "type": "fusion_failed",
                "code": reason,
                "run_id": run_id,
            }
        }
        return Response(body, status_code=status, headers=headers)
    completion = _completion(run_id, state, data.model)
    if not data.stream:
        return Response(completion, headers=headers)
    return ServerSentEvent(_chunks(completion), headers=headers)


async def _chunks(completion: dict[str, Any]) -> AsyncIterator[str]:
    base = {
        "id": completion["id"],
        "object": "chat.completion.chunk",
        "created": completion["created"],
        "model": completion["model"],
    }
    answer: str = completion["choices"][0]["message"]["content"]

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {
            **base,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            **extra,
        }
        return msgspec.json.encode(body).decode()

    yield chunk({"role": "assistant", "content": ""})
    for start in range(0, len(answer), 64):
        yield chunk({"content": answer[start : start + 64]})
    yield chunk({}, "stop", fusion=completion["fusion"], usage=completion["usage"])
    yield "[DONE]"


@get("/v1/models", dependencies=_DEPS, summary="Models this endpoint serves", responses=problems())
async def list_models(services: NamedDependency[Services]) -> dict[str, Any]:
    """``fusion`` (the default preset) and ``fusion/<preset>`` for every preset."""
    ids = ["fusion", *(f"fusion/{name}" for name in sorted(services.config.presets))]
    return {"object": "list", "data": [_model(i) for i in ids]}


@get(
    "/v1/models/{model_id:path}",
    dependencies=_DEPS,
    summary="One model this endpoint serves",
    responses=problems(404),
)
async def retrieve_model(
    services: NamedDependency[Services], model_id: FromPath[str]
) -> dict[str, Any]:
    """A model of /v1/models (the official clients' ``models.retrieve``); 404 otherwise."""
    name = model_id.removeprefix("/")
    _preset(name, services.config.presets)
    return _model(name)


def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "fusion-ledger"}
