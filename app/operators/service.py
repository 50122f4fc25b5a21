"""Operators and policy changes: validation rules, versioning, ETags and the audit entry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from sqlalchemy.engine import Row

from app.audit import repository as audit
from app.db import utcnow
from app.errors import InvalidRequest, NotFound, PreconditionFailed
from app.operators import repository as repo
from app.operators.policy import DEFAULT_POLICY
from app.operators.schemas import (
    NULLABLE_POLICY_FIELDS,
    READ_ONLY_POLICY_FIELDS,
    PolicyFields,
    PolicyOut,
)
from app.services import Services

WRITABLE_POLICY_FIELDS = tuple(PolicyFields.model_fields)


def default_policy_values() -> dict[str, Any]:
    return {
        "enabled": DEFAULT_POLICY.enabled,
        "mode": DEFAULT_POLICY.mode.value,
        "score_threshold": DEFAULT_POLICY.score_threshold,
        "expected_action": DEFAULT_POLICY.expected_action,
        "allowed_hostnames": list(DEFAULT_POLICY.allowed_hostnames),
        "max_token_age_seconds": DEFAULT_POLICY.max_token_age_seconds,
        "fail_mode": DEFAULT_POLICY.fail_mode.value,
        "site_key": DEFAULT_POLICY.site_key,
        "gcp_project_id": DEFAULT_POLICY.gcp_project_id,
        "max_authorize_per_minute": DEFAULT_POLICY.max_authorize_per_minute,
    }


def etag(version: int) -> str:
    return f'"{version}"'


def policy_out(row: Row[Any], credentials_configured: bool) -> PolicyOut:
    return PolicyOut(
        **{name: getattr(row, name) for name in WRITABLE_POLICY_FIELDS},
        version=row.version,
        updated_at=row.updated_at,
        updated_by=row.updated_by,
        credentials_configured=credentials_configured,
    )


def check_if_match(if_match: str | None, version: int) -> None:
    if if_match is None:
        return
    candidates = [c.strip().removeprefix("W/") for c in if_match.split(",")]
    if "*" not in candidates and etag(version) not in candidates:
        raise PreconditionFailed(
            f"The policy has changed (current ETag {etag(version)}); read it again and retry."
        )


def _as_invalid(exc: ValidationError) -> InvalidRequest:
    errors = [
        {"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    described = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in errors[:5])
    return InvalidRequest("The policy is not valid: " + described, errors=errors)


def merge_patch(current: dict[str, Any], patch: dict[str, Any]) -> PolicyFields:
    """RFC 7396 on the policy object: null clears a nullable field, read-only keys are ignored."""
    merged = dict(current)
    errors: list[dict[str, Any]] = []
    for key, value in patch.items():
        if key in READ_ONLY_POLICY_FIELDS:
            continue
        if key not in PolicyFields.model_fields:
            errors.append(
                {
                    "loc": ["body", key],
                    "msg": "Extra inputs are not permitted",
                    "type": "extra_forbidden",
                }
            )
        elif value is None and key not in NULLABLE_POLICY_FIELDS:
            errors.append(
                {"loc": ["body", key], "msg": "may not be null", "type": "null_forbidden"}
            )
        else:
            merged[key] = value
    if errors:
        raise InvalidRequest(
            "The patch is not valid: " + ", ".join(str(e["loc"][1]) for e in errors), errors=errors
        )
    try:
        return PolicyFields.model_validate(merged)
    except ValidationError as exc:
        raise _as_invalid(exc) from None


def _require_enabled_prerequisites(values: dict[str, Any], credentials_configured: bool) -> None:
    if not values["enabled"]:
        return
    missing = [f for f in ("site_key", "gcp_project_id") if not values[f]]
    if not credentials_configured:
        missing.append("credentials")
    if missing:
        raise InvalidRequest(
            "enabled: true requires " + ", ".join(missing) + " to be configured first",
            errors=[
                {"loc": ["body", field], "msg": "required when enabled is true", "type": "missing"}
                for field in missing
            ],
        )


async def get_policy(services: Services, operator_id: str) -> PolicyOut:
    async with services.engine.connect() as conn:
        row = await repo.policy_row(conn, operator_id)
        if row is None:
            raise NotFound(f"Operator {operator_id} does not exist.")
        configured = await repo.credential_meta(conn, operator_id) is not None
    return policy_out(row, configured)


async def update_policy(
    services: Services,
    operator_id: str,
    actor: str,
    if_match: str | None,
    build: Callable[[dict[str, Any]], PolicyFields],
) -> PolicyOut:
    """Applies `build` to the current policy under a row lock; bumps the version on change."""
    async with services.engine.begin() as conn:
        row = await repo.policy_row(conn, operator_id, for_update=True)
        if row is None:
            raise NotFound(f"Operator {operator_id} does not exist.")
        check_if_match(if_match, row.version)
        current = {name: getattr(row, name) for name in WRITABLE_POLICY_FIELDS}
        new = build(current).normalised()
        configured = await repo.credential_meta(conn, operator_id) is not None
        _require_enabled_prerequisites(new, configured)
        changes = {k: {"old": current[k], "new": v} for k, v in new.items() if current[k] != v}
        if changes:
            await repo.save_policy(conn, operator_id, new, row.version + 1, utcnow(), actor)
            await audit.record(conn, operator_id, actor, "policy.updated", changes)
            row = await repo.policy_row(conn, operator_id)
            assert row is not None
    services.operators.invalidate(operator_id)
    return policy_out(row, configured)
