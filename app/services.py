"""The long-lived objects of one app instance, built in lifespan and shared by requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import httpx
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


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    keyring: KeyRing
    http: httpx.AsyncClient
    recaptcha: RecaptchaClient
    api_keys: ApiKeyCache
    operators: OperatorStateCache
    decisions: DecisionService
    outbox: AnnotationOutbox


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
