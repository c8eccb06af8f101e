"""orchestrator.certs reads certificates on disk; orchestrator.errors tells transient failures from permanent ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from orchestrator.certs import list_certificates
from orchestrator.errors import classify_failure

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def write_cert(directory: Path, name: str, days_left: int, *, key: bool = True) -> None:
    directory.mkdir(parents=True)
    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Issuer")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=10))
        .not_valid_after(NOW + timedelta(days=days_left, hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(private, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key:
        (directory / "privkey.pem").write_text("not read\n")


def test_list_certificates(tmp_path: Path) -> None:
    write_cert(tmp_path / "fresh.kanban.test", "fresh.kanban.test", 80)
    write_cert(tmp_path / "due.kanban.test", "due.kanban.test", 10)
    write_cert(tmp_path / "gone.kanban.test", "gone.kanban.test", -2)
    write_cert(tmp_path / "wrong.kanban.test", "other.kanban.test", 80)
    write_cert(tmp_path / "nokey.kanban.test", "nokey.kanban.test", 80, key=False)
    (tmp_path / "empty.kanban.test").mkdir()
    (tmp_path / ".account").mkdir()
    (tmp_path / "broken.kanban.test").mkdir()
    (tmp_path / "broken.kanban.test" / "cert.pem").write_text("garbage")
    found = {c.domain: c for c in list_certificates(tmp_path, now=NOW)}
    assert sorted(found) == [
        "broken.kanban.test",
        "due.kanban.test",
        "empty.kanban.test",
        "fresh.kanban.test",
        "gone.kanban.test",
        "nokey.kanban.test",
        "wrong.kanban.test",
    ]
    fresh = found["fresh.kanban.test"]
    assert (fresh.days_left, fresh.renewal_due, fresh.problem) == (80, False, "")
    assert fresh.issuer == "Test Issuer" and fresh.subject_alt_names == ("fresh.kanban.test",)
    assert found["due.kanban.test"].renewal_due and not found["due.kanban.test"].problem
    assert found["gone.kanban.test"].problem == "expired"
    assert "does not name" in found["wrong.kanban.test"].problem
    assert found["nokey.kanban.test"].problem == "no privkey.pem"
    assert found["empty.kanban.test"].problem == "no cert.pem"
    assert "unreadable" in found["broken.kanban.test"].problem
    assert list_certificates(tmp_path / "missing") == []


def failure(msg: str, **res: object) -> bool:
    return classify_failure("runner_on_failed", {"task": "t", "res": {"msg": msg, **res}}).transient


def test_transient_and_permanent_failures() -> None:
    assert failure("dial tcp 127.0.0.1:443: connection refused")
    assert failure("HTTP 503", status=503)
    assert failure("throttled", orchestrator_transient=True)
    assert not failure("HTTP 404 Not Found", status=404)
    # A role that knows the cause is permanent says so, whatever text it quotes.
    assert not failure("permanent: the ACME server could not validate x: connect: connection refused")
    assert not failure("ACME rate limit reached, not retried automatically: try again later", status=429)
