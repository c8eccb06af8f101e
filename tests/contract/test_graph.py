"""The local Microsoft identity platform + Graph against shared/contracts: Graph replies against
msgraph-applications-subset.json (openapi-core, success and error alike, with the exact documented success
statuses), token-endpoint replies against the facts of azure-token-endpoint.json (as JSON Schemas).

Every reply a test receives is checked: the `graph` fixture's client validates each one as it arrives (set-up
calls too), and the tests check the statuses, codes and fields that matter on top.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.parse
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.contract.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    GRAPH_SCOPE,
    TENANT,
    Graph,
    GraphContract,
    Reply,
    TokenContract,
    start_graph,
)

pytestmark = pytest.mark.integration

APPS = "/applications"
APP = "/applications/{application-id}"
ADD_PASSWORD = "/applications/{application-id}/addPassword"
REMOVE_PASSWORD = "/applications/{application-id}/removePassword"
BY_APP_ID = "/applications(appId='{appId}')"
SERVICE_PRINCIPALS = "/servicePrincipals"


def form(**overrides: str | None) -> dict[str, str]:
    """The orchestrator's client-credentials form, with fields replaced (or dropped when None)."""
    fields: dict[str, str | None] = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "scope": GRAPH_SCOPE,
        "grant_type": "client_credentials",
        **overrides,
    }
    return {k: v for k, v in fields.items() if v is not None}


def by_app_id(app_id: str) -> str:
    return f"/applications(appId='{app_id}')"


def listing(graph: Graph, contract: GraphContract, **query: str) -> Reply:
    reply = graph.call("GET", "/applications", query=query)
    contract.check(reply, APPS)
    return reply


# -- token endpoint ------------------------------------------------------------------------------------------------


def test_token_success(graph: Graph, token_contract: TokenContract) -> None:
    reply = graph.request_token()
    body = token_contract.check(reply)
    assert reply.status == 200
    assert body["token_type"] == "Bearer" and body["expires_in"] == body["ext_expires_in"] == 3599
    assert len(body["access_token"]) >= 32 and "no-store" in reply.headers["Cache-Control"]
    assert "refresh_token" not in body  # "this grant never returns a refresh_token"

    # RFC 6749 2.3.1 client authentication (form-encoded id and secret, Basic) instead of the form fields.
    basic = base64.b64encode(f"{urllib.parse.quote(CLIENT_ID)}:{urllib.parse.quote(CLIENT_SECRET)}".encode())
    reply = graph.request_token(
        form(client_id=None, client_secret=None), headers={"Authorization": f"Basic {basic.decode()}"}
    )
    assert token_contract.check(reply)["access_token"] != body["access_token"]
    # The tenant segment is case-insensitive; the GUID form of the Graph resource is accepted too.
    assert graph.request_token(tenant=TENANT.upper()).status == 200
    reply = graph.request_token(form(scope="00000003-0000-0000-c000-000000000000/.default"))
    assert token_contract.check(reply) and reply.status == 200


@pytest.mark.parametrize(
    ("case", "fields", "status", "error", "code"),
    [
        ("no grant_type", form(grant_type=None), 400, "invalid_request", 900144),
        ("other grant", form(grant_type="password"), 400, "unsupported_grant_type", 70003),
        ("no client_id", form(client_id=None), 400, "invalid_request", 900144),
        ("no scope", form(scope=None), 400, "invalid_request", 900144),
        ("scope without /.default", form(scope="https://graph.microsoft.com/User.Read"), 400, "invalid_scope", 1002012),
        ("two scopes", form(scope=f"{GRAPH_SCOPE} https://vault.azure.net/.default"), 400, "invalid_scope", 70011),
        ("other resource", form(scope="https://vault.azure.net/.default"), 400, "invalid_resource", 500011),
        ("no secret", form(client_secret=None), 401, "invalid_client", 7000218),
        ("wrong secret", form(client_secret="wrong"), 401, "invalid_client", 7000215),
        ("unknown client", form(client_id=str(uuid.uuid4())), 400, "unauthorized_client", 700016),
        (
            "assertion",
            form(client_secret=None, client_assertion_type="urn:x", client_assertion="e.y.z"),
            401,
            "invalid_client",
            700027,
        ),
    ],
)
def test_token_errors(
    graph: Graph, token_contract: TokenContract, case: str, fields: dict[str, str], status: int, error: str, code: int
) -> None:
    correlation = str(uuid.uuid4())
    reply = graph.request_token(fields, headers={"client-request-id": correlation})
    body = token_contract.check(reply)
    assert (reply.status, body["error"], body["error_codes"]) == (status, error, [code]), (case, body)
    assert body["correlation_id"] == correlation  # the client's id comes back, as on Entra
    assert CLIENT_SECRET not in reply.data.decode()


def test_token_request_shape_errors(graph: Graph, token_contract: TokenContract) -> None:
    unknown_tenant = graph.request_token(tenant="contoso.onmicrosoft.com")
    body = token_contract.check(unknown_tenant)
    assert unknown_tenant.status == 400 and body["error"] == "invalid_request" and body["error_codes"] == [90002]

    get = graph.request_token(method="GET")
    body = token_contract.check(get)
    assert get.status == 400 and body["error_codes"] == [900561]

    as_json = graph.http("POST", graph.token_path, json.dumps(form()).encode(), {"Content-Type": "application/json"})
    body = token_contract.check(as_json)  # the body must be form-encoded: JSON carries no grant_type
    assert as_json.status == 400 and body["error_codes"] == [900144]


# -- Graph: authentication ------------------------------------------------------------------------------------------


def every_operation(app_id: str, object_id: str) -> list[tuple[str, str, Any, str]]:
    return [
        ("GET", "/applications", None, APPS),
        ("POST", "/applications", {"displayName": "x"}, APPS),
        ("GET", f"/applications/{object_id}", None, APP),
        ("PATCH", f"/applications/{object_id}", {"notes": "x"}, APP),
        ("DELETE", f"/applications/{object_id}", None, APP),
        ("POST", f"/applications/{object_id}/addPassword", {}, ADD_PASSWORD),
        ("POST", f"/applications/{object_id}/removePassword", {"keyId": str(uuid.uuid4())}, REMOVE_PASSWORD),
        ("GET", by_app_id(app_id), None, BY_APP_ID),
        ("PATCH", by_app_id(app_id), {"notes": "x"}, BY_APP_ID),
        ("POST", "/servicePrincipals", {"appId": app_id}, SERVICE_PRINCIPALS),
    ]


def test_every_operation_needs_a_valid_token(graph: Graph, graph_contract: GraphContract) -> None:
    app = graph.create_app("guarded")
    for method, path, body, template in every_operation(app["appId"], app["id"]):
        for token, message in ((None, "Access token is empty."), ("not-a-token", "Access token validation failure")):
            reply = graph.call(method, path, body, token=token, auth=token is not None)
            error = graph_contract.error(reply, 401, "InvalidAuthenticationToken", template)
            assert error["message"].startswith(message), (method, path, error)
            assert reply.headers["WWW-Authenticate"].startswith("Bearer ")
        reply = graph.call(method, path, body, headers={"Authorization": "Basic eDp5"}, auth=False)
        graph_contract.error(reply, 401, "InvalidAuthenticationToken", template)
    # nothing changed
    assert graph.call("GET", f"/applications/{app['id']}").json()["notes"] is None
    assert graph.call("GET", "/applications").json()["value"][0]["id"] == app["id"]


def test_expired_tokens_then_a_fresh_one(graph: Graph, graph_contract: GraphContract) -> None:
    old = graph.token()
    assert graph.call("GET", "/applications", token=old).status == 200
    assert graph.control("expire-tokens").json()["expired"] >= 1
    reply = graph.call("GET", "/applications", token=old)
    error = graph_contract.error(reply, 401, "InvalidAuthenticationToken", APPS)
    assert error["message"] == "Lifetime validation failed, the token is expired."
    fresh = graph.token()
    reply = graph.call("GET", "/applications", token=fresh)
    graph_contract.success(reply, APPS)


def test_token_ttl(tmp_path: Path, graph_contract: GraphContract, token_contract: TokenContract) -> None:
    server = start_graph(tmp_path, "--token-ttl", "1", graph_contract=graph_contract, token_contract=token_contract)
    try:
        reply = server.request_token()
        assert token_contract.check(reply)["expires_in"] == 1
        token = reply.json()["access_token"]
        graph_contract.success(server.call("GET", "/applications", token=token), APPS)
        time.sleep(1.2)
        expired = server.call("GET", "/applications", token=token)
        graph_contract.error(expired, 401, "InvalidAuthenticationToken", APPS)
        graph_contract.success(server.call("GET", "/applications", token=server.token()), APPS)
    finally:
        server.stop()


# -- Graph: applications ----------------------------------------------------------------------------------------


def test_application_lifecycle(graph: Graph, graph_contract: GraphContract) -> None:
    created = graph.call(
        "POST",
        "/applications",
        {
            "displayName": "kanban-acme",
            "description": "workspace login",
            "signInAudience": "AzureADMyOrg",
            "tags": ["orchestrator", "workspace:acme"],
            "web": {
                "redirectUris": ["https://web.acme.example/auth/callback", "http://localhost:3000/cb"],
                "implicitGrantSettings": {"enableIdTokenIssuance": True},
            },
            "requiredResourceAccess": [
                {
                    "resourceAppId": "00000003-0000-0000-c000-000000000000",
                    "resourceAccess": [{"id": "e1fe6dd8-ba31-4d61-89e7-88639da4683d", "type": "Scope"}],
                }
            ],
        },
    )
    graph_contract.success(created, APPS)
    app = created.json()
    assert created.headers["Location"] == f"{graph.base}/v1.0/applications/{app['id']}"
    assert uuid.UUID(app["id"]) and uuid.UUID(app["appId"]) and app["id"] != app["appId"]
    assert app["displayName"] == "kanban-acme" and app["passwordCredentials"] == []
    assert app["web"]["redirectUris"] == ["https://web.acme.example/auth/callback", "http://localhost:3000/cb"]
    assert app["web"]["implicitGrantSettings"] == {"enableAccessTokenIssuance": False, "enableIdTokenIssuance": True}
    assert app["@odata.context"].endswith("/v1.0/$metadata#applications/$entity")
    assert datetime.fromisoformat(app["createdDateTime"].replace("Z", "+00:00")) <= datetime.now(UTC)

    got = graph.call("GET", f"/applications/{app['id']}")
    graph_contract.success(got, APP)
    assert got.json() == app
    by_key = graph.call("GET", by_app_id(app["appId"]))
    graph_contract.success(by_key, BY_APP_ID)
    assert by_key.json() == app
    selected = graph.call("GET", f"/applications/{app['id']}", query={"$select": "appId,displayName"})
    graph_contract.success(selected, APP)
    assert {k: v for k, v in selected.json().items() if not k.startswith("@")} == {
        "appId": app["appId"],
        "displayName": "kanban-acme",
    }

    deleted = graph.call("DELETE", f"/applications/{app['id']}")
    graph_contract.success(deleted, APP)
    assert deleted.data == b""
    for method, path, template in (
        ("GET", f"/applications/{app['id']}", APP),
        ("DELETE", f"/applications/{app['id']}", APP),
        ("PATCH", f"/applications/{app['id']}", APP),
        ("POST", f"/applications/{app['id']}/addPassword", ADD_PASSWORD),
        ("GET", by_app_id(app["appId"]), BY_APP_ID),
        ("PATCH", by_app_id(app["appId"]), BY_APP_ID),
    ):
        gone = graph.call(method, path, {"notes": "x"} if method == "PATCH" else None)
        error = graph_contract.error(gone, 404, "Request_ResourceNotFound", template)
        assert "does not exist" in error["message"]


def test_patch_merges_complex_values(graph: Graph, graph_contract: GraphContract) -> None:
    app = graph.create_app(
        "merge",
        tags=["a"],
        web={"redirectUris": ["https://one.example/cb"], "homePageUrl": "https://one.example/"},
    )
    patch = {"web": {"redirectUris": ["https://two.example/cb", "https://three.example/cb"]}, "notes": "n"}
    reply = graph.call("PATCH", f"/applications/{app['id']}", patch)
    graph_contract.success(reply, APP)  # 204 and no body, as documented (the document's 2XX declares one)
    assert reply.data == b""

    after = graph.call("GET", f"/applications/{app['id']}").json()
    assert after["web"]["redirectUris"] == ["https://two.example/cb", "https://three.example/cb"]  # list replaced
    assert after["web"]["homePageUrl"] == "https://one.example/"  # sibling kept
    assert after["web"]["redirectUriSettings"] == [
        {"uri": "https://two.example/cb", "index": None},
        {"uri": "https://three.example/cb", "index": None},
    ]
    assert after["notes"] == "n" and after["tags"] == ["a"] and after["displayName"] == "merge"

    reply = graph.call(
        "PATCH", by_app_id(app["appId"]), {"web": {"implicitGrantSettings": {"enableIdTokenIssuance": True}}}
    )
    assert reply.status == 204 and reply.data == b""  # "204 when updated"
    graph_contract.check(reply, BY_APP_ID)
    again = graph.call("GET", f"/applications/{app['id']}").json()
    assert again["web"]["implicitGrantSettings"] == {"enableAccessTokenIssuance": False, "enableIdTokenIssuance": True}
    assert again["web"]["redirectUris"] == after["web"]["redirectUris"]

    # A read-modify-write round trip of the whole `web` value is accepted.
    round_trip = graph.call("PATCH", f"/applications/{app['id']}", {"web": again["web"], "tags": []})
    graph_contract.success(round_trip, APP)
    assert graph.call("GET", f"/applications/{app['id']}").json()["tags"] == []


@pytest.mark.parametrize(
    ("case", "body", "target"),
    [
        ("no displayName", {"description": "x"}, "displayName"),
        ("empty displayName", {"displayName": "  "}, "displayName"),
        ("displayName not a string", {"displayName": 42}, "displayName"),
        ("tags not a list", {"displayName": "x", "tags": "a"}, "tags"),
        ("http redirect", {"displayName": "x", "web": {"redirectUris": ["http://example.com/cb"]}}, "web.redirectUris"),
        ("relative redirect", {"displayName": "x", "web": {"redirectUris": ["/cb"]}}, "web.redirectUris"),
        (
            "redirect with fragment",
            {"displayName": "x", "web": {"redirectUris": ["https://a.example/#x"]}},
            "web.redirectUris",
        ),
        ("spa ftp redirect", {"displayName": "x", "spa": {"redirectUris": ["ftp://a.example/"]}}, "spa.redirectUris"),
        ("web not an object", {"displayName": "x", "web": ["https://a.example/"]}, "web"),
        ("web null", {"displayName": "x", "web": None}, "web"),
        (
            "bad implicit grant",
            {"displayName": "x", "web": {"implicitGrantSettings": {"enableIdTokenIssuance": "yes"}}},
            "web.implicitGrantSettings.enableIdTokenIssuance",
        ),
        ("unknown audience", {"displayName": "x", "signInAudience": "Everyone"}, "signInAudience"),
        ("read-only appId", {"displayName": "x", "appId": str(uuid.uuid4())}, "appId"),
        ("passwordCredentials", {"displayName": "x", "passwordCredentials": []}, "passwordCredentials"),
        ("unknown property", {"displayName": "x", "colour": "blue"}, "colour"),
        ("unknown nested property", {"displayName": "x", "web": {"colour": "blue"}}, "web.colour"),
        (
            "bad resource access",
            {
                "displayName": "x",
                "requiredResourceAccess": [{"resourceAppId": "g", "resourceAccess": [{"id": "x", "type": "Role"}]}],
            },
            "requiredResourceAccess.resourceAccess.id",
        ),
    ],
)
def test_create_refuses_invalid_bodies(
    graph: Graph, graph_contract: GraphContract, case: str, body: dict[str, Any], target: str
) -> None:
    reply = graph.call("POST", "/applications", body)
    error = graph_contract.error(reply, 400, "Request_BadRequest", APPS)
    assert target in error["message"] or any(d.get("target") == target for d in error.get("details", [])), (case, error)
    assert graph.call("GET", "/applications").json()["value"] == []


def test_patch_refuses_invalid_bodies_without_change(graph: Graph, graph_contract: GraphContract) -> None:
    app = graph.create_app("strict", web={"redirectUris": ["https://ok.example/cb"]})
    bodies: list[Any] = [
        {"web": {"redirectUris": ["https://ok.example/cb", "http://evil.example/cb"]}},
        {"displayName": None},
        {"tags": [1]},
        {"passwordCredentials": [{"displayName": "x"}]},
        {"id": str(uuid.uuid4())},
        [],
    ]
    for body in bodies:
        reply = graph.call("PATCH", f"/applications/{app['id']}", body)
        graph_contract.error(reply, 400, "Request_BadRequest", APP)
    unreadable = graph.call("PATCH", f"/applications/{app['id']}", raw=b"{not json")
    graph_contract.error(unreadable, 400, "BadRequest", APP)
    empty = graph.call("POST", "/applications", raw=b"")
    graph_contract.error(empty, 400, "Request_BadRequest", APPS)
    assert graph.call("GET", f"/applications/{app['id']}").json() == graph.call("GET", by_app_id(app["appId"])).json()
    assert graph.call("GET", f"/applications/{app['id']}").json()["web"]["redirectUris"] == ["https://ok.example/cb"]


def test_loopback_and_public_client_redirects(graph: Graph, graph_contract: GraphContract) -> None:
    reply = graph.call(
        "POST",
        "/applications",
        {
            "displayName": "redirects",
            "web": {
                "redirectUris": ["http://localhost/cb", "http://127.0.0.1:8400/cb", "https://x.example:8443/a?b=c"]
            },
            "spa": {"redirectUris": ["https://spa.example/"]},
            "publicClient": {"redirectUris": ["msal5b0f9d3c://auth", "http://localhost"]},
        },
    )
    graph_contract.success(reply, APPS)
    refused = graph.call(
        "POST", "/applications", {"displayName": "x", "publicClient": {"redirectUris": ["http://example.com"]}}
    )
    graph_contract.error(refused, 400, "Request_BadRequest", APPS)


def test_malformed_ids(graph: Graph, graph_contract: GraphContract) -> None:
    reply = graph.call("GET", "/applications/not-a-guid")
    error = graph_contract.error(reply, 400, "Request_BadRequest", APP)
    assert error["message"] == "Invalid object identifier 'not-a-guid'."
    unknown = graph.call("GET", f"/applications/{uuid.uuid4()}")
    graph_contract.error(unknown, 404, "Request_ResourceNotFound", APP)
    # An application's appId is not its object id.
    app = graph.create_app("ids")
    graph_contract.error(graph.call("GET", f"/applications/{app['appId']}"), 404, "Request_ResourceNotFound", APP)
    graph_contract.error(graph.call("GET", by_app_id(app["id"])), 404, "Request_ResourceNotFound", BY_APP_ID)


def test_list_filter_select_top(graph: Graph, graph_contract: GraphContract) -> None:
    alpha = graph.create_app("alpha", tags=["team:a"], identifierUris=["api://alpha"])
    quoted = graph.create_app("O'Brien's app", tags=["team:b"])
    for index in range(3):
        graph.create_app(f"bulk-{index}", tags=["bulk"])

    everything = listing(graph, graph_contract)
    assert everything.status == 200
    body = everything.json()
    assert body["@odata.context"] == f"{graph.base}/v1.0/$metadata#applications"
    assert [a["displayName"] for a in body["value"]] == ["alpha", "O'Brien's app", "bulk-0", "bulk-1", "bulk-2"]
    assert "@odata.nextLink" not in body

    def names(**query: str) -> list[str]:
        reply = listing(graph, graph_contract, **query)
        assert reply.status == 200, reply.data
        return [a.get("displayName", a.get("id")) for a in reply.json()["value"]]

    assert names(**{"$filter": "displayName eq 'alpha'"}) == ["alpha"]
    assert names(**{"$filter": "displayName eq 'ALPHA'"}) == ["alpha"]  # the directory ignores case
    assert names(**{"$filter": "displayName eq 'O''Brien''s app'"}) == ["O'Brien's app"]
    assert names(**{"$filter": f"appId eq '{quoted['appId']}'"}) == ["O'Brien's app"]
    assert names(**{"$filter": f"id eq '{alpha['id']}'"}) == ["alpha"]
    assert names(**{"$filter": "displayName eq 'nobody'"}) == []
    assert names(**{"$filter": "startswith(displayName,'bulk-')"}) == ["bulk-0", "bulk-1", "bulk-2"]
    assert names(**{"$filter": "tags/any(t:t eq 'team:b')"}) == ["O'Brien's app"]
    assert names(**{"$filter": "identifierUris/any(x:x eq 'api://alpha')"}) == ["alpha"]
    assert names(
        **{"$filter": "displayName eq 'alpha' or (startswith(displayName, 'bulk') and tags/any(t:t eq 'bulk'))"}
    ) == ["alpha", "bulk-0", "bulk-1", "bulk-2"]

    selected = listing(graph, graph_contract, **{"$filter": "displayName eq 'alpha'", "$select": "id,appId,web"})
    body = selected.json()
    assert body["@odata.context"].endswith("$metadata#applications(id,appId,web)")
    assert body["value"] == [{"id": alpha["id"], "appId": alpha["appId"], "web": alpha["web"]}]

    # $top pages with @odata.nextLink ($skiptoken), keeping the other options.
    first = listing(graph, graph_contract, **{"$top": "2", "$select": "displayName", "$count": "true"})
    page = first.json()
    assert [a["displayName"] for a in page["value"]] == ["alpha", "O'Brien's app"] and page["@odata.count"] == 5
    seen = [a["displayName"] for a in page["value"]]
    while "@odata.nextLink" in page:
        link = urllib.parse.urlsplit(page["@odata.nextLink"])
        assert f"{link.scheme}://{link.netloc}" == graph.base and link.path == "/v1.0/applications"
        params = dict(urllib.parse.parse_qsl(link.query))
        assert params["$top"] == "2" and params["$select"] == "displayName"
        reply = listing(graph, graph_contract, **params)
        page = reply.json()
        seen += [a["displayName"] for a in page["value"]]
    assert seen == ["alpha", "O'Brien's app", "bulk-0", "bulk-1", "bulk-2"]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"$filter": "notes eq 'x'"}, "Request_UnsupportedQuery"),
        ({"$filter": "displayName ne 'x'"}, "Request_UnsupportedQuery"),
        ({"$filter": "endswith(displayName,'x')"}, "Request_UnsupportedQuery"),
        ({"$filter": "tags eq 'x'"}, "Request_UnsupportedQuery"),
        ({"$filter": "displayName eq x"}, "BadRequest"),
        ({"$filter": "displayName eq 'unterminated"}, "BadRequest"),
        ({"$filter": "(displayName eq 'x'"}, "BadRequest"),
        ({"$filter": "colour eq 'x'"}, "BadRequest"),
        ({"$filter": ""}, "BadRequest"),
        ({"$select": "displayName,colour"}, "BadRequest"),
        ({"$top": "0"}, "Request_BadRequest"),
        ({"$top": "1000"}, "Request_BadRequest"),
        ({"$top": "ten"}, "Request_BadRequest"),
        ({"$skiptoken": "garbage"}, "Request_BadRequest"),
        ({"$orderby": "displayName"}, "Request_UnsupportedQuery"),
        ({"$search": '"displayName:x"'}, "Request_UnsupportedQuery"),
        ({"$expand": "owners"}, "Request_UnsupportedQuery"),
    ],
)
def test_list_refuses_unsupported_queries(
    graph: Graph, graph_contract: GraphContract, query: dict[str, str], code: str
) -> None:
    graph.create_app("x")
    reply = graph.call("GET", "/applications", query=query)
    graph_contract.error(reply, 400, code, APPS)


# -- Graph: passwords and service principals -----------------------------------------------------------------------


def test_add_and_remove_password(graph: Graph, graph_contract: GraphContract, token_contract: TokenContract) -> None:
    app = graph.create_app("with-secret")
    added = graph.call("POST", f"/applications/{app['id']}/addPassword", {"passwordCredential": {"displayName": "ci"}})
    graph_contract.success(added, ADD_PASSWORD)
    credential = added.json()
    secret = credential["secretText"]
    assert 16 <= len(secret) <= 64 and credential["hint"] == secret[:3] and credential["displayName"] == "ci"
    start = datetime.fromisoformat(credential["startDateTime"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(credential["endDateTime"].replace("Z", "+00:00"))
    assert abs(end - start - timedelta(days=730)) < timedelta(seconds=1)  # default lifetime: two years

    # secretText only at creation: never in the application afterwards, nor in a listing.
    stored = graph.call("GET", f"/applications/{app['id']}").json()["passwordCredentials"]
    assert stored == [{k: v for k, v in credential.items() if k != "@odata.context"} | {"secretText": None}]
    assert secret not in graph.call("GET", "/applications").data.decode()

    # An explicit window, and an empty body (everything defaulted).
    window = {"startDateTime": "2030-01-01T00:00:00Z", "endDateTime": "2030-06-30T12:00:00.5+02:00"}
    dated = graph.call("POST", f"/applications/{app['id']}/addPassword", {"passwordCredential": window})
    graph_contract.success(dated, ADD_PASSWORD)
    assert dated.json()["endDateTime"] == "2030-06-30T10:00:00Z"
    bare = graph.call("POST", f"/applications/{app['id']}/addPassword", raw=b"")
    graph_contract.success(bare, ADD_PASSWORD)
    assert bare.json()["secretText"] != secret

    refusals: list[dict[str, Any]] = [
        {"passwordCredential": {"endDateTime": "tomorrow"}},
        {"passwordCredential": {"startDateTime": "2030-01-02T00:00:00Z", "endDateTime": "2030-01-01T00:00:00Z"}},
        {"passwordCredential": {"secretText": "my-own-secret"}},
        {"keyCredential": {}},
    ]
    for body in refusals:
        refused = graph.call("POST", f"/applications/{app['id']}/addPassword", body)
        graph_contract.error(refused, 400, "Request_BadRequest", ADD_PASSWORD)

    removed = graph.call("POST", f"/applications/{app['id']}/removePassword", {"keyId": credential["keyId"]})
    graph_contract.success(removed, REMOVE_PASSWORD)
    assert removed.data == b""
    keys = [c["keyId"] for c in graph.call("GET", f"/applications/{app['id']}").json()["passwordCredentials"]]
    assert keys == [dated.json()["keyId"], bare.json()["keyId"]]
    for key in ({"keyId": credential["keyId"]}, {"keyId": "not-a-guid"}, {}):
        refused = graph.call("POST", f"/applications/{app['id']}/removePassword", key)
        graph_contract.error(refused, 400, "Request_BadRequest", REMOVE_PASSWORD)


def test_created_app_secret_works_at_the_token_endpoint(
    graph: Graph, graph_contract: GraphContract, token_contract: TokenContract
) -> None:
    """A secret from addPassword authenticates that app (once it has a service principal in the tenant); its
    token has no Graph permissions, so Graph answers 403. Removing the secret revokes it."""
    app = graph.create_app("client-app")
    secret_reply = graph.call("POST", f"/applications/{app['id']}/addPassword", {})
    credential = secret_reply.json()
    app_form = form(client_id=app["appId"], client_secret=credential["secretText"])

    no_sp = graph.request_token(app_form)
    assert token_contract.check(no_sp)["error"] == "unauthorized_client" and no_sp.status == 400
    created = graph.call("POST", "/servicePrincipals", {"appId": app["appId"]})
    graph_contract.success(created, SERVICE_PRINCIPALS)

    issued = graph.request_token(app_form)
    token = token_contract.check(issued)["access_token"]
    denied = graph.call("GET", "/applications", token=token)
    graph_contract.error(denied, 403, "Authorization_RequestDenied", APPS)

    wrong = graph.request_token(form(client_id=app["appId"], client_secret=credential["secretText"] + "x"))
    assert token_contract.check(wrong)["error_codes"] == [7000215]

    expired = graph.call(
        "POST",
        f"/applications/{app['id']}/addPassword",
        {"passwordCredential": {"startDateTime": "2020-01-01T00:00:00Z", "endDateTime": "2020-02-01T00:00:00Z"}},
    )
    old = graph.request_token(form(client_id=app["appId"], client_secret=expired.json()["secretText"]))
    assert token_contract.check(old)["error_codes"] == [7000222] and old.status == 401

    graph.call("POST", f"/applications/{app['id']}/removePassword", {"keyId": credential["keyId"]})
    revoked = graph.request_token(app_form)
    assert token_contract.check(revoked)["error"] == "invalid_client" and revoked.status == 401

    # A service principal created disabled keeps its application from signing in.
    off = graph.create_app("disabled-app")
    off_secret = graph.call("POST", f"/applications/{off['id']}/addPassword", {}).json()["secretText"]
    disabled_sp = graph.call("POST", "/servicePrincipals", {"appId": off["appId"], "accountEnabled": False})
    graph_contract.success(disabled_sp, SERVICE_PRINCIPALS)
    assert disabled_sp.json()["accountEnabled"] is False
    refused = graph.request_token(form(client_id=off["appId"], client_secret=off_secret))
    assert token_contract.check(refused)["error_codes"] == [7000112] and refused.status == 400


def test_service_principals(graph: Graph, graph_contract: GraphContract) -> None:
    app = graph.create_app("sp-app", identifierUris=["api://sp-app"], tags=["x"])
    created = graph.call(
        "POST", "/servicePrincipals", {"appId": app["appId"], "tags": ["WindowsAzureActiveDirectoryIntegratedApp"]}
    )
    graph_contract.success(created, SERVICE_PRINCIPALS)
    sp = created.json()
    assert sp["appId"] == app["appId"] and sp["id"] not in {app["id"], app["appId"]}
    assert sp["displayName"] == sp["appDisplayName"] == "sp-app" and sp["accountEnabled"] is True
    assert sp["servicePrincipalNames"] == [app["appId"], "api://sp-app"] and sp["appOwnerOrganizationId"] == TENANT
    assert sp["servicePrincipalType"] == "Application" and sp["tags"] == ["WindowsAzureActiveDirectoryIntegratedApp"]
    assert created.headers["Location"].endswith(f"/v1.0/servicePrincipals/{sp['id']}")

    duplicate = graph.call("POST", "/servicePrincipals", {"appId": app["appId"].upper()})
    error = graph_contract.error(duplicate, 409, "Request_MultipleObjectsWithSameKeyValue", SERVICE_PRINCIPALS)
    assert app["appId"] in error["message"] and "already in use" in error["message"]

    orphan = graph.call("POST", "/servicePrincipals", {"appId": str(uuid.uuid4())})
    error = graph_contract.error(orphan, 400, "Request_BadRequest", SERVICE_PRINCIPALS)
    assert "does not reference a valid application object" in error["message"]
    for body in ({}, {"appId": 5}, {"appId": app["appId"], "servicePrincipalType": "Legacy"}, {"appid": app["appId"]}):
        refused = graph.call("POST", "/servicePrincipals", body)
        graph_contract.error(refused, 400, "Request_BadRequest", SERVICE_PRINCIPALS)

    # Deleting the application deletes its service principal: a new one can be made for a same-named new app,
    # and the stored state has none left.
    graph_contract.success(graph.call("DELETE", f"/applications/{app['id']}"), APP)
    state = json.loads((graph.data_dir / "directory.json").read_text())
    assert state["servicePrincipals"] == {} and state["applications"] == {}


def test_patch_by_app_id_upsert(graph: Graph, graph_contract: GraphContract) -> None:
    """x-docs-success-status: 201 when created, 204 when updated; 404 when missing without Prefer."""
    app_id = str(uuid.uuid4())
    missing = graph.call("PATCH", by_app_id(app_id), {"displayName": "upserted"})
    graph_contract.error(missing, 404, "Request_ResourceNotFound", BY_APP_ID)

    created = graph.call(
        "PATCH", by_app_id(app_id), {"displayName": "upserted"}, headers={"Prefer": "create-if-missing"}
    )
    graph_contract.check(created, BY_APP_ID)
    assert created.status == 201 and created.json()["appId"] == app_id and created.json()["displayName"] == "upserted"

    updated = graph.call("PATCH", by_app_id(app_id), {"notes": "n"}, headers={"Prefer": "create-if-missing"})
    graph_contract.check(updated, BY_APP_ID)
    assert updated.status == 204
    assert graph.call("GET", by_app_id(app_id)).json()["notes"] == "n"
    no_name = graph.call("PATCH", by_app_id(str(uuid.uuid4())), {"notes": "n"}, headers={"Prefer": "create-if-missing"})
    graph_contract.error(no_name, 400, "Request_BadRequest", BY_APP_ID)


def test_unknown_graph_routes(graph: Graph, graph_contract: GraphContract) -> None:
    # Outside the document, so checked against its error schema directly.
    reply = graph.call("GET", "/users")
    assert reply.status == 400 and reply.json()["error"]["code"] == "BadRequest"
    assert reply.json()["error"]["message"] == "Resource not found for the segment 'users'."
    graph_contract.schema("microsoft.graph.ODataErrors.ODataError", reply.json())
    method = graph.call("PUT", "/applications", {"displayName": "x"})
    assert method.status == 405 and method.json()["error"]["innerError"]["request-id"]
    graph_contract.schema("microsoft.graph.ODataErrors.ODataError", method.json())


# -- failure injection ---------------------------------------------------------------------------------------------


def test_injected_failures(graph: Graph, graph_contract: GraphContract, token_contract: TokenContract) -> None:
    app = graph.create_app("flaky")
    graph.control(
        "fail", {"method": "PATCH", "path": r"^/v1\.0/applications/", "status": 429, "count": 1, "retry_after": 2}
    )
    assert graph.call("GET", f"/applications/{app['id']}").status == 200  # other method: not affected
    throttled = graph.call("PATCH", f"/applications/{app['id']}", {"notes": "n"})
    error = graph_contract.error(throttled, 429, "TooManyRequests", APP)
    assert throttled.headers["Retry-After"] == "2" and error["message"]
    assert graph.call("GET", f"/applications/{app['id']}").json()["notes"] is None  # the refused PATCH did nothing
    graph_contract.success(graph.call("PATCH", f"/applications/{app['id']}", {"notes": "n"}), APP)  # count used up

    graph.control("fail", {"path": "addPassword$", "status": 503, "count": 2, "retry_after": 1})
    for _ in range(2):
        unavailable = graph.call("POST", f"/applications/{app['id']}/addPassword", {})
        graph_contract.error(unavailable, 503, "serviceNotAvailable", ADD_PASSWORD)
        assert unavailable.headers["Retry-After"] == "1"
    graph_contract.success(graph.call("POST", f"/applications/{app['id']}/addPassword", {}), ADD_PASSWORD)

    graph.control("fail", {"status": 500, "path": "^/v1.0/servicePrincipals$"})
    broken = graph.call("POST", "/servicePrincipals", {"appId": app["appId"]})
    graph_contract.error(broken, 500, "generalException", SERVICE_PRINCIPALS)
    assert "Retry-After" not in broken.headers
    graph.control("fail", {"status": 502, "code": "UnknownError", "message": "upstream"})
    custom = graph.call("GET", "/applications")
    assert graph_contract.error(custom, 502, "UnknownError", APPS)["message"] == "upstream"

    # The token endpoint too, with its own error body.
    graph.control("fail", {"path": "/oauth2/v2.0/token$", "status": 503, "retry_after": 3})
    busy = graph.request_token()
    body = token_contract.check(busy)
    assert busy.status == 503 and body["error"] == "temporarily_unavailable" and busy.headers["Retry-After"] == "3"
    assert token_contract.check(graph.request_token())["token_type"] == "Bearer"

    # A token check comes first: without a token the failure stays queued.
    graph.control("fail", {"status": 429, "path": "^/v1.0/applications$", "method": "GET"})
    graph_contract.error(graph.call("GET", "/applications", auth=False), 401, "InvalidAuthenticationToken", APPS)
    graph_contract.error(graph.call("GET", "/applications"), 429, "TooManyRequests", APPS)

    graph.control("fail", {"status": 500, "count": 5})
    graph.control("reset")
    graph.cached_token = None
    graph_contract.success(graph.call("GET", "/applications"), APPS)


def test_control_api_refuses_bad_requests(graph: Graph) -> None:
    for body in (
        {},
        {"status": 200},
        {"status": 599},
        {"status": "x"},
        {"status": 429, "path": "("},
        {"status": 429, "count": "x"},
    ):
        reply = graph.http("POST", "/_control/fail", json.dumps(body).encode())
        assert reply.status == 400, body
    assert graph.http("GET", "/_control/reset").status == 405


# -- persistence and secrets ---------------------------------------------------------------------------------------


def test_state_survives_restart(tmp_path: Path, graph_contract: GraphContract, token_contract: TokenContract) -> None:
    server = start_graph(tmp_path / "first", graph_contract=graph_contract, token_contract=token_contract)
    try:
        app = server.create_app("durable", web={"redirectUris": ["https://durable.example/cb"]})
        secret = server.call("POST", f"/applications/{app['id']}/addPassword", {}).json()["secretText"]
        assert server.call("POST", "/servicePrincipals", {"appId": app["appId"]}).status == 201
        before = server.call("GET", f"/applications/{app['id']}").json()
        old_token = server.cached_token
    finally:
        server.stop()
    assert not list(server.data_dir.glob(".*.tmp")), "a temporary file was left behind"

    again = start_graph(
        tmp_path / "second", data_dir=server.data_dir, graph_contract=graph_contract, token_contract=token_contract
    )
    try:
        # Tokens live in memory only: the old one is unknown now, a new one works.
        stale = again.call("GET", f"/applications/{app['id']}", token=old_token)
        graph_contract.error(stale, 401, "InvalidAuthenticationToken", APP)
        after = again.call("GET", f"/applications/{app['id']}")
        graph_contract.success(after, APP)
        assert {k: v for k, v in after.json().items() if k != "@odata.context"} == {
            k: v for k, v in before.items() if k != "@odata.context"
        }  # the context names the new port
        duplicate = again.call("POST", "/servicePrincipals", {"appId": app["appId"]})
        graph_contract.error(duplicate, 409, "Request_MultipleObjectsWithSameKeyValue", SERVICE_PRINCIPALS)
        issued = again.request_token(form(client_id=app["appId"], client_secret=secret))
        assert token_contract.check(issued)["token_type"] == "Bearer"  # the secret's hash was kept
    finally:
        again.stop()


def test_secrets_never_logged_nor_stored(graph: Graph, tmp_path: Path) -> None:
    app = graph.create_app("quiet")
    secret = graph.call("POST", f"/applications/{app['id']}/addPassword", {}).json()["secretText"]
    graph.request_token(form(client_secret="wrong-secret-value"))
    graph.http("POST", f"{graph.token_path}?client_secret={CLIENT_SECRET}", urllib.parse.urlencode(form()).encode())
    token = graph.token()
    graph.call("GET", "/applications", token=token)
    graph.call("GET", "/applications", token="bogus-token-value")
    time.sleep(0.2)  # the access log line is written after the response
    log = graph.log_path.read_text()
    assert "POST /v1.0/applications" in log and "oauth2/v2.0/token" in log  # the log is being written
    for value in (CLIENT_SECRET, secret, token, "wrong-secret-value", "bogus-token-value"):
        assert value not in log
    assert "client_secret=***" in log
    # The directory keeps only a hash of generated secrets; the client secret never goes to disk or argv.
    stored = (graph.data_dir / "directory.json").read_text()
    assert secret not in stored and CLIENT_SECRET not in stored
    cmdline = Path(f"/proc/{graph.process.pid}/cmdline").read_bytes().decode()
    assert CLIENT_SECRET not in cmdline and "--client-secret-file" in cmdline


def test_cli_requires_a_readable_secret_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for secret_file in (tmp_path / "missing", empty):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "devservices.graph",
                "--data",
                str(tmp_path / "d"),
                "--tenant",
                TENANT,
                "--client-id",
                CLIENT_ID,
                "--client-secret-file",
                str(secret_file),
                "--port",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 2 and "--client-secret-file" in result.stderr
