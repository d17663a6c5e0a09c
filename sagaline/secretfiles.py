"""Passwords kept in files, one per principal or role (the file's first line): generated
once (mode 0600 in a 0700 folder), never changed here — operators rotate by editing them —
and read only by the process that needs one. Used for PostgreSQL roles and Kafka users."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path


def password_file(directory: Path, name: str) -> Path:
    return directory / name


def read_password(directory: Path, name: str) -> str:
    """`name`'s password, from its file (the first line). FileNotFoundError names the file."""
    return password_file(directory, name).read_text().splitlines()[0]


def ensure_password_files(directory: Path, names: list[str]) -> list[str]:
    """Generate a password file (mode 0600) for each name that has none; returns the names
    that got one. Existing files are never changed."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    made = []
    for name in names:
        path = password_file(directory, name)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(24) + "\n")
            made.append(name)
    return made


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` (mode 0600), never readable by others, even for a moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
