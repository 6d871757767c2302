"""Setting up: the QBO connection (`qbo`), ttsync's tables (`db`), change capture (`capture`), the event contract
(`schemas`)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Annotated

import structlog
import typer
from rich.table import Table

from ttsync.cli.base import (
    EXIT_FAILED,
    EXIT_OK,
    JsonOpt,
    SinceDateOpt,
    TypesOpt,
    capture_app,
    console,
    db_app,
    emit_json,
    err_console,
    load_settings,
    parse_date,
    progress_bar,
    qbo_app,
    record_types,
    schemas_app,
)
from ttsync.wiring import stop_on_signals


@qbo_app.command("connect")
def qbo_connect(
    port: Annotated[int, typer.Option(help="Port of the 127.0.0.1 redirect (register "
                                           "http://127.0.0.1:PORT/callback with Intuit).")] = 8976,
    browser: Annotated[bool, typer.Option(help="Open the consent page in a browser.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the consent.")] = 300,
    as_json: JsonOpt = False,
) -> None:
    """Connect a QuickBooks company: OAuth authorization code, tokens stored encrypted."""
    from ttsync.qbo_connect import ConnectError, connect

    settings = load_settings()

    def show(url: str) -> None:
        err_console.print("Open this page to allow ttsync into QuickBooks:")
        print(f"AUTHORIZE_URL {url}", file=sys.stderr, flush=True)
        if browser:
            import webbrowser

            webbrowser.open(url)

    try:
        result = connect(settings, port=port, timeout_s=timeout, on_url=show)
    except ConnectError as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(EXIT_FAILED) from exc
    if as_json:
        emit_json(result)
    else:
        console.print(f"connected to company {result['realm_id']}; tokens stored encrypted")
        if not result["realm_matches_settings"]:
            console.print(f"[yellow]set TTSYNC_QBO_REALM_ID={result['realm_id']} for the consumer[/]")


@qbo_app.command("status")
def qbo_status(
    check: Annotated[bool, typer.Option(help="Also call QBO now.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Realm, token expiry, refresh-token rotations and the last successful call."""
    from ttsync.qbo_connect import status

    result = status(load_settings(), check=check)
    if as_json:
        emit_json(result)
    else:
        table = Table(title="QuickBooks Online connection")
        table.add_column("")
        table.add_column("")
        for k, v in result.items():
            table.add_row(k, str(v))
        console.print(table)
    ok = result["connected"] and (not check or result.get("check") == "ok")
    raise typer.Exit(EXIT_OK if ok else EXIT_FAILED)


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    timetracker_schema: Annotated[
        bool, typer.Option(help="Also create TimeTracker's tables when missing (demo and tests only).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create or upgrade ttsync's tables (ttsync_outbox, ...) on PostgreSQL or SQLite."""
    from producer import migrate
    from producer.database import make_engine

    settings = load_settings()
    engine = make_engine(settings.database_url)
    if timetracker_schema:
        from producer.timetracker_schema import TIMETRACKER_METADATA

        TIMETRACKER_METADATA.create_all(engine)
    at = migrate.upgrade(engine, revision)
    if settings.state_database_url and settings.state_database_url != settings.database_url:
        migrate.upgrade(make_engine(settings.state_database_url), revision)
    if as_json:
        emit_json({"revision": at, "head": migrate.head_revision(), "dialect": engine.dialect.name})
    else:
        console.print(f"database at revision [bold]{at}[/] ({engine.dialect.name})")


@db_app.command("current")
def db_current(as_json: JsonOpt = False) -> None:
    """Show the revision of ttsync's tables."""
    from producer import migrate
    from producer.database import make_engine

    settings = load_settings()
    engine = make_engine(settings.database_url)
    current, head = migrate.current_revision(engine), migrate.head_revision()
    if as_json:
        emit_json({"revision": current, "head": head, "up_to_date": current == head})
    else:
        console.print(f"current: {current or 'none'}  head: {head}")
    raise typer.Exit(EXIT_OK if current == head else EXIT_FAILED)


@capture_app.command("install")
def capture_install(
    source: Annotated[str | None, typer.Option(help="Instance name put in every event.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Install the PostgreSQL capture triggers on TimeTracker's tables (idempotent)."""
    from producer.database import make_engine
    from producer.trigger_capture import CaptureNotSupported, install_triggers

    settings = load_settings()
    engine = make_engine(settings.database_url)
    try:
        with engine.begin() as conn:
            tables = install_triggers(conn, source or settings.source)
    except CaptureNotSupported as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(EXIT_FAILED) from exc
    if as_json:
        emit_json({"installed": True, "tables": tables})
    else:
        console.print(f"capture triggers installed on: {', '.join(tables)}")


@capture_app.command("uninstall")
def capture_uninstall(as_json: JsonOpt = False) -> None:
    """Remove the capture triggers and functions (the outbox table stays)."""
    from producer.database import make_engine
    from producer.trigger_capture import CaptureNotSupported, uninstall_triggers

    settings = load_settings()
    engine = make_engine(settings.database_url)
    try:
        with engine.begin() as conn:
            uninstall_triggers(conn)
    except CaptureNotSupported as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(EXIT_FAILED) from exc
    if as_json:
        emit_json({"installed": False})
    else:
        console.print("capture triggers removed")


@capture_app.command("status")
def capture_status(as_json: JsonOpt = False) -> None:
    """List the capture triggers installed."""
    from producer.database import make_engine
    from producer.trigger_capture import installed_triggers

    settings = load_settings()
    with make_engine(settings.database_url).connect() as conn:
        names = installed_triggers(conn)
    if as_json:
        emit_json({"triggers": names})
    else:
        console.print("\n".join(names) or "no capture triggers installed")


@capture_app.command("check")
def capture_check(as_json: JsonOpt = False) -> None:
    """Compare TimeTracker's live schema with every column ttsync reads; exit 1 on a difference. Run it after
    every TimeTracker upgrade: capture never fails TimeTracker's writes on a missing column, but the events it
    writes then go to the dead-letter topic, naming the column."""
    from producer.aggregate_snapshots import columns_read, schema_differences
    from producer.database import make_engine

    settings = load_settings()
    with make_engine(settings.database_url).connect() as conn:
        missing = schema_differences(conn)
    if as_json:
        emit_json({"ok": not missing, "missing": missing, "tables_read": sorted(columns_read())})
    elif missing:
        console.print("[red]TimeTracker's schema lacks what ttsync reads:[/] " + ", ".join(missing))
    else:
        console.print(f"every column ttsync reads is there ({len(columns_read())} tables)")
    raise typer.Exit(EXIT_FAILED if missing else EXIT_OK)


@capture_app.command("snapshot")
def capture_snapshot(
    since: SinceDateOpt = None,
    types: TypesOpt = "client,invoice,expense,payment",
    dry_run: Annotated[bool, typer.Option(help="Count what would be enqueued; write nothing.")] = False,
    rate: Annotated[float | None, typer.Option(help="At most this many records per second.")] = None,
    chunk_size: Annotated[int, typer.Option(min=1, help="Record ids read per query.")] = 500,
    restart: Annotated[bool, typer.Option(help="Abandon an unfinished run with other options.")] = False,
    source: Annotated[str | None, typer.Option(help="Instance name put in every event.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Enqueue one snapshot event per existing record (initial backfill). Resumes an unfinished run."""
    from producer.database import make_engine
    from producer.outbox_snapshot import SnapshotConflict, SnapshotReport, run_snapshot

    settings = load_settings()
    wanted = record_types(types)
    log = structlog.get_logger("ttsync.snapshot")
    stop = threading.Event()

    stop_on_signals(stop.set, "stopping after this record")

    with progress_bar("snapshot", None, as_json=as_json) as bar:
        def progress(r: SnapshotReport) -> None:
            eta = r.eta_s
            log.info("progress", enqueued=r.enqueued, total=r.total, records_per_s=round(r.rate, 1),
                     eta_s=None if eta is None else round(eta, 1))
            bar(completed=r.enqueued, total=r.total)

        try:
            report = run_snapshot(make_engine(settings.database_url), types=wanted,
                                  since=parse_date(since, "--since"), source=source or settings.source,
                                  chunk_size=chunk_size, max_rate=rate, dry_run=dry_run, restart=restart,
                                  on_progress=progress, should_stop=stop.is_set)
        except SnapshotConflict as exc:
            err_console.print(f"[red]{exc}[/]")
            raise typer.Exit(EXIT_FAILED) from None
    if as_json:
        emit_json(report.as_dict())
    else:
        verb = "would enqueue" if dry_run else ("resumed, enqueued" if report.resumed else "enqueued")
        per_type = ", ".join(f"{t.aggregate_type} {t.total if dry_run else t.enqueued}" for t in report.types)
        console.print(f"snapshot {report.run_id}: {verb} {report.total if dry_run else report.enqueued} "
                      f"record(s) ({per_type}) in {report.elapsed_s:.1f}s")
    finished = dry_run or all(t.finished for t in report.types)
    raise typer.Exit(EXIT_OK if finished else EXIT_FAILED)


@schemas_app.command("export")
def schemas_export(
    directory: Annotated[Path, typer.Argument(help="Where to write <type>.<action>.json files.")],
    as_json: JsonOpt = False,
) -> None:
    """Write JSON Schema for every event type."""
    from schemas.json_schema import export_json_schemas

    written = export_json_schemas(directory)
    if as_json:
        emit_json({"files": [str(p) for p in written]})
    else:
        console.print(f"wrote {len(written)} schemas to {directory}")
