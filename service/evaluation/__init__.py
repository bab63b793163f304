"""Evaluation runs: a dataset of prompts with known answers, fused and graded
through the HTTP API, resumable, and summarised per system (final answer, each model)."""

from service.evaluation.dataset import DatasetError, EvalItem, load_dataset, parse_dataset
from service.evaluation.results import ItemResult, SummaryRow, summarize
from service.evaluation.runner import EvalFailed, EvalSpec, run_eval

__all__ = [
    "DatasetError",
    "EvalFailed",
    "EvalItem",
    "EvalSpec",
    "ItemResult",
    "SummaryRow",
    "load_dataset",
    "parse_dataset",
    "run_eval",
    "summarize",
]
