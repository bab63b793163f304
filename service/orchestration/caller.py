"""What orchestration needs from the provider layer (the registry satisfies it)."""

from __future__ import annotations

from typing import Protocol

from service.domain.events import GenerationParams, Message
from service.providers.outcomes import CallFailed, CallSucceeded

CallOutcome = CallSucceeded | CallFailed


class ModelCaller(Protocol):
    """Calls a configured model; never raises for provider problems."""

    async def complete(
        self,
        model_id: str,
        messages: list[Message],
        params: GenerationParams,
        *,
        timeout_s: float,
        seed: int | None = None,
    ) -> CallOutcome: ...

    def provider_of(self, model_id: str) -> str: ...
