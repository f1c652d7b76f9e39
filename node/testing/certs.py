"""Throwaway certificates for a local or test cluster: `distnode certs`.

Makes a private CA, one certificate per node (`n1.pem`/`n1.key`, ...) and one
client certificate (`client.pem`/`client.key`), every leaf valid for
127.0.0.1, ::1, localhost and any extra `hosts`, for both server and client
use (nodes dial each other with their own certificate under mutual TLS).
EC P-256 keys, 30 days: fine for tests and demos, not a production PKI.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 30


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(out: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    (out / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = out / f"{stem}.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)


def _builder(
    subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
    )


def _alt_names(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for host in ["127.0.0.1", "::1", *hosts]:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_certs(out: Path, nodes: int, hosts: Sequence[str] = ()) -> list[Path]:
    """Write ca.pem (+ca.key), n1..nN and client cert/key pairs into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_cert = (
        _builder("distnode test CA", _name("distnode test CA"), ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write(out, "ca", ca_cert, ca_key)
    usages = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    stems = [f"n{i + 1}" for i in range(nodes)] + ["client"]
    for stem in stems:
        key = _key()
        cert = (
            _builder(stem, ca_cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_alt_names(hosts), critical=False)
            .add_extension(usages, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(out, stem, cert, key)
    return [out / f"{stem}.pem" for stem in ["ca", *stems]]
