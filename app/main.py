"""The FastAPI application: create_app(settings) and the module-level `app`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from app import ops
from app.auth.keys import ApiKeyCache
from app.auth.router import router as api_keys_router
from app.credentials.crypto import KeyRingError, load_keyring
from app.credentials.router import router as credentials_router
from app.db import create_engine
from app.decisions.outbox import AnnotationOutbox
from app.decisions.router import router as decisions_router
from app.decisions.service import DecisionService
from app.errors import install_error_handlers
from app.logging import configure_logging
from app.middleware import BodyLimitMiddleware, RequestContextMiddleware
from app.openapi import problem_openapi
from app.operators.router import router as operators_router
from app.operators.state import OperatorStateCache
from app.ratelimit import RateLimiter
from app.recaptcha.breaker import CircuitBreaker
from app.recaptcha.client import RecaptchaClient
from app.recaptcha.http import build_http_client
from app.recaptcha.tokens import AccessTokenProvider
from app.services import Services
from app.settings import Settings

log = logging.getLogger("chargegate")

# Of CHARGEGATE_SHUTDOWN_GRACE_SECONDS, the share uvicorn gives the requests in flight and the
# share left for writing buffered decisions, so the process is gone within the grace time.
REQUESTS_BUDGET = 0.6
FLUSH_BUDGET = 0.3


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    configure_logging(settings.log_level)
    try:
        keyring = load_keyring(settings)
    except KeyRingError as exc:
        log.critical("cannot start: %s", exc)
        raise
    engine = create_engine(settings)
    http = build_http_client(settings.upstream_max_concurrency)
    tokens = AccessTokenProvider(http, settings.google_auth)
    recaptcha = RecaptchaClient(
        http,
        settings.recaptcha_base_url,
        tokens,
        settings.upstream_timeout_seconds,
        breaker=CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_seconds),
        max_concurrency=settings.upstream_max_concurrency,
    )
    # The caches' reads are single SELECTs: autocommit spares them BEGIN and ROLLBACK.
    reader = engine.execution_options(isolation_level="AUTOCOMMIT")
    stale = settings.stale_state_seconds
    operators = OperatorStateCache(reader, keyring, settings.state_cache_seconds, stale)
    services = Services(
        settings=settings,
        engine=engine,
        keyring=keyring,
        recaptcha=recaptcha,
        api_keys=ApiKeyCache(
            reader, settings.state_cache_seconds, settings.bootstrap_admin_key, stale
        ),
        operators=operators,
        decisions=DecisionService(
            engine,
            recaptcha,
            settings.upstream_timeout_seconds,
            settings.decision_buffer,
        ),
        outbox=AnnotationOutbox(engine, operators, recaptcha, settings.outbox_poll_seconds),
        limiter=RateLimiter(engine, settings),
    )
    app.state.services = services
    outbox_task = asyncio.create_task(services.outbox.run(), name="annotation-outbox")
    # Everything built so far lives as long as the process: keep it out of the cyclic
    # collector's full passes, which otherwise re-scan it under load.
    gc.collect()
    gc.freeze()
    log.info(
        "chargegate started",
        extra={
            "database": "embedded SQLite under " + str(settings.var_dir)
            if settings.is_embedded_database
            else "PostgreSQL",
            "recaptcha_base_url": settings.recaptcha_base_url,
        },
    )
    try:
        yield
    finally:
        # uvicorn has stopped accepting and finished the requests in flight (within
        # REQUESTS_BUDGET of the grace time): what is left is ours.
        flush_deadline = time.monotonic() + settings.shutdown_grace_seconds * FLUSH_BUDGET
        outbox_task.cancel()  # a delivery under way hands its lease back
        with contextlib.suppress(asyncio.CancelledError):
            await outbox_task
        await services.decisions.recorder.close(flush_deadline)
        await http.aclose()
        await engine.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="chargegate",
        version="1.0.0",
        summary="reCAPTCHA Enterprise risk-assessment gate for ad-hoc EV charging sessions.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.settings = settings or Settings()
    install_error_handlers(app)
    # The authorize route is matched first: routes are tried in order on every request.
    for router in (
        decisions_router,
        ops.router,
        operators_router,
        credentials_router,
        api_keys_router,
    ):
        app.include_router(router)
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(RequestContextMiddleware)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = problem_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


app = create_app()
