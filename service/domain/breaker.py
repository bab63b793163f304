"""The router's breaker: rest a model whose recent calls mostly fail, probe it later.

Pure transitions on an immutable ``Breaker``; the caller supplies the time. States:

- closed: the model may sit on panels; its last ``window`` call outcomes are kept, and
  once at least ``min_calls`` of them exist and the failed share reaches
  ``open_at_failure_rate`` it opens. A model failing every call is therefore rested
  after at most ``ceil(window * open_at_failure_rate)`` of its calls.
- open: resting until ``opened_at + cooldown_s``.
- half_open: the cool-down is over; the router seats it once as a probe. A good probe
  closes the breaker (fresh window); a failed one opens it again with the cool-down
  doubled, up to ``max_cooldown_s``. A probe that never reports (its run was
  cancelled) stops blocking the next probe after another cool-down. Any other call
  that ends after the cool-down counts as a probe too: when no model is closed the
  router seats resting ones, and their calls are the only news of them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """How quickly a failing model is rested and how long it rests."""

    window: int = 10
    min_calls: int = 3
    open_at_failure_rate: float = 0.5
    cooldown_s: float = 30.0
    max_cooldown_s: float = 600.0


@dataclass(frozen=True, slots=True)
class Breaker:
    """One model's breaker."""

    recent: tuple[bool, ...] = ()  # True = the call failed; newest last
    opened_at: float | None = None
    cooldown_s: float = 0.0
    probe_started_at: float | None = None  # a probe call is on its way

    @property
    def probing(self) -> bool:
        """True while a probe call has not reported."""
        return self.probe_started_at is not None

    def state(self, now: float) -> BreakerState:
        """closed, open (resting) or half_open (ready for a probe)."""
        if self.opened_at is None:
            return "closed"
        if now < self.opened_at + self.cooldown_s:
            return "open"
        if self.probe_started_at is not None and now < self.probe_started_at + self.cooldown_s:
            return "open"
        return "half_open"

    def failure_rate(self) -> float:
        """The failed share of the recent window (0 when empty)."""
        return sum(self.recent) / len(self.recent) if self.recent else 0.0


CLOSED = Breaker()


def record_call(breaker: Breaker, failed: bool, now: float, settings: BreakerSettings) -> Breaker:
    """The breaker after one call outcome of its model."""
    if breaker.opened_at is not None:
        if not breaker.probing and now < breaker.opened_at + breaker.cooldown_s:
            return breaker  # begun before it was rested, or seated while every model was
        if failed:
            return _open(breaker, now, min(breaker.cooldown_s * 2, settings.max_cooldown_s))
        return CLOSED
    recent = (*breaker.recent, failed)[-settings.window :]
    tripped = (
        len(recent) >= settings.min_calls
        and sum(recent) / len(recent) >= settings.open_at_failure_rate
    )
    if tripped:
        return _open(Breaker(recent=recent), now, settings.cooldown_s)
    return replace(breaker, recent=recent)


def record_calls(
    breaker: Breaker, calls: int, failures: int, now: float, settings: BreakerSettings
) -> Breaker:
    """Counts seen elsewhere (other replicas, via the read models): may open a closed
    breaker, never closes one."""
    if breaker.opened_at is not None or calls < settings.min_calls:
        return breaker
    if failures / calls >= settings.open_at_failure_rate:
        return _open(breaker, now, settings.cooldown_s)
    return breaker


def start_probe(breaker: Breaker, now: float) -> Breaker:
    """The router seated the model as a probe; no second probe until it reports."""
    return replace(breaker, probe_started_at=now)


def _open(breaker: Breaker, now: float, cooldown_s: float) -> Breaker:
    return replace(breaker, opened_at=now, cooldown_s=cooldown_s, probe_started_at=None)
