"""is_unavailable: an outage (retry, buffer, 503) told apart from a statement that is wrong."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc

from app.db import is_unavailable


def wrapped(orig: BaseException, *, invalidated: bool = False) -> sa_exc.DBAPIError:
    error = sa_exc.DBAPIError("INSERT …", {}, orig, connection_invalidated=invalidated)
    error.__cause__ = orig
    return error


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "refused"),
        ConnectionResetError(104, "reset"),
        TimeoutError(),
        sa_exc.TimeoutError("QueuePool limit reached"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.TooManyConnectionsError("too many clients"),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.InternalClientError("unexpected message"),
        wrapped(asyncpg.AdminShutdownError("terminating")),
        wrapped(Exception("gone"), invalidated=True),
    ],
    ids=repr,
)
def test_outages_are_recognised(error: BaseException) -> None:
    assert is_unavailable(error)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.UniqueViolationError("duplicate key"),
        asyncpg.UndefinedColumnError("column does not exist"),
        wrapped(asyncpg.UniqueViolationError("duplicate key")),
        sa_exc.IntegrityError("INSERT …", {}, Exception("duplicate")),
        ValueError("naive datetime"),
    ],
    ids=repr,
)
def test_wrong_statements_are_not_outages(error: BaseException) -> None:
    assert not is_unavailable(error)
