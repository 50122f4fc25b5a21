"""The circuit breaker per Google project, on an injected clock: when it opens, what it
refuses, the one probe after the cool-down, Retry-After, and its gauge."""

from __future__ import annotations

import secrets

import pytest
from prometheus_client import REGISTRY

from app.recaptcha.breaker import MAX_RETRY_AFTER_SECONDS, CircuitBreaker
from app.recaptcha.types import UpstreamErrorKind as Kind

FAILURES = 3
COOLDOWN = 10.0
COUNTED = [Kind.TIMEOUT, Kind.UNREACHABLE, Kind.RATE_LIMITED, Kind.SERVER_ERROR]
GOOGLE_ANSWERED = [Kind.CREDENTIALS_REJECTED, Kind.BAD_REQUEST, Kind.BAD_RESPONSE]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(failures=FAILURES, cooldown=COOLDOWN, clock=clock)


@pytest.fixture
def project() -> str:
    # A project of its own per test: the gauge is process-wide.
    return f"unit-project-{secrets.token_hex(4)}"


def gauge(project: str) -> float | None:
    return REGISTRY.get_sample_value("chargegate_breaker_open", {"project": project})


def fail(
    breaker: CircuitBreaker,
    project: str,
    times: int = 1,
    kind: Kind = Kind.SERVER_ERROR,
    retry_after: float | None = None,
) -> None:
    """`times` admitted calls that all fail with `kind`."""
    for _ in range(times):
        assert breaker.admit(project)
        breaker.failed(project, kind, retry_after)


def open_breaker(breaker: CircuitBreaker, project: str) -> None:
    fail(breaker, project, FAILURES)
    assert breaker.is_open(project)
    assert not breaker.admit(project)


@pytest.mark.parametrize("kind", COUNTED)
def test_closed_below_the_threshold_open_at_it(
    breaker: CircuitBreaker, project: str, kind: Kind
) -> None:
    fail(breaker, project, FAILURES - 1, kind)
    assert not breaker.is_open(project)
    assert breaker.admit(project)
    breaker.failed(project, kind, None)
    assert breaker.is_open(project)
    assert not breaker.admit(project)
    assert gauge(project) == 1


def test_a_success_resets_the_count(breaker: CircuitBreaker, project: str) -> None:
    fail(breaker, project, FAILURES - 1)
    assert breaker.admit(project)
    breaker.succeeded(project)
    fail(breaker, project, FAILURES - 1)
    assert not breaker.is_open(project)
    assert breaker.admit(project)
    # Consecutive means consecutive: one more now opens it.
    breaker.failed(project, Kind.TIMEOUT, None)
    assert breaker.is_open(project)


@pytest.mark.parametrize("kind", GOOGLE_ANSWERED)
def test_an_answer_from_google_counts_as_a_success(
    breaker: CircuitBreaker, project: str, kind: Kind
) -> None:
    # Many of them never open the breaker ...
    fail(breaker, project, FAILURES * 3, kind)
    assert not breaker.is_open(project)
    # ... and one between failures resets their count.
    fail(breaker, project, FAILURES - 1)
    fail(breaker, project, 1, kind)
    fail(breaker, project, FAILURES - 1)
    assert not breaker.is_open(project)
    assert breaker.admit(project)
    assert gauge(project) in (None, 0)


def test_open_refuses_until_the_cooldown_ends(
    breaker: CircuitBreaker, clock: Clock, project: str
) -> None:
    open_breaker(breaker, project)
    for _ in range(5):
        clock.advance(COOLDOWN / 5 - 0.01)
        assert not breaker.admit(project)
    assert breaker.is_open(project)
    clock.advance(0.1)
    assert breaker.admit(project)  # the probe


def test_exactly_one_probe_after_the_cooldown(
    breaker: CircuitBreaker, clock: Clock, project: str
) -> None:
    open_breaker(breaker, project)
    clock.advance(COOLDOWN)
    assert breaker.admit(project)
    # While the probe is out, every other call is refused, however long it takes.
    assert not breaker.admit(project)
    clock.advance(COOLDOWN * 5)
    assert not breaker.admit(project)
    assert breaker.is_open(project)
    assert gauge(project) == 1


def test_probe_success_closes(breaker: CircuitBreaker, clock: Clock, project: str) -> None:
    open_breaker(breaker, project)
    clock.advance(COOLDOWN)
    assert breaker.admit(project)
    breaker.succeeded(project)
    assert not breaker.is_open(project)
    assert gauge(project) == 0
    assert all(breaker.admit(project) for _ in range(5))
    # Closed again with a fresh count: it takes the full threshold to reopen.
    fail(breaker, project, FAILURES - 1)
    assert not breaker.is_open(project)


@pytest.mark.parametrize("kind", GOOGLE_ANSWERED)
def test_probe_answered_by_google_closes(
    breaker: CircuitBreaker, clock: Clock, project: str, kind: Kind
) -> None:
    open_breaker(breaker, project)
    clock.advance(COOLDOWN)
    assert breaker.admit(project)
    breaker.failed(project, kind, None)
    assert not breaker.is_open(project)
    assert gauge(project) == 0


@pytest.mark.parametrize("kind", COUNTED)
def test_probe_failure_reopens_for_another_cooldown(
    breaker: CircuitBreaker, clock: Clock, project: str, kind: Kind
) -> None:
    open_breaker(breaker, project)
    clock.advance(COOLDOWN)
    assert breaker.admit(project)
    breaker.failed(project, kind, None)
    assert breaker.is_open(project)
    assert gauge(project) == 1
    clock.advance(COOLDOWN - 0.01)
    assert not breaker.admit(project)
    clock.advance(0.01)
    assert breaker.admit(project)  # the next probe
    assert not breaker.admit(project)
    breaker.succeeded(project)
    assert not breaker.is_open(project)


def test_abandoned_probe_lets_the_next_call_probe(
    breaker: CircuitBreaker, clock: Clock, project: str
) -> None:
    open_breaker(breaker, project)
    clock.advance(COOLDOWN)
    assert breaker.admit(project)
    assert not breaker.admit(project)
    breaker.abandoned(project)
    # Still open (nothing was learnt), but the next call may probe at once ...
    assert breaker.is_open(project)
    assert gauge(project) == 1
    assert breaker.admit(project)
    # ... and only that one.
    assert not breaker.admit(project)
    breaker.succeeded(project)
    assert not breaker.is_open(project)


def test_abandoned_while_closed_changes_nothing(breaker: CircuitBreaker, project: str) -> None:
    fail(breaker, project, FAILURES - 1)
    assert breaker.admit(project)
    breaker.abandoned(project)
    assert not breaker.is_open(project)
    fail(breaker, project, 1)  # the count was kept: this is the threshold
    assert breaker.is_open(project)


def test_retry_after_opens_at_once_for_that_long(
    breaker: CircuitBreaker, clock: Clock, project: str
) -> None:
    fail(breaker, project, 1, Kind.RATE_LIMITED, retry_after=4.0)
    assert breaker.is_open(project)
    assert gauge(project) == 1
    clock.advance(3.99)
    assert not breaker.admit(project)
    clock.advance(0.01)
    assert breaker.admit(project)
    breaker.succeeded(project)
    assert not breaker.is_open(project)
    assert gauge(project) == 0


def test_retry_after_longer_than_the_cooldown_wins(
    breaker: CircuitBreaker, clock: Clock, project: str
) -> None:
    fail(breaker, project, FAILURES - 1)
    fail(breaker, project, 1, Kind.RATE_LIMITED, retry_after=COOLDOWN * 3)
    clock.advance(COOLDOWN)
    assert not breaker.admit(project)
    clock.advance(COOLDOWN * 2 - 0.01)
    assert not breaker.admit(project)
    clock.advance(0.01)
    assert breaker.admit(project)


def test_retry_after_shorter_than_the_cooldown_does_not_shorten_it(
    breaker: CircuitBreaker, clock: Clock, project: str
) -> None:
    fail(breaker, project, FAILURES - 1)
    fail(breaker, project, 1, Kind.SERVER_ERROR, retry_after=1.0)
    clock.advance(1.0)
    assert not breaker.admit(project)
    clock.advance(COOLDOWN - 1.0)
    assert breaker.admit(project)


def test_retry_after_on_a_failed_probe(breaker: CircuitBreaker, clock: Clock, project: str) -> None:
    open_breaker(breaker, project)
    clock.advance(COOLDOWN)
    assert breaker.admit(project)
    breaker.failed(project, Kind.RATE_LIMITED, COOLDOWN * 2)
    clock.advance(COOLDOWN * 2 - 0.01)
    assert not breaker.admit(project)
    clock.advance(0.01)
    assert breaker.admit(project)


def test_retry_after_is_capped(breaker: CircuitBreaker, clock: Clock, project: str) -> None:
    fail(breaker, project, 1, Kind.RATE_LIMITED, retry_after=MAX_RETRY_AFTER_SECONDS * 100)
    clock.advance(MAX_RETRY_AFTER_SECONDS - 0.01)
    assert not breaker.admit(project)
    clock.advance(0.01)
    assert breaker.admit(project)


def test_retry_after_zero_below_the_threshold_leaves_it_closed(
    breaker: CircuitBreaker, project: str
) -> None:
    """`Retry-After: 0` (or an HTTP date already past) asks for no pause at all: one such
    failure below the threshold must not open the breaker, show it open in the gauge, or
    refuse the concurrent calls while the next one is out."""
    fail(breaker, project, 1, Kind.RATE_LIMITED, retry_after=0.0)
    assert not breaker.is_open(project)
    assert gauge(project) in (None, 0)
    assert breaker.admit(project)
    assert breaker.admit(project)  # a concurrent call, not refused as if probing


def test_a_late_failure_does_not_release_the_probe(
    breaker: CircuitBreaker, clock: Clock, project: str
) -> None:
    """A call admitted while the breaker was closed may fail after the probe went out (the
    deadline, 3 s by default, outlasts a short Retry-After): the probe is still out, so the
    next call must still be refused, not let through as a second probe."""
    assert breaker.admit(project)  # the late one, still waiting for Google
    fail(breaker, project, 1, Kind.RATE_LIMITED, retry_after=1.0)
    clock.advance(1.0)
    assert breaker.admit(project)  # the probe
    breaker.failed(project, Kind.TIMEOUT, None)  # the late one gives up
    assert not breaker.admit(project)


def test_projects_are_independent(breaker: CircuitBreaker, clock: Clock, project: str) -> None:
    other = project + "-other"
    fail(breaker, other, FAILURES - 1)
    open_breaker(breaker, project)
    assert breaker.admit(other)
    assert not breaker.is_open(other)
    assert gauge(other) in (None, 0)
    # The other's count is its own: one more failure there (not FAILURES) opens it.
    breaker.failed(other, Kind.TIMEOUT, None)
    assert breaker.is_open(other)
    clock.advance(COOLDOWN)
    assert breaker.admit(project)
    breaker.succeeded(project)
    assert not breaker.is_open(project)
    assert breaker.is_open(other)
    assert (gauge(project), gauge(other)) == (0, 1)


def test_the_gauge_follows_the_state(breaker: CircuitBreaker, clock: Clock, project: str) -> None:
    assert gauge(project) in (None, 0)
    fail(breaker, project, FAILURES - 1)
    assert gauge(project) in (None, 0)
    fail(breaker, project, 1)
    assert gauge(project) == 1
    clock.advance(COOLDOWN)
    assert breaker.admit(project)
    assert gauge(project) == 1  # half-open is still open: calls are answered per fail_mode
    breaker.failed(project, Kind.TIMEOUT, None)
    assert gauge(project) == 1
    clock.advance(COOLDOWN)
    assert breaker.admit(project)
    breaker.succeeded(project)
    assert gauge(project) == 0
    fail(breaker, project, FAILURES)
    assert gauge(project) == 1


def test_threshold_of_one(clock: Clock, project: str) -> None:
    breaker = CircuitBreaker(failures=1, cooldown=COOLDOWN, clock=clock)
    fail(breaker, project, 1, Kind.UNREACHABLE)
    assert not breaker.admit(project)
