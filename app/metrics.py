"""Prometheus metrics, registered once per process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

AUTHORIZE_DECISIONS = Counter(
    "chargegate_authorize_decisions_total",
    "Authorize decisions by operator, decision, reason and mode.",
    ["operator", "decision", "reason", "mode"],
)
AUTHORIZE_DURATION = Histogram(
    "chargegate_authorize_duration_seconds",
    "Time to answer POST /sessions/authorize.",
    buckets=_LATENCY_BUCKETS,
)
UPSTREAM_REQUESTS = Counter(
    "chargegate_upstream_requests_total",
    "Requests to reCAPTCHA Enterprise by outcome (ok or an upstream_error value).",
    ["outcome"],
)
UPSTREAM_DURATION = Histogram(
    "chargegate_upstream_duration_seconds",
    "Time of one call to reCAPTCHA Enterprise, retries included.",
    buckets=_LATENCY_BUCKETS,
)
ACCESS_TOKEN_MINTS = Counter(
    "chargegate_access_token_mints_total",
    "Google access tokens minted (self-signed JWT or token exchange).",
)
BREAKER_OPEN = Gauge(
    "chargegate_breaker_open",
    "1 while the circuit breaker of a Google project is open (calls answered per fail_mode).",
    ["project"],
)
UPSTREAM_WAITING = Gauge(
    "chargegate_upstream_waiting",
    "Calls to Google waiting for one of the CHARGEGATE_UPSTREAM_MAX_CONCURRENCY slots.",
)
DECISION_BUFFER_SIZE = Gauge(
    "chargegate_decision_buffer_size",
    "Decisions held in memory while the database is unreachable, waiting to be written.",
)
ANNOTATIONS = Counter(
    "chargegate_annotations_total",
    "Annotation deliveries to Google by result (delivered, retry, rejected, expired).",
    ["result"],
)
ANNOTATION_BACKLOG = Gauge(
    "chargegate_annotation_backlog",
    "Annotations waiting for delivery, as of the last outbox poll.",
)
RATE_LIMITED = Counter(
    "chargegate_rate_limited_total",
    "Authorize calls refused with 429, by the limit that refused them "
    "(key, operator, key_concurrency).",
    ["scope"],
)
