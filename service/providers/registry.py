"""Every configured model behind one call: ``ProviderRegistry.complete(model_id, ...)``.

The registry resolves a model id to its provider, reads the provider's key through
the ``secrets`` callable at call time (``Settings.secret``; keys are never stored),
and holds each provider's concurrency limit. Waiting for a free slot counts against
the call's ``timeout_s``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import msgspec

from service.config import Config, ModelConfig, Price
from service.domain.events import ErrorKind, GenerationParams, Message
from service.providers import openai_compatible
from service.providers.outcomes import CallFailed, CallOutcome


class ProviderRegistry:
    """Calls models by id through their providers, one semaphore per provider."""

    def __init__(
        self,
        config: Config,
        transport: httpx.AsyncBaseTransport,
        secrets: Callable[[str], str | None],
    ) -> None:
        self._config = config
        self._transport = transport
        self._secrets = secrets
        self._slots = {
            name: asyncio.Semaphore(provider.max_concurrency)
            for name, provider in config.providers.items()
        }

    def models(self) -> list[str]:
        """Every configured model id, in configuration order."""
        return list(self._config.models)

    def provider_of(self, model_id: str) -> str:
        """The name of the provider serving ``model_id`` (``UnknownModel`` if none)."""
        return self._config.model(model_id).provider

    def price(self, model_id: str) -> Price:
        """USD per million input and output tokens for ``model_id``."""
        return self._config.model(model_id).price

    async def complete(
        self,
        model_id: str,
        messages: list[Message],
        params: GenerationParams,
        *,
        timeout_s: float,
        seed: int | None = None,
    ) -> CallOutcome:
        """One chat completion from ``model_id`` within ``timeout_s`` (and the provider's).

        Raises ``UnknownModel`` for an id the configuration does not define; every
        other problem is a ``CallFailed``.
        """
        model = self._model(model_id)
        provider = self._config.providers[model.provider]
        api_key: str | None = None
        if provider.api_key_env:
            api_key = self._secrets(provider.api_key_env)
            if not api_key:
                return _failed_before_call(
                    "client_error",
                    f"provider {model.provider!r}: environment variable "
                    f"{provider.api_key_env} (its API key) is not set",
                )
        budget = min(timeout_s, provider.timeout_s)
        slots = self._slots[model.provider]
        loop = asyncio.get_running_loop()
        queued = loop.time()
        try:
            if slots.locked():  # a free slot is taken at once: no deadline to arm (~9 us)
                async with asyncio.timeout(budget):
                    await slots.acquire()
            else:
                await slots.acquire()
        except TimeoutError:
            return _failed_before_call(
                "timeout",
                f"provider {model.provider!r}: no free slot within {budget:.3g}s "
                f"(max_concurrency={provider.max_concurrency})",
                latency_ms=(loop.time() - queued) * 1000,
            )
        try:
            return await openai_compatible.complete(
                self._transport, provider, model, messages, params,
                api_key=api_key, timeout_s=budget - (loop.time() - queued), seed=seed,
            )  # fmt: skip
        finally:
            slots.release()

    def _model(self, model_id: str) -> ModelConfig:
        model = self._config.model(model_id)
        # A Config built in code rather than by load_config may leave upstream unset.
        return model if model.upstream else msgspec.structs.replace(model, upstream=model_id)


def _failed_before_call(kind: ErrorKind, message: str, latency_ms: float = 0.0) -> CallFailed:
    return CallFailed(
        error_kind=kind, http_status=None, attempts=[], latency_ms=latency_ms, message=message
    )
