from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from app.schemas import NoNul, StrictModel

_Short = Annotated[str, StringConstraints(min_length=1, max_length=512), NoNul]
_Url = Annotated[str, StringConstraints(min_length=1, max_length=2048), NoNul]


class ServiceAccountKeyIn(StrictModel):
    """A service-account JSON key file exactly as Google issues it."""

    type: Literal["service_account"]
    project_id: _Short
    private_key_id: Annotated[str, StringConstraints(min_length=1, max_length=128), NoNul]
    private_key: Annotated[str, StringConstraints(min_length=1, max_length=16384), NoNul]
    client_email: Annotated[str, StringConstraints(min_length=3, max_length=320), NoNul]
    token_uri: _Url
    client_id: _Short | None = None
    auth_uri: _Url | None = None
    auth_provider_x509_cert_url: _Url | None = None
    client_x509_cert_url: _Url | None = None
    universe_domain: _Short | None = None


class ApiKeyIn(StrictModel):
    type: Literal["api_key"]
    api_key: Annotated[
        str, StringConstraints(min_length=1, max_length=512, pattern=r"^[\x21-\x7e]+$")
    ]


CredentialsIn = Annotated[ServiceAccountKeyIn | ApiKeyIn, Field(discriminator="type")]


class CredentialsMetadata(BaseModel):
    type: Literal["service_account", "api_key"]
    client_email: str | None
    private_key_id: str | None
    fingerprint: str
    updated_at: datetime


class VerifyCheck(BaseModel):
    name: Literal["credentials", "site_key", "score_based"]
    ok: bool
    detail: str


class VerifyResult(BaseModel):
    ok: bool
    checks: list[VerifyCheck]
