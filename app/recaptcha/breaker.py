"""A circuit breaker per Google project: stop calling a Google that keeps failing.

Closed: calls pass; `failures` consecutive failures (timeout, unreachable, 429, 5xx) open it.
Open: calls are refused at once (`circuit_open`, the decision follows `fail_mode`) until the
cool-down ends, or longer when Google asked for it with `Retry-After`. Then exactly one call
passes as a probe: its success closes the breaker, its failure opens it again. Any answer
from Google other than those failures (a 4xx, a bad token) shows Google is there and counts
as a success. State is per process: every replica finds out for itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from app.metrics import BREAKER_OPEN
from app.recaptcha.types import UpstreamErrorKind

# Failures that say Google is down or overloaded (API.md's list).
BREAKER_FAILURES = frozenset(
    {
        UpstreamErrorKind.TIMEOUT,
        UpstreamErrorKind.UNREACHABLE,
        UpstreamErrorKind.RATE_LIMITED,
        UpstreamErrorKind.SERVER_ERROR,
    }
)
# A Retry-After beyond this is not taken at its word: a misbehaving answer must not switch
# the gate to fail_mode for hours.
MAX_RETRY_AFTER_SECONDS = 300.0


@dataclass(slots=True)
class _Project:
    consecutive_failures: int = 0
    open_until: float | None = None
    probing: bool = False


class CircuitBreaker:
    def __init__(
        self, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._threshold = failures
        self._cooldown = cooldown
        self._clock = clock
        self._projects: dict[str, _Project] = {}

    def admit(self, project: str) -> bool:
        """May a call to `project` go out now? True for the one probe of a cooled-down breaker;
        the caller then owes exactly one of succeeded / failed / abandoned."""
        state = self._projects.get(project)
        if state is None or state.open_until is None:
            return True
        if state.probing or self._clock() < state.open_until:
            return False
        state.probing = True
        return True

    def succeeded(self, project: str) -> None:
        state = self._projects.pop(project, None)
        if state is not None and state.open_until is not None:
            BREAKER_OPEN.labels(project).set(0)

    def failed(self, project: str, kind: UpstreamErrorKind, retry_after: float | None) -> None:
        if kind not in BREAKER_FAILURES:
            self.succeeded(project)
            return
        state = self._projects.setdefault(project, _Project())
        state.consecutive_failures += 1
        pause = None
        if state.probing or state.consecutive_failures >= self._threshold:
            pause = self._cooldown
        if retry_after is not None and retry_after > 0:
            # Google said when to come back: no call before then, breaker count or not.
            pause = max(pause or 0.0, min(retry_after, MAX_RETRY_AFTER_SECONDS))
        state.probing = False
        if pause is not None:
            state.open_until = max(state.open_until or 0.0, self._clock() + pause)
            BREAKER_OPEN.labels(project).set(1)

    def abandoned(self, project: str) -> None:
        """The call admitted by `admit` ended without an answer either way (cancelled):
        let the next call be the probe."""
        state = self._projects.get(project)
        if state is not None:
            state.probing = False

    def is_open(self, project: str) -> bool:
        state = self._projects.get(project)
        return state is not None and state.open_until is not None
