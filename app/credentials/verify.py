"""The live check of an operator's configuration against reCAPTCHA Enterprise."""

from __future__ import annotations

from typing import Literal

from app.credentials.schemas import VerifyCheck, VerifyResult
from app.credentials.types import ServiceAccountKey
from app.operators.state import OperatorState
from app.recaptcha.client import RecaptchaClient
from app.recaptcha.types import UpstreamError, UpstreamErrorKind
from app.settings import GoogleAuthMode

CheckName = Literal["credentials", "site_key", "score_based"]

# Google answered (so it authenticated the caller) but not with the key: 400/404 or a
# 2xx body we could not read. Timeouts, 429 and 5xx prove nothing about the credentials.
_ANSWERED = frozenset({UpstreamErrorKind.BAD_REQUEST, UpstreamErrorKind.BAD_RESPONSE})


def _ok(name: CheckName, detail: str) -> VerifyCheck:
    return VerifyCheck(name=name, ok=True, detail=detail)


def _failed(name: CheckName, detail: str) -> VerifyCheck:
    return VerifyCheck(name=name, ok=False, detail=detail)


def _not_run(name: CheckName, why: str) -> VerifyCheck:
    return VerifyCheck(name=name, ok=False, detail=f"not run: {why}")


def _result(*checks: VerifyCheck) -> VerifyResult:
    return VerifyResult(ok=all(c.ok for c in checks), checks=list(checks))


async def verify_configuration(
    client: RecaptchaClient, state: OperatorState, auth_mode: GoogleAuthMode
) -> VerifyResult:
    policy = state.policy
    credential = state.credential
    if credential is None:
        why = "no credentials are configured"
        if state.credential_error is not None:
            why = f"the stored credentials cannot be decrypted ({state.credential_error})"
        return _result(
            _failed("credentials", why),
            _not_run("site_key", "no usable credentials"),
            _not_run("score_based", "no usable credentials"),
        )

    try:
        await client.check_credentials(credential)
    except UpstreamError as exc:
        return _result(
            _failed("credentials", f"Google refused or failed: {exc.failure.kind}"),
            _not_run("site_key", "the credentials check failed"),
            _not_run("score_based", "the credentials check failed"),
        )
    # Only the OAuth token exchange asks Google; a self-signed JWT or an API key is only
    # judged by the first real call, so until then the credentials are unconfirmed.
    exchanged = (
        isinstance(credential, ServiceAccountKey) and auth_mode is GoogleAuthMode.TOKEN_EXCHANGE
    )
    accepted = _ok("credentials", "Google accepted the credentials")

    if not policy.site_key or not policy.gcp_project_id:
        missing = "site_key" if not policy.site_key else "gcp_project_id"
        return _result(
            accepted
            if exchanged
            else _not_run("credentials", f"the policy has no {missing} to ask Google about"),
            _not_run("site_key", f"the policy has no {missing}"),
            _not_run("score_based", f"the policy has no {missing}"),
        )

    try:
        key = await client.get_key(credential, policy.gcp_project_id, policy.site_key)
    except UpstreamError as exc:
        failure = exc.failure
        if failure.kind is UpstreamErrorKind.CREDENTIALS_REJECTED:
            return _result(
                _failed("credentials", f"Google rejected the credentials (HTTP {failure.status})"),
                _not_run("site_key", "the credentials were rejected"),
                _not_run("score_based", "the site key could not be read"),
            )
        answered = failure.status is not None and failure.kind in _ANSWERED
        if exchanged or answered:
            cred_check = accepted
        else:
            cred_check = _not_run("credentials", f"Google did not answer ({failure.kind})")
        if failure.status == 404:
            site_check = _failed(
                "site_key", f"site key not found in project {policy.gcp_project_id}"
            )
        else:
            site_check = _failed("site_key", f"could not read the key: {failure.kind}")
        return _result(
            cred_check, site_check, _not_run("score_based", "the site key could not be read")
        )

    web = key.get("webSettings")
    integration = web.get("integrationType") if isinstance(web, dict) else None
    mobile = "androidSettings" in key or "iosSettings" in key
    score_based = integration == "SCORE" or (integration is None and mobile)
    return _result(
        accepted,
        _ok("site_key", f"key {key.get('displayName') or policy.site_key} exists"),
        VerifyCheck(
            name="score_based",
            ok=score_based,
            detail="score-based key"
            if score_based
            else f"not a score-based key ({integration or 'unknown type'})",
        ),
    )
