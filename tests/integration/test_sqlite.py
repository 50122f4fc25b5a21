"""The embedded default: the main flows on SQLite, schema built by the same migrations."""

from __future__ import annotations

import asyncio
from pathlib import Path

import respx

from app.cli import migrate
from app.main import create_app
from app.settings import Settings
from tests.conftest import (
    BOOTSTRAP_KEY,
    GOOGLE,
    PROJECT,
    SITE_KEY,
    Gate,
    assessment_json,
    bearer,
    eventually,
    running,
)


async def test_main_flows_on_embedded_sqlite(
    tmp_path: Path, google: respx.MockRouter, service_account: dict[str, str]
) -> None:
    settings = Settings(
        database_url=None,
        var_dir=tmp_path / "var",
        recaptcha_base_url=GOOGLE,
        bootstrap_admin_key=BOOTSTRAP_KEY,
        outbox_poll_seconds=0.1,
    )
    await asyncio.to_thread(migrate, settings)
    assessments = google.post(f"{GOOGLE}/v1/projects/{PROJECT}/assessments").respond(
        json=assessment_json(name="projects/1/assessments/sqlite")
    )
    annotate = google.post(f"{GOOGLE}/v1/projects/1/assessments/sqlite:annotate").respond(json={})
    async with running(create_app(settings)) as client:
        gate = Gate(client)
        await gate.protected_operator(service_account)
        site_key = await client.get("/operators/acme/site-key")
        assert site_key.json()["site_key"] == SITE_KEY
        backend = bearer((await gate.create_key("backend", ["acme"]))["key"])
        headers = {**backend, "Idempotency-Key": "sqlite-1"}
        body = {"operator_id": "acme", "token": "tok-sqlite", "session_ref": "s-1"}
        first = await client.post("/sessions/authorize", json=body, headers=headers)
        again = await client.post("/sessions/authorize", json=body, headers=headers)
        assert first.status_code == again.status_code == 200
        assert first.json() == again.json()
        assert first.json()["reason"] == "score_ok"
        reused = await client.post("/sessions/authorize", json=body, headers=backend)
        assert reused.json()["reason"] == "token_reused"
        assert assessments.call_count == 1

        decision_id = first.json()["decision_id"]
        outcome = await client.post(
            f"/sessions/{decision_id}/outcome",
            json={"outcome": "fraudulent", "reasons": ["chargeback"]},
            headers=backend,
        )
        assert outcome.status_code == 202

        async def delivered() -> bool:
            return annotate.called

        await eventually(delivered, 5.0)
        listing = await client.get("/operators/acme/decisions", headers=bearer(BOOTSTRAP_KEY))
        items = listing.json()["items"]
        # Newest first: the replayed token's decision, then the annotated one.
        assert [i["outcome"] for i in items] == [None, "fraudulent"]
    # The generated development key ring lives beside the database.
    assert (tmp_path / "var" / "encryption-keys").stat().st_mode & 0o777 == 0o600
