"""Certificates from the real Pebble of `make services`, through the queue: issued for a team's host name,
chaining to Pebble's root, renewed when forced to expire (by the worker's periodic renewal), listed by
`orchestrator certs`, removed by the delete; a failed validation rolls a workspace back."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis as redis_lib
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from orchestrator import constants as k
from tests.conftest import BIN, Env, envelope, free_port, push, services_env, task_hash, wait_for
from tests.integration.test_workspaces import redis_dump

pytestmark = [pytest.mark.integration, pytest.mark.certificates]

SERVICES = services_env()


def pebble_root() -> x509.Certificate:
    """The root Pebble made at its start, from its management interface (HTTPS, our test CA)."""
    directory = SERVICES["ACME_DIRECTORY_URL"]
    management = directory.replace(":14000/dir", ":15000/roots/0")
    context = ssl.create_default_context(cafile=SERVICES["ACME_CA_BUNDLE"])
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    with opener.open(management, timeout=10) as reply:
        return x509.load_pem_x509_certificate(reply.read())


def chain_of(directory: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates((directory / "fullchain.pem").read_bytes())


def assert_chains_to(leaf_dir: Path, root: x509.Certificate, name: str) -> x509.Certificate:
    chain = chain_of(leaf_dir)
    leaf, issuers = chain[0], [*chain[1:], root]
    for cert, issuer in zip(chain, issuers, strict=True):
        cert.verify_directly_issued_by(issuer)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [name]
    assert (leaf_dir / "privkey.pem").stat().st_mode & 0o777 == 0o600
    return leaf


def nearly_expired(directory: Path, name: str, days: int = 3) -> None:
    """Replace cert.pem with one of ours for the same name that expires in `days` days."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=80))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives import serialization

    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def certs_json(env: Env) -> dict[str, object]:
    out = subprocess.run(
        [str(BIN / "orchestrator"), "certs", "--json"], env=env.environ(), capture_output=True, text=True, check=True
    ).stdout
    loaded: dict[str, object] = json.loads(out)
    return loaded


def test_team_certificate_issue_renew_remove(env: Env, redis: redis_lib.Redis) -> None:
    name = "acme.kanban.localhost"
    push(redis, envelope("t-prov", "team.provision", {"team_slug": "acme"}, resource="team-acme"))
    env.run_burst(timeout=300)
    assert task_hash(redis, "t-prov")["status"] == "completed", task_hash(redis, "t-prov")
    cert_dir = env.data_dir / "certificates" / name
    first = assert_chains_to(cert_dir, pebble_root(), name)
    assert not list((Path(SERVICES["ACME_WEBROOT"]) / ".well-known" / "acme-challenge").iterdir())

    listed = certs_json(env)["certificates"]
    assert isinstance(listed, list)
    [entry] = listed
    assert entry["domain"] == name and entry["days_left"] >= 85 and not entry["renewal_due"]

    # A certificate about to expire: the worker's periodic renewal (one worker takes the lock) replaces it.
    nearly_expired(cert_dir, name)
    assert certs_json(env)["certificates"][0]["renewal_due"]
    worker = env.start_worker(ORCHESTRATOR_CERT_RENEW_INTERVAL="3600")
    last = wait_for(lambda: redis.hgetall(k.CERT_RENEW_LAST) or None, timeout=120, what="a renewal run")
    worker.stop()
    assert last[b"status"] == b"successful", last
    assert json.loads(last[b"renewed"]) == [name]
    renewed = assert_chains_to(cert_dir, pebble_root(), name)
    assert renewed.serial_number != first.serial_number
    assert renewed.not_valid_after_utc > datetime.now(UTC) + timedelta(days=80)

    # The renewal playbook by hand, as operators run it: nothing is due, nothing changes.
    subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "playbooks/certificates.renew.yml",
            "-e",
            f"orchestrator_data_dir={env.data_dir}",
        ],
        env={**env.environ(), "ANSIBLE_CONFIG": str(Path("ansible.cfg").resolve())},
        check=True,
        capture_output=True,
    )
    assert chain_of(cert_dir)[0].serial_number == renewed.serial_number

    # Key material is in its files only: not in the worker's logs, not in Redis (task hashes, streams, ledger).
    keys = [cert_dir / "privkey.pem", *(env.data_dir / "certificates" / ".account").glob("*.key")]
    assert len(keys) == 2
    logs, stored = "".join(w.log() for w in env.workers), redis_dump(redis)
    for path in keys:
        body = "".join(line for line in path.read_text().splitlines() if not line.startswith("-----"))
        for chunk in (body[i : i + 40] for i in range(0, len(body) - 40, 40)):
            assert chunk not in logs and chunk.encode() not in stored, f"{path.name} leaked"

    push(redis, envelope("t-del", "team.delete", {"team_slug": "acme"}, resource="team-acme"))
    env.run_burst(timeout=300)
    assert task_hash(redis, "t-del")["status"] == "completed"
    assert not cert_dir.exists()
    assert certs_json(env)["certificates"] == []


def test_acme_server_down_is_retried_then_rolled_back(env: Env, redis: redis_lib.Redis) -> None:
    # Nothing listens there: transient, so the worker tries again with its backoff, then fails and removes the team.
    env.extra["ACME_DIRECTORY_URL"] = f"https://127.0.0.1:{free_port()}/dir"
    push(redis, envelope("t-noacme", "team.provision", {"team_slug": "noacme"}, resource="team-noacme"))
    env.run_burst(timeout=400, ORCHESTRATOR_RETRY_ATTEMPTS="2")
    record = task_hash(redis, "t-noacme")
    assert record["status"] == "failed", record
    assert "unreachable" in record["error"] and "noacme.kanban.localhost" in record["error"], record["error"]
    assert "rollback incomplete" not in record["error"]
    log = "".join(w.log() for w in env.workers)
    assert "failed transiently" in log
    assert not (env.data_dir / "teams" / "noacme").exists()
    assert not (env.data_dir / "certificates" / "noacme.kanban.localhost").exists()
