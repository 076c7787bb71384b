#!/usr/bin/env python3
"""Issue bench and central-system client certificates from a site CA; revoke them.

The broker (config/mosquitto/mosquitto.conf) takes a client certificate's Common Name as
the MQTT user name, and the ACL (scripts/make_acl.py) gives rights by that name, so the
CN is what makes a certificate a given bench's:

* a bench's CN is ``{site}.{bench}`` (``sh01.b07``): a dot never occurs in a site or
  bench name, so the CN names one bench only;
* a central-system user's CN is its name without a dot (``central``, ``wms-events``).

Usage::

    # the key made here (mode 0600), next to the certificate
    scripts/make_bench_cert.py issue --ca-cert site-ca.crt --ca-key site-ca.key \\
        --site sh01 --bench b07 --out certs/
    # better: the key made on the bench, only its CSR comes to the CA
    scripts/make_bench_cert.py issue ... --site sh01 --bench b07 --csr b07.csr --out certs/
    scripts/make_bench_cert.py issue ... --central central --out certs/
    # a lost or replaced bench: its certificate into the CRL the broker reads (crlfile)
    scripts/make_bench_cert.py revoke --ca-cert site-ca.crt --ca-key site-ca.key \\
        --crl site-ca.crl certs/sh01.b07.crt

An encrypted CA key is asked for its passphrase (or give ``--ca-key-password-file``).
Needs the ``cryptography`` package (``pip install cryptography``); docs/security.md has
the same steps with the ``openssl`` command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import os
import re
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
"""Site and bench names as the agent's config allows them (no dot)."""
USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
CRL_VALID_DAYS = 365
"""A CRL past its next update makes OpenSSL refuse every client: run ``revoke`` (with or
without certificates) again before then to publish a fresh one."""


def bench_common_name(site: str, bench: str) -> str:
    """The CN of a bench's certificate; raises ``ValueError`` for a name the agent refuses."""
    for what, name in (("site", site), ("bench", bench)):
        if not NAME.match(name):
            raise ValueError(f"{what} {name!r}: 1-32 letters, digits, _ or -, starting with a "
                             f"letter or digit (as bench.site and bench.id in the config)")
    return f"{site}.{bench}"


def load_ca(cert_file: Path, key_file: Path, password_file: Path | None
            ) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    ca_cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    data = key_file.read_bytes()
    password = password_file.read_bytes().strip() if password_file else None
    if password is None and b"ENCRYPTED" in data:
        password = getpass.getpass(f"passphrase of {key_file}: ").encode()
    ca_key = serialization.load_pem_private_key(data, password)
    if not isinstance(ca_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
                      | ed25519.Ed25519PrivateKey):
        raise ValueError(f"{key_file}: a CA key is RSA, EC or Ed25519")
    if ca_key.public_key() != ca_cert.public_key():
        raise ValueError(f"{key_file} is not the key of {cert_file}")
    return ca_cert, ca_key


def client_certificate(common_name: str, public_key: CertificatePublicKeyTypes,
                       ca_cert: x509.Certificate, ca_key: CertificateIssuerPrivateKeyTypes,
                       days: int) -> x509.Certificate:
    """A TLS client certificate (clientAuth only) for ``common_name``, signed by the CA."""
    now = dt.datetime.now(dt.UTC)
    usage = x509.KeyUsage(digital_signature=True, key_encipherment=False,
                          content_commitment=False, data_encipherment=False,
                          key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        ca_ski = None
    builder = x509.CertificateBuilder(
        issuer_name=ca_cert.subject,
        subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
        public_key=public_key, serial_number=x509.random_serial_number(),
        not_valid_before=now - dt.timedelta(minutes=5),
        not_valid_after=now + dt.timedelta(days=days),
    )
    for extension, critical in (
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (usage, True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        (x509.SubjectKeyIdentifier.from_public_key(public_key), False),
    ):
        builder = builder.add_extension(extension, critical=critical)
    if ca_ski is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False)
    return builder.sign(ca_key, hashes.SHA256())


def issue(args: argparse.Namespace) -> str:
    if args.central is not None:
        if not USER.match(args.central):
            raise ValueError(f"central user {args.central!r}: 1-64 letters, digits, _ or -, "
                             f"no dot")
        common_name = args.central
    elif args.site and args.bench:
        common_name = bench_common_name(args.site, args.bench)
    else:
        raise ValueError("give --site and --bench, or --central NAME")
    ca_cert, ca_key = load_ca(args.ca_cert, args.ca_key, args.ca_key_password_file)
    args.out.mkdir(parents=True, exist_ok=True)
    cert_file = args.out / f"{common_name}.crt"
    key_file = args.out / f"{common_name}.key"
    made = [cert_file] if args.csr else [cert_file, key_file]
    if not args.force and any(f.exists() for f in made):
        raise ValueError(f"{' or '.join(str(f) for f in made)} exists; --force replaces it "
                         f"(keep the old certificate's serial if it must be revoked)")
    key: ec.EllipticCurvePrivateKey | None = None
    if args.csr:
        csr = x509.load_pem_x509_csr(args.csr.read_bytes())
        if not csr.is_signature_valid:
            raise ValueError(f"{args.csr}: the request's signature does not verify")
        public_key = csr.public_key()
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        public_key = key.public_key()
    cert = client_certificate(common_name, public_key, ca_cert, ca_key, args.days)
    if key is not None:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return (f"{cert_file}: CN={common_name} serial={cert.serial_number:x} valid until "
            f"{cert.not_valid_after_utc:%Y-%m-%d}" + (f"; key {key_file}" if key else ""))


def revoke(args: argparse.Namespace) -> str:
    ca_cert, ca_key = load_ca(args.ca_cert, args.ca_key, args.ca_key_password_file)
    now = dt.datetime.now(dt.UTC)
    revoked: dict[int, x509.RevokedCertificate] = {}
    if args.crl.exists():
        old = x509.load_pem_x509_crl(args.crl.read_bytes())
        if not old.is_signature_valid(ca_key.public_key()):
            raise ValueError(f"{args.crl} is not signed by {args.ca_cert}")
        revoked = {entry.serial_number: entry for entry in old}
    for file in args.certificates:
        cert = x509.load_pem_x509_certificate(file.read_bytes())
        if cert.issuer != ca_cert.subject:
            raise ValueError(f"{file} was not issued by {args.ca_cert}")
        revoked.setdefault(cert.serial_number, x509.RevokedCertificateBuilder()
                           .serial_number(cert.serial_number).revocation_date(now).build())
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(now).next_update(now + dt.timedelta(days=CRL_VALID_DAYS)))
    for entry in revoked.values():
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    tmp = args.crl.with_name(args.crl.name + ".tmp")
    tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, args.crl)
    return (f"{args.crl}: {len(revoked)} revoked certificates, next update "
            f"{now + dt.timedelta(days=CRL_VALID_DAYS):%Y-%m-%d}; reload the broker (new "
            f"connections), or restart it to also close a revoked client's open connection")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--ca-cert", type=Path, required=True, help="the site CA certificate")
    common.add_argument("--ca-key", type=Path, required=True, help="the site CA private key")
    common.add_argument("--ca-key-password-file", type=Path,
                        help="the CA key's passphrase (else asked when the key is encrypted)")
    sub = parser.add_subparsers(dest="command", required=True)
    issuing = sub.add_parser("issue", parents=[common], help="issue a client certificate")
    issuing.add_argument("--site", help="bench.site of the bench")
    issuing.add_argument("--bench", help="bench.id of the bench")
    issuing.add_argument("--central", metavar="USER", help="a central-system user instead")
    issuing.add_argument("--csr", type=Path,
                         help="sign this request's key (made on the bench) instead of making one")
    issuing.add_argument("--out", type=Path, default=Path("."), help="folder for CN.crt/.key")
    issuing.add_argument("--days", type=int, default=825, help="validity (default 825)")
    issuing.add_argument("--force", action="store_true", help="replace existing files")
    revoking = sub.add_parser("revoke", parents=[common],
                              help="add certificates to the CRL (none: just renew the CRL)")
    revoking.add_argument("--crl", type=Path, required=True, help="the CRL file (PEM)")
    revoking.add_argument("certificates", type=Path, nargs="*")
    args = parser.parse_args(argv)
    try:
        print(issue(args) if args.command == "issue" else revoke(args))
    except (OSError, ValueError, TypeError) as exc:
        print(f"make_bench_cert: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
