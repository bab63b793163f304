"""HTTP API: one module per resource; ROUTES is what the app mounts."""

from service.api.fusions import create_fusion
from service.api.health import healthz, readyz
from service.api.openai_compat import chat_completions, list_models, retrieve_model
from service.api.outcomes import record_outcome
from service.api.replays import create_batch, get_batch, replay_run
from service.api.route import explain_route
from service.api.runs import get_run, list_runs
from service.api.stats import STATS_ROUTES

ROUTES = [create_fusion, list_runs, get_run, chat_completions, list_models, retrieve_model]
ROUTES += [healthz, readyz]
ROUTES += [replay_run, create_batch, get_batch]
ROUTES += [explain_route]
ROUTES += [record_outcome]
ROUTES += STATS_ROUTES

__all__ = ["ROUTES"]
