"""The authorize path: policy → replay claim → assessment → evaluate → record."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth.keys import Principal
from app.db import is_unavailable, utcnow
from app.decisions import engine as decide
from app.decisions import repository as repo
from app.decisions.hot_path import hot_path_for
from app.decisions.recorder import DecisionRecorder, IdempotencyClaim
from app.decisions.schemas import AuthorizeIn
from app.errors import Conflict
from app.metrics import AUTHORIZE_DECISIONS
from app.operators.state import OperatorState
from app.recaptcha.client import RecaptchaClient
from app.recaptcha.types import UpstreamError, UpstreamErrorKind, UpstreamFailure
from app.schemas import rfc3339

IDEMPOTENCY_POLL_SECONDS = 0.05
LOCAL_ANSWERS_KEPT = 10_000


def new_decision_id() -> str:
    # Millisecond prefix: ids of one operator sort roughly by time, which keeps the index tidy.
    return f"dec_{int(time.time() * 1000):011x}{secrets.token_hex(8)}"


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def request_digest(body: AuthorizeIn) -> str:
    """Same parsed JSON → same digest, whatever the key order or whitespace."""
    canonical = json.dumps(body.model_dump(mode="json", exclude_unset=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


class DecisionService:
    def __init__(
        self,
        engine: AsyncEngine,
        recaptcha: RecaptchaClient,
        upstream_timeout: float,
        decision_buffer: int = 10_000,
    ) -> None:
        self._engine = engine
        # Single statements run in autocommit: one round trip each, not BEGIN + it + COMMIT.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.recorder = DecisionRecorder(engine, hot_path_for(engine), decision_buffer)
        # Idempotency-Keys first seen while the database is away, held by this process.
        self._local_answers: dict[tuple[str, str], tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        self._recaptcha = recaptcha
        # How long a duplicate waits for the first request before calling it abandoned.
        self._idempotency_wait = upstream_timeout + 10.0

    async def authorize(
        self,
        principal: Principal,
        body: AuthorizeIn,
        state: OperatorState,
        idempotency_key: str | None,
    ) -> dict[str, Any]:
        """The decision for `body`, given its operator's current `state` (the caller has
        looked it up: an unknown operator is a 404 before any limit or token claim)."""
        if idempotency_key is None:
            return await self._authorize(principal, body, state, None)
        return await self._authorize_once(principal, body, state, idempotency_key)

    async def _authorize_once(
        self, principal: Principal, body: AuthorizeIn, state: OperatorState, key: str
    ) -> dict[str, Any]:
        digest = request_digest(body)
        if self.recorder.database_away:
            return await self._authorize_once_locally(principal, body, state, key, digest)
        try:
            return await self._authorize_once_shared(principal, body, state, key, digest)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            self.recorder.database_unavailable(exc)
            return await self._authorize_once_locally(principal, body, state, key, digest)

    async def _authorize_once_shared(
        self,
        principal: Principal,
        body: AuthorizeIn,
        state: OperatorState,
        key: str,
        digest: str,
    ) -> dict[str, Any]:
        """Idempotency across replicas, through the database."""
        started = time.monotonic()
        while True:
            created_at = utcnow()
            if await repo.claim_idempotency_key(
                self._autocommit, principal.key_id, key, digest, created_at
            ):
                try:
                    return await self._authorize(
                        principal,
                        body,
                        state,
                        IdempotencyClaim(principal.key_id, key, digest, created_at),
                    )
                except BaseException:
                    await asyncio.shield(
                        repo.release_idempotency_key(self._engine, principal.key_id, key)
                    )
                    raise
            record = await repo.idempotency_record(self._autocommit, principal.key_id, key)
            if record is None:
                continue  # the first request failed and let go of the key: run it now
            if record.request_sha256 != digest:
                raise Conflict("This Idempotency-Key was used with a different request body.")
            if record.response is not None:
                response: dict[str, Any] = record.response
                return response
            if time.monotonic() - started > self._idempotency_wait:
                # The first holder died without answering; take the key over.
                await repo.release_idempotency_key(
                    self._engine, principal.key_id, key, record.created_at
                )
                started = time.monotonic()
                continue
            await asyncio.sleep(IDEMPOTENCY_POLL_SECONDS)

    async def _authorize_once_locally(
        self,
        principal: Principal,
        body: AuthorizeIn,
        state: OperatorState,
        key: str,
        digest: str,
    ) -> dict[str, Any]:
        """While the database is away: a key first seen now is honoured by this process; its
        answer is written with the buffered decision when the database returns."""
        slot = (principal.key_id, key)
        while (held := self._local_answers.get(slot)) is not None:
            held_digest, held_answer = held
            if held_digest != digest:
                raise Conflict("This Idempotency-Key was used with a different request body.")
            await asyncio.wait([held_answer])
            if not held_answer.cancelled():
                return held_answer.result()
            # The first request failed and let go of the key: run it now.
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._local_answers[slot] = (digest, answer)
        try:
            response = await self._authorize(
                principal, body, state, IdempotencyClaim(principal.key_id, key, digest, utcnow())
            )
        except BaseException:
            del self._local_answers[slot]
            answer.cancel()
            raise
        answer.set_result(response)
        if len(self._local_answers) > LOCAL_ANSWERS_KEPT:
            # The oldest: by then written to the database, or the outage is long over.
            del self._local_answers[next(iter(self._local_answers))]
        return response

    async def _authorize(
        self,
        principal: Principal,
        body: AuthorizeIn,
        state: OperatorState,
        idempotency: IdempotencyClaim | None,
    ) -> dict[str, Any]:
        self.recorder.ensure_room()
        verdict = await self._judge(state, body)
        decision_id = new_decision_id()
        evaluated_at = utcnow()
        response: dict[str, Any] = {
            "decision_id": decision_id,
            "decision": verdict.decision,
            "verdict": verdict.verdict,
            "reason": verdict.reason.value,
            "score": verdict.score,
            "threshold": verdict.threshold,
            "mode": verdict.mode.value,
            "policy_version": verdict.policy_version,
            "assessment_name": verdict.assessment_name,
            "token_invalid_reason": verdict.token_invalid_reason,
            "risk_reasons": list(verdict.risk_reasons),
            "upstream_error": verdict.upstream_error.value if verdict.upstream_error else None,
            "evaluated_at": rfc3339(evaluated_at),
        }
        row = {
            **response,
            "evaluated_at": evaluated_at,
            "operator_id": body.operator_id,
            "api_key_id": principal.key_id,
            "session_ref": body.session_ref,
            "evse_id": body.evse_id,
        }
        # With an Idempotency-Key, the decision and the answer a retry gets commit together.
        await self.recorder.record(row, response, idempotency)
        AUTHORIZE_DECISIONS.labels(
            body.operator_id, verdict.decision, verdict.reason.value, verdict.mode.value
        ).inc()
        return response

    async def _judge(self, state: OperatorState, body: AuthorizeIn) -> decide.Verdict:
        policy = state.policy
        if not policy.enabled:
            return decide.disabled(policy)
        expected_action = body.expected_action or policy.expected_action
        evidence: decide.Evidence
        if not body.token:
            evidence = decide.TokenMissing()
        elif not await self.recorder.claim_token(token_digest(body.token), utcnow()):
            evidence = decide.TokenReused()
        else:
            evidence = await self._assess(state, body, body.token, expected_action)
        return decide.evaluate(policy, expected_action, evidence, utcnow())

    async def _assess(
        self, state: OperatorState, body: AuthorizeIn, token: str, expected_action: str
    ) -> decide.Evidence:
        policy = state.policy
        if state.credential is None or not policy.gcp_project_id or not policy.site_key:
            return UpstreamFailure(UpstreamErrorKind.CREDENTIALS_REJECTED, detail="not configured")
        event = {"token": token, "siteKey": policy.site_key, "expectedAction": expected_action}
        if body.user_ip:
            event["userIpAddress"] = body.user_ip
        if body.user_agent:
            event["userAgent"] = body.user_agent
        try:
            return await self._recaptcha.create_assessment(
                state.credential, policy.gcp_project_id, event
            )
        except UpstreamError as exc:
            return exc.failure
