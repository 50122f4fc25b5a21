"""The floor: only the unavoidable work of one authorize call.

Parse the same body, one POST to the same upstream through a shared client built
exactly like chargegate's (or a plain aiohttp session with FLOOR_CLIENT=aiohttp),
one INSERT into Postgres (plain SQL on a pooled asyncpg connection, the way chargegate's
hot path writes; FLOOR_DB=sqlalchemy for a SQLAlchemy Core insert), answer JSON. Run with
uvicorn like chargegate.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
from fastapi import FastAPI, Request, Response
from sqlalchemy import Column, DateTime, MetaData, String, Table, insert
from sqlalchemy.ext.asyncio import create_async_engine

from app.decisions.schemas import AuthorizeIn
from app.recaptcha.http import build_http_client

DATABASE_URL = os.environ["FLOOR_DATABASE_URL"]
UPSTREAM = os.environ["FLOOR_UPSTREAM"]
CLIENT = os.environ.get("FLOOR_CLIENT", "chargegate")
DB_WAY = os.environ.get("FLOOR_DB", "asyncpg")
INSERT_SQL = (
    "INSERT INTO floor_decisions (decision_id, operator_id, decision, evaluated_at) "
    "VALUES ($1, $2, $3, $4)"
)

metadata = MetaData()
floor_decisions = Table(
    "floor_decisions",
    metadata,
    Column("decision_id", String(40), primary_key=True),
    Column("operator_id", String(64)),
    Column("decision", String(8)),
    Column("evaluated_at", DateTime(timezone=True)),
)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine = create_async_engine(DATABASE_URL, pool_size=20, max_overflow=0)  # as chargegate
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    app.state.engine = engine.execution_options(isolation_level="AUTOCOMMIT")
    if CLIENT == "aiohttp":
        app.state.session = aiohttp.ClientSession()
        app.state.http = None
    else:
        app.state.http = build_http_client()
        app.state.session = None
    yield
    if app.state.session is not None:
        await app.state.session.close()
    if app.state.http is not None:
        await app.state.http.aclose()
    await engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.post("/sessions/authorize")
async def authorize(body: AuthorizeIn, request: Request) -> Response:
    url = f"{UPSTREAM}/v1/projects/bench-project/assessments"
    payload = {"event": {"token": body.token, "siteKey": "site", "expectedAction": "start_session"}}
    assessment: dict[str, Any]
    if request.app.state.session is not None:
        async with request.app.state.session.post(url, json=payload) as upstream:
            assessment = await upstream.json()
    else:
        upstream_response = await request.app.state.http.post(url, json=payload)
        assessment = upstream_response.json()
    decision = "allow" if assessment["riskAnalysis"]["score"] >= 0.5 else "deny"
    decision_id = "dec_" + secrets.token_hex(12)
    now = datetime.now(UTC)
    async with request.app.state.engine.connect() as conn:
        if DB_WAY == "asyncpg":
            raw = await conn.get_raw_connection()
            await raw.driver_connection.execute(
                INSERT_SQL, decision_id, body.operator_id, decision, now
            )
        else:
            await conn.execute(
                insert(floor_decisions).values(
                    decision_id=decision_id,
                    operator_id=body.operator_id,
                    decision=decision,
                    evaluated_at=now,
                )
            )
    return Response(
        json.dumps({"decision_id": decision_id, "decision": decision}),
        media_type="application/json",
    )
