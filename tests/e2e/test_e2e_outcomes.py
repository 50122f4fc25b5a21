"""POST /sessions/{decision_id}/outcome end to end: the annotation reaches the emulator's
projects.assessments.annotate, through failures, exactly as reported."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from app.recaptcha.emulator import EmulatorServer, FaultKind, FaultTarget
from tests.conftest import ADMIN
from tests.e2e.conftest import Tenant, create_tenant, metric, wait_for

DELIVERY = 5.0  # seconds an annotation may take to arrive (0.2 s outbox poll, short back-off)


async def report(
    tenant: Tenant, decision_id: str, outcome: str, reasons: list[str]
) -> httpx.Response:
    return await tenant.http.post(
        f"/sessions/{decision_id}/outcome",
        json={"outcome": outcome, "reasons": reasons},
        headers=tenant.backend,
    )


async def assessed_decision(tenant: Tenant) -> dict[str, Any]:
    answer = await tenant.decide(tenant.token())
    assert answer["assessment_name"] is not None
    return answer


async def listed_outcome(tenant: Tenant, decision_id: str) -> str | None:
    response = await tenant.http.get(f"/operators/{tenant.operator_id}/decisions", headers=ADMIN)
    assert response.status_code == 200
    [item] = [i for i in response.json()["items"] if i["decision_id"] == decision_id]
    outcome: str | None = item["outcome"]
    return outcome


async def test_outcome_is_annotated_at_google(tenant: Tenant) -> None:
    decision = await assessed_decision(tenant)

    response = await report(tenant, decision["decision_id"], "fraudulent", ["chargeback", "refund"])

    assert response.status_code == 202, response.text
    assert response.json() == {
        "decision_id": decision["decision_id"],
        "outcome": "fraudulent",
        "reasons": ["chargeback", "refund"],
    }
    # Visible in the listing at once, delivered to Google shortly after.
    assert await listed_outcome(tenant, decision["decision_id"]) == "fraudulent"
    await wait_for(lambda: len(tenant.annotations()) == 1, DELIVERY)
    assert tenant.annotations() == [
        (decision["assessment_name"], "FRAUDULENT", ("CHARGEBACK", "REFUND"))
    ]
    annotate_path = f"/v1/{decision['assessment_name']}:annotate"
    [sent] = [r.body for r in list(tenant.state.requests) if r.path == annotate_path]
    assert sent == {"annotation": "FRAUDULENT", "reasons": ["CHARGEBACK", "REFUND"]}


async def test_legitimate_without_reasons(tenant: Tenant) -> None:
    decision = await assessed_decision(tenant)

    response = await report(tenant, decision["decision_id"], "legitimate", [])

    assert response.status_code == 202
    await wait_for(lambda: len(tenant.annotations()) == 1, DELIVERY)
    assert tenant.annotations() == [(decision["assessment_name"], "LEGITIMATE", ())]


async def test_failing_annotate_is_retried_until_delivered(
    tenant: Tenant, http: httpx.AsyncClient
) -> None:
    decision = await assessed_decision(tenant)
    retries = await metric(http, "chargegate_annotations_total", result="retry")
    delivered = await metric(http, "chargegate_annotations_total", result="delivered")
    tenant.fault(FaultKind.STATUS, status=503, count=2, target=FaultTarget.ANNOTATE)

    response = await report(tenant, decision["decision_id"], "legitimate", ["transaction_accepted"])

    assert response.status_code == 202
    await wait_for(lambda: len(tenant.annotations()) == 1, DELIVERY)
    assert tenant.faults_left() == 0  # both failures were answered to the gate
    assert tenant.annotations() == [
        (decision["assessment_name"], "LEGITIMATE", ("TRANSACTION_ACCEPTED",))
    ]
    assert await metric(http, "chargegate_annotations_total", result="retry") >= retries + 2
    await wait_for(
        lambda: _metric_is(http, "chargegate_annotations_total", delivered + 1, result="delivered"),
        DELIVERY,
    )


async def _metric_is(http: httpx.AsyncClient, name: str, value: float, **labels: str) -> bool:
    return await metric(http, name, **labels) == value


async def test_dropped_annotate_is_retried(tenant: Tenant) -> None:
    # The connection drops after Google stored the annotation: delivering it again is
    # harmless (an annotation is idempotent), losing it is not.
    decision = await assessed_decision(tenant)
    tenant.fault(FaultKind.DROP, target=FaultTarget.ANNOTATE)

    assert (await report(tenant, decision["decision_id"], "fraudulent", [])).status_code == 202

    await wait_for(lambda: len(tenant.annotations()) == 2, DELIVERY)
    assert tenant.faults_left() == 0
    assert set(tenant.annotations()) == {(decision["assessment_name"], "FRAUDULENT", ())}


async def test_later_report_replaces_and_is_annotated_again(tenant: Tenant) -> None:
    decision = await assessed_decision(tenant)
    decision_id, name = decision["decision_id"], decision["assessment_name"]

    await report(tenant, decision_id, "legitimate", ["transaction_accepted"])
    await wait_for(lambda: len(tenant.annotations()) == 1, DELIVERY)
    # The same report again is not delivered twice.
    assert (
        await report(tenant, decision_id, "legitimate", ["transaction_accepted"])
    ).status_code == 202
    # A chargeback weeks later.
    await report(tenant, decision_id, "fraudulent", ["chargeback_fraud"])
    await wait_for(lambda: len(tenant.annotations()) == 2, DELIVERY)

    assert tenant.annotations() == [
        (name, "LEGITIMATE", ("TRANSACTION_ACCEPTED",)),
        (name, "FRAUDULENT", ("CHARGEBACK_FRAUD",)),
    ]
    assert await listed_outcome(tenant, decision_id) == "fraudulent"


async def test_rejected_annotation_is_given_up(tenant: Tenant, http: httpx.AsyncClient) -> None:
    decision = await assessed_decision(tenant)
    rejected = await metric(http, "chargegate_annotations_total", result="rejected")
    tenant.fault(FaultKind.STATUS, status=400, count=5, target=FaultTarget.ANNOTATE)

    assert (await report(tenant, decision["decision_id"], "legitimate", [])).status_code == 202

    await wait_for(
        lambda: _metric_is(http, "chargegate_annotations_total", rejected + 1, result="rejected"),
        DELIVERY,
    )
    # A 4xx other than 429 is final: one attempt, and none after the back-off would be due.
    await asyncio.sleep(0.6)
    plan = [p for p in list(tenant.state.faults) if p.project_id == tenant.project_id]
    assert [p.remaining for p in plan] == [4]
    assert tenant.annotations() == []


async def test_outcome_errors(
    tenant: Tenant, http: httpx.AsyncClient, emulator: EmulatorServer
) -> None:
    other = await create_tenant(http, emulator)
    other_decision = await assessed_decision(other)
    own_decision = await assessed_decision(tenant)
    without_assessment = await tenant.decide()  # token_missing

    unknown = await report(tenant, "dec_00000000000nothere", "legitimate", [])
    foreign = await report(tenant, other_decision["decision_id"], "legitimate", [])
    nothing_to_annotate = await report(tenant, without_assessment["decision_id"], "legitimate", [])
    bad_reason = await report(tenant, own_decision["decision_id"], "legitimate", ["CHARGEBACK"])

    assert unknown.status_code == 404
    assert foreign.status_code == 404
    assert nothing_to_annotate.status_code == 409
    assert bad_reason.status_code == 422
    for response in (unknown, foreign, nothing_to_annotate, bad_reason):
        assert response.headers["content-type"].startswith("application/problem+json")
    assert await listed_outcome(other, other_decision["decision_id"]) is None
    assert await listed_outcome(tenant, own_decision["decision_id"]) is None
    await asyncio.sleep(0.3)  # an outbox poll
    assert tenant.annotations() == other.annotations() == []
