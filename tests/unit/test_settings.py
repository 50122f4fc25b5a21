"""Settings: the database URL forms API.md accepts, and the embedded default."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import Settings


@pytest.mark.parametrize(
    ("given", "resolved"),
    [
        ("postgresql://u@db/cg", "postgresql+asyncpg://u@db/cg"),
        ("postgresql+asyncpg://u@db/cg", "postgresql+asyncpg://u@db/cg"),
        ("sqlite:///var/x.db", "sqlite+aiosqlite:///var/x.db"),
        ("sqlite+aiosqlite:///var/x.db", "sqlite+aiosqlite:///var/x.db"),
    ],
)
def test_database_urls_get_the_async_driver(given: str, resolved: str) -> None:
    assert Settings(database_url=given).resolved_database_url == resolved


def test_without_a_url_the_database_is_an_embedded_file_under_var(tmp_path: Path) -> None:
    settings = Settings(database_url=None, var_dir=tmp_path / "var")
    assert settings.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path}/var/chargegate.db"
    assert settings.is_embedded_database


def test_other_database_schemes_are_refused() -> None:
    with pytest.raises(ValueError, match="CHARGEGATE_DATABASE_URL"):
        _ = Settings(database_url="mysql://u@db/cg").resolved_database_url


def test_the_state_cache_cannot_outlast_the_two_second_promise() -> None:
    with pytest.raises(ValueError, match="state_cache_seconds"):
        Settings(state_cache_seconds=1.5)
