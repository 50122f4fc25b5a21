"""The live check of an operator's configuration against reCAPTCHA Enterprise."""

from __future__ import annotations

from typing import Any

from app.credentials.schemas import VerifyCheck, VerifyResult
from app.operators.state import OperatorState
from app.recaptcha.client import RecaptchaClient
from app.recaptcha.types import UpstreamError, UpstreamErrorKind


def _not_run(name: Any, why: str) -> VerifyCheck:
    return VerifyCheck(name=name, ok=False, detail=f"not run: {why}")


async def verify_configuration(client: RecaptchaClient, state: OperatorState) -> VerifyResult:
    policy = state.policy
    credential = state.credential
    if credential is None:
        checks = [
            VerifyCheck(name="credentials", ok=False, detail="no credentials are configured"),
            _not_run("site_key", "no credentials"),
            _not_run("score_based", "no credentials"),
        ]
        return VerifyResult(ok=False, checks=checks)

    try:
        await client.check_credentials(credential)
    except UpstreamError as exc:
        checks = [
            VerifyCheck(name="credentials", ok=False, detail=f"Google refused or failed: {exc.failure.kind}"),
            _not_run("site_key", "the credentials check failed"),
            _not_run("score_based", "the credentials check failed"),
        ]
        return VerifyResult(ok=False, checks=checks)

    if not policy.site_key or not policy.gcp_project_id:
        missing = "site_key" if not policy.site_key else "gcp_project_id"
        checks = [
            VerifyCheck(name="credentials", ok=True, detail="credentials accepted"),
            _not_run("site_key", f"the policy has no {missing}"),
            _not_run("score_based", f"the policy has no {missing}"),
        ]
        return VerifyResult(ok=False, checks=checks)

    try:
        key = await client.get_key(credential, policy.gcp_project_id, policy.site_key)
    except UpstreamError as exc:
        kind = exc.failure.kind
        if kind is UpstreamErrorKind.CREDENTIALS_REJECTED:
            cred_check = VerifyCheck(name="credentials", ok=False, detail="Google rejected the credentials")
            site_check = _not_run("site_key", "the credentials were rejected")
        else:
            cred_check = VerifyCheck(name="credentials", ok=True, detail="credentials accepted")
            detail = (
                f"site key not found in project {policy.gcp_project_id}"
                if exc.failure.status == 404
                else f"could not read the key: {kind}"
            )
            site_check = VerifyCheck(name="site_key", ok=False, detail=detail)
        checks = [cred_check, site_check, _not_run("score_based", "the site key could not be read")]
        return VerifyResult(ok=False, checks=checks)

    integration = (key.get("webSettings") or {}).get("integrationType")
    mobile = "androidSettings" in key or "iosSettings" in key
    score_based = integration == "SCORE" or (integration is None and mobile)
    checks = [
        VerifyCheck(name="credentials", ok=True, detail="credentials accepted"),
        VerifyCheck(name="site_key", ok=True, detail=f"key {key.get('displayName') or policy.site_key} exists"),
        VerifyCheck(
            name="score_based",
            ok=score_based,
            detail="score-based key" if score_based else f"not a score-based key ({integration or 'unknown type'})",
        ),
    ]
    return VerifyResult(ok=all(c.ok for c in checks), checks=checks)
