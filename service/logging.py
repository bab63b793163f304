"""structlog set-up: contextvars, ISO UTC timestamps, JSON in production, console on a TTY."""

from __future__ import annotations

import logging
import sys

import structlog

from service.settings import LOG_LEVELS


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """Configure structlog once per process."""
    if level.lower() not in LOG_LEVELS:  # Settings.from_env has said so to the user
        raise ValueError(f"log level {level!r}: must be one of {', '.join(LOG_LEVELS)}")
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
