"""A throwaway certificate authority for the demo and the tests.

Makes a CA, a broker certificate for ``localhost``/``127.0.0.1`` and client certificates,
as PEM files, with the ``cryptography`` package. Run ``python -m simulators.pki DIR`` to
write a set to DIR. Never use these for a real site: the keys sit unprotected on disk.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: CertPair
    clients: dict[str, CertPair]

    @property
    def ca_key(self) -> Path:
        """The CA's private key (``ca-key.pem`` next to ``ca.crt``), to issue more."""
        return self.ca.parent / "ca-key.pem"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path = path.with_suffix(".key")
        key_path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        key_path.chmod(0o600)


def _issue(
    name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer if not ca else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650 if ca else 825))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path, clients: tuple[str, ...] = ("bench",),
             ca_name: str = "bench-agent test CA") -> Pki:
    """Write ``ca.crt``, ``server.crt/key`` and ``NAME.crt/key`` per client into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_cert = _issue(ca_name, ca_key, x509.Name([]), ca_key, ca=True)
    _write(directory / "ca", ca_cert, None)
    (directory / "ca-key.pem").write_bytes(ca_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    server_key = _key()
    _write(directory / "server",
           _issue("localhost", server_key, ca_cert.subject, ca_key, server=True), server_key)
    pairs = {}
    for client in clients:
        client_key = _key()
        _write(directory / client, _issue(client, client_key, ca_cert.subject, ca_key),
               client_key)
        pairs[client] = CertPair(directory / f"{client}.crt", directory / f"{client}.key")
    return Pki(directory / "ca.crt", CertPair(directory / "server.crt", directory / "server.key"),
               pairs)


def issue_client(pki: Pki, common_name: str) -> CertPair:
    """One more client certificate from ``pki``'s CA, with ``common_name`` as its CN,
    written as ``CN.crt``/``CN.key`` next to the CA (a CN may hold dots: ``sh01.b07``)."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    client_key = _key()
    stem = pki.ca.parent / f"{common_name}.pem"  # _write swaps the ".pem" for its suffixes
    _write(stem, _issue(common_name, client_key, ca_cert.subject, ca_key), client_key)
    return CertPair(stem.with_suffix(".crt"), stem.with_suffix(".key"))


def ensure_pki(directory: Path, clients: tuple[str, ...] = ("bench",)) -> Pki:
    """The set in ``directory`` if it is complete, else a new one written there."""
    pairs = {c: CertPair(directory / f"{c}.crt", directory / f"{c}.key") for c in clients}
    server = CertPair(directory / "server.crt", directory / "server.key")
    files = [directory / "ca.crt", server.cert, server.key]
    files += [p for pair in pairs.values() for p in (pair.cert, pair.key)]
    if all(f.exists() for f in files):
        return Pki(directory / "ca.crt", server, pairs)
    return make_pki(directory, clients)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--client", action="append", default=[], help="client cert name")
    args = parser.parse_args()
    pki = make_pki(args.directory, tuple(args.client or ["bench"]))
    print(f"CA {pki.ca}; broker {pki.server.cert}; clients {', '.join(pki.clients)}")


if __name__ == "__main__":
    main()
