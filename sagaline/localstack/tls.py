"""TLS material for the secure local stack (and `sagaline secrets init`): a private CA and
one certificate, made once by `openssl` and kept in the stack's state directory (private
keys 0600).

The broker certificate names the hosts given (the local stack: 127.0.0.1 and localhost;
clients verify the host name) and is
good for both server and client authentication: the broker also presents it to the KRaft
controller, whose listener demands a certificate (mutual TLS) and maps it to the principal
`User:CN=sagaline-broker`. A client certificate per principal (`client_cert`) serves mutual
TLS as the alternative to SCRAM.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sagaline import secretfiles
from sagaline.localstack import process

DAYS = 825  # the longest validity clients accept for a leaf certificate
BROKER_CN = "sagaline-broker"


LOCAL_HOSTS = ("127.0.0.1", "localhost")


def _server_extensions(hosts: tuple[str, ...], usage: str = "serverAuth") -> str:
    names = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
    return f"subjectAltName={names}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class TlsMaterial:
    directory: Path
    hosts: tuple[str, ...] = LOCAL_HOSTS  # what server certificates name (clients verify it)

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def broker_keystore(self) -> Path:
        """The broker's private key followed by its certificate (Kafka's PEM keystore)."""
        return self.directory / "broker-keystore.pem"

    @property
    def broker_cert(self) -> Path:
        return self.directory / "broker.pem"

    def server_cert(self, name: str) -> tuple[Path, Path]:
        """(certificate, key) of a server certificate for `hosts`, made on first use
        (PostgreSQL's in the secure mode)."""
        cert, key = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        if not cert.exists():
            _leaf(self, name, cert, key, extensions=_server_extensions(self.hosts))
        return cert, key

    def client_cert(self, name: str) -> tuple[Path, Path]:
        """(certificate, key) of a client certificate with CN=`name`, made on first use."""
        cert, key = self.directory / f"client-{name}.pem", self.directory / f"client-{name}.key"
        if not cert.exists():
            _leaf(
                self, name, cert, key, extensions="extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"
            )
        return cert, key


def ensure(directory: Path, hosts: tuple[str, ...] = LOCAL_HOSTS) -> TlsMaterial:
    """The CA and the broker's certificate in `directory`, made if missing; server
    certificates name `hosts` (IP addresses and DNS names)."""
    material = TlsMaterial(directory, hosts)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    if not material.ca_cert.exists():
        _openssl(
            "req",
            "-x509",
            "-new",
            "-newkey",
            "rsa:2048",
            "-noenc",
            "-keyout",
            str(material.ca_key),
            "-out",
            str(material.ca_cert),
            "-days",
            str(DAYS),
            "-subj",
            "/CN=sagaline local CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        )
        material.ca_key.chmod(0o600)
    if not material.broker_keystore.exists():
        key = directory / "broker.key"
        _leaf(
            material,
            BROKER_CN,
            material.broker_cert,
            key,
            extensions=_server_extensions(hosts, "serverAuth,clientAuth"),
        )
        secretfiles.write_private(
            material.broker_keystore, key.read_text() + material.broker_cert.read_text()
        )
    return material


def _leaf(material: TlsMaterial, cn: str, cert: Path, key: Path, *, extensions: str) -> None:
    csr = cert.with_suffix(".csr")
    ext = cert.with_suffix(".ext")
    ext.write_text(extensions)
    try:
        _openssl(
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-noenc",
            "-keyout",
            str(key),
            "-out",
            str(csr),
            "-subj",
            f"/CN={cn}",
        )
        key.chmod(0o600)
        _openssl(
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(material.ca_cert),
            "-CAkey",
            str(material.ca_key),
            "-CAcreateserial",
            "-out",
            str(cert),
            "-days",
            str(DAYS),
            "-extfile",
            str(ext),
        )
    finally:
        csr.unlink(missing_ok=True)
        ext.unlink(missing_ok=True)


def _openssl(*args: str) -> None:
    openssl = process.require_tool("openssl", "OpenSSL (Debian: apt-get install openssl)")
    result = subprocess.run([openssl, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip().splitlines()[-1:]}")
