"""Turning uploaded credentials into sealed rows and back into usable credentials."""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from app.credentials.crypto import KeyRing
from app.credentials.schemas import ApiKeyIn, ServiceAccountKeyIn
from app.credentials.types import ApiKeyCredential, GoogleCredential, ServiceAccountKey
from app.errors import InvalidRequest

_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}


def _invalid(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(
        f"{field}: {message}",
        errors=[{"loc": ["body", field], "msg": message, "type": "value_error"}],
    )


def service_account_fingerprint(private_key_pem: str) -> str:
    """sha256 of the public key (DER SubjectPublicKeyInfo); raises InvalidRequest if unusable."""
    try:
        key = load_pem_private_key(private_key_pem.encode(), password=None)
    except (ValueError, TypeError):
        # Never chain: parser errors may quote the input.
        raise _invalid("private_key", "is not a parseable PEM private key") from None
    if not isinstance(key, RSAPrivateKey):
        raise _invalid("private_key", "must be an RSA private key")
    der = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def api_key_fingerprint(api_key: str) -> str:
    return "sha256:" + hashlib.sha256(api_key.encode()).hexdigest()


def _check_token_uri(token_uri: str) -> None:
    # The token exchange posts a signed assertion here: only TLS, or a local emulator.
    parts = urlsplit(token_uri)
    local = parts.scheme == "http" and (parts.hostname or "") in _LOOPBACK_HOSTS
    if not (parts.scheme == "https" and parts.hostname) and not local:
        raise _invalid("token_uri", "must be an https:// URL (http:// only for localhost)")


def prepare(body: ServiceAccountKeyIn | ApiKeyIn) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validates an upload; returns (secret payload to seal, public metadata)."""
    meta: dict[str, Any]
    if isinstance(body, ServiceAccountKeyIn):
        fingerprint = service_account_fingerprint(body.private_key)
        _check_token_uri(body.token_uri)
        payload = body.model_dump(exclude_none=True)
        meta = {
            "type": "service_account",
            "client_email": body.client_email,
            "private_key_id": body.private_key_id,
            "fingerprint": fingerprint,
        }
        return payload, meta
    meta = {
        "type": "api_key",
        "client_email": None,
        "private_key_id": None,
        "fingerprint": api_key_fingerprint(body.api_key),
    }
    return body.model_dump(), meta


def _bound_to(operator_id: str) -> bytes:
    """The AES-GCM associated data: a sealed secret opens only for the operator it was for."""
    return operator_id.encode()


def seal(keyring: KeyRing, operator_id: str, payload: dict[str, Any]) -> tuple[str, bytes]:
    return keyring.seal(json.dumps(payload).encode(), _bound_to(operator_id))


def reseal(keyring: KeyRing, operator_id: str, key_id: str, sealed: bytes) -> tuple[str, bytes]:
    """The same secret sealed anew under the primary key, still bound to its operator.

    Raises KeyRingError when the ring cannot open it (its key is gone, or it is not this
    operator's). The plaintext never leaves this function.
    """
    associated = _bound_to(operator_id)
    return keyring.seal(keyring.open(key_id, sealed, associated), associated)


def unseal(
    keyring: KeyRing, operator_id: str, key_id: str, sealed: bytes, fingerprint: str
) -> GoogleCredential:
    payload = json.loads(keyring.open(key_id, sealed, _bound_to(operator_id)))
    if payload["type"] == "api_key":
        return ApiKeyCredential(api_key=payload["api_key"], fingerprint=fingerprint)
    return ServiceAccountKey(
        client_email=payload["client_email"],
        private_key_id=payload["private_key_id"],
        private_key=payload["private_key"],
        token_uri=payload["token_uri"],
        project_id=payload["project_id"],
        fingerprint=fingerprint,
    )
