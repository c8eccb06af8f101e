"""What the certificates on disk say: one entry per domain directory under the certificate folder, read from
its cert.pem (never the key)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

RENEW_DAYS = 30


@dataclass(frozen=True)
class CertificateInfo:
    domain: str
    path: str
    issuer: str | None = None
    not_after: str | None = None
    days_left: int | None = None
    subject_alt_names: tuple[str, ...] = ()
    renewal_due: bool = True
    problem: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_certificate(directory: Path, *, now: datetime | None = None, renew_days: int = RENEW_DAYS) -> CertificateInfo:
    domain = directory.name
    cert = directory / "cert.pem"
    try:
        loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    except FileNotFoundError:
        return CertificateInfo(domain, str(directory), problem="no cert.pem")
    except (OSError, ValueError) as exc:
        return CertificateInfo(domain, str(directory), problem=f"cert.pem unreadable: {exc}")
    moment = now or datetime.now(UTC)
    not_after = loaded.not_valid_after_utc
    days_left = int((not_after - moment).total_seconds() // 86400)
    try:
        names = tuple(
            loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.DNSName
            )
        )
    except x509.ExtensionNotFound:
        names = ()
    issuer = (
        ", ".join(str(a.value) for a in loaded.issuer.get_attributes_for_oid(NameOID.COMMON_NAME))
        or loaded.issuer.rfc4514_string()
    )
    problem = ""
    if domain not in names:
        problem = f"the certificate does not name {domain}"
    elif days_left < 0:
        problem = "expired"
    elif not (directory / "privkey.pem").exists():
        problem = "no privkey.pem"
    return CertificateInfo(
        domain,
        str(directory),
        issuer=issuer,
        not_after=not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        days_left=days_left,
        subject_alt_names=names,
        renewal_due=bool(problem) or days_left < renew_days,
        problem=problem,
    )


def list_certificates(root: Path, *, now: datetime | None = None) -> list[CertificateInfo]:
    """Every domain directory under `root` (hidden ones, the ACME account and staging folders, excepted)."""
    if not root.is_dir():
        return []
    return [
        read_certificate(entry, now=now)
        for entry in sorted(root.iterdir())
        if entry.is_dir() and not entry.name.startswith(".")
    ]
