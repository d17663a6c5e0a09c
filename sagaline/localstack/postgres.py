"""A real PostgreSQL server from Debian's binaries (initdb + pg_ctl) in a project-local dir.

initdb refuses to run as root, so when we are root the server's files belong to the
`postgres` system user and every PostgreSQL binary runs as that user. fsync stays on.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sagaline.localstack.process import MissingToolError

USER = "sagaline"
PASSWORD = "sagaline"  # local development stack only, bound to 127.0.0.1
DATABASE = "sagaline"
_INSTALL_HINT = "PostgreSQL server binaries (Debian: apt-get install postgresql)"


@dataclass(frozen=True)
class PostgresServer:
    home: Path
    port: int
    tls_ca: Path | None = None
    """Set (the secure mode): clients connect over TLS only and verify the server's
    certificate against this CA (`sslmode=verify-full`)."""

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.home / "postgres.log"

    @property
    def dsn(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}{self._tls_params}"

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/postgres{self._tls_params}"

    @property
    def address(self) -> str:
        """Where the server is, without credentials (what status output shows)."""
        return f"127.0.0.1:{self.port}/{DATABASE}" + (" (TLS)" if self.tls_ca else "")

    @property
    def _tls_params(self) -> str:
        return f"?sslmode=verify-full&sslrootcert={self.tls_ca}" if self.tls_ca else ""


def bin_dir() -> Path:
    """Directory of initdb/pg_ctl/postgres: on PATH, else Debian's newest versioned dir."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise MissingToolError(f"pg_ctl not found: install {_INSTALL_HINT}")
    return candidates[-1].parent


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise MissingToolError(
            f"no 'postgres' system user to run the server: install {_INSTALL_HINT}"
        ) from exc
    return ["runuser", "-u", "postgres", "--", *argv]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_as_server_user(argv), capture_output=True, text=True, check=False)


def _chown_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)


def version() -> str:
    out = subprocess.run(
        [str(bin_dir() / "postgres"), "--version"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip().split(" ")[2] if out.stdout.count(" ") >= 2 else out.stdout.strip()


def init(server: PostgresServer) -> bool:
    """initdb once. Returns True if a new cluster was created."""
    if (server.data_dir / "PG_VERSION").exists():
        return False
    bins = bin_dir()
    server.home.mkdir(parents=True, exist_ok=True)
    _chown_to_server_user(server.home)
    pwfile = server.home / ".pwfile"
    pwfile.write_text(PASSWORD + "\n")
    _chown_to_server_user(pwfile)
    result = _run(
        [
            str(bins / "initdb"),
            "-D",
            str(server.data_dir),
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=peer",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        ]
    )
    pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        raise RuntimeError(f"initdb failed: {result.stderr.strip() or result.stdout.strip()}")
    with (server.data_dir / "postgresql.conf").open("a") as conf:
        conf.write(
            "\n# sagaline local stack\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {server.port}\n"
            f"unix_socket_directories = '{server.home}'\n"
            "max_connections = 200\n"
            "shared_buffers = 256MB\n"
            "fsync = on\n"
            "shared_preload_libraries = 'pg_stat_statements'  # statements per saga (benchmarks)\n"
            "logging_collector = off\n"
        )
    return True


_SECURE_CONF = "sagaline-secure.conf"
_WORKLOAD_CONF = "sagaline-workload.conf"
_HBA_MARK = "# sagaline secure mode: TCP only over TLS"

# For sagaline's write-heavy load (docs/operations.md, "PostgreSQL settings"); fsync,
# synchronous_commit and full_page_writes stay on. Checkpoints far apart: after each one the
# first change to every page writes the whole page to the WAL, and at the default 1 GB a
# saturated stack checkpointed every ~23 s. Those page images compressed (lz4).
WORKLOAD_SETTINGS = {"max_wal_size": "4GB", "checkpoint_timeout": "15min", "wal_compression": "lz4"}


def apply_mode(server: PostgresServer, tls: tuple[Path, Path] | None) -> None:
    """The secure mode's settings (`tls`: the server's certificate and key) or the plain
    mode's: TLS on and every TCP connection without it rejected (passwords are SCRAM in
    both), in files PostgreSQL reads at start and on reload, with `WORKLOAD_SETTINGS` (so a
    stack made before a change of them gets it too). A running server is reloaded."""
    conf = server.data_dir / "postgresql.conf"
    for name in (_WORKLOAD_CONF, _SECURE_CONF):
        include = f"include_if_exists = '{name}'\n"
        if include not in conf.read_text():
            with conf.open("a") as handle:
                handle.write(include)
    workload_conf = server.data_dir / _WORKLOAD_CONF
    workload_conf.write_text("".join(f"{name} = '{value}'\n" for name, value in WORKLOAD_SETTINGS.items()))
    _chown_to_server_user(workload_conf)
    secure_conf = server.data_dir / _SECURE_CONF
    hba = server.data_dir / "pg_hba.conf"
    rules = [line for line in hba.read_text().splitlines(keepends=True) if _HBA_MARK not in line]
    if tls is None:
        secure_conf.write_text("")
    else:
        cert, key = tls
        for source, name in ((cert, "server.crt"), (key, "server.key")):
            target = server.data_dir / name
            shutil.copyfile(source, target)
            target.chmod(0o600)
            _chown_to_server_user(target)
        secure_conf.write_text("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
        rules.insert(0, f"hostnossl all all all reject  {_HBA_MARK}\n")
    hba.write_text("".join(rules))
    _chown_to_server_user(secure_conf)
    if is_running(server):
        result = _run([str(bin_dir() / "pg_ctl"), "reload", "-D", str(server.data_dir)])
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl reload failed: {result.stderr.strip()}")


def is_running(server: PostgresServer) -> bool:
    result = _run([str(bin_dir() / "pg_ctl"), "status", "-D", str(server.data_dir)])
    return result.returncode == 0


def start(server: PostgresServer) -> bool:
    """Start the server unless it runs; returns True if we started it."""
    if is_running(server):
        return False
    log = server.log_file
    log.touch(exist_ok=True)
    _chown_to_server_user(log)
    result = _run(
        [
            str(bin_dir() / "pg_ctl"),
            "start",
            "-D",
            str(server.data_dir),
            "-l",
            str(log),
            "-w",
            "-t",
            "60",
        ]
    )
    if result.returncode != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"pg_ctl start failed: {result.stderr.strip()} {' | '.join(tail)}")
    return True


def stop(server: PostgresServer, mode: str = "fast") -> bool:
    """Stop the server: `fast` (clean), or `immediate` (as a crash: recovery at next start)."""
    if not (server.data_dir / "PG_VERSION").exists() or not is_running(server):
        return False
    result = _run(
        [
            str(bin_dir() / "pg_ctl"),
            "stop",
            "-D",
            str(server.data_dir),
            "-m",
            mode,
            "-w",
            "-t",
            "60",
        ]
    )
    if result.returncode != 0:
        raise RuntimeError(f"pg_ctl stop failed: {result.stderr.strip()}")
    return True
