#!/usr/bin/python
# Copyright: Orchestrator maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
---
module: azure_app
short_description: Microsoft Entra ID (Azure AD) app registrations, their redirect URIs and client secret
version_added: 1.0.0
description:
  - Converges one app registration, found by its display name O(name) (which the caller keeps unique), through
    Microsoft Graph's REST API with an OAuth2 client-credentials token of the orchestrator's own identity.
  - With O(state=present), creates the application when no application has that name (with O(redirect_uris)
    as its web redirect URIs) and a service principal for it; adds every URI of O(redirect_uris) that is
    missing, or removes them with O(redirect_uris_state=absent), leaving every other URI as it is; and, with
    O(credential_file), makes sure a client secret of the application is in that file.
  - With O(state=absent), deletes the application (and with it its service principal). An application
    already gone is no change.
  - The read-modify-write of the redirect URIs runs under an exclusive lock named after the application, so
    concurrent sandboxes of one workspace never lose each other's URIs.
  - The client secret Graph generates is written only to O(credential_file); it is never returned, logged or
    put into a message. The token is cached in O(cache_dir) (mode 0600) until it is about to expire.
  - Transient failures (HTTP 408, 429, 5xx, no connection) are retried, waiting as long as C(Retry-After)
    asks, up to O(max_retry_wait) seconds in all; a failure that remains transient has
    RV(orchestrator_transient) set so that the orchestrator retries the task with its own backoff.
  - Not C(azure.azcollection), which cannot be pointed at another Graph URL and needs dozens of Azure SDKs.
author:
  - Orchestrator maintainers
attributes:
  check_mode:
    support: full
    description: Reads Graph and reports what would change, writing nothing but the token cache and the lock file.
  diff_mode:
    support: none
options:
  name:
    description: Display name of the application, unique among the applications this identity manages.
    type: str
    required: true
  state:
    description: Whether the application should exist.
    type: str
    choices: [present, absent]
    default: present
  create:
    description:
      - With O(state=present), whether to create the application when it does not exist. When false, a missing
        application fails (or, with O(redirect_uris_state=absent), is no change, since its URIs went with it).
        In check mode a missing application does not fail; the change is reported as if it existed, with a
        warning (a check of the step that creates it could not create it).
    type: bool
    default: true
  redirect_uris:
    description: Web redirect URIs to add (or remove). Other URIs of the application are kept.
    type: list
    elements: str
    default: []
  redirect_uris_state:
    description: Whether O(redirect_uris) should be present on the application or absent from it.
    type: str
    choices: [present, absent]
    default: present
  credential_file:
    description:
      - When set (with O(state=present)), a file holding C(AZURE_CLIENT_ID), C(AZURE_TENANT_ID),
        C(AZURE_CLIENT_SECRET) and C(AZURE_CLIENT_SECRET_ID) lines (an env file for the application's
        deployment). When the file names a secret the application still has (and it is not about to expire), it
        is kept; otherwise a new secret is added, the file written atomically, and the module's older secrets
        removed from the application.
    type: path
  credential_mode:
    description: Mode of O(credential_file).
    type: str
    default: "0600"
  credential_owner:
    description: Numeric uid owning O(credential_file) (the deployment's user); unchanged when not set.
    type: int
  credential_group:
    description: Numeric gid of O(credential_file); unchanged when not set.
    type: int
  credential_lifetime_days:
    description: Lifetime of a new client secret.
    type: int
    default: 365
  credential_renew_days:
    description: A secret with fewer days left than this is replaced.
    type: int
    default: 30
  tenant_id:
    description: Directory (tenant) id of the orchestrator's identity, also written into O(credential_file).
    type: str
    required: true
  client_id:
    description: Application (client) id of the orchestrator's identity.
    type: str
    required: true
  client_secret:
    description: Client secret of the orchestrator's identity.
    type: str
    required: true
  authority_url:
    description: Microsoft identity platform base URL (token URL is C(<authority_url>/<tenant>/oauth2/v2.0/token)).
    type: str
    default: https://login.microsoftonline.com
  graph_url:
    description: Microsoft Graph base URL including the version.
    type: str
    default: https://graph.microsoft.com/v1.0
  cache_dir:
    description: Folder for the cached token (mode 0700, file 0600). No caching when not set.
    type: path
  lock_dir:
    description: Folder for the per-application lock files. No locking when not set.
    type: path
  lock_timeout:
    description: Seconds to wait for the application's lock.
    type: int
    default: 300
  timeout:
    description: Seconds for one HTTP request.
    type: int
    default: 30
  retries:
    description: Retries of a transiently failed request.
    type: int
    default: 4
  max_retry_wait:
    description: Most seconds spent waiting between retries of one module run, Retry-After included.
    type: int
    default: 60
  validate_certs:
    description: Whether to validate the TLS certificates of the identity platform and Graph.
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Create the workspace's app registration and write its credentials for the deployment
  orchestrator.core.azure_app:
    name: kanban-acme-web
    redirect_uris: [https://web.acme.kanban.example/auth/callback]
    credential_file: /var/lib/orchestrator/teams/acme/workspaces/web/.secrets/azure.env
    tenant_id: "{{ azure_tenant_id }}"
    client_id: "{{ azure_client_id }}"
    client_secret: "{{ azure_client_secret }}"
  no_log: true

- name: Remove a sandbox's redirect URI
  orchestrator.core.azure_app:
    name: kanban-acme-web
    create: false
    redirect_uris: [https://s1.web.acme.kanban.example/auth/callback]
    redirect_uris_state: absent
    tenant_id: "{{ azure_tenant_id }}"
    client_id: "{{ azure_client_id }}"
    client_secret: "{{ azure_client_secret }}"
"""

RETURN = r"""
exists:
  description: Whether the application exists after the run (in check mode, whether it would).
  type: bool
  returned: always
created:
  description: Whether this run created the application.
  type: bool
  returned: always
app_id:
  description: Application (client) id; null when the application does not exist.
  type: str
  returned: always
object_id:
  description: Object id of the application; null when it does not exist.
  type: str
  returned: always
tenant_id:
  description: The tenant id.
  type: str
  returned: always
redirect_uris:
  description: The application's web redirect URIs after the run.
  type: list
  elements: str
  returned: always
redirect_uris_changed:
  description: URIs this run added (or removed).
  type: list
  elements: str
  returned: always
credential_key_id:
  description: Key id of the client secret in O(credential_file) (not the secret).
  type: str
  returned: when O(credential_file) is set and the application exists
orchestrator_transient:
  description: Set on failure when the cause is transient (throttling, server error, no connection).
  type: bool
  returned: on failure
"""

import contextlib
import datetime
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.orchestrator.core.plugins.module_utils.graph import (
    GraphClient,
    GraphError,
    file_lock,
    odata_quote,
)

SELECT = "id,appId,displayName,web,passwordCredentials"
CREDENTIAL_NAME = "orchestrator"


class AzureApp:
    def __init__(self, module, client):
        self.module = module
        self.params = module.params
        self.client = client
        self.result = {
            "changed": False,
            "exists": False,
            "created": False,
            "app_id": None,
            "object_id": None,
            "tenant_id": self.params["tenant_id"],
            "redirect_uris": [],
            "redirect_uris_changed": [],
        }

    def find(self):
        name = self.params["name"]
        found = self.client.call(
            "GET",
            "/applications",
            query={"$filter": f"displayName eq {odata_quote(name)}", "$select": SELECT, "$top": "2"},
        )
        apps = (found or {}).get("value") or []
        if len(apps) > 1:
            raise GraphError(f"more than one application is named {name!r}: remove the extra ones by hand")
        return apps[0] if apps else None

    def _describe(self, app):
        self.result.update(
            exists=True,
            app_id=app.get("appId"),
            object_id=app.get("id"),
            redirect_uris=list((app.get("web") or {}).get("redirectUris") or []),
        )

    def run(self):
        with file_lock(self.params["lock_dir"], "azure-app:" + self.params["name"], self.params["lock_timeout"]):
            app = self.find()
            if self.params["state"] == "absent":
                return self.absent(app)
            return self.present(app)

    def absent(self, app):
        if app is None:
            return
        self.result.update(changed=True, redirect_uris_changed=list((app.get("web") or {}).get("redirectUris") or []))
        if not self.module.check_mode:
            try:
                self.client.call("DELETE", f"/applications/{app['id']}", expect=(204, 200))
            except GraphError as error:
                if error.status != 404:
                    raise

    def present(self, app):
        wanted = self.params["redirect_uris"]
        adding = self.params["redirect_uris_state"] == "present"
        if app is None:
            if not self.params["create"]:
                if not (adding or self.params["credential_file"]):
                    return
                if not self.module.check_mode:
                    raise GraphError("application {!r} does not exist".format(self.params["name"]))
                # Check mode: the application a check of an earlier step could not create (a workspace's, before
                # its sandbox's URI is added). What would change once it exists is reported, with a warning.
                self.module.warn(
                    "application {!r} does not exist: a real run fails unless it is created first; check mode "
                    "reports the change as if it existed".format(self.params["name"])
                )
                self.result.update(
                    changed=True,
                    redirect_uris=list(wanted) if adding else [],
                    redirect_uris_changed=list(wanted) if adding else [],
                )
                return
            self.result.update(changed=True, exists=True, redirect_uris=list(wanted) if adding else [])
            self.result["redirect_uris_changed"] = list(wanted) if adding else []
            if self.module.check_mode:
                self.result["created"] = True
                return
            app = self.client.call(
                "POST",
                "/applications",
                body={
                    "displayName": self.params["name"],
                    "signInAudience": "AzureADMyOrg",
                    "web": {"redirectUris": list(wanted) if adding else []},
                },
                expect=(201,),
            )
            self.result["created"] = True
            self._describe(app)
            try:
                self.service_principal(app)
                if self.params["credential_file"]:
                    self.credential(app)
            except GraphError as error:
                # All or nothing: an application this run created is not left behind half made.
                try:
                    self.client.call("DELETE", f"/applications/{app['id']}", expect=(204, 200))
                except GraphError as undo:
                    raise GraphError(
                        f"{error}; deleting the new application failed too: {undo}", transient=error.transient
                    ) from error
                self.result.update(exists=False, created=False, app_id=None, object_id=None, redirect_uris=[])
                raise GraphError(
                    f"{error} (the new application was deleted)", error.status, error.code, error.transient
                ) from error
            return
        else:
            self._describe(app)
            self.redirects(app, wanted, adding)
        if self.params["credential_file"]:
            self.credential(app)

    def service_principal(self, app):
        try:
            self.client.call("POST", "/servicePrincipals", body={"appId": app["appId"]}, expect=(201,))
        except GraphError as error:
            # Already there (a run that died after creating it): Graph answers 409 (400 in older answers).
            if error.status not in (400, 409) or error.code != "Request_MultipleObjectsWithSameKeyValue":
                raise

    def redirects(self, app, wanted, adding):
        current = list((app.get("web") or {}).get("redirectUris") or [])
        if adding:
            changed = [uri for uri in dict.fromkeys(wanted) if uri not in current]
            updated = current + changed
        else:
            changed = [uri for uri in current if uri in wanted]
            updated = [uri for uri in current if uri not in wanted]
        if not changed:
            return
        self.result.update(changed=True, redirect_uris=updated, redirect_uris_changed=changed)
        if not self.module.check_mode:
            self.client.call(
                "PATCH", f"/applications/{app['id']}", body={"web": {"redirectUris": updated}}, expect=(204,)
            )

    def _read_credential_file(self):
        values = {}
        try:
            with open(self.params["credential_file"], encoding="utf-8") as handle:
                for line in handle:
                    key, sep, value = line.rstrip("\n").partition("=")
                    if sep:
                        values[key] = value
        except OSError:
            return {}
        return values

    def credential(self, app):
        path = self.params["credential_file"]
        existing = self._read_credential_file()
        if existing.get("AZURE_CLIENT_SECRET"):
            self.module.no_log_values.add(existing["AZURE_CLIENT_SECRET"])
        credentials = app.get("passwordCredentials") or []
        key_id = existing.get("AZURE_CLIENT_SECRET_ID")
        renew_before = datetime.datetime.now(datetime.UTC) + datetime.timedelta(
            days=self.params["credential_renew_days"]
        )
        current = next((c for c in credentials if c.get("keyId") == key_id), None) if key_id else None
        keep = (
            current is not None
            and existing.get("AZURE_CLIENT_ID") == app.get("appId")
            and existing.get("AZURE_TENANT_ID") == self.params["tenant_id"]
            and existing.get("AZURE_CLIENT_SECRET")
            and _parse_time(current.get("endDateTime")) > renew_before
        )
        if keep:
            self.result["credential_key_id"] = key_id
            self._fix_attributes(path)
            return
        self.result["changed"] = True
        if self.module.check_mode:
            return
        end = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=self.params["credential_lifetime_days"])
        added = self.client.call(
            "POST",
            "/applications/{}/addPassword".format(app["id"]),
            body={
                "passwordCredential": {
                    "displayName": CREDENTIAL_NAME,
                    "endDateTime": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            },
            expect=(200, 201),
        )
        secret = (added or {}).get("secretText")
        if not secret:
            raise GraphError("addPassword answered without a secret")
        self.module.no_log_values.add(secret)
        self._write_credential_file(path, app.get("appId"), secret, added.get("keyId"))
        self.result["credential_key_id"] = added.get("keyId")
        for stale in credentials:
            if stale.get("displayName") == CREDENTIAL_NAME and stale.get("keyId") != added.get("keyId"):
                try:
                    self.client.call(
                        "POST",
                        "/applications/{}/removePassword".format(app["id"]),
                        body={"keyId": stale["keyId"]},
                        expect=(204, 200),
                    )
                except GraphError as error:
                    if error.status not in {404, 400}:
                        raise

    def _fix_attributes(self, path):
        mode = int(self.params["credential_mode"], 8)
        stat = os.stat(path)
        if stat.st_mode & 0o7777 != mode:
            self.result["changed"] = True
            if not self.module.check_mode:
                os.chmod(path, mode)
        owner, group = self.params["credential_owner"], self.params["credential_group"]
        if (owner is not None and stat.st_uid != owner) or (group is not None and stat.st_gid != group):
            self.result["changed"] = True
            if not self.module.check_mode:
                os.chown(path, -1 if owner is None else owner, -1 if group is None else group)

    def _write_credential_file(self, path, app_id, secret, key_id):
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700)
        fd, temporary = tempfile.mkstemp(prefix=".azure-credential-", dir=directory)
        try:
            os.fchmod(fd, int(self.params["credential_mode"], 8))
            owner, group = self.params["credential_owner"], self.params["credential_group"]
            if owner is not None or group is not None:
                os.fchown(fd, -1 if owner is None else owner, -1 if group is None else group)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(
                    "AZURE_CLIENT_ID={}\nAZURE_TENANT_ID={}\nAZURE_CLIENT_SECRET={}\nAZURE_CLIENT_SECRET_ID={}\n".format(
                        app_id, self.params["tenant_id"], secret, key_id
                    )
                )
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise


def _parse_time(value):
    if not value:
        return datetime.datetime.max.replace(tzinfo=datetime.UTC)
    text = value.replace("Z", "+00:00")
    if "." in text:
        head, _, tail = text.partition(".")
        zone = tail[tail.find("+") :] if "+" in tail else ""
        text = head + zone
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        return datetime.datetime.min.replace(tzinfo=datetime.UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "create": {"type": "bool", "default": True},
            "redirect_uris": {"type": "list", "elements": "str", "default": []},
            "redirect_uris_state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "credential_file": {"type": "path"},
            "credential_mode": {"type": "str", "default": "0600"},
            "credential_owner": {"type": "int"},
            "credential_group": {"type": "int"},
            "credential_lifetime_days": {"type": "int", "default": 365},
            "credential_renew_days": {"type": "int", "default": 30},
            "tenant_id": {"type": "str", "required": True},
            "client_id": {"type": "str", "required": True},
            "client_secret": {"type": "str", "required": True, "no_log": True},
            "authority_url": {"type": "str", "default": "https://login.microsoftonline.com"},
            "graph_url": {"type": "str", "default": "https://graph.microsoft.com/v1.0"},
            "cache_dir": {"type": "path"},
            "lock_dir": {"type": "path"},
            "lock_timeout": {"type": "int", "default": 300},
            "timeout": {"type": "int", "default": 30},
            "retries": {"type": "int", "default": 4},
            "max_retry_wait": {"type": "int", "default": 60},
            "validate_certs": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    params = module.params
    try:
        int(params["credential_mode"], 8)
    except ValueError:
        module.fail_json(msg="credential_mode must be an octal mode such as 0600")
    client = GraphClient(
        params["authority_url"],
        params["graph_url"],
        params["tenant_id"],
        params["client_id"],
        params["client_secret"],
        cache_dir=params["cache_dir"],
        timeout=params["timeout"],
        retries=params["retries"],
        max_retry_wait=params["max_retry_wait"],
        validate_certs=params["validate_certs"],
    )
    app = AzureApp(module, client)
    try:
        app.run()
    except GraphError as error:
        module.fail_json(
            msg="app registration {}: {}".format(params["name"], error),
            orchestrator_transient=bool(error.transient),
            **({"status": error.status} if error.status else {}),
            **{key: value for key, value in app.result.items() if key != "changed"},
        )
    module.exit_json(graph_calls=client.calls, graph_retry_wait=round(client.waited, 1), **app.result)


if __name__ == "__main__":
    main()
