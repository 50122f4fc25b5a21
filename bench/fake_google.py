"""A minimal keep-alive HTTP server answering reCAPTCHA Enterprise assessments.

The benchmark's upstream: aiohttp's server, no checks, so it is never the bottleneck.
`POST /_delay?ms=N` sets how long every answer waits (the upstream latency under test).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
from datetime import UTC, datetime

from aiohttp import web

_ids = itertools.count()
_delay = {"seconds": 0.0}


async def assess(request: web.Request) -> web.Response:
    body = await request.json()
    event = body.get("event", {})
    if _delay["seconds"]:
        await asyncio.sleep(_delay["seconds"])
    answer = {
        "name": f"projects/123456789/assessments/{next(_ids):x}",
        "event": event,
        "riskAnalysis": {"score": 0.8999999761581421, "reasons": []},
        "tokenProperties": {
            "valid": True,
            "invalidReason": "INVALID_REASON_UNSPECIFIED",
            "hostname": "portal.bench.example",
            "action": event.get("expectedAction", "start_session"),
            "createTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        },
    }
    return web.Response(body=json.dumps(answer), content_type="application/json")


async def set_delay(request: web.Request) -> web.Response:
    _delay["seconds"] = float(request.query.get("ms", "0")) / 1000
    return web.json_response({"delay_ms": _delay["seconds"] * 1000})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_post("/v1/projects/{project}/assessments", assess)
    app.router.add_post("/_delay", set_delay)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
