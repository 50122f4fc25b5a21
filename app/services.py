"""The long-lived objects of one app instance, built in lifespan and shared by requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth.keys import ApiKeyCache
from app.credentials.crypto import KeyRing
from app.operators.state import OperatorStateCache
from app.recaptcha.client import RecaptchaClient
from app.settings import Settings

if TYPE_CHECKING:
    from app.decisions.outbox import AnnotationOutbox
    from app.decisions.service import DecisionService
    from app.ratelimit import RateLimiter


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    keyring: KeyRing
    recaptcha: RecaptchaClient
    api_keys: ApiKeyCache
    operators: OperatorStateCache
    decisions: DecisionService
    outbox: AnnotationOutbox
    limiter: RateLimiter


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def _services_dependency(request: Request) -> Services:
    # async on purpose: FastAPI runs a plain `def` dependency in a worker thread.
    return services_of(request)


ServicesDep = Annotated[Services, Depends(_services_dependency)]
