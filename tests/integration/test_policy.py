"""The operator policy: defaults, PUT/PATCH semantics, validation, versions, ETags, audit log."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from tests.conftest import ADMIN, PROJECT, SITE_KEY, Gate, bearer, count_rows, running

POLICY = "/operators/acme/policy"
AUDIT = "/operators/acme/audit-log"

DEFAULTS: dict[str, Any] = {
    "enabled": False,
    "mode": "enforce",
    "score_threshold": 0.5,
    "expected_action": "start_session",
    "allowed_hostnames": [],
    "max_token_age_seconds": 120,
    "fail_mode": "closed",
    "site_key": None,
    "gcp_project_id": None,
    "max_authorize_per_minute": None,
}
READ_ONLY = {"version", "updated_at", "updated_by", "credentials_configured"}
MERGE_PATCH = {"content-type": "application/merge-patch+json"}


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert isinstance(body["type"], str)
    assert isinstance(body["title"], str)
    assert isinstance(body["detail"], str)
    return body


def writable(policy: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in policy.items() if k not in READ_ONLY}


async def get_policy(client: httpx.AsyncClient, headers: dict[str, str] = ADMIN) -> dict[str, Any]:
    response = await client.get(POLICY, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == f'"{response.json()["version"]}"'
    body: dict[str, Any] = response.json()
    return body


async def audit_items(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await client.get(AUDIT, params=params, headers=ADMIN)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def patch(
    client: httpx.AsyncClient, fields: dict[str, Any], **headers: str
) -> httpx.Response:
    return await client.patch(
        POLICY, content=json.dumps(fields), headers={**ADMIN, **MERGE_PATCH, **headers}
    )


@pytest.fixture
async def acme(gate: Gate) -> Gate:
    await gate.create_operator("acme")
    return gate


# ---------------------------------------------------------------------------
# Defaults and reading.


async def test_new_operator_has_the_default_policy(acme: Gate) -> None:
    response = await acme.client.get(POLICY, headers=ADMIN)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["etag"] == '"1"'
    body = response.json()
    assert writable(body) == DEFAULTS
    assert body["version"] == 1
    assert body["credentials_configured"] is False
    assert body["updated_by"] == "bootstrap"
    assert body["updated_at"].endswith("Z")
    datetime.fromisoformat(body["updated_at"])
    assert set(body) == set(DEFAULTS) | READ_ONLY


async def test_policy_of_an_unknown_operator_is_404(gate: Gate) -> None:
    assert_problem(await gate.client.get("/operators/nope/policy", headers=ADMIN), 404)
    assert_problem(await gate.client.put("/operators/nope/policy", json={}, headers=ADMIN), 404)
    assert_problem(await gate.client.patch("/operators/nope/policy", json={}, headers=ADMIN), 404)
    assert_problem(await gate.client.get("/operators/nope/audit-log", headers=ADMIN), 404)


async def test_credentials_configured_reflects_stored_credentials(
    acme: Gate, service_account: dict[str, str]
) -> None:
    await acme.put_credentials("acme", service_account)
    policy = await get_policy(acme.client)
    assert policy["credentials_configured"] is True
    # Storing credentials is not a policy change.
    assert policy["version"] == 1


# ---------------------------------------------------------------------------
# PUT: the whole policy.


async def test_put_replaces_the_whole_policy_and_omitted_fields_take_defaults(acme: Gate) -> None:
    await acme.set_policy(
        "acme",
        mode="monitor",
        score_threshold=0.7,
        allowed_hostnames=["portal.acme.example"],
        fail_mode="open",
        site_key=SITE_KEY,
        gcp_project_id=PROJECT,
        max_token_age_seconds=300,
        expected_action="login",
    )
    response = await acme.client.put(POLICY, json={"score_threshold": 0.3}, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == '"3"'
    body = response.json()
    assert writable(body) == {**DEFAULTS, "score_threshold": 0.3}
    assert body["version"] == 3
    assert await get_policy(acme.client) == body


async def test_put_of_an_empty_object_restores_the_defaults(acme: Gate) -> None:
    await acme.set_policy("acme", mode="monitor")
    response = await acme.client.put(POLICY, json={}, headers=ADMIN)
    assert response.status_code == 200
    assert writable(response.json()) == DEFAULTS
    assert response.json()["version"] == 3


async def test_get_modify_put_works_with_read_only_fields_in_the_body(acme: Gate) -> None:
    policy = await get_policy(acme.client)
    policy["score_threshold"] = 0.8
    policy["version"] = 42
    policy["updated_by"] = "key_forged"
    policy["credentials_configured"] = True
    response = await acme.client.put(POLICY, json=policy, headers=ADMIN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["score_threshold"] == 0.8
    assert body["version"] == 2
    assert body["updated_by"] == "bootstrap"
    assert body["credentials_configured"] is False


async def test_put_with_an_unknown_field_is_422_and_changes_nothing(
    acme: Gate, database: str
) -> None:
    response = await acme.client.put(
        POLICY, json={"score_threshold": 0.9, "treshold": 0.9}, headers=ADMIN
    )
    body = assert_problem(response, 422)
    assert any(e["loc"][-1] == "treshold" for e in body["errors"])
    policy = await get_policy(acme.client)
    assert policy["version"] == 1
    assert policy["score_threshold"] == 0.5
    assert await count_rows(database, "audit_log") == 0


@pytest.mark.parametrize(
    "body",
    [
        pytest.param([], id="array"),
        pytest.param("policy", id="string"),
        pytest.param(None, id="null"),
    ],
)
async def test_put_of_a_non_object_is_422(acme: Gate, body: Any) -> None:
    response = await acme.client.put(POLICY, content=json.dumps(body), headers=ADMIN)
    assert_problem(response, 422)


async def test_put_of_malformed_json_is_422(acme: Gate) -> None:
    response = await acme.client.put(
        POLICY, content=b'{"enabled": fa', headers={**ADMIN, "content-type": "application/json"}
    )
    assert_problem(response, 422)


# ---------------------------------------------------------------------------
# PATCH: JSON merge patch.


@pytest.mark.parametrize("content_type", ["application/merge-patch+json", "application/json"])
async def test_patch_changes_only_the_given_fields(acme: Gate, content_type: str) -> None:
    response = await acme.client.patch(
        POLICY,
        content=json.dumps({"mode": "monitor", "score_threshold": 0.7}),
        headers={**ADMIN, "content-type": content_type},
    )
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == '"2"'
    body = response.json()
    assert writable(body) == {**DEFAULTS, "mode": "monitor", "score_threshold": 0.7}
    assert body["version"] == 2


async def test_patch_with_a_non_json_content_type_is_rejected(acme: Gate) -> None:
    response = await acme.client.patch(
        POLICY,
        content=json.dumps({"mode": "monitor"}),
        headers={**ADMIN, "content-type": "text/plain"},
    )
    assert response.status_code in (415, 422)
    assert response.headers["content-type"] == "application/problem+json"
    assert (await get_policy(acme.client))["mode"] == "enforce"


async def test_patch_null_clears_site_key_and_project(acme: Gate) -> None:
    await acme.set_policy("acme", site_key=SITE_KEY, gcp_project_id=PROJECT)
    response = await patch(acme.client, {"site_key": None, "gcp_project_id": None})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["site_key"] is None
    assert body["gcp_project_id"] is None
    assert body["version"] == 3


@pytest.mark.parametrize(
    "field",
    [
        "enabled",
        "mode",
        "score_threshold",
        "expected_action",
        "allowed_hostnames",
        "max_token_age_seconds",
        "fail_mode",
    ],
)
async def test_patch_null_for_a_non_nullable_field_is_422(acme: Gate, field: str) -> None:
    companion = {"expected_action": "login"} if field != "expected_action" else {"mode": "monitor"}
    body = assert_problem(await patch(acme.client, {field: None, **companion}), 422)
    assert [e["loc"] for e in body["errors"]] == [["body", field]]
    assert field in body["detail"]
    assert (await get_policy(acme.client))["version"] == 1


async def test_patch_ignores_read_only_fields(acme: Gate) -> None:
    response = await patch(
        acme.client,
        {"version": 99, "updated_by": "key_x", "credentials_configured": True, "mode": "monitor"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"] == 2
    assert body["mode"] == "monitor"
    assert body["updated_by"] == "bootstrap"
    assert body["credentials_configured"] is False


async def test_patch_with_an_unknown_field_is_422(acme: Gate, database: str) -> None:
    body = assert_problem(await patch(acme.client, {"mode": "monitor", "colour": "red"}), 422)
    assert ["body", "colour"] in [e["loc"] for e in body["errors"]]
    assert (await get_policy(acme.client))["mode"] == "enforce"
    assert await count_rows(database, "audit_log") == 0


@pytest.mark.parametrize("body", [[], "x", 1, None], ids=["array", "string", "number", "null"])
async def test_patch_of_a_non_object_is_422(acme: Gate, body: Any) -> None:
    assert_problem(await patch(acme.client, body), 422)
    assert (await get_policy(acme.client))["version"] == 1


async def test_patch_replaces_the_hostname_list(acme: Gate) -> None:
    await acme.set_policy("acme", allowed_hostnames=["a.example", "b.example"])
    response = await patch(acme.client, {"allowed_hostnames": ["c.example"]})
    assert response.json()["allowed_hostnames"] == ["c.example"]


# ---------------------------------------------------------------------------
# Validation: every write method rejects the same bad values.

INVALID_FIELDS = [
    pytest.param({"score_threshold": -0.01}, id="threshold-below-0"),
    pytest.param({"score_threshold": 1.01}, id="threshold-above-1"),
    pytest.param({"score_threshold": "0.5"}, id="threshold-as-string"),
    pytest.param({"score_threshold": True}, id="threshold-as-bool"),
    pytest.param({"max_token_age_seconds": 0}, id="max-age-0"),
    pytest.param({"max_token_age_seconds": 3601}, id="max-age-3601"),
    pytest.param({"max_token_age_seconds": -5}, id="max-age-negative"),
    pytest.param({"max_token_age_seconds": 120.5}, id="max-age-fraction"),
    pytest.param({"max_token_age_seconds": "120"}, id="max-age-as-string"),
    pytest.param({"expected_action": ""}, id="action-empty"),
    pytest.param({"expected_action": "start session"}, id="action-space"),
    pytest.param({"expected_action": "start-session"}, id="action-dash"),
    pytest.param({"expected_action": "a" * 101}, id="action-101-chars"),
    pytest.param({"expected_action": 5}, id="action-number"),
    pytest.param({"mode": "disabled"}, id="mode-disabled"),
    pytest.param({"mode": "ENFORCE"}, id="mode-upper-case"),
    pytest.param({"mode": "off"}, id="mode-unknown"),
    pytest.param({"fail_mode": "disabled"}, id="fail-mode-disabled"),
    pytest.param({"fail_mode": "half-open"}, id="fail-mode-unknown"),
    pytest.param({"enabled": 1}, id="enabled-as-int"),
    pytest.param({"enabled": "true"}, id="enabled-as-string"),
    pytest.param({"allowed_hostnames": "portal.acme.example"}, id="hostnames-not-a-list"),
    pytest.param({"allowed_hostnames": ["https://portal.acme.example"]}, id="hostname-url"),
    pytest.param({"allowed_hostnames": ["portal acme.example"]}, id="hostname-space"),
    pytest.param({"allowed_hostnames": ["-portal.acme.example"]}, id="hostname-leading-dash"),
    pytest.param({"allowed_hostnames": [""]}, id="hostname-empty"),
    pytest.param({"allowed_hostnames": ["*.acme.example"]}, id="hostname-wildcard"),
    pytest.param({"allowed_hostnames": ["portal.acme.example:443"]}, id="hostname-port"),
    pytest.param({"allowed_hostnames": ["a" * 64 + ".example"]}, id="hostname-label-too-long"),
    pytest.param({"allowed_hostnames": [5]}, id="hostname-number"),
    pytest.param({"site_key": "has space"}, id="site-key-space"),
    pytest.param({"site_key": ""}, id="site-key-empty"),
    pytest.param({"gcp_project_id": "Bad_Project"}, id="project-bad"),
    pytest.param({"gcp_project_id": "a\u0000b-project"}, id="project-nul"),
]


@pytest.mark.parametrize("fields", INVALID_FIELDS)
async def test_put_rejects_invalid_values(
    acme: Gate, database: str, fields: dict[str, Any]
) -> None:
    response = await acme.client.put(POLICY, json=fields, headers=ADMIN)
    body = assert_problem(response, 422)
    field = next(iter(fields))
    assert any(field in e["loc"] for e in body["errors"]), body
    assert (await get_policy(acme.client))["version"] == 1
    assert await count_rows(database, "audit_log") == 0


@pytest.mark.parametrize("fields", INVALID_FIELDS)
async def test_patch_rejects_invalid_values(
    acme: Gate, database: str, fields: dict[str, Any]
) -> None:
    response = await patch(acme.client, fields)
    body = assert_problem(response, 422)
    field = next(iter(fields))
    assert any(field in e["loc"] for e in body["errors"]), body
    assert (await get_policy(acme.client))["version"] == 1
    assert await count_rows(database, "audit_log") == 0


async def test_validation_errors_do_not_echo_the_input(acme: Gate) -> None:
    marker = "secret-looking-value-xyz"
    response = await acme.client.put(POLICY, json={"site_key": marker + " !"}, headers=ADMIN)
    assert_problem(response, 422)
    assert marker not in response.text


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"score_threshold": 0.0}, {"score_threshold": 0.0}, id="threshold-0"),
        pytest.param({"score_threshold": 1.0}, {"score_threshold": 1.0}, id="threshold-1"),
        pytest.param({"score_threshold": 1}, {"score_threshold": 1.0}, id="threshold-integer-1"),
        pytest.param({"max_token_age_seconds": 1}, {"max_token_age_seconds": 1}, id="max-age-1"),
        pytest.param(
            {"max_token_age_seconds": 3600}, {"max_token_age_seconds": 3600}, id="max-age-3600"
        ),
        pytest.param(
            {"expected_action": "a" * 100}, {"expected_action": "a" * 100}, id="action-100"
        ),
        pytest.param(
            {"expected_action": "Start_Session/v2"},
            {"expected_action": "Start_Session/v2"},
            id="action-slash",
        ),
        pytest.param({"mode": "monitor"}, {"mode": "monitor"}, id="monitor"),
        pytest.param({"fail_mode": "open"}, {"fail_mode": "open"}, id="fail-open"),
        pytest.param(
            {"allowed_hostnames": ["portal.acme.example", "acme.example"]},
            {"allowed_hostnames": ["acme.example", "portal.acme.example"]},
            id="hostnames",
        ),
        pytest.param(
            {"allowed_hostnames": ["localhost"]},
            {"allowed_hostnames": ["localhost"]},
            id="single-label",
        ),
        pytest.param(
            {"gcp_project_id": "123456789012"},
            {"gcp_project_id": "123456789012"},
            id="project-number",
        ),
    ],
)
async def test_boundary_values_are_accepted(
    acme: Gate, fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    response = await acme.client.put(POLICY, json=fields, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert writable(response.json()) == {**DEFAULTS, **expected}


# ---------------------------------------------------------------------------
# enabled: true and its prerequisites.


async def test_enabling_without_anything_configured_names_every_missing_piece(
    acme: Gate, database: str
) -> None:
    body = assert_problem(await patch(acme.client, {"enabled": True}), 422)
    for missing in ("site_key", "gcp_project_id", "credentials"):
        assert missing in body["detail"]
    assert sorted(e["loc"][-1] for e in body["errors"]) == [
        "credentials",
        "gcp_project_id",
        "site_key",
    ]
    assert (await get_policy(acme.client))["enabled"] is False
    assert await count_rows(database, "audit_log") == 0


async def test_enabling_with_site_key_and_project_but_no_credentials_names_credentials(
    acme: Gate,
) -> None:
    response = await acme.client.put(
        POLICY,
        json={"enabled": True, "site_key": SITE_KEY, "gcp_project_id": PROJECT},
        headers=ADMIN,
    )
    body = assert_problem(response, 422)
    assert [e["loc"][-1] for e in body["errors"]] == ["credentials"]
    assert "credentials" in body["detail"]
    assert "site_key" not in body["detail"]


async def test_enabling_with_credentials_but_no_site_key_names_site_key_and_project(
    acme: Gate, service_account: dict[str, str]
) -> None:
    await acme.put_credentials("acme", service_account)
    body = assert_problem(await patch(acme.client, {"enabled": True}), 422)
    assert sorted(e["loc"][-1] for e in body["errors"]) == ["gcp_project_id", "site_key"]
    assert "credentials" not in [e["loc"][-1] for e in body["errors"]]


async def test_enabling_with_everything_configured_works(
    acme: Gate, service_account: dict[str, str]
) -> None:
    await acme.put_credentials("acme", service_account)
    response = await patch(
        acme.client, {"enabled": True, "site_key": SITE_KEY, "gcp_project_id": PROJECT}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["enabled"] is True
    assert body["credentials_configured"] is True
    assert body["version"] == 2


async def test_clearing_the_site_key_of_an_enabled_policy_is_422(
    acme: Gate, service_account: dict[str, str]
) -> None:
    await acme.put_credentials("acme", service_account)
    await acme.set_policy("acme", enabled=True, site_key=SITE_KEY, gcp_project_id=PROJECT)
    body = assert_problem(await patch(acme.client, {"site_key": None}), 422)
    assert [e["loc"][-1] for e in body["errors"]] == ["site_key"]
    assert (await get_policy(acme.client))["site_key"] == SITE_KEY


# ---------------------------------------------------------------------------
# Versions: only a real change bumps the version and writes an audit entry.


async def test_each_change_bumps_the_version_by_one(acme: Gate) -> None:
    for expected, threshold in enumerate((0.6, 0.7, 0.8), start=2):
        body = await acme.set_policy("acme", score_threshold=threshold)
        assert body["version"] == expected


async def test_a_no_op_patch_keeps_version_and_writes_no_audit(acme: Gate, database: str) -> None:
    before = await acme.set_policy("acme", mode="monitor")
    assert await count_rows(database, "audit_log") == 1
    response = await patch(acme.client, {"mode": "monitor"})
    assert response.status_code == 200
    assert response.headers["etag"] == '"2"'
    assert response.json() == before
    assert await count_rows(database, "audit_log") == 1


async def test_a_no_op_put_keeps_version_and_writes_no_audit(acme: Gate, database: str) -> None:
    policy = await get_policy(acme.client)
    response = await acme.client.put(POLICY, json=policy, headers=ADMIN)
    assert response.status_code == 200
    assert response.json() == policy
    response = await acme.client.put(POLICY, json={}, headers=ADMIN)
    assert response.status_code == 200
    assert response.json()["version"] == 1
    assert await count_rows(database, "audit_log") == 0


async def test_an_empty_patch_is_a_no_op(acme: Gate, database: str) -> None:
    response = await patch(acme.client, {})
    assert response.status_code == 200
    assert response.json()["version"] == 1
    assert await count_rows(database, "audit_log") == 0


async def test_the_same_hostnames_in_another_order_or_case_are_a_no_op(
    acme: Gate, database: str
) -> None:
    await acme.set_policy("acme", allowed_hostnames=["b.example", "a.example"])
    response = await patch(acme.client, {"allowed_hostnames": ["A.example", "b.example."]})
    assert response.status_code == 200
    assert response.json()["version"] == 2
    assert await count_rows(database, "audit_log") == 1


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
async def test_non_finite_thresholds_are_422(acme: Gate, literal: str) -> None:
    content = '{"score_threshold": ' + literal + "}"
    for method in ("PUT", "PATCH"):
        response = await acme.client.request(
            method, POLICY, content=content, headers={**ADMIN, "content-type": "application/json"}
        )
        assert response.status_code in (400, 422), response.text
        assert response.headers["content-type"] == "application/problem+json"
    assert (await get_policy(acme.client))["version"] == 1


async def test_updated_by_and_updated_at_follow_the_writer(acme: Gate) -> None:
    admin = await acme.create_key("operator_admin", ["acme"])
    before = await get_policy(acme.client)
    response = await acme.client.patch(
        POLICY, json={"mode": "monitor"}, headers=bearer(admin["key"])
    )
    assert response.status_code == 200
    body = response.json()
    assert body["updated_by"] == admin["id"]
    assert datetime.fromisoformat(body["updated_at"]) > datetime.fromisoformat(before["updated_at"])


# ---------------------------------------------------------------------------
# If-Match.


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_if_match_with_the_current_etag_is_honoured(acme: Gate, method: str) -> None:
    await acme.set_policy("acme", mode="monitor")
    response = await acme.client.request(
        method, POLICY, json={"score_threshold": 0.9}, headers={**ADMIN, "If-Match": '"2"'}
    )
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == '"3"'


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_stale_if_match_is_412_and_changes_nothing(
    acme: Gate, database: str, method: str
) -> None:
    await acme.set_policy("acme", mode="monitor")
    response = await acme.client.request(
        method, POLICY, json={"score_threshold": 0.9}, headers={**ADMIN, "If-Match": '"1"'}
    )
    body = assert_problem(response, 412)
    assert '"2"' in body["detail"]
    policy = await get_policy(acme.client)
    assert policy["version"] == 2
    assert policy["score_threshold"] == 0.5
    assert await count_rows(database, "audit_log") == 1


async def test_if_match_star_matches_any_version(acme: Gate) -> None:
    response = await patch(acme.client, {"mode": "monitor"}, **{"If-Match": "*"})
    assert response.status_code == 200
    assert response.json()["version"] == 2


async def test_if_match_with_a_list_including_the_current_etag_is_honoured(acme: Gate) -> None:
    response = await patch(acme.client, {"mode": "monitor"}, **{"If-Match": '"7", "1"'})
    assert response.status_code == 200
    assert response.json()["version"] == 2


async def test_if_match_without_quotes_is_412(acme: Gate) -> None:
    assert_problem(await patch(acme.client, {"mode": "monitor"}, **{"If-Match": "1"}), 412)


async def test_concurrent_writers_with_the_same_etag_one_wins(acme: Gate) -> None:
    async def write(threshold: float) -> httpx.Response:
        return await acme.client.patch(
            POLICY, json={"score_threshold": threshold}, headers={**ADMIN, "If-Match": '"1"'}
        )

    responses = await asyncio.gather(*(write(t) for t in (0.6, 0.7, 0.8, 0.9)))
    assert sorted(r.status_code for r in responses) == [200, 412, 412, 412]
    winner = next(r for r in responses if r.status_code == 200).json()
    assert (await get_policy(acme.client))["score_threshold"] == winner["score_threshold"]
    assert winner["version"] == 2


# ---------------------------------------------------------------------------
# The audit log.


async def test_audit_log_shows_old_and_new_of_each_changed_field(acme: Gate) -> None:
    admin = await acme.create_key("operator_admin", ["acme"])
    response = await acme.client.patch(
        POLICY,
        json={"mode": "monitor", "score_threshold": 0.7, "allowed_hostnames": ["a.example"]},
        headers=bearer(admin["key"]),
    )
    assert response.status_code == 200
    [entry] = await audit_items(acme.client)
    assert entry["action"] == "policy.updated"
    assert entry["actor"] == admin["id"]
    assert entry["changes"] == {
        "mode": {"old": "enforce", "new": "monitor"},
        "score_threshold": {"old": 0.5, "new": 0.7},
        "allowed_hostnames": {"old": [], "new": ["a.example"]},
    }
    assert entry["at"].endswith("Z")
    assert set(entry) == {"at", "actor", "action", "changes"}


async def test_audit_log_records_the_bootstrap_actor(acme: Gate) -> None:
    await acme.set_policy("acme", site_key=SITE_KEY)
    [entry] = await audit_items(acme.client)
    assert entry["actor"] == "bootstrap"
    assert entry["changes"] == {"site_key": {"old": None, "new": SITE_KEY}}


async def test_audit_log_of_a_put_lists_fields_reset_to_defaults(acme: Gate) -> None:
    await acme.set_policy("acme", mode="monitor", fail_mode="open")
    response = await acme.client.put(POLICY, json={"fail_mode": "open"}, headers=ADMIN)
    assert response.status_code == 200
    newest = (await audit_items(acme.client))[0]
    assert newest["changes"] == {"mode": {"old": "monitor", "new": "enforce"}}


async def test_audit_log_is_newest_first_and_pages_by_cursor(acme: Gate) -> None:
    thresholds = [0.1, 0.2, 0.3, 0.4, 0.6]
    for threshold in thresholds:
        await acme.set_policy("acme", score_threshold=threshold)
    everything = await audit_items(acme.client)
    assert [e["changes"]["score_threshold"]["new"] for e in everything] == thresholds[::-1]
    ats = [datetime.fromisoformat(e["at"]) for e in everything]
    assert ats == sorted(ats, reverse=True)

    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        response = await acme.client.get(AUDIT, params=params, headers=ADMIN)
        assert response.status_code == 200
        page = response.json()
        pages.append(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [e for p in pages for e in p] == everything


async def test_audit_log_with_exactly_limit_entries_has_no_next_cursor(acme: Gate) -> None:
    await acme.set_policy("acme", score_threshold=0.1)
    await acme.set_policy("acme", score_threshold=0.2)
    response = await acme.client.get(AUDIT, params={"limit": 2}, headers=ADMIN)
    assert len(response.json()["items"]) == 2
    assert response.json()["next_cursor"] is None


async def test_audit_log_is_per_operator(acme: Gate) -> None:
    await acme.create_operator("other")
    await acme.set_policy("other", mode="monitor")
    assert await audit_items(acme.client) == []


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 501},
        {"limit": "ten"},
        {"cursor": "not-a-cursor"},
        {"cursor": "WyJ4Il0"},
    ],
    ids=["limit-0", "limit-501", "limit-text", "cursor-garbage", "cursor-wrong-type"],
)
async def test_audit_log_rejects_bad_paging_parameters(acme: Gate, params: dict[str, Any]) -> None:
    assert_problem(await acme.client.get(AUDIT, params=params, headers=ADMIN), 422)


async def test_rejected_writes_are_not_audited(acme: Gate) -> None:
    await patch(acme.client, {"enabled": True})
    await patch(acme.client, {"mode": None})
    await acme.client.put(POLICY, json={"score_threshold": 2}, headers=ADMIN)
    await patch(acme.client, {"mode": "monitor"}, **{"If-Match": '"9"'})
    assert await audit_items(acme.client) == []


# ---------------------------------------------------------------------------
# A change is in force on another replica within 2 seconds.


async def test_policy_change_reaches_another_replica_within_two_seconds(
    acme: Gate, settings: Settings
) -> None:
    async with running(create_app(settings)) as replica:
        url = "/operators/acme/site-key"
        first = await replica.get(url)
        assert first.json()["action"] == "start_session"
        await acme.set_policy("acme", expected_action="begin_charge")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while True:
            seen = (await replica.get(url)).json()["action"]
            if seen == "begin_charge" or loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        assert seen == "begin_charge"
