"""What the emulated Google knows: projects, keys, credentials, tokens, assessments, faults.

One EmulatorState is shared by the HTTP app (which may run on a uvicorn thread) and the test
or developer that sets it up, so every change goes through one lock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import string
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.recaptcha.emulator import wire

# reCAPTCHA tokens live two minutes at Google, then assessments answer EXPIRED.
TOKEN_LIFETIME_SECONDS = 120
ACCESS_TOKEN_LIFETIME_SECONDS = 3599  # what oauth2.googleapis.com answers in expires_in
# Real tokens start "03A"; the rest of ours is base64url JSON plus an HMAC, opaque to clients.
TOKEN_PREFIX = "03AEMU"  # noqa: S105 - a format marker, not a secret
_KEY_ALPHABET = string.ascii_letters + string.digits + "-_"


class FaultKind(StrEnum):
    DELAY = "delay"  # answer normally, after delay_ms
    STATUS = "status"  # answer `status` with Google's error body
    DROP = "drop"  # read the request, then close the TCP connection without an answer
    BROKEN_JSON = "broken_json"  # 200 with a body that is not JSON


class FaultTarget(StrEnum):
    API = "api"  # every REST call of the project (assessments, annotate, keys)
    ASSESSMENTS = "assessments"
    ANNOTATE = "annotate"
    KEYS = "keys"
    TOKEN = "token"  # noqa: S105 - the OAuth token endpoint (service accounts of the project)


@dataclass
class FaultPlan:
    project_id: str
    kind: FaultKind
    remaining: int | None = 1  # calls left to fail; None = until cleared
    delay_ms: int = 0
    status: int = 503
    target: FaultTarget = FaultTarget.API
    retry_after: int | None = None  # a status answer's Retry-After header (seconds), if any

    def matches(self, project_id: str, target: FaultTarget) -> bool:
        if self.project_id != project_id:
            return False
        if self.target is FaultTarget.API:
            return target is not FaultTarget.TOKEN
        return self.target is target

    def to_json(self) -> dict[str, Any]:
        plan: dict[str, Any] = {
            "project_id": self.project_id,
            "kind": self.kind.value,
            "remaining": self.remaining,
            "delay_ms": self.delay_ms,
            "status": self.status,
            "target": self.target.value,
        }
        if self.retry_after is not None:
            plan["retry_after"] = self.retry_after
        return plan


@dataclass(frozen=True)
class Project:
    project_id: str
    number: str


@dataclass
class SiteKey:
    site_key: str
    project_id: str
    display_name: str
    integration_type: str
    allowed_domains: list[str]
    labels: dict[str, str]
    create_time_ns: int

    def allows(self, hostname: str) -> bool:
        """Exact domain or a subdomain of it; no list means every domain (allowAllDomains)."""
        if not self.allowed_domains:
            return True
        host = hostname.lower()
        return any(host == d or host.endswith("." + d) for d in self.allowed_domains)


@dataclass(frozen=True)
class ServiceAccount:
    client_email: str
    project_id: str
    private_key_id: str
    public_key: rsa.RSAPublicKey
    token_uri: str


@dataclass(frozen=True)
class AccessToken:
    client_email: str
    project_id: str
    expires_at: float


@dataclass(frozen=True)
class TokenClaims:
    """What an emulator-issued reCAPTCHA token carries."""

    site_key: str
    action: str
    hostname: str
    score: float
    create_time_ns: int
    reasons: tuple[str, ...]
    nonce: str


@dataclass(frozen=True)
class AssessmentRecord:
    name: str
    project_id: str
    answer: dict[str, Any]


@dataclass(frozen=True)
class Annotation:
    assessment_name: str
    annotation: str
    reasons: tuple[str, ...]
    body: dict[str, Any]


@dataclass(frozen=True)
class RecordedRequest:
    """A Google API call as it arrived (no headers: they hold credentials)."""

    method: str
    path: str
    body: Any


@dataclass
class EmulatorState:
    """The emulated Google; set it up through these methods or the /emulator endpoints.

    `emit_defaults`: Google's REST front end prints every scalar field, default or not
    (`"score": 0`, `"hostname": ""`); False answers canonical proto3 JSON instead, which
    omits them, so clients can be tested against both shapes.
    `key_mismatch_reason`: what a token of another site key gets. The current v1 API has
    KEY_MISMATCH; older v1 documentation says such tokens came back invalid with
    INVALID_REASON_UNSPECIFIED.
    """

    clock: Callable[[], float] = time.time
    emit_defaults: bool = True
    key_mismatch_reason: str = "KEY_MISMATCH"
    base_url: str | None = None  # where the emulator answers; the default token_uri host

    projects: dict[str, Project] = field(default_factory=dict)
    keys: dict[str, SiteKey] = field(default_factory=dict)
    service_accounts: dict[str, ServiceAccount] = field(default_factory=dict)
    # Secrets are held and looked up by their SHA-256 (see secret_digest), never compared as
    # given: a dict lookup's final equality check then runs on digests, not on the secret.
    api_keys: dict[bytes, str] = field(default_factory=dict)  # digest of api key → project id
    access_tokens: dict[bytes, AccessToken] = field(default_factory=dict)  # by digest
    issued_tokens: dict[str, TokenClaims] = field(default_factory=dict)  # by nonce
    used_tokens: set[str] = field(default_factory=set)  # nonces already assessed
    assessments: dict[str, AssessmentRecord] = field(default_factory=dict)  # by name
    annotations: list[Annotation] = field(default_factory=list)
    faults: list[FaultPlan] = field(default_factory=list)
    requests: deque[RecordedRequest] = field(default_factory=lambda: deque(maxlen=1000))
    token_exchanges: int = 0  # access tokens minted at /token
    token_exchange_failures: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._secret = secrets.token_bytes(32)

    # --- set-up --------------------------------------------------------------------------

    def add_project(self, project_id: str, project_number: str | None = None) -> Project:
        """A project with a 12-digit number (Google names assessments by it); adding it
        again returns it unchanged."""
        with self._lock:
            existing = self.projects.get(project_id)
            if existing is not None:
                if project_number not in (None, existing.number):
                    raise ValueError(f"project {project_id} has number {existing.number}")
                return existing
            number = project_number or str(secrets.randbelow(9 * 10**11) + 10**11)
            project = self.projects[project_id] = Project(project_id, number)
            return project

    def add_key(
        self,
        project_id: str,
        site_key: str | None = None,
        *,
        integration_type: str = "SCORE",
        allowed_domains: Iterable[str] = (),
        display_name: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> str:
        """A web key of `project_id`; returns its site key (Google's look: 40 chars, "6L…")."""
        self.project(project_id)
        if integration_type not in wire.INTEGRATION_TYPES:
            raise ValueError(f"unknown integration type {integration_type!r}")
        key = site_key or "6L" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(38))
        with self._lock:
            self.keys[key] = SiteKey(
                site_key=key,
                project_id=project_id,
                display_name=display_name or f"emulator key {key[:8]}",
                integration_type=integration_type,
                allowed_domains=[d.lower() for d in allowed_domains],
                labels=dict(labels or {}),
                create_time_ns=self._now_ns(),
            )
        return key

    def create_service_account(
        self, project_id: str, token_uri: str | None = None, name: str = "chargegate"
    ) -> dict[str, str]:
        """A service-account JSON key file as Google issues it, with a fresh RSA key.

        Only the public half stays here; the key file is the one copy of the private key.
        """
        self.project(project_id)
        uri = token_uri or self.token_uri
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_id = secrets.token_hex(20)
        email = f"{name}-{secrets.token_hex(3)}@{project_id}.iam.gserviceaccount.com"
        account = ServiceAccount(email, project_id, key_id, private_key.public_key(), uri)
        with self._lock:
            self.service_accounts[email] = account
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return {
            "type": "service_account",
            "project_id": project_id,
            "private_key_id": key_id,
            "private_key": pem,
            "client_email": email,
            "client_id": str(secrets.randbelow(9 * 10**20) + 10**20),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": (
                f"https://www.googleapis.com/robot/v1/metadata/x509/{quote(email, safe='')}"
            ),
            "universe_domain": "googleapis.com",
        }

    def add_service_account(self, key_file: Mapping[str, str]) -> ServiceAccount:
        """Know a key file this emulator issued earlier (say, before a restart) again.

        Its project must be known; the public key is taken from the file's private key."""
        self.project(key_file["project_id"])
        private_key = serialization.load_pem_private_key(key_file["private_key"].encode(), None)
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise ValueError("a service account key must be an RSA key")
        account = ServiceAccount(
            key_file["client_email"],
            key_file["project_id"],
            key_file["private_key_id"],
            private_key.public_key(),
            key_file["token_uri"],
        )
        with self._lock:
            self.service_accounts[account.client_email] = account
        return account

    def create_api_key(self, project_id: str) -> str:
        """An API key of the project (Google's look: 39 chars, "AIza…")."""
        self.project(project_id)
        key = "AIza" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(35))
        with self._lock:
            self.api_keys[secret_digest(key)] = project_id
        return key

    def add_fault(
        self,
        project_id: str,
        kind: FaultKind | str,
        *,
        count: int | None = 1,
        delay_ms: int = 0,
        status: int = 503,
        target: FaultTarget | str = FaultTarget.API,
        retry_after: int | None = None,
    ) -> FaultPlan:
        """Make the next `count` calls (None: all, until clear_faults) of the project fail.

        `retry_after`: seconds sent in a Retry-After header with a `status` answer."""
        plan = FaultPlan(
            project_id, FaultKind(kind), count, delay_ms, status, FaultTarget(target), retry_after
        )
        if retry_after is not None and (plan.kind is not FaultKind.STATUS or retry_after < 0):
            raise ValueError("retry_after needs a status fault and a number of seconds >= 0")
        if plan.kind is FaultKind.STATUS and status not in wire.STATUS_WORDS:
            raise ValueError(f"no Google error body for HTTP {status}")
        if count is not None and count < 1:
            raise ValueError("count must be at least 1 (or None)")
        with self._lock:
            self.faults.append(plan)
        return plan

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    # --- reCAPTCHA tokens ----------------------------------------------------------------

    def issue_token(
        self,
        site_key: str,
        action: str,
        hostname: str,
        score: float = 0.9,
        age_seconds: float = 0,
        reasons: Iterable[str] = (),
    ) -> str:
        """A token as grecaptcha.enterprise.execute() would give the page, `age_seconds` old."""
        if site_key not in self.keys:
            raise KeyError(f"unknown site key {site_key!r}")
        if not 0.0 <= score <= 1.0:
            raise ValueError("score must be within 0.0 and 1.0")
        claims = TokenClaims(
            site_key=site_key,
            action=action,
            hostname=hostname,
            score=score,
            create_time_ns=self._now_ns() - int(age_seconds * 1e9),
            reasons=tuple(reasons),
            nonce=secrets.token_urlsafe(12),
        )
        payload = _b64(json.dumps(_claims_json(claims), separators=(",", ":")).encode())
        with self._lock:
            self.issued_tokens[claims.nonce] = claims
        return f"{TOKEN_PREFIX}{payload}.{_b64(self._sign(payload))}"

    def read_token(self, token: str) -> TokenClaims | None:
        """The claims of a token this emulator issued, or None (Google's MALFORMED)."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        payload, _, signature = token[len(TOKEN_PREFIX) :].partition(".")
        try:
            if not hmac.compare_digest(_unb64(signature), self._sign(payload)):
                return None
            data = json.loads(_unb64(payload))
            return TokenClaims(
                site_key=data["k"],
                action=data["a"],
                hostname=data["h"],
                score=float(data["s"]),
                create_time_ns=int(data["t"]),
                reasons=tuple(data["r"]),
                nonce=data["n"],
            )
        except (ValueError, KeyError, TypeError):
            return None

    def consume(self, nonce: str) -> bool:
        """Mark a token assessed; False when it already was (Google's DUPE)."""
        with self._lock:
            if nonce in self.used_tokens:
                return False
            self.used_tokens.add(nonce)
            return True

    # --- lookups used by the app ---------------------------------------------------------

    def project(self, project: str) -> Project:
        """A project by id or by number (Google's paths accept both)."""
        found = self.find_project(project)
        if found is None:
            raise KeyError(f"unknown project {project!r}")
        return found

    def find_project(self, project: str) -> Project | None:
        if project in self.projects:
            return self.projects[project]
        return next((p for p in self.projects.values() if p.number == project), None)

    @property
    def token_uri(self) -> str:
        if self.base_url is None:
            raise ValueError("the emulator's address is not known yet: pass token_uri")
        return self.base_url.rstrip("/") + "/token"

    def api_key_project(self, api_key: str) -> str | None:
        """The project of an API key this emulator created, or None."""
        return self.api_keys.get(secret_digest(api_key))

    def access_token(self, value: str) -> AccessToken | None:
        """An access token minted at /token, or None."""
        return self.access_tokens.get(secret_digest(value))

    def take_fault(self, project_id: str, target: FaultTarget) -> FaultPlan | None:
        """The first plan for this call, counted down (and dropped when used up)."""
        with self._lock:
            for plan in self.faults:
                if plan.matches(project_id, target):
                    if plan.remaining is not None:
                        plan.remaining -= 1
                        if plan.remaining == 0:
                            self.faults.remove(plan)
                    return plan
        return None

    def grant_access_token(self, account: ServiceAccount) -> tuple[str, int]:
        value = "ya29.emu-" + secrets.token_urlsafe(48)
        expires_at = self.clock() + ACCESS_TOKEN_LIFETIME_SECONDS
        with self._lock:
            self.access_tokens[secret_digest(value)] = AccessToken(
                account.client_email, account.project_id, expires_at
            )
            self.token_exchanges += 1
        return value, ACCESS_TOKEN_LIFETIME_SECONDS

    def count_exchange_failure(self) -> None:
        with self._lock:
            self.token_exchange_failures += 1

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def save_assessment(self, record: AssessmentRecord) -> None:
        with self._lock:
            self.assessments[record.name] = record

    def save_annotation(self, annotation: Annotation) -> None:
        with self._lock:
            self.annotations.append(annotation)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "token_exchanges": self.token_exchanges,
                "token_exchange_failures": self.token_exchange_failures,
                "assessments": len(self.assessments),
                "annotations": len(self.annotations),
                "issued_tokens": len(self.issued_tokens),
                "used_tokens": len(self.used_tokens),
                "faults": [plan.to_json() for plan in self.faults],
            }

    def _sign(self, payload: str) -> bytes:
        return hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()[:16]

    def _now_ns(self) -> int:
        return int(self.clock() * 1e9)


def _claims_json(claims: TokenClaims) -> dict[str, Any]:
    return {
        "k": claims.site_key,
        "a": claims.action,
        "h": claims.hostname,
        "s": claims.score,
        "t": claims.create_time_ns,
        "r": list(claims.reasons),
        "n": claims.nonce,
    }


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def secret_digest(value: str) -> bytes:
    """What a secret (API key, access token) is stored and looked up by."""
    return hashlib.sha256(value.encode()).digest()
