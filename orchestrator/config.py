"""Settings from the environment: the seed's variable names, plus ORCHESTRATOR_* for the engine itself."""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Environment variables holding secrets: read into Settings, then removed from the worker's environment
# so no playbook process inherits them (ansible-runner also writes its environment into its artifacts).
SECRET_ENV = ("GITHUB_TOKEN", "AZURE_CLIENT_SECRET")


class Settings(BaseSettings):
    """Worker and CLI configuration. Secret values are SecretStr so they never print by accident."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    # The seed's variables (contract).
    redis_url: str = Field(default="redis://localhost:6379/0", validation_alias="REDIS_URL")
    domain: str = Field(default="kanban.localhost", validation_alias="DOMAIN")
    portal_api_url: str = Field(default="https://kanban.localhost/api", validation_alias="PORTAL_API_URL")
    docker_host: str = Field(default="unix:///var/run/docker.sock", validation_alias="DOCKER_HOST")
    github_token: SecretStr | None = Field(default=None, validation_alias="GITHUB_TOKEN")
    github_org: str | None = Field(default=None, validation_alias="GITHUB_ORG")
    github_api_url: str = Field(default="https://api.github.com", validation_alias="GITHUB_API_URL")
    github_template: str = Field(default="kanban/workspace-template", validation_alias="GITHUB_TEMPLATE_REPO")
    azure_client_id: str | None = Field(default=None, validation_alias="AZURE_CLIENT_ID")
    azure_client_secret: SecretStr | None = Field(default=None, validation_alias="AZURE_CLIENT_SECRET")
    azure_tenant_id: str | None = Field(default=None, validation_alias="AZURE_TENANT_ID")
    azure_authority_url: str = Field(
        default="https://login.microsoftonline.com", validation_alias="AZURE_AUTHORITY_URL"
    )
    graph_api_url: str = Field(default="https://graph.microsoft.com/v1.0", validation_alias="GRAPH_API_URL")
    # ACME (Let's Encrypt by default; its staging is https://acme-staging-v02.api.letsencrypt.org/directory).
    acme_directory_url: str = Field(
        default="https://acme-v02.api.letsencrypt.org/directory", validation_alias="ACME_DIRECTORY_URL"
    )
    acme_email: str | None = Field(default=None, validation_alias="ACME_EMAIL")
    acme_ca_bundle: Path | None = Field(default=None, validation_alias="ACME_CA_BUNDLE")
    acme_webroot: Path | None = Field(default=None, validation_alias="ACME_WEBROOT")

    # Claude Code over SSH (the seed's variables; SSH_USER is required for agent runs, checked when one runs).
    ssh_user: str | None = Field(default=None, validation_alias="SSH_USER")
    ssh_host: str = Field(default="host.docker.internal", validation_alias="SSH_HOST")
    ssh_claude_path: str = Field(default="~/.local/bin/claude", validation_alias="SSH_CLAUDE_PATH")
    # Ours: port, client key and known_hosts (default: ssh's own ~/.ssh files), where the agent host sees the data
    # directory, and the group given write access to a working clone before a run (default: SSH_USER's).
    ssh_port: int = Field(default=22, ge=1, le=65535, validation_alias="ORCHESTRATOR_SSH_PORT")
    ssh_key_file: Path | None = Field(default=None, validation_alias="ORCHESTRATOR_SSH_KEY_FILE")
    ssh_known_hosts: Path | None = Field(default=None, validation_alias="ORCHESTRATOR_SSH_KNOWN_HOSTS")
    agent_data_dir: Path | None = Field(default=None, validation_alias="ORCHESTRATOR_AGENT_DATA_DIR")
    agent_group: str | None = Field(default=None, validation_alias="ORCHESTRATOR_AGENT_GROUP")

    # The engine's own.
    data_dir: Path = Field(default=Path("/var/lib/orchestrator"), validation_alias="ORCHESTRATOR_DATA_DIR")
    state_dir: Path = Field(default=Path.home() / ".cache" / "orchestrator", validation_alias="ORCHESTRATOR_STATE_DIR")
    playbook_dir: Path = Field(default=PROJECT_ROOT / "playbooks", validation_alias="ORCHESTRATOR_PLAYBOOK_DIR")
    project_dir: Path = Field(default=PROJECT_ROOT, validation_alias="ORCHESTRATOR_PROJECT_DIR")
    concurrency: int = Field(default=4, ge=1, le=256, validation_alias="ORCHESTRATOR_CONCURRENCY")
    heartbeat_interval: float = Field(default=2.0, gt=0, validation_alias="ORCHESTRATOR_HEARTBEAT_INTERVAL")
    lease_ttl: float = Field(default=10.0, gt=0, validation_alias="ORCHESTRATOR_LEASE_TTL")
    reap_interval: float = Field(default=2.0, gt=0, validation_alias="ORCHESTRATOR_REAP_INTERVAL")
    poll_interval: float = Field(default=1.0, gt=0, validation_alias="ORCHESTRATOR_POLL_INTERVAL")
    grace_period: float = Field(default=60.0, ge=0, validation_alias="ORCHESTRATOR_GRACE_PERIOD")
    kill_grace: float = Field(default=2.0, ge=0, validation_alias="ORCHESTRATOR_KILL_GRACE")
    max_body_bytes: int = Field(default=256 * 1024, ge=1024, validation_alias="ORCHESTRATOR_MAX_BODY_BYTES")
    max_recoveries: int = Field(default=2, ge=0, validation_alias="ORCHESTRATOR_MAX_RECOVERIES")
    retry_attempts: int = Field(default=3, ge=1, validation_alias="ORCHESTRATOR_RETRY_ATTEMPTS")
    retry_min_wait: float = Field(default=4.0, ge=0, validation_alias="ORCHESTRATOR_RETRY_MIN_WAIT")
    retry_max_wait: float = Field(default=60.0, ge=0, validation_alias="ORCHESTRATOR_RETRY_MAX_WAIT")
    retention_seconds: int = Field(default=7 * 24 * 3600, ge=60, validation_alias="ORCHESTRATOR_RETENTION")
    stream_maxlen: int = Field(default=100_000, ge=100, validation_alias="ORCHESTRATOR_STREAM_MAXLEN")
    task_stream_maxlen: int = Field(default=10_000, ge=100, validation_alias="ORCHESTRATOR_TASK_STREAM_MAXLEN")
    timeouts: dict[str, float] = Field(default_factory=dict, validation_alias="ORCHESTRATOR_TIMEOUTS")
    log_level: str = Field(default="INFO", validation_alias="ORCHESTRATOR_LOG_LEVEL")
    # Certificates for team, workspace and sandbox host names (off unless set: it needs an edge serving the
    # ACME webroot); the worker renews what is due every cert_renew_interval seconds (0: never).
    certificates: bool = Field(default=False, validation_alias="ORCHESTRATOR_CERTIFICATES")
    cert_renew_interval: float = Field(default=12 * 3600, ge=0, validation_alias="ORCHESTRATOR_CERT_RENEW_INTERVAL")

    @field_validator("timeouts", mode="before")
    @classmethod
    def _parse_timeouts(cls, value: object) -> object:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @property
    def certificate_dir(self) -> Path:
        return self.data_dir / "certificates"

    @property
    def webroot(self) -> Path:
        return self.acme_webroot or self.data_dir / "acme-webroot"

    @cached_property
    def secret_values(self) -> tuple[str, ...]:
        """Every configured secret, for redaction of anything that leaves the process."""
        values = (self.github_token, self.azure_client_secret)
        return tuple(v.get_secret_value() for v in values if v is not None and v.get_secret_value())

    @staticmethod
    def scrub_secret_env() -> None:
        """Remove secret variables from this process's environment (call once they have been read)."""
        for name in SECRET_ENV:
            os.environ.pop(name, None)

    def playbook_env(self) -> dict[str, str]:
        """The environment a playbook run gets on top of the worker's own (never secrets)."""
        return {
            "ANSIBLE_CONFIG": str(self.project_dir / "ansible.cfg"),
            "ORCHESTRATOR_DATA_DIR": str(self.data_dir),
            "DOCKER_HOST": self.docker_host,
            "DOMAIN": self.domain,
            "PORTAL_API_URL": self.portal_api_url,
        }

    def service_vars(self) -> dict[str, object]:
        """The extra vars every run gets from the settings: folders, domain, and where the roles reach outside
        services. Secrets travel only in the run's private vars file (mode 0600, removed with the run), never in
        the environment or on a command line. `orchestrator vars` writes the same for a run by hand."""
        optional: dict[str, object | None] = {
            "orchestrator_data_dir": self.data_dir,
            "orchestrator_state_dir": self.state_dir,
            "orchestrator_domain": self.domain,
            "orchestrator_portal_api_url": self.portal_api_url,
            "orchestrator_github_api_url": self.github_api_url,
            "orchestrator_github_template": self.github_template,
            "orchestrator_github_org": self.github_org,
            "orchestrator_github_token": self.github_token,
            "orchestrator_azure_authority_url": self.azure_authority_url,
            "orchestrator_graph_api_url": self.graph_api_url,
            "orchestrator_azure_tenant_id": self.azure_tenant_id,
            "orchestrator_azure_client_id": self.azure_client_id,
            "orchestrator_azure_client_secret": self.azure_client_secret,
            "orchestrator_certificates": self.certificates,
            "orchestrator_acme_directory_url": self.acme_directory_url,
            "orchestrator_acme_webroot": self.webroot,
            "orchestrator_acme_certificate_dir": self.certificate_dir,
            "orchestrator_acme_email": self.acme_email,
            "orchestrator_acme_ca_bundle": self.acme_ca_bundle,
            "orchestrator_ssh_user": self.ssh_user,
            "orchestrator_ssh_host": self.ssh_host,
            "orchestrator_ssh_port": self.ssh_port,
            "orchestrator_ssh_claude_path": self.ssh_claude_path,
            "orchestrator_ssh_key_file": self.ssh_key_file,
            "orchestrator_ssh_known_hosts": self.ssh_known_hosts,
            "orchestrator_agent_data_dir": self.agent_data_dir,
            "orchestrator_agent_group": self.agent_group,
        }
        values: dict[str, object] = {}
        for name, raw in optional.items():
            value = raw.get_secret_value() if isinstance(raw, SecretStr) else str(raw) if isinstance(raw, Path) else raw
            if value is not None and value != "":
                values[name] = value
        return values
