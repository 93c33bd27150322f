"""``edgeloop broker``: write configuration for the Mosquitto brokers a fleet runs on.

It prints files for an operator to install; it neither runs nor connects to a broker
(``edgeloop demo`` launches a private one: infra/mosquitto.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from edgeloop_control.cli.common import OneLineErrors, console, fail

app = typer.Typer(cls=OneLineErrors, no_args_is_help=True)


@app.command("config")
def config(
    site: Annotated[str, typer.Option("--site", help="site name (letters, digits, . _ -)")],
    central: Annotated[
        str, typer.Option("--central", help="central broker URL, mqtt(s)://host:port")
    ],
    prefix: Annotated[str, typer.Option(help="topic prefix")] = "edgeloop",
    user: Annotated[
        str | None, typer.Option("--user", help="the bridge's user name at the central broker")
    ] = None,
    password_env: Annotated[
        str | None,
        typer.Option(
            "--password-env",
            help="environment variable holding the bridge's password (never a flag: "
            "flags end up in shell history and process lists)",
        ),
    ] = None,
    ca_file: Annotated[
        Path | None, typer.Option(help="CA certificate of the central broker")
    ] = None,
    cert_file: Annotated[Path | None, typer.Option(help="the bridge's client certificate")] = None,
    key_file: Annotated[Path | None, typer.Option(help="the bridge's client key")] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="write here (mode 0640) instead of stdout")
    ] = None,
) -> None:
    """Print the Mosquitto bridge section that links a site broker to the central one.

    Install it on the site broker (docs/operations.md, "Sites")."""
    from edgeloop_control.infra.sitebridge import BridgeSettings, bridge_config

    password = None
    if password_env:
        password = os.environ.get(password_env)
        if not password:
            fail(f"--password-env {password_env}: that variable is not set or empty")
    text = bridge_config(
        BridgeSettings(
            site=site,
            central=central,
            prefix=prefix,
            username=user,
            password=password,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
        )
    )
    if output is None:
        typer.echo(text, nl=False)
        return
    # It can hold the bridge's password: readable by root and the mosquitto group only.
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fd, 0o640)
        fh.write(text)
    console.print(f"wrote {output}: include it in the site broker (conf.d/) and restart it")
