"""`sagaline db roles` — least privilege in PostgreSQL: a role per service (owning its schema
and nothing else), the DLQ tooling's role and a read-only role (sagaline.pgroles)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.table import Table

from sagaline import pgroles, secretfiles
from sagaline.bootstrap import close_pool, create_pool, endpoints, saga_config
from sagaline.console import emit_json, out
from sagaline.settings import Settings

app = typer.Typer(help="PostgreSQL administration steps.", no_args_is_help=True)


@app.command("roles")
def roles(
    passwords_dir: Path | None = typer.Option(
        None,
        "--passwords-dir",
        help="Folder of password files, one per role (default: SAGALINE_POSTGRES_ROLE_PASSWORDS_DIR).",
    ),
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Create or update the saga's PostgreSQL roles, as the admin of SAGALINE_POSTGRES_DSN: every
    schema and migration first, then each service's schema handed to its role, the grants,
    and each role's password from its file (a missing file is generated, mode 0600; no
    password is ever printed or sent in clear). Idempotent: run it on every deployment."""
    settings = Settings()
    directory = passwords_dir or settings.postgres_role_passwords_dir
    if directory is None:
        raise typer.BadParameter(
            "say where the password files live: --passwords-dir or SAGALINE_POSTGRES_ROLE_PASSWORDS_DIR",
            param_hint="--passwords-dir",
        )
    config = saga_config(settings)
    names = [pgroles.role_name(config, who) for who in (*pgroles.OWNERS, pgroles.READER)]
    generated = secretfiles.ensure_password_files(directory, names)
    passwords = {name: secretfiles.read_password(directory, name) for name in names}

    async def run() -> list[pgroles.RoleReport]:
        ends = await endpoints(settings, start_local=True)
        pool = await create_pool(settings, ends.postgres_dsn, application_name="sagaline-admin")
        try:
            async with pool.acquire() as conn:
                return await pgroles.ensure_roles(conn, config, passwords)
        finally:
            await close_pool(pool)

    reports = asyncio.run(run())
    rows = [
        {
            "role": r.role,
            "owns": r.owns,
            "created": r.created,
            "password_file": str(secretfiles.password_file(directory, r.role)),
            "password_generated": r.role in generated,
        }
        for r in reports
    ]
    if json_output:
        emit_json({"roles": rows})
        return
    table = Table(title="PostgreSQL roles")
    for column in ("role", "owns schema", "created now", "password file"):
        table.add_column(column)
    for row in rows:
        note = " (generated)" if row["password_generated"] else ""
        created = "yes" if row["created"] else "no"
        table.add_row(str(row["role"]), str(row["owns"] or "-"), created, f"{row['password_file']}{note}")
    out.print(table)
