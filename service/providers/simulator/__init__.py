"""A test double for remote model providers: a seeded world of simulated models that
answer a generated question bank over the OpenAI chat-completions protocol.

Not the service's logic: the service talks to it exactly as to a real provider.
"""

from service.providers.simulator.bank import CATEGORIES, Question, QuestionBank, generate_bank
from service.providers.simulator.default_world import default_world
from service.providers.simulator.server import SimulatorHandle, serve_simulator
from service.providers.simulator.world import (
    LABEL,
    CategorySpec,
    ModelSpec,
    World,
    WorldError,
    load_world,
    world_from_toml,
)

__all__ = [
    "CATEGORIES",
    "LABEL",
    "CategorySpec",
    "ModelSpec",
    "Question",
    "QuestionBank",
    "SimulatorHandle",
    "World",
    "WorldError",
    "default_world",
    "generate_bank",
    "load_world",
    "serve_simulator",
    "world_from_toml",
]
