"""Google's authentication, emulated: the OAuth JWT-bearer exchange and API credentials.

Three ways in, as at Google:
- `Authorization: Bearer <access token>` minted by POST /token (RFC 7523 JWT-bearer grant);
- `Authorization: Bearer <self-signed JWT>` (AIP-4111): iss = sub = client_email, either
  `scope` with cloud-platform or `aud` = https://recaptchaenterprise.googleapis.com/,
  header kid = private_key_id, RS256, at most an hour long;
- an API key in `x-goog-api-key` (or `?key=`).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from app.recaptcha.emulator import wire
from app.recaptcha.emulator.state import EmulatorState, ServiceAccount

JWT_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
SELF_SIGNED_AUDIENCE = f"https://{wire.SERVICE}/"
# The audiences oauth2.googleapis.com accepts for its own endpoint (google-auth signs this
# one whatever the key file's token_uri says); a key file's own token_uri is accepted too.
GOOGLE_TOKEN_AUDIENCES = frozenset(
    {
        "https://oauth2.googleapis.com/token",
        "https://www.googleapis.com/oauth2/v4/token",
        "https://accounts.google.com/o/oauth2/token",
    }
)
MAX_JWT_LIFETIME_SECONDS = 3600
CLOCK_SKEW_SECONDS = 300
SHORT_LIVED = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
    "timeframe. Check your iat and exp values in the JWT claim."
)


class OAuthError(Exception):
    """An answer of the token endpoint other than a token: RFC 6749 §5.2 JSON."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.body = {"error": error, "error_description": description}
        self.status = status


class ApiError(Exception):
    """A Google API error answer (see wire.error_body)."""

    def __init__(
        self, status: int, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.body = wire.error_body(status, message, details)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a service account or the project of an API key."""

    project_id: str
    client_email: str | None = None


@dataclass(frozen=True)
class Jwt:
    header: dict[str, Any]
    claims: dict[str, Any]
    signed: bytes
    signature: bytes


def parse_jwt(token: str) -> Jwt | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        header, claims = (json.loads(_unb64(part)) for part in parts[:2])
        signature = _unb64(parts[2])
    except ValueError:
        return None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return None
    return Jwt(header, claims, f"{parts[0]}.{parts[1]}".encode(), signature)


def signed_by(jwt: Jwt, account: ServiceAccount) -> bool:
    """RS256 signature by the account's key; a kid, when given, must name that key."""
    kid = jwt.header.get("kid")
    if jwt.header.get("alg") != "RS256" or (kid is not None and kid != account.private_key_id):
        return False
    try:
        account.public_key.verify(jwt.signature, jwt.signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def short_lived(claims: dict[str, Any], now: float) -> bool:
    iat, exp = claims.get("iat"), claims.get("exp")
    if not isinstance(iat, int | float) or not isinstance(exp, int | float):
        return False
    return (
        iat <= now + CLOCK_SKEW_SECONDS
        and exp > now - CLOCK_SKEW_SECONDS
        and 0 < exp - iat <= MAX_JWT_LIFETIME_SECONDS
    )


def exchange(state: EmulatorState, form: dict[str, str]) -> tuple[str, int]:
    """POST /token: an access token for a signed JWT-bearer assertion, or OAuthError."""
    grant_type = form.get("grant_type", "")
    if grant_type != JWT_GRANT_TYPE:
        raise OAuthError("unsupported_grant_type", f"Invalid grant_type: {grant_type}")
    assertion = form.get("assertion")
    if not assertion:
        raise OAuthError("invalid_request", "Missing required parameter: assertion")
    jwt = parse_jwt(assertion)
    if jwt is None:
        raise OAuthError("invalid_grant", "Invalid JWT: could not be parsed.")
    account = state.service_accounts.get(str(jwt.claims.get("iss")))
    if account is None:
        raise OAuthError("invalid_grant", "Invalid grant: account not found")
    if not signed_by(jwt, account):
        raise OAuthError("invalid_grant", "Invalid JWT Signature.")
    audience = jwt.claims.get("aud")
    if audience != account.token_uri and audience not in GOOGLE_TOKEN_AUDIENCES:
        raise OAuthError("invalid_grant", "Invalid JWT: Failed audience check.")
    if not short_lived(jwt.claims, state.clock()):
        raise OAuthError("invalid_grant", SHORT_LIVED)
    scope = jwt.claims.get("scope")
    if not isinstance(scope, str) or not scope.split():
        raise OAuthError("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
    return state.grant_access_token(account)


def authenticate(
    state: EmulatorState, authorization: str | None, api_key: str | None, method: str
) -> Principal:
    """The caller of a REST method, or the ApiError Google answers for its credentials."""
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthenticated("ACCESS_TOKEN_TYPE_UNSUPPORTED", method)
        return _bearer(state, token.strip(), method)
    if api_key:
        project_id = state.api_key_project(api_key)
        if project_id is None:
            # Google answers a wrong API key with 400, not 401/403.
            raise ApiError(400, wire.API_KEY_INVALID, [wire.error_info("API_KEY_INVALID")])
        return Principal(project_id)
    raise ApiError(403, wire.UNREGISTERED_CALLER)


def _bearer(state: EmulatorState, token: str, method: str) -> Principal:
    now = state.clock()
    access = state.access_token(token)
    if access is not None:
        if access.expires_at <= now:
            raise _unauthenticated("ACCESS_TOKEN_EXPIRED", method)
        return Principal(access.project_id, access.client_email)
    jwt = parse_jwt(token)
    if jwt is None:
        raise _unauthenticated("ACCESS_TOKEN_TYPE_UNSUPPORTED", method)
    issuer = jwt.claims.get("iss")
    account = state.service_accounts.get(str(issuer))
    if (
        account is None
        or jwt.claims.get("sub") != issuer
        # AIP-4111: a self-signed JWT must name its key; the token endpoint tries them all.
        or jwt.header.get("kid") != account.private_key_id
        or not signed_by(jwt, account)
        or not _self_signed_target(jwt.claims)
    ):
        raise _unauthenticated("ACCESS_TOKEN_TYPE_UNSUPPORTED", method)
    if not short_lived(jwt.claims, now):
        raise _unauthenticated("ACCESS_TOKEN_EXPIRED", method)
    return Principal(account.project_id, account.client_email)


def _self_signed_target(claims: dict[str, Any]) -> bool:
    """AIP-4111: a scope that covers the API, or the API's own audience."""
    scope = claims.get("scope")
    if isinstance(scope, str) and CLOUD_PLATFORM in scope.split():
        return True
    return claims.get("aud") == SELF_SIGNED_AUDIENCE


def _unauthenticated(reason: str, method: str) -> ApiError:
    return ApiError(401, wire.UNAUTHENTICATED, [wire.error_info(reason, method)])


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
