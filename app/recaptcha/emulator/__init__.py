"""An offline emulator of reCAPTCHA Enterprise REST v1 (and Google's OAuth token endpoint and
enterprise.js), for development and tests: no network, no Google account.

    state = EmulatorState()
    state.add_project("acme")
    site_key = state.add_key("acme", allowed_domains=["portal.acme.example"])
    key_file = state.create_service_account("acme", token_uri="http://127.0.0.1:8085/token")
    token = state.issue_token(site_key, "start_session", "portal.acme.example", score=0.9)
    app = create_emulator_app(state)          # ASGI, mountable in-process
    run("127.0.0.1", 8085, state)             # or served by uvicorn
"""

from app.recaptcha.emulator.app import create_emulator_app
from app.recaptcha.emulator.server import EmulatorServer, run
from app.recaptcha.emulator.state import EmulatorState, FaultKind, FaultPlan, FaultTarget

__all__ = [
    "EmulatorServer",
    "EmulatorState",
    "FaultKind",
    "FaultPlan",
    "FaultTarget",
    "create_emulator_app",
    "run",
]
