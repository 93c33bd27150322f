"""``edgeloop features``: inspect and serve the versioned feature store.

Also holds :func:`ingest_file`, the body of the top-level ``edgeloop ingest``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgeloop_control.cli.common import OneLineErrors, console, fail, print_json, state, table

if TYPE_CHECKING:
    from edgeloop_control.featurestore import FeatureStore, IngestResult, ViewVersion
    from edgeloop_control.infra.workspace import Workspace

# The feature store (pandas, pyarrow: seconds on a small box) is imported inside
# the commands, so that `edgeloop --help` and every other command stay fast.

app = typer.Typer(cls=OneLineErrors, no_args_is_help=True, help="Versioned feature store.")

JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def open_store(ws: Workspace) -> FeatureStore:
    from edgeloop_control.featurestore import FeatureStore, FeatureStoreError

    try:
        return FeatureStore(ws.feature_store_dir)
    except (FeatureStoreError, OSError) as exc:
        fail(f"cannot open the feature store at {ws.feature_store_dir}: {exc}")


def ingest_file(
    ws: Workspace,
    path: str | Path,
    view: str,
    entity: Sequence[str] | str | None,
    timestamp: str | None,
    *,
    ttl: str | None = None,
    new_version: bool = False,
    key: Sequence[str] | str | None = None,
    as_json: bool = False,
) -> IngestResult:
    """Ingest a CSV/Parquet file into ``view`` and print the outcome.

    ``entity`` and ``key`` may be lists or comma-separated strings. A schema
    change without ``new_version`` prints one line and exits 1 (``typer.Exit``);
    any other :class:`FeatureStoreError` propagates to the CLI's one handler.
    """
    from edgeloop_control.featurestore import SchemaMismatchError

    store = open_store(ws)
    try:
        result = store.ingest(
            path,
            view,
            entity=_names(entity),
            timestamp=timestamp,
            ttl=ttl,
            evolve=new_version,
            key=_names(key),
        )
    except SchemaMismatchError as exc:
        fail(f"{path} does not match {view}: {exc.cli_message()}")
    if as_json:
        print_json(_result_json(result))
    else:
        created = " (new version)" if result.created_version else ""
        console.print(
            f"{result.ref}{created}: {result.accepted} row(s) stored, "
            f"{result.duplicates} duplicate(s) skipped, {result.files} file(s)",
            highlight=False,
        )
    return result


@app.command("ingest")
def ingest_cmd(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="CSV or Parquet file")],
    view: Annotated[str, typer.Option("--view", "-v", help="feature view name")],
    entity: Annotated[
        list[str] | None,
        typer.Option("--entity", "-e", help="entity key column; repeatable or comma-separated"),
    ] = None,
    timestamp: Annotated[
        str | None, typer.Option("--timestamp", "-t", help="event-time column")
    ] = None,
    ttl: Annotated[str | None, typer.Option(help="time-to-live, e.g. 7d, 12h, 3600")] = None,
    key: Annotated[
        list[str] | None,
        typer.Option("--key", help="columns identifying a row for de-duplication"),
    ] = None,
    new_version: Annotated[
        bool, typer.Option("--new-version", help="create a new version if the schema changed")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Ingest a CSV or Parquet file into a feature view."""
    ingest_file(
        state(ctx).workspace,
        path,
        view,
        entity,
        timestamp,
        ttl=ttl,
        new_version=new_version,
        key=key,
        as_json=as_json,
    )


@app.command("ls")
def ls_cmd(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List views and their versions."""
    from edgeloop_control.featurestore.timestamps import format_ttl

    store = open_store(state(ctx).workspace)
    versions = [v for name in store.views() for v in store.versions(name)]
    if as_json:
        print_json([_version_json(v) for v in versions])
        return
    if not versions:
        console.print("no feature views yet; ingest some with `edgeloop ingest`")
        return
    # Kept narrow enough for an 80-column terminal; `--json` and `show` have the rest.
    rows = [
        [
            v.name,
            f"v{v.version}",
            v.rows,
            v.fingerprint[:12],
            ", ".join(v.entity) or "(row id)",
            v.timestamp,
            format_ttl(v.ttl),
        ]
        for v in versions
    ]
    columns = ["view", "version", "rows", "fingerprint", "entity", "timestamp", "ttl"]
    console.print(
        table("feature views", columns, rows, wrap=("entity",), droppable=("fingerprint", "ttl"))
    )


@app.command("show")
def show_cmd(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="VIEW or VIEW@vN")],
    as_json: JsonOption = False,
) -> None:
    """Schema, entity, timestamp, TTL and partitions of a view version."""
    from edgeloop_control.featurestore.offline import day_label
    from edgeloop_control.featurestore.timestamps import format_ttl, from_micros

    store = open_store(state(ctx).workspace)
    found = store.view(ref)
    partitions = store.partitions(found.ref)
    parts = [
        {
            "date": day_label(p.day),
            "files": p.files,
            "rows": p.rows,
            "first": from_micros(p.min_ts).isoformat(),
            "last": from_micros(p.max_ts).isoformat(),
        }
        for p in partitions
    ]
    if as_json:
        print_json({**_version_json(found), "partitions": parts})
        return
    console.print(
        f"[bold]{found.ref}[/]  rows {found.rows}  files {found.files}  "
        f"fingerprint {found.fingerprint}\n"
        f"entity: {', '.join(found.entity) or '(synthetic row id)'}  "
        f"timestamp: {found.timestamp}{' (ingest time)' if found.synthetic_timestamp else ''}  "
        f"ttl: {format_ttl(found.ttl)}  "
        f"key: {', '.join(found.key_columns) if found.key_columns else '(all columns)'}",
        highlight=False,
    )
    roles = {name: "entity" for name in found.entity} | {found.timestamp: "timestamp"}
    schema_rows = [[c.name, c.type, roles.get(c.name, "feature")] for c in found.schema.columns]
    console.print(table("schema", ["column", "type", "role"], schema_rows))
    part_rows = [[p["date"], p["files"], p["rows"], p["first"], p["last"]] for p in parts]
    console.print(
        table(
            "partitions",
            ["date", "files", "rows", "first", "last"],
            part_rows,
            wrap=("first", "last"),
        )
    )


@app.command("get")
def get_cmd(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="VIEW or VIEW@vN")],
    entities: Annotated[
        list[str],
        typer.Argument(help="entity keys; comma-separate the values of multi-column keys"),
    ],
    as_json: JsonOption = False,
) -> None:
    """Online (latest materialised) values for entity keys."""
    store = open_store(state(ctx).workspace)
    found = store.view(ref)
    keys = [_parse_key(found, text) for text in entities]
    records = store.get_online(found.ref, keys)
    if as_json:
        print_json([{k: _plain(v) for k, v in r.items()} for r in records])
        return
    columns = [*found.entity, found.timestamp, *found.features]
    rows = [[_plain(r[c]) for c in columns] for r in records]
    console.print(table(f"{found.ref} (online)", columns, rows))
    missing = [key for key, r in zip(keys, records, strict=True) if r[found.timestamp] is None]
    if missing:
        why = store.online_misses(found.ref, missing)
        notes = {
            "unknown": "not among the materialised entities (check the key, or ingest it)",
            "expired": f"older than the view's TTL ({found.ttl})",
            "not_materialised": (
                f"not materialised yet: run `edgeloop features materialize {found.name}`"
            ),
        }
        for reason, n in why.items():
            if n:
                console.print(f"{n} key(s) {notes[reason]}", highlight=False)


@app.command("materialize")
def materialize_cmd(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="VIEW or VIEW@vN")],
    start: Annotated[
        str | None, typer.Option(help="from this event time (inclusive; ISO 8601 or unix s)")
    ] = None,
    end: Annotated[
        str | None, typer.Option(help="to this event time (exclusive; ISO 8601 or unix s)")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Copy the latest offline row per entity into the online store."""
    store = open_store(state(ctx).workspace)
    found = store.view(ref)
    written = store.materialize(found.ref, _instant(start), _instant(end))
    if as_json:
        print_json({"view": found.ref, "written": written, "start": start, "end": end})
    else:
        console.print(f"{found.ref}: {written} entities updated online", highlight=False)


@app.command("compact")
def compact_cmd(
    ctx: typer.Context,
    view: Annotated[str, typer.Argument(help="VIEW (every version is compacted)")],
    as_json: JsonOption = False,
) -> None:
    """Merge each event date's small files into one (after many small ingests)."""
    store = open_store(state(ctx).workspace)
    before, after = store.compact(view)
    if as_json:
        print_json({"view": view, "files_before": before, "files_after": after})
    else:
        console.print(f"{view}: {before} file(s) -> {after}", highlight=False)


# -- helpers -------------------------------------------------------------------------


def _names(values: Sequence[str] | str | None) -> list[str] | None:
    """Column names from repeated options, comma-separated text, or both."""
    if not values:
        return None
    items = [values] if isinstance(values, str) else list(values)
    return [part.strip() for value in items for part in str(value).split(",") if part.strip()]


def _instant(text: str | None) -> Any:
    """CLI time bounds: unix seconds when numeric, else the text (ISO 8601)."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _parse_key(found: ViewVersion, text: str) -> tuple[str, ...] | str:
    parts = [part.strip() for part in text.split(",")] if len(found.entity) > 1 else [text]
    return tuple(parts) if len(parts) > 1 else parts[0]


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):  # pandas' Timestamp is one too
        return value.isoformat()
    return value


def _version_json(v: ViewVersion) -> dict[str, Any]:
    return {
        "view": v.name,
        "version": v.version,
        "ref": v.ref,
        "rows": v.rows,
        "files": v.files,
        "dates": v.partitions,
        "fingerprint": v.fingerprint,
        "entity": list(v.entity),
        "timestamp": v.timestamp,
        "synthetic_timestamp": v.synthetic_timestamp,
        "ttl_seconds": None if v.ttl is None else v.ttl.total_seconds(),
        "key": None if v.key_columns is None else list(v.key_columns),
        "schema": [{"name": c.name, "type": c.type} for c in v.schema.columns],
        "created_at": v.created_at,
    }


def _result_json(result: IngestResult) -> dict[str, Any]:
    return {
        "view": result.view,
        "version": result.version,
        "ref": result.ref,
        "rows": result.rows,
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "files": result.files,
        "created_version": result.created_version,
        "fingerprint": result.fingerprint,
    }
