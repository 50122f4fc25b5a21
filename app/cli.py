"""The `chargegate` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def migrate(settings: Settings) -> None:
    """Alembic upgrade to head (the only way the schema is made)."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["settings"] = settings
    config.attributes["configure_logging"] = False
    command.upgrade(config, "head")


def _serve(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    from app.logging import configure_logging
    from app.main import REQUESTS_BUDGET

    configure_logging(settings.log_level)
    if settings.is_embedded_database:
        migrate(settings)
    uvicorn.run(
        "app.main:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_seconds * REQUESTS_BUDGET)),
    )


async def _create_admin_key(settings: Settings, name: str) -> str:
    from app.auth import repository
    from app.auth.keys import Role
    from app.db import create_engine, utcnow

    engine = create_engine(settings)
    try:
        async with engine.begin() as conn:
            _, raw_key = await repository.insert_key(
                conn, name, Role.PLATFORM_ADMIN, None, None, utcnow()
            )
    finally:
        await engine.dispose()
    return raw_key


def export_openapi() -> str:
    from app.main import create_app

    document = create_app(Settings()).openapi()
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chargegate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the production server (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)

    commands.add_parser("migrate", help="apply database migrations (alembic upgrade head)")

    dev = commands.add_parser(
        "dev",
        help="run the local stack on 127.0.0.1: chargegate with embedded SQLite under var/, "
        "the reCAPTCHA Enterprise emulator and a demo portal at /demo",
    )
    dev.add_argument("--port", type=int, default=8000)

    admin = commands.add_parser("create-admin-key", help="print a new platform_admin API key")
    admin.add_argument("--name", default="admin (created with the CLI)")

    commands.add_parser(
        "rotate-encryption-key",
        help="re-encrypt every stored credential under the first key of "
        "CHARGEGATE_ENCRYPTION_KEYS (safe while the service runs; exit 1 if any cannot be)",
    )

    emulator = commands.add_parser(
        "emulator", help="run the offline reCAPTCHA Enterprise emulator (development and tests)"
    )
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8085)

    export = commands.add_parser("openapi", help="print the OpenAPI document")
    export.add_argument("--output", type=Path, help="write to this file instead of stdout")

    args = parser.parse_args(argv)
    settings = Settings()
    if args.command == "serve":
        _serve(args, settings)
    elif args.command == "migrate":
        migrate(settings)
    elif args.command == "dev":
        from app.dev.stack import run as run_dev

        run_dev(args.port)
    elif args.command == "create-admin-key":
        if settings.is_embedded_database:
            migrate(settings)
        print(asyncio.run(_create_admin_key(settings, args.name)))
    elif args.command == "rotate-encryption-key":
        from app.credentials.rotate import main as rotate_encryption_key

        if settings.is_embedded_database:
            migrate(settings)
        return rotate_encryption_key(settings)
    elif args.command == "emulator":
        from app.recaptcha.emulator import run

        run(args.host, args.port)
    elif args.command == "openapi":
        document = export_openapi()
        if args.output:
            args.output.write_text(document)
        else:
            sys.stdout.write(document)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
