"""OpenAI chat-completions wire shapes as the simulator (a provider test double) speaks them.

Requests decode into small Structs (unknown fields ignored, as real providers do);
responses are built as plain dicts and encoded once with a module-level encoder.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec


class ContentPart(msgspec.Struct, frozen=True):
    type: str = "text"
    text: str = ""


class ChatMessage(msgspec.Struct, frozen=True):
    role: str = "user"
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        """The message's text, whether sent as a string or as content parts."""
        if isinstance(self.content, str):
            return self.content
        if self.content is None:
            return ""
        return "".join(part.text for part in self.content if part.type == "text")


class StreamOptions(msgspec.Struct, frozen=True):
    include_usage: bool = False


class ChatRequest(msgspec.Struct, frozen=True):
    model: str
    messages: list[ChatMessage]
    temperature: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def prompt(self) -> str:
        """The last user message: the text the simulator recognises questions by."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.text()
        return self.messages[-1].text() if self.messages else ""

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


REQUEST_DECODER = msgspec.json.Decoder(ChatRequest)
ENCODER = msgspec.json.Encoder()


def count_tokens(text: str) -> int:
    """Tokens as the simulator bills them: about four characters each."""
    return max(1, math.ceil(len(text) / 4))


def prompt_tokens(request: ChatRequest) -> int:
    return sum(count_tokens(m.text()) + 3 for m in request.messages)


def completion(
    response_id: str, created: int, model: str, content: str, finish: str, usage: dict[str, int]
) -> dict[str, Any]:
    """A non-streamed chat completion body."""
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
        "usage": usage,
    }


def chunk(
    response_id: str,
    created: int,
    model: str,
    delta: dict[str, str],
    finish: str | None,
) -> bytes:
    """One server-sent event of a streamed completion."""
    body = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + ENCODER.encode(body) + b"\n\n"


def usage_chunk(response_id: str, created: int, model: str, usage: dict[str, int]) -> bytes:
    body = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    }
    return b"data: " + ENCODER.encode(body) + b"\n\n"


def usage(prompt: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }


def error_body(message: str, error_type: str, code: str | None) -> bytes:
    """An OpenAI-style error object."""
    return ENCODER.encode(
        {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    )
