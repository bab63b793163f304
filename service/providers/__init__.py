"""Model endpoints: the OpenAI chat-completions client, the registry, the HTTP client.

``ProviderRegistry.complete(model_id, ...)`` is what orchestration calls; it returns a
``CallSucceeded`` or a ``CallFailed`` (error kinds from DESIGN.md's closed list) and
never raises for a provider's problem. ``create_http_transport`` builds the one shared
httpx transport (over aiohttp) that the app's lifespan owns.
"""

from service.providers.http import create_http_transport
from service.providers.openai_compatible import complete
from service.providers.outcomes import CallFailed, CallOutcome, CallSucceeded
from service.providers.registry import ProviderRegistry

__all__ = [
    "CallFailed",
    "CallOutcome",
    "CallSucceeded",
    "ProviderRegistry",
    "complete",
    "create_http_transport",
]
