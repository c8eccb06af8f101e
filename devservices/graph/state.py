"""The local directory: applications, service principals and password credentials, in one JSON file.

Layout under the data directory::

    directory.json    {"format": 1, "applications": {...}, "servicePrincipals": {...}, "secretHashes": {...}}

Objects are kept in their Graph JSON shape (every property the server models, defaults filled in), keyed by
object id, in creation order. A password credential's `secretText` is never stored: only its SHA-256, keyed by
`keyId`, so a secret can be checked at the token endpoint but not read back. Every change rewrites the file
through a temporary file and a rename; the HTTP layer runs on one asyncio thread, so writes never interleave.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import re
import secrets
import string
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

STATE_FILE = "directory.json"
STATE_FORMAT = 1
PUBLISHER_DOMAIN = "local.onmicrosoft.com"
GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
LOOPBACK_HOSTS = {"localhost", "127.0.0.1"}
MAX_URI_LENGTH = 256
# Entra's generated secrets are 40 characters: 3 random, a version marker "8Q~", 34 random.
SECRET_ALPHABET = string.ascii_letters + string.digits + "_-.~"
PASSWORD_LIFETIME = timedelta(days=730)  # addPassword's default: two years
SIGN_IN_AUDIENCES = (
    "AzureADMyOrg",
    "AzureADMultipleOrgs",
    "AzureADandPersonalMicrosoftAccount",
    "PersonalMicrosoftAccount",
)


class GraphError(Exception):
    """A request Graph refuses: HTTP status, Graph error code, message and optional `details` entries."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}


def bad_request(message: str, *, target: str | None = None, reason: str | None = None) -> GraphError:
    details = [{"code": "InvalidValue", "message": reason or message, "target": target}] if target else None
    return GraphError(400, "Request_BadRequest", message, details=details)


def invalid_value(path: str, resource: str, reason: str) -> GraphError:
    return bad_request(
        f"Invalid value specified for property '{path}' of resource '{resource}'.", target=path, reason=reason
    )


def not_found(key: str) -> GraphError:
    return GraphError(
        404,
        "Request_ResourceNotFound",
        f"Resource '{key}' does not exist or one of its queried reference-property objects are not present.",
    )


# -- time --------------------------------------------------------------------------------------------------------


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def iso(moment: datetime) -> str:
    """Graph's form: `2024-01-01T00:00:00Z` (always UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_datetime(value: str) -> datetime:
    """An ISO 8601 date-time with `Z` or an offset (what the contract's pattern allows); ValueError otherwise."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,12})?(Z|[+-]\d{2}:\d{2})", value):
        raise ValueError(value)
    head, _, tail = value.partition(".")
    if tail:  # Python takes at most 6 fractional digits
        digits = re.match(r"\d+", tail)
        assert digits is not None
        value = f"{head}.{digits.group()[:6].ljust(6, '0')}{tail[digits.end() :]}"
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


# -- property checks ---------------------------------------------------------------------------------------------
# A small typed description of the writable part of each resource, enough to refuse what Graph refuses (wrong
# types, bad redirect URIs, unknown or read-only properties) and to merge a PATCH the way Graph does.


class Field:
    """One property's rule; `check` returns the value to store or raises a 400."""

    def check(self, value: Any, path: str, resource: str) -> Any:
        raise NotImplementedError


class Str(Field):
    def __init__(
        self,
        *,
        nullable: bool = True,
        max_length: int | None = None,
        choices: tuple[str, ...] = (),
        rule: Callable[[str], str | None] | None = None,
    ) -> None:
        self.nullable, self.max_length, self.choices, self.rule = nullable, max_length, choices, rule

    def check(self, value: Any, path: str, resource: str) -> Any:
        if value is None and self.nullable:
            return None
        if not isinstance(value, str):
            raise invalid_value(path, resource, f"expected a string, got {json_type(value)}")
        if self.max_length is not None and len(value) > self.max_length:
            raise invalid_value(path, resource, f"longer than {self.max_length} characters")
        if self.choices and value not in self.choices:
            raise invalid_value(path, resource, f"must be one of {', '.join(self.choices)}")
        if self.rule and (problem := self.rule(value)):
            raise invalid_value(path, resource, problem)
        return value


class Bool(Field):
    def __init__(self, *, nullable: bool = True) -> None:
        self.nullable = nullable

    def check(self, value: Any, path: str, resource: str) -> Any:
        if value is None and self.nullable:
            return None
        if not isinstance(value, bool):
            raise invalid_value(path, resource, f"expected a boolean, got {json_type(value)}")
        return value


class Int(Field):
    def __init__(self, *, choices: tuple[int, ...] = ()) -> None:
        self.choices = choices

    def check(self, value: Any, path: str, resource: str) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid_value(path, resource, f"expected an integer, got {json_type(value)}")
        if self.choices and value not in self.choices:
            raise invalid_value(path, resource, f"must be one of {', '.join(map(str, self.choices))}")
        return value


class ListOf(Field):
    """A collection: replaced whole by a PATCH, never merged; `null` is refused."""

    def __init__(self, item: Field, *, max_items: int = 256) -> None:
        self.item, self.max_items = item, max_items

    def check(self, value: Any, path: str, resource: str) -> Any:
        if not isinstance(value, list):
            raise invalid_value(path, resource, f"expected an array, got {json_type(value)}")
        if len(value) > self.max_items:
            raise invalid_value(path, resource, f"more than {self.max_items} items")
        return [self.item.check(item, path, resource) for item in value]


class EmptyList(Field):
    """A collection this server does not model: only `[]` is accepted (so a read-modify-write round trip works)."""

    def check(self, value: Any, path: str, resource: str) -> Any:
        if value != []:
            raise unsupported(path)
        return []


class ReadOnly(Field):
    def __init__(self, hint: str = "") -> None:
        self.hint = hint

    def check(self, value: Any, path: str, resource: str) -> Any:
        raise bad_request(f"Property '{path}' is read-only and cannot be set.{self.hint}", target=path)


class Unsupported(Field):
    def check(self, value: Any, path: str, resource: str) -> Any:
        raise unsupported(path)


def unsupported(path: str) -> GraphError:
    return bad_request(f"Setting property '{path}' is not supported by this local Graph server.", target=path)


class Obj(Field):
    """A complex value. Checked against `base` (the stored value) its given properties are merged in, recursively
    for nested complex values, as Graph's PATCH does; without a base the defaults are the starting point."""

    def __init__(
        self,
        type_name: str,
        fields: dict[str, Field],
        defaults: Callable[[], dict[str, Any]],
        *,
        required: tuple[str, ...] = (),
    ) -> None:
        self.type_name, self.fields, self.defaults, self.required = type_name, fields, defaults, required

    def check(self, value: Any, path: str, resource: str, base: dict[str, Any] | None = None) -> Any:
        if not isinstance(value, dict):
            raise invalid_value(path, resource, f"expected an object, got {json_type(value)}")
        result = copy.deepcopy(base) if base is not None else self.defaults()
        for key, item in value.items():
            if key.startswith("@odata."):
                continue  # annotations such as @odata.type
            where = f"{path}.{key}" if path else key
            rule = self.fields.get(key)
            if rule is None:
                raise bad_request(
                    f"Property '{key}' does not exist on type 'microsoft.graph.{self.type_name}'.", target=where
                )
            if isinstance(rule, Obj):
                result[key] = rule.check(item, where, resource, result.get(key) if base is not None else None)
            else:
                result[key] = rule.check(item, where, resource)
        for key in self.required:
            if result.get(key) in (None, ""):
                where = f"{path}.{key}" if path else key
                raise bad_request(f"Property '{where}' is required and cannot be empty.", target=where)
        return result


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def nonempty_rule(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def guid_rule(value: str) -> str | None:
    return None if GUID_RE.fullmatch(value) else "not a GUID"


def redirect_rule(*, any_scheme: bool) -> Callable[[str], str | None]:
    """Entra's redirect URI rules: absolute, at most 256 characters, no fragment; `https`, or plain `http` only
    for a loopback host (`localhost`, `127.0.0.1`). Public clients may also use custom schemes."""

    def rule(uri: str) -> str | None:
        parts = urlsplit(uri)
        if len(uri) > MAX_URI_LENGTH:
            return f"'{uri}' is longer than {MAX_URI_LENGTH} characters"
        if not parts.scheme or not (parts.netloc or parts.path):
            return f"'{uri}' is not an absolute URI"
        if parts.fragment or "#" in uri:
            return f"'{uri}' must not contain a fragment"
        scheme = parts.scheme.lower()
        if scheme == "https" and parts.hostname:
            return None
        if scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
            return None
        if any_scheme and scheme not in {"http", "https"}:
            return None
        return f"'{uri}' must use https, or http with localhost"

    return rule


def absolute_uri_rule(uri: str) -> str | None:
    parts = urlsplit(uri)
    if not parts.scheme or not (parts.netloc or parts.path) or len(uri) > MAX_URI_LENGTH:
        return f"'{uri}' is not an absolute URI of at most {MAX_URI_LENGTH} characters"
    return None


def http_url_rule(uri: str) -> str | None:
    parts = urlsplit(uri)
    if parts.scheme.lower() not in {"http", "https"} or not parts.hostname or len(uri) > MAX_URI_LENGTH:
        return f"'{uri}' is not an absolute http(s) URL of at most {MAX_URI_LENGTH} characters"
    return None


URL = Str(rule=http_url_rule)
WEB_REDIRECTS = ListOf(Str(nullable=False, rule=redirect_rule(any_scheme=False)))
PUBLIC_REDIRECTS = ListOf(Str(nullable=False, rule=redirect_rule(any_scheme=True)))


def web_defaults() -> dict[str, Any]:
    return {
        "homePageUrl": None,
        "logoutUrl": None,
        "redirectUris": [],
        "implicitGrantSettings": {"enableAccessTokenIssuance": False, "enableIdTokenIssuance": False},
        "redirectUriSettings": [],
    }


def api_defaults() -> dict[str, Any]:
    return {
        "acceptMappedClaims": None,
        "knownClientApplications": [],
        "requestedAccessTokenVersion": None,
        "oauth2PermissionScopes": [],
        "preAuthorizedApplications": [],
    }


def info_defaults() -> dict[str, Any]:
    return {
        "logoUrl": None,
        "marketingUrl": None,
        "privacyStatementUrl": None,
        "supportUrl": None,
        "termsOfServiceUrl": None,
    }


IMPLICIT_GRANT = Obj(
    "implicitGrantSettings",
    {"enableAccessTokenIssuance": Bool(), "enableIdTokenIssuance": Bool()},
    lambda: {"enableAccessTokenIssuance": False, "enableIdTokenIssuance": False},
)
WEB = Obj(
    "webApplication",
    {
        "homePageUrl": URL,
        "logoutUrl": URL,
        "redirectUris": WEB_REDIRECTS,
        "implicitGrantSettings": IMPLICIT_GRANT,
        # Derived from redirectUris on every write (as Graph reports it); accepted for round trips, not applied.
        "redirectUriSettings": ListOf(Obj("redirectUriSettings", {"index": Int(), "uri": Str()}, dict)),
    },
    web_defaults,
)
RESOURCE_ACCESS = Obj(
    "resourceAccess",
    {"id": Str(nullable=False, rule=guid_rule), "type": Str(nullable=False, choices=("Scope", "Role"))},
    dict,
    required=("id", "type"),
)
REQUIRED_RESOURCE_ACCESS = Obj(
    "requiredResourceAccess",
    {"resourceAppId": Str(nullable=False), "resourceAccess": ListOf(RESOURCE_ACCESS)},
    lambda: {"resourceAccess": []},
    required=("resourceAppId",),
)

APPLICATION = Obj(
    "application",
    {
        # writable and modelled
        "displayName": Str(nullable=False, max_length=256, rule=nonempty_rule),
        "description": Str(max_length=1024),
        "notes": Str(max_length=1024),
        "tags": ListOf(Str(nullable=False, max_length=256)),
        "identifierUris": ListOf(Str(nullable=False, rule=absolute_uri_rule)),
        "signInAudience": Str(nullable=False, choices=SIGN_IN_AUDIENCES),
        "groupMembershipClaims": Str(choices=("None", "SecurityGroup", "All", "ApplicationGroup", "DirectoryRole")),
        "isFallbackPublicClient": Bool(),
        "isDeviceOnlyAuthSupported": Bool(),
        "oauth2RequirePostResponse": Bool(nullable=False),
        "serviceManagementReference": Str(),
        "defaultRedirectUri": Str(),
        "samlMetadataUrl": URL,
        "tokenEncryptionKeyId": Str(rule=guid_rule),
        "web": WEB,
        "spa": Obj("spaApplication", {"redirectUris": WEB_REDIRECTS}, lambda: {"redirectUris": []}),
        "publicClient": Obj(
            "publicClientApplication", {"redirectUris": PUBLIC_REDIRECTS}, lambda: {"redirectUris": []}
        ),
        "api": Obj(
            "apiApplication",
            {
                "acceptMappedClaims": Bool(),
                "knownClientApplications": ListOf(Str(nullable=False, rule=guid_rule)),
                "requestedAccessTokenVersion": Int(choices=(1, 2)),
                "oauth2PermissionScopes": EmptyList(),
                "preAuthorizedApplications": EmptyList(),
            },
            api_defaults,
        ),
        "info": Obj(
            "informationalUrl",
            {
                "logoUrl": ReadOnly(),
                "marketingUrl": URL,
                "privacyStatementUrl": URL,
                "supportUrl": URL,
                "termsOfServiceUrl": URL,
            },
            info_defaults,
        ),
        "parentalControlSettings": Obj(
            "parentalControlSettings",
            {
                "countriesBlockedForMinors": ListOf(Str(nullable=False, max_length=2)),
                "legalAgeGroupRule": Str(
                    nullable=False,
                    choices=(
                        "Allow",
                        "RequireConsentForPrivacyServices",
                        "RequireConsentForMinors",
                        "RequireConsentForKids",
                        "BlockMinors",
                    ),
                ),
            },
            lambda: {"countriesBlockedForMinors": [], "legalAgeGroupRule": "Allow"},
        ),
        "requiredResourceAccess": ListOf(REQUIRED_RESOURCE_ACCESS, max_items=50),
        "addIns": EmptyList(),
        "appRoles": EmptyList(),
        "keyCredentials": EmptyList(),
        # read-only
        "id": ReadOnly(),
        "appId": ReadOnly(),
        "applicationTemplateId": ReadOnly(),
        "createdDateTime": ReadOnly(),
        "deletedDateTime": ReadOnly(),
        "publisherDomain": ReadOnly(),
        "uniqueName": ReadOnly(),
        "disabledByMicrosoftStatus": ReadOnly(),
        "passwordCredentials": ReadOnly(" Use addPassword and removePassword."),
        "verifiedPublisher": ReadOnly(),
        # in the schema, not modelled here
        "certification": Unsupported(),
        "logo": Unsupported(),
        "nativeAuthenticationApisEnabled": Unsupported(),
        "optionalClaims": Unsupported(),
        "requestSignatureVerification": Unsupported(),
        "servicePrincipalLockConfiguration": Unsupported(),
        "appManagementPolicies": Unsupported(),
        "createdOnBehalfOf": Unsupported(),
        "extensionProperties": Unsupported(),
        "federatedIdentityCredentials": Unsupported(),
        "homeRealmDiscoveryPolicies": Unsupported(),
        "owners": Unsupported(),
        "synchronization": Unsupported(),
        "tokenIssuancePolicies": Unsupported(),
        "tokenLifetimePolicies": Unsupported(),
    },
    dict,
)

SERVICE_PRINCIPAL = Obj(
    "servicePrincipal",
    {
        "appId": Str(nullable=False),
        "accountEnabled": Bool(nullable=False),
        "appRoleAssignmentRequired": Bool(nullable=False),
        "tags": ListOf(Str(nullable=False, max_length=256)),
        "notes": Str(max_length=1024),
        "description": Str(max_length=1024),
        "notificationEmailAddresses": ListOf(Str(nullable=False)),
        **{
            name: Unsupported()
            for name in (
                "addIns",
                "alternativeNames",
                "appDescription",
                "appDisplayName",
                "applicationTemplateId",
                "appOwnerOrganizationId",
                "appRoles",
                "customSecurityAttributes",
                "disabledByMicrosoftStatus",
                "displayName",
                "homepage",
                "info",
                "keyCredentials",
                "loginUrl",
                "logoutUrl",
                "oauth2PermissionScopes",
                "passwordCredentials",
                "preferredSingleSignOnMode",
                "preferredTokenSigningKeyThumbprint",
                "replyUrls",
                "resourceSpecificApplicationPermissions",
                "samlSingleSignOnSettings",
                "servicePrincipalNames",
                "servicePrincipalType",
                "signInAudience",
                "tokenEncryptionKeyId",
                "verifiedPublisher",
                "appManagementPolicies",
                "appRoleAssignedTo",
                "appRoleAssignments",
                "claimsMappingPolicies",
                "createdObjects",
                "delegatedPermissionClassifications",
                "endpoints",
                "federatedIdentityCredentials",
                "homeRealmDiscoveryPolicies",
                "memberOf",
                "oauth2PermissionGrants",
                "ownedObjects",
                "owners",
                "remoteDesktopSecurityConfiguration",
                "synchronization",
                "tokenIssuancePolicies",
                "tokenLifetimePolicies",
                "transitiveMemberOf",
                "id",
                "deletedDateTime",
            )
        },
    },
    dict,
    required=("appId",),
)

PASSWORD_REQUEST = Obj(
    "passwordCredential",
    {
        "displayName": Str(max_length=256),
        "startDateTime": Str(),
        "endDateTime": Str(),
        "customKeyIdentifier": Unsupported(),
        "hint": ReadOnly(),
        "keyId": ReadOnly(),
        "secretText": ReadOnly(),
    },
    dict,
)


def new_application(object_id: str, app_id: str, created: str) -> dict[str, Any]:
    """Everything Graph reports for a new application, in its order; absent: the complex values Graph sends as
    `null` but the schema declares non-nullable (certification, optionalClaims, ...)."""
    return {
        "id": object_id,
        "deletedDateTime": None,
        "appId": app_id,
        "applicationTemplateId": None,
        "disabledByMicrosoftStatus": None,
        "createdDateTime": created,
        "displayName": None,
        "description": None,
        "groupMembershipClaims": None,
        "identifierUris": [],
        "isDeviceOnlyAuthSupported": None,
        "isFallbackPublicClient": None,
        "notes": None,
        "oauth2RequirePostResponse": False,
        "publisherDomain": PUBLISHER_DOMAIN,
        "serviceManagementReference": None,
        "signInAudience": "AzureADMyOrg",
        "tags": [],
        "tokenEncryptionKeyId": None,
        "uniqueName": None,
        "samlMetadataUrl": None,
        "defaultRedirectUri": None,
        "addIns": [],
        "api": api_defaults(),
        "appRoles": [],
        "info": info_defaults(),
        "keyCredentials": [],
        "parentalControlSettings": {"countriesBlockedForMinors": [], "legalAgeGroupRule": "Allow"},
        "passwordCredentials": [],
        "publicClient": {"redirectUris": []},
        "requiredResourceAccess": [],
        "verifiedPublisher": {"displayName": None, "verifiedPublisherId": None, "addedDateTime": None},
        "web": web_defaults(),
        "spa": {"redirectUris": []},
    }


def new_secret() -> str:
    pick = secrets.choice
    return "".join(pick(SECRET_ALPHABET) for _ in range(3)) + "8Q~" + "".join(pick(SECRET_ALPHABET) for _ in range(34))


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Directory:
    """The tenant's applications and service principals, persisted to `<data>/directory.json`."""

    def __init__(self, data_dir: Path, tenant: str) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / STATE_FILE
        self.tenant = tenant
        self.applications: dict[str, dict[str, Any]] = {}
        self.service_principals: dict[str, dict[str, Any]] = {}
        self.secret_hashes: dict[str, str] = {}
        if self.path.exists():
            state = json.loads(self.path.read_text())
            if state.get("format") != STATE_FORMAT:
                raise ValueError(f"{self.path}: unknown format {state.get('format')!r}")
            self.applications = state["applications"]
            self.service_principals = state["servicePrincipals"]
            self.secret_hashes = state["secretHashes"]

    def _save(self) -> None:
        state = {
            "format": STATE_FORMAT,
            "applications": self.applications,
            "servicePrincipals": self.service_principals,
            "secretHashes": self.secret_hashes,
        }
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with tmp.open("w") as out:
            json.dump(state, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(self.path)

    def reset(self) -> None:
        self.applications, self.service_principals, self.secret_hashes = {}, {}, {}
        self._save()

    # -- applications ----------------------------------------------------------------------------------------------

    def application(self, object_id: str) -> dict[str, Any]:
        if not GUID_RE.fullmatch(object_id):
            raise bad_request(f"Invalid object identifier '{object_id}'.")
        app = self.applications.get(object_id.lower())
        if app is None:
            raise not_found(object_id)
        return app

    def application_by_app_id(self, app_id: str) -> dict[str, Any]:
        app = self.find_by_app_id(app_id)
        if app is None:
            raise not_found(app_id)
        return app

    def find_by_app_id(self, app_id: str) -> dict[str, Any] | None:
        return next((a for a in self.applications.values() if a["appId"].lower() == app_id.lower()), None)

    def create_application(self, body: Any, *, app_id: str | None = None) -> dict[str, Any]:
        """POST /applications (or an upsert by appId with `app_id` given): displayName required."""
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.")
        object_id = str(uuid.uuid4())
        base = new_application(object_id, app_id or str(uuid.uuid4()), iso(utcnow()))
        app: dict[str, Any] = APPLICATION.check(body, "", "Application", base)
        if not app.get("displayName"):
            raise bad_request("Property 'displayName' is required and cannot be empty.", target="displayName")
        derive(app)
        self.applications[object_id] = app
        self._save()
        return app

    def update_application(self, app: dict[str, Any], body: Any) -> None:
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.")
        updated = APPLICATION.check(body, "", "Application", app)
        derive(updated)
        self.applications[app["id"]] = updated
        self._save()

    def delete_application(self, app: dict[str, Any]) -> None:
        """Delete the application, its service principal and its secrets (Graph keeps deleted apps in a recycle
        bin for 30 days; this server forgets them at once)."""
        del self.applications[app["id"]]
        for sp_id, sp in list(self.service_principals.items()):
            if sp["appId"].lower() == app["appId"].lower():
                del self.service_principals[sp_id]
        for credential in app["passwordCredentials"]:
            self.secret_hashes.pop(credential["keyId"], None)
        self._save()

    def add_password(self, app: dict[str, Any], body: Any) -> dict[str, Any]:
        """addPassword: a new secret; the returned credential is the only place its `secretText` ever appears."""
        if body in (None, {}):
            body = {}
        if not isinstance(body, dict) or not set(body) <= {"passwordCredential"}:
            raise bad_request('The request body must be {"passwordCredential": {...}}.')
        request = PASSWORD_REQUEST.check(body.get("passwordCredential") or {}, "passwordCredential", "Application")
        try:
            start = parse_datetime(request["startDateTime"]) if request.get("startDateTime") else utcnow()
        except ValueError:
            raise invalid_value(
                "passwordCredential.startDateTime", "Application", "not an ISO 8601 date-time"
            ) from None
        try:
            end = parse_datetime(request["endDateTime"]) if request.get("endDateTime") else start + PASSWORD_LIFETIME
        except ValueError:
            raise invalid_value("passwordCredential.endDateTime", "Application", "not an ISO 8601 date-time") from None
        if end <= start:
            raise invalid_value("passwordCredential.endDateTime", "Application", "must be after startDateTime")
        secret = new_secret()
        credential = {
            "customKeyIdentifier": None,
            "displayName": request.get("displayName"),
            "endDateTime": iso(end),
            "hint": secret[:3],
            "keyId": str(uuid.uuid4()),
            "secretText": None,
            "startDateTime": iso(start),
        }
        app["passwordCredentials"].append(credential)
        self.secret_hashes[credential["keyId"]] = secret_hash(secret)
        self._save()
        return {**credential, "secretText": secret}

    def remove_password(self, app: dict[str, Any], body: Any) -> None:
        key_id = body.get("keyId") if isinstance(body, dict) else None
        if not isinstance(key_id, str) or not GUID_RE.fullmatch(key_id):
            raise invalid_value("keyId", "Application", "a GUID is required")
        kept = [c for c in app["passwordCredentials"] if c["keyId"].lower() != key_id.lower()]
        if len(kept) == len(app["passwordCredentials"]):
            raise bad_request(
                f"No password credential with keyId '{key_id}' exists on this application.",
                target="keyId",
                reason="unknown keyId",
            )
        app["passwordCredentials"] = kept
        self.secret_hashes.pop(key_id.lower(), None)
        self._save()

    def check_client_secret(self, app_id: str, secret: str) -> str:
        """For the token endpoint: `ok`, `unknown` (no such app, or no service principal in this tenant), `disabled`
        (its service principal has accountEnabled false), `expired` (only expired secrets match) or `bad`."""
        app = self.find_by_app_id(app_id)
        sp = next((s for s in self.service_principals.values() if s["appId"].lower() == app_id.lower()), None)
        if app is None or sp is None:
            return "unknown"
        if not sp["accountEnabled"]:
            return "disabled"
        digest = secret_hash(secret)
        now = utcnow()
        for credential in app["passwordCredentials"]:
            stored = self.secret_hashes.get(credential["keyId"], "")
            if hmac.compare_digest(stored, digest):
                start, end = parse_datetime(credential["startDateTime"]), parse_datetime(credential["endDateTime"])
                return "ok" if start <= now < end else "expired"
        return "bad"

    # -- service principals ------------------------------------------------------------------------------------

    def create_service_principal(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object.")
        request = SERVICE_PRINCIPAL.check(body, "", "ServicePrincipal")
        app = self.find_by_app_id(request["appId"])
        if app is None:
            raise GraphError(
                400,
                "Request_BadRequest",
                f"The appId '{request['appId']}' of the service principal does not reference a valid "
                "application object.",
                details=[{"code": "NoBackingApplicationObject", "message": "appId", "target": "appId"}],
            )
        if any(sp["appId"].lower() == app["appId"].lower() for sp in self.service_principals.values()):
            raise GraphError(
                409,
                "Request_MultipleObjectsWithSameKeyValue",
                "The service principal cannot be created, updated, or restored because the service principal "
                f"name {app['appId']} is already in use.",
            )
        object_id = str(uuid.uuid4())
        sp = {
            "id": object_id,
            "deletedDateTime": None,
            "accountEnabled": request.get("accountEnabled", True),
            "alternativeNames": [],
            "appDisplayName": app["displayName"],
            "appDescription": app["description"],
            "appId": app["appId"],
            "applicationTemplateId": None,
            "appOwnerOrganizationId": self.tenant if GUID_RE.fullmatch(self.tenant) else None,
            "appRoleAssignmentRequired": request.get("appRoleAssignmentRequired", False),
            "description": request.get("description"),
            "disabledByMicrosoftStatus": None,
            "displayName": app["displayName"],
            "homepage": app["web"]["homePageUrl"],
            "loginUrl": None,
            "logoutUrl": app["web"]["logoutUrl"],
            "notes": request.get("notes"),
            "notificationEmailAddresses": request.get("notificationEmailAddresses", []),
            "preferredSingleSignOnMode": None,
            "preferredTokenSigningKeyThumbprint": None,
            "replyUrls": [
                *app["web"]["redirectUris"],
                *app["spa"]["redirectUris"],
                *app["publicClient"]["redirectUris"],
            ],
            "servicePrincipalNames": [app["appId"], *app["identifierUris"]],
            "servicePrincipalType": "Application",
            "signInAudience": app["signInAudience"],
            "tags": request.get("tags", []),
            "tokenEncryptionKeyId": None,
            "addIns": [],
            "appRoles": [],
            "info": {k: app["info"][k] for k in info_defaults()},
            "keyCredentials": [],
            "oauth2PermissionScopes": [],
            "passwordCredentials": [],
            "resourceSpecificApplicationPermissions": [],
            "verifiedPublisher": {"displayName": None, "verifiedPublisherId": None, "addedDateTime": None},
        }
        self.service_principals[object_id] = sp
        self._save()
        return sp


def derive(app: dict[str, Any]) -> None:
    """Properties Graph computes: `web.redirectUriSettings` mirrors `web.redirectUris`."""
    app["web"]["redirectUriSettings"] = [{"uri": uri, "index": None} for uri in app["web"]["redirectUris"]]
