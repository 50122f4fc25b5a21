"""Both hot-path writers store the same rows, on the same PostgreSQL schema."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from app.db import create_engine, table_of
from app.decisions.hot_path import AsyncpgHotPath, CoreHotPath, HotPath
from app.decisions.models import Decision
from app.settings import Settings


def decision_row(decision_id: str) -> dict[str, Any]:
    return {
        "decision_id": decision_id,
        "operator_id": "acme",
        "api_key_id": "key_1",
        "decision": "deny",
        "verdict": "fail",
        "reason": "score_below_threshold",
        "score": 0.3,
        "threshold": 0.5,
        "mode": "enforce",
        "policy_version": 4,
        "assessment_name": "projects/1/assessments/x",
        "token_invalid_reason": None,
        "risk_reasons": ["AUTOMATION", "UNEXPECTED_USAGE_PATTERNS"],
        "upstream_error": None,
        "evaluated_at": datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=UTC),
        "session_ref": "s-1",
        "evse_id": "DE*ACM*E1*1",
    }


@pytest.mark.parametrize("writer", [CoreHotPath, AsyncpgHotPath])
async def test_writers_store_identical_rows_and_claim_once(
    writer: type[HotPath], settings: Settings
) -> None:
    engine = create_engine(settings)
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    hot_path: HotPath = (
        AsyncpgHotPath(autocommit, asyncio.Semaphore(2), 2)
        if writer is AsyncpgHotPath
        else CoreHotPath(autocommit, asyncio.Semaphore(2))
    )
    try:
        now = datetime.now(UTC)
        assert await hot_path.claim_token("a" * 64, now) is True
        assert await hot_path.claim_token("a" * 64, now) is False
        await hot_path.record_decision(decision_row("dec_1"))
        decisions = table_of(Decision)
        async with engine.connect() as conn:
            stored = (await conn.execute(select(decisions))).mappings().one()
        expected = {
            **decision_row("dec_1"),
            "outcome": None,
            "outcome_reasons": None,
            "outcome_at": None,
        }
        assert dict(stored) == expected
    finally:
        await engine.dispose()


async def test_the_same_token_twice_in_one_batch_is_claimed_once(settings: Settings) -> None:
    engine = create_engine(settings)
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    hot_path = AsyncpgHotPath(autocommit, asyncio.Semaphore(2), 2)
    try:
        now = datetime.now(UTC)
        # One writer: the first claim goes alone, the rest queue into one batch.
        tokens = ["b" * 64] + ["c" * 64] * 5 + ["d" * 64]
        claimed = await asyncio.gather(*(hot_path.claim_token(t, now) for t in tokens))
        assert claimed == [True, True, False, False, False, False, True]
    finally:
        await engine.dispose()
