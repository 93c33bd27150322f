"""``edgeloop ingest``: the top-level shortcut for ``edgeloop features ingest``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeloop_control.cli.common import state


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)


def ingest(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="CSV or Parquet file", exists=True, dir_okay=False)],
    view: Annotated[str, typer.Option("--view", help="feature view name")],
    entity: Annotated[
        list[str] | None, typer.Option("--entity", help="entity key column; repeatable")
    ] = None,
    timestamp: Annotated[str | None, typer.Option("--timestamp", help="event time column")] = None,
    ttl: Annotated[str | None, typer.Option(help="feature TTL, e.g. 7d or 12h")] = None,
    new_version: Annotated[
        bool, typer.Option("--new-version", help="allow a schema change: create the next version")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Load a CSV or Parquet file into the feature store."""
    # cli.features imports pandas and the feature store: only when a file is ingested.
    from edgeloop_control.cli.features import ingest_file

    ingest_file(
        state(ctx).workspace,
        file,
        view,
        entity,
        timestamp,
        ttl=ttl,
        new_version=new_version,
        as_json=as_json,
    )
