"""Decrypted Google credentials of one operator, held only in memory."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ServiceAccountKey:
    client_email: str
    private_key_id: str
    private_key: str = field(repr=False)
    token_uri: str
    project_id: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class ApiKeyCredential:
    api_key: str = field(repr=False)
    fingerprint: str = ""


GoogleCredential = ServiceAccountKey | ApiKeyCredential
