"""``ttsync``: the one command operators use. Every sub-command has --help; scripts get --json."""

from __future__ import annotations

import datetime as dt
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import structlog
import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from sqlalchemy.engine import make_url

from ttsync.failures import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_RECONNECT,
    EXIT_USAGE,
    SettingsInvalid,
    describe,
)
from ttsync.logging_setup import configure_logging
from ttsync.settings import Settings, get_settings

app = typer.Typer(help="Keep QuickBooks Online in step with TimeTracker.", no_args_is_help=True,
                  pretty_exceptions_enable=False)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"ttsync {version('ttsync')}")
        raise typer.Exit(0)


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print ttsync's version and exit.")] = False) -> None:
    """Keep QuickBooks Online in step with TimeTracker."""
db_app = typer.Typer(help="ttsync's own tables (Alembic migrations).", no_args_is_help=True)
capture_app = typer.Typer(help="Change capture into the outbox.", no_args_is_help=True)
outbox_app = typer.Typer(help="The transactional outbox.", no_args_is_help=True)
schemas_app = typer.Typer(help="The event contract.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(capture_app, name="capture")
app.add_typer(outbox_app, name="outbox")
app.add_typer(schemas_app, name="schemas")
map_app = typer.Typer(help="Operator mappings: TimeTracker values -> QBO accounts, items, vendors.",
                      no_args_is_help=True)
app.add_typer(map_app, name="map")
dlq_app = typer.Typer(help="The dead-letter topic: list, show, replay.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
qbo_app = typer.Typer(help="The QuickBooks Online connection.", no_args_is_help=True)
app.add_typer(qbo_app, name="qbo")

console = Console(stderr=False)
err_console = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]

def _settings() -> Settings:
    try:
        settings = get_settings()
    except ValidationError as exc:
        # A mistyped TTSYNC_* variable: say which, each in a few words, instead of a traceback.
        problems = []
        for error in exc.errors():
            name = "TTSYNC_" + "_".join(str(p) for p in error["loc"]).upper() if error["loc"] else "settings"
            secret = any(w in name for w in ("SECRET", "TOKEN", "PASSWORD", "KEY"))
            got = "" if secret or not error["loc"] else f" (got {error.get('input')!r})"
            problems.append(f"{name}: {error['msg']}{got}")
        raise SettingsInvalid("invalid setting " + "; ".join(problems)) from None
    except SettingsError as exc:  # a value pydantic-settings could not even parse (malformed JSON)
        raise SettingsInvalid(f"invalid setting: {exc} (JSON settings take JSON, e.g. '{{\"a\": \"b\"}}')") from None
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _require_kafka(settings: Settings) -> None:
    """Fail in seconds, not after kafka-python's 30 s bootstrap wait, when no broker answers."""
    from ttsync.local_services import ServiceUnavailable, kafka_answers

    if not kafka_answers(settings.kafka, timeout_s=5):
        raise ServiceUnavailable(f"no answer within 5 s ({settings.kafka.security_protocol})")


@contextmanager
def _progress(description: str, total: float | None, *, as_json: bool, out: Console | None = None
              ) -> Iterator[Callable[..., None]]:
    """A progress bar with a rate and an ETA on stderr, for a person at a terminal (scripts get the JSON and the
    structured log lines instead). Yields ``update(completed=..., total=..., description=...)``."""
    out = out or err_console
    if as_json or not out.is_terminal:
        yield lambda **_: None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=out, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda **changes: bar.update(task, **changes)


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _fatal_exit_code(exc: BaseException) -> int:
    """A wrong setting is exit 2 (fix the setting); only a refused QBO authorisation is exit 3 (reconnect)."""
    from consumer.errors import ConfigurationError

    return EXIT_USAGE if isinstance(exc, ConfigurationError) else EXIT_RECONNECT


def _fail(message: str, code: int, as_json: bool) -> None:
    """End a command in one line: an error object on stdout with --json, else a red line on stderr."""
    if as_json:
        _emit_json({"error": message, "exit_code": code})
    else:
        err_console.print(f"[red]{message}[/]")
    raise typer.Exit(code)


# --- doctor -----------------------------------------------------------------------------------------


@app.command()
def doctor(
    as_json: JsonOpt = False,
    start: Annotated[bool, typer.Option(help="Start a local Kafka broker when none answers.")] = True,
    roundtrip: Annotated[bool, typer.Option(help="Also send one record through a probe topic of its own (creates "
                                                 "and deletes that topic: not for a production broker).")] = False,
) -> None:
    """Check the database, the broker, the topics and the QBO connection; reads only (see --roundtrip)."""
    from ttsync.doctor import run_doctor

    settings = _settings()
    checks = run_doctor(settings, start_services=start, roundtrip=roundtrip)
    ok = all(c.ok for c in checks)
    if as_json:
        _emit_json({"ok": ok, "checks": [c.__dict__ for c in checks]})
    else:
        table = Table(title="ttsync doctor")
        for col in ("check", "result", "detail", "seconds"):
            table.add_column(col)
        for c in checks:
            table.add_row(c.name, "[green]ok[/]" if c.ok else "[red]FAILED[/]", c.detail, f"{c.seconds:.2f}")
        console.print(table)
        console.print("[green]all checks passed[/]" if ok else "[red]some checks failed[/]")
    raise typer.Exit(EXIT_OK if ok else EXIT_FAILED)


@app.command()
def demo(
    postgres: Annotated[bool, typer.Option(help="Use PostgreSQL (deploy/local/postgres.sh) instead of SQLite.")]
    = False,
    quick: Annotated[bool, typer.Option(help="A shorter stretch of activity (used by the tests).")] = False,
    keep: Annotated[bool, typer.Option(help="Keep the sandbox and the broker running afterwards.")] = False,
    kafka: Annotated[str | None, typer.Option(help="Use this broker (bootstrap servers) instead of starting one; "
                                                   "the demo's topics are deleted at the end.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The whole pipeline on this machine: TimeTracker activity -> outbox -> Kafka -> QuickBooks sandbox."""
    from ttsync.demo import Demo

    settings = _settings()
    if kafka:
        settings = settings.model_copy(update={"kafka_bootstrap_servers": kafka})
    # The live table is the demo's output: its retries and dead letters are expected and counted there, not
    # printed as warnings (a failure of the demo itself still ends it with its problems listed).
    configure_logging("CRITICAL", settings.log_format)
    out = Console(stderr=True) if as_json else console
    runner = Demo(postgres=postgres, quick=quick, keep=keep, console=out)
    result = runner.run(settings)
    if as_json:
        _emit_json(result.__dict__)
    else:
        colour = "green" if result.ok else "red"
        verdict = "everything ended in QBO" if result.ok else "problems: " + "; ".join(result.problems)
        console.print(f"[{colour}]{verdict}[/] in {result.seconds:.0f}s; the malformed record stays in the "
                      "dead-letter topic, as it should.")
        console.print(f"Sandbox page: {result.sandbox_url}" + ("" if keep else " (stopped; run with --keep to "
                                                                                "browse it)"))
    if keep:
        console.print("--keep: the sandbox serves until Ctrl-C")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    raise typer.Exit(EXIT_OK if result.ok else EXIT_FAILED)


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

    settings = _settings()

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
        _emit_json(result)
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

    result = status(_settings(), check=check)
    if as_json:
        _emit_json(result)
    else:
        table = Table(title="QuickBooks Online connection")
        table.add_column("")
        table.add_column("")
        for k, v in result.items():
            table.add_row(k, str(v))
        console.print(table)
    ok = result["connected"] and (not check or result.get("check") == "ok")
    raise typer.Exit(EXIT_OK if ok else EXIT_FAILED)


# --- db ---------------------------------------------------------------------------------------------


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

    settings = _settings()
    engine = make_engine(settings.database_url)
    if timetracker_schema:
        from producer.timetracker_schema import TIMETRACKER_METADATA

        TIMETRACKER_METADATA.create_all(engine)
    at = migrate.upgrade(engine, revision)
    if settings.state_database_url and settings.state_database_url != settings.database_url:
        migrate.upgrade(make_engine(settings.state_database_url), revision)
    if as_json:
        _emit_json({"revision": at, "head": migrate.head_revision(), "dialect": engine.dialect.name})
    else:
        console.print(f"database at revision [bold]{at}[/] ({engine.dialect.name})")


@db_app.command("current")
def db_current(as_json: JsonOpt = False) -> None:
    """Show the revision of ttsync's tables."""
    from producer import migrate
    from producer.database import make_engine

    settings = _settings()
    engine = make_engine(settings.database_url)
    current, head = migrate.current_revision(engine), migrate.head_revision()
    if as_json:
        _emit_json({"revision": current, "head": head, "up_to_date": current == head})
    else:
        console.print(f"current: {current or 'none'}  head: {head}")
    raise typer.Exit(EXIT_OK if current == head else EXIT_FAILED)


# --- capture ----------------------------------------------------------------------------------------


@capture_app.command("install")
def capture_install(
    source: Annotated[str | None, typer.Option(help="Instance name put in every event.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Install the PostgreSQL capture triggers on TimeTracker's tables (idempotent)."""
    from producer.database import make_engine
    from producer.trigger_capture import CaptureNotSupported, install_triggers

    settings = _settings()
    engine = make_engine(settings.database_url)
    try:
        with engine.begin() as conn:
            tables = install_triggers(conn, source or settings.source)
    except CaptureNotSupported as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(EXIT_FAILED) from exc
    if as_json:
        _emit_json({"installed": True, "tables": tables})
    else:
        console.print(f"capture triggers installed on: {', '.join(tables)}")


@capture_app.command("uninstall")
def capture_uninstall(as_json: JsonOpt = False) -> None:
    """Remove the capture triggers and functions (the outbox table stays)."""
    from producer.database import make_engine
    from producer.trigger_capture import CaptureNotSupported, uninstall_triggers

    settings = _settings()
    engine = make_engine(settings.database_url)
    try:
        with engine.begin() as conn:
            uninstall_triggers(conn)
    except CaptureNotSupported as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(EXIT_FAILED) from exc
    if as_json:
        _emit_json({"installed": False})
    else:
        console.print("capture triggers removed")


@capture_app.command("status")
def capture_status(as_json: JsonOpt = False) -> None:
    """List the capture triggers installed."""
    from producer.database import make_engine
    from producer.trigger_capture import installed_triggers

    settings = _settings()
    with make_engine(settings.database_url).connect() as conn:
        names = installed_triggers(conn)
    if as_json:
        _emit_json({"triggers": names})
    else:
        console.print("\n".join(names) or "no capture triggers installed")


@capture_app.command("check")
def capture_check(as_json: JsonOpt = False) -> None:
    """Compare TimeTracker's live schema with every column ttsync reads; exit 1 on a difference. Run it after
    every TimeTracker upgrade: capture never fails TimeTracker's writes on a missing column, but the events it
    writes then go to the dead-letter topic, naming the column."""
    from producer.aggregate_snapshots import columns_read, schema_differences
    from producer.database import make_engine

    settings = _settings()
    with make_engine(settings.database_url).connect() as conn:
        missing = schema_differences(conn)
    if as_json:
        _emit_json({"ok": not missing, "missing": missing, "tables_read": sorted(columns_read())})
    elif missing:
        console.print("[red]TimeTracker's schema lacks what ttsync reads:[/] " + ", ".join(missing))
    else:
        console.print(f"every column ttsync reads is there ({len(columns_read())} tables)")
    raise typer.Exit(EXIT_FAILED if missing else EXIT_OK)


SinceDateOpt = Annotated[str | None, typer.Option(help="Only records created or changed since (ISO date).")]
TypesOpt = Annotated[str, typer.Option(help="Comma-separated record types.")]


def _record_types(value: str) -> list[str]:
    from producer.outbox_snapshot import parse_types

    try:
        return parse_types(value)
    except ValueError as exc:
        err_console.print(f"[red]--types[/]: {exc}")
        raise typer.Exit(EXIT_USAGE) from None


def _parse_date(value: str | None, option: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        err_console.print(f"[red]{option}[/]: not an ISO date or timestamp: {value!r}")
        raise typer.Exit(EXIT_USAGE) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


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

    settings = _settings()
    wanted = _record_types(types)
    log = structlog.get_logger("ttsync.snapshot")
    stop = threading.Event()

    def _graceful(signum: int, _frame: Any) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name, action="stopping after this record")
        stop.set()

    signal.signal(signal.SIGTERM, _graceful)
    signal.signal(signal.SIGINT, _graceful)

    with _progress("snapshot", None, as_json=as_json) as bar:
        def progress(r: SnapshotReport) -> None:
            eta = r.eta_s
            log.info("progress", enqueued=r.enqueued, total=r.total, records_per_s=round(r.rate, 1),
                     eta_s=None if eta is None else round(eta, 1))
            bar(completed=r.enqueued, total=r.total)

        try:
            report = run_snapshot(make_engine(settings.database_url), types=wanted,
                                  since=_parse_date(since, "--since"), source=source or settings.source,
                                  chunk_size=chunk_size, max_rate=rate, dry_run=dry_run, restart=restart,
                                  on_progress=progress, should_stop=stop.is_set)
        except SnapshotConflict as exc:
            err_console.print(f"[red]{exc}[/]")
            raise typer.Exit(EXIT_FAILED) from None
    if as_json:
        _emit_json(report.as_dict())
    else:
        verb = "would enqueue" if dry_run else ("resumed, enqueued" if report.resumed else "enqueued")
        per_type = ", ".join(f"{t.aggregate_type} {t.total if dry_run else t.enqueued}" for t in report.types)
        console.print(f"snapshot {report.run_id}: {verb} {report.total if dry_run else report.enqueued} "
                      f"record(s) ({per_type}) in {report.elapsed_s:.1f}s")
    finished = dry_run or all(t.finished for t in report.types)
    raise typer.Exit(EXIT_OK if finished else EXIT_FAILED)


@app.command()
def reconcile(
    since: SinceDateOpt = None,
    types: TypesOpt = "client,invoice,expense,payment",
    fix: Annotated[bool, typer.Option(help="Repair the drift: enqueue events for what TimeTracker holds, "
                                           "remove QBO's extras and duplicates (shows the plan first).")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Carry out the removals of --fix without asking.")] = False,
    max_deletes: Annotated[int, typer.Option(help="Refuse a --fix that would void, delete or deactivate more "
                                                  "QBO entities than this.")] = 10,
    limit: Annotated[int, typer.Option(help="Rows shown in the table (all are in --json).")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Compare TimeTracker with QBO: missing, different, extra, duplicate. Exit 1 when drift is found. With
    --fix, the entities it would remove are shown first and need --yes (or a yes at the prompt); a fix is refused
    when TimeTracker reads as empty while QBO holds ttsync's entities, or when it exceeds --max-deletes."""
    from consumer.errors import FatalError, SyncError
    from consumer.lifecycle import QBO_ENTITY
    from consumer.reconcile import ReconcileReport, judge, load_qbo, load_timetracker, repair
    from consumer.reconcile import existing_ids as still_there
    from consumer.wiring import build_parts
    from producer.database import make_engine

    settings = _settings()
    wanted = _record_types(types)
    after = _parse_date(since, "--since")
    log = structlog.get_logger("ttsync.reconcile")
    timetracker = make_engine(settings.database_url)
    report = ReconcileReport()
    try:
        parts = build_parts(settings)
        qbo: dict[str, list[dict[str, Any]]] = {}
        # Steps: TimeTracker, each QBO entity (paged reads at QBO's rate: the long part), the comparison.
        with _progress("reading TimeTracker", 2 + len(wanted), as_json=as_json) as bar:
            records = load_timetracker(timetracker, wanted, after)
            for t in wanted:
                report.checked[t] = sum(1 for k in records if k.startswith(f"{t}:"))
            log.info("progress", step="timetracker_loaded", records=len(records))
            for done, t in enumerate(wanted, start=1):
                bar(completed=done, description=f"reading QBO {QBO_ENTITY[t]}s")
                qbo[QBO_ENTITY[t]] = load_qbo(parts.client, QBO_ENTITY[t])
                report.qbo_entities[QBO_ENTITY[t]] = len(qbo[QBO_ENTITY[t]])
                log.info("progress", step="qbo_loaded", entity=QBO_ENTITY[t], entities=len(qbo[QBO_ENTITY[t]]))
            if "expense" in wanted:  # to check each purchase's accounts by type
                qbo["Account"] = load_qbo(parts.client, "Account")
            bar(completed=1 + len(wanted), description="comparing")
            report.drift = judge(records, qbo, parts.store.all_mapped(), parts.applier.policy, settings.source,
                                 still_in_timetracker=lambda t, ids: still_there(timetracker, t, ids))
        if fix and report.drift:
            _confirm_removals(report, parts.store, yes=yes, max_deletes=max_deletes, as_json=as_json)
            repair(report.drift, timetracker=timetracker, client=parts.client, store=parts.store,
                   source=settings.source)
    except FatalError as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(_fatal_exit_code(exc)) from exc
    except SyncError as exc:
        err_console.print(f"[red]reconcile stopped: {type(exc).__name__}: {exc}[/]")
        raise typer.Exit(EXIT_FAILED) from exc
    if as_json:
        _emit_json(report.as_dict())
    else:
        counts = report.counts()
        checked = ", ".join(f"{t} {n}" for t, n in report.checked.items())
        console.print(f"checked {checked}; drift: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                                                       or "none"))
        if report.drift:
            table = Table(title="drift" + (" (repaired)" if fix else ""))
            for col in ("kind", "record", "QBO", "detail") + (("fix",) if fix else ()):
                table.add_column(col)
            for d in report.drift[:limit]:
                row = [d.kind, f"{d.aggregate_type} {d.aggregate_id}", f"{d.qbo_entity} {','.join(d.qbo_ids)}",
                       d.detail[:100]]
                table.add_row(*row, *((d.fixed or "",) if fix else ()))
            console.print(table)
            if len(report.drift) > limit:
                console.print(f"... and {len(report.drift) - limit} more (--json lists all)")
    raise typer.Exit(EXIT_FAILED if report.drift else EXIT_OK)


def _confirm_removals(report: Any, store: Any, *, yes: bool, max_deletes: int, as_json: bool) -> None:
    """Show what --fix would take out of QBO; refuse (exit 2) when it is unsafe or not confirmed."""
    from consumer.reconcile import keeper_of, removal_refusal, removals

    plan = removals(report.drift, lambda d: keeper_of(d, store))
    if not plan:
        return
    refusal = removal_refusal(plan, report.checked, max_removals=max_deletes)
    if refusal:
        _fail(f"reconcile --fix refused: {refusal}", EXIT_USAGE, as_json)
    lines = [f"  {r.how} {r.entity} {r.qbo_id}: {r.why}" for r in plan]
    if not yes:
        if as_json or not sys.stdin.isatty():
            _fail(f"reconcile --fix would void, delete or deactivate {len(plan)} QBO entities "
                  f"({'; '.join(f'{r.how} {r.entity} {r.qbo_id}' for r in plan)}): add --yes to carry it out",
                  EXIT_USAGE, as_json)
        err_console.print(f"reconcile --fix will take {len(plan)} entities out of QBO:\n" + "\n".join(lines))
        if not typer.confirm("Go ahead?", default=False, err=True):
            _fail("nothing changed", EXIT_USAGE, as_json)


# --- relay and outbox -------------------------------------------------------------------------------


@app.command()
def relay(
    once: Annotated[bool, typer.Option(help="Publish what is waiting, then exit.")] = False,
    max_seconds: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    create_topics: Annotated[bool, typer.Option(help="Create missing topics at start.")] = True,
    metrics_port: Annotated[int | None, typer.Option(
        help="/metrics and /healthz port (on TTSYNC_METRICS_HOST, 127.0.0.1 by default).")] = None,
) -> None:
    """Publish outbox rows to Kafka (keyed by aggregate), marking them published once acknowledged."""
    from producer.database import make_engine
    from producer.kafka_publisher import KafkaRecordPublisher, ensure_topics
    from producer.migrate import require_current
    from producer.outbox_relay import OutboxRelay
    from schemas.contract import all_topics

    settings = _settings()
    log = structlog.get_logger("ttsync.cli")
    engine = make_engine(settings.database_url)
    require_current(engine, "TimeTracker database")  # an old outbox would fail every batch, for ever
    if create_topics:
        try:
            created = ensure_topics(settings.kafka, all_topics(settings.topic_prefix),
                                    settings.topic_partitions, settings.topic_replication_factor)
            if created:
                log.info("topics_created", topics=created)
        except Exception as exc:  # noqa: BLE001 - the relay still runs and retries publishing
            log.warning("topic_creation_failed", error=repr(exc))
    publisher = KafkaRecordPublisher(settings.kafka)
    worker = OutboxRelay(
        engine, publisher, topic_prefix=settings.topic_prefix, batch_size=settings.relay_batch_size,
        poll_interval_s=settings.relay_poll_interval_s, buckets=settings.relay_buckets,
        retention=dt.timedelta(hours=settings.outbox_retention_hours),
        on_batch=lambda s: log.info("progress", published=s.published, failed=s.failed, batches=s.batches)
        if s.batches % 20 == 0 else None,
    )

    def _graceful(signum: int, _frame: Any) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name, action="finishing in-flight batch")
        worker.stop()

    signal.signal(signal.SIGTERM, _graceful)
    signal.signal(signal.SIGINT, _graceful)
    from producer.relay_metrics import relay_registry

    server = _serve_metrics(settings, engine, relay_registry(engine, worker), metrics_port,
                            heartbeat=lambda: worker.heartbeat)
    try:
        stats = worker.run(max_seconds=max_seconds, idle_exit=once)
    finally:
        publisher.close()
        if server is not None:
            server.stop()
    log.info("relay_exit", published=stats.published, failed=stats.failed, purged=stats.purged)


@app.command()
def consume(
    max_seconds: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    create_topics: Annotated[bool, typer.Option(help="Create missing topics (main, retry, DLQ) at start.")] = True,
    metrics_port: Annotated[int | None, typer.Option(
        help="/metrics and /healthz port (on TTSYNC_METRICS_HOST, 127.0.0.1 by default).")] = None,
) -> None:
    """Apply events to QuickBooks Online: the consumer group (exit 3 when QBO must be reconnected)."""
    from consumer.errors import ConsumerStuck, FatalError
    from consumer.group_consumer import consumer_topics
    from consumer.wiring import build_consumer, build_parts
    from producer.database import make_engine
    from producer.kafka_publisher import ensure_topics
    from producer.migrate import require_current
    from schemas.contract import dlq_topic, dlq_topic_configs

    settings = _settings()
    log = structlog.get_logger("ttsync.cli")
    # Without its tables the consumer would retry every record for ever: say what to run instead.
    state = make_engine(settings.effective_state_database_url)
    try:
        require_current(state, "state database")
    finally:
        state.dispose()  # the consumer makes its own engine (build_parts)
    if create_topics:
        topics = consumer_topics(settings.topic_prefix, settings.retry_topic_delays_s)
        ensure_topics(settings.kafka, topics, settings.topic_partitions,
                      settings.topic_replication_factor)
        ensure_topics(settings.kafka, [dlq_topic(settings.topic_prefix)], 1,
                      settings.topic_replication_factor, dlq_topic_configs(settings.dlq_retention_days))
    try:
        parts = build_parts(settings)
        worker = build_consumer(settings, parts)
    except FatalError as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(_fatal_exit_code(exc)) from exc
    from consumer import metrics
    from consumer.observability import LagCollector

    if metrics_port or settings.metrics_port:
        metrics.REGISTRY.register(LagCollector(
            settings.kafka, settings.group_id, cluster_name=settings.kafka_cluster_name,
            owned=lambda: {(tp.topic, tp.partition) for tp in worker.port.assignment()}))
    server = _serve_metrics(settings, parts.engine, metrics.REGISTRY, metrics_port,
                            heartbeat=lambda: worker.heartbeat)

    def _graceful(signum: int, _frame: Any) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name, action="finishing the current event")
        worker.stop()

    signal.signal(signal.SIGTERM, _graceful)
    signal.signal(signal.SIGINT, _graceful)
    try:
        stats = worker.run(max_seconds=max_seconds, on_progress=lambda s: log.info(
            "progress", applied=s.applied, skipped=s.skipped, duplicates=s.duplicates,
            retried=s.forwarded_to_retry, dead_lettered=s.dead_lettered) if (s.applied + s.skipped) % 50 == 0
            else None)
    except FatalError as exc:
        log.error("consumer_fatal", error=str(exc))
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(_fatal_exit_code(exc)) from exc
    except ConsumerStuck as exc:
        log.error("consumer_stuck", error=str(exc))
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(EXIT_FAILED) from exc
    finally:
        worker.close()
        if server is not None:
            server.stop()
    log.info("consumer_exit", applied=stats.applied, dead_lettered=stats.dead_lettered)


@app.command()
def lag(
    group: Annotated[str | None, typer.Option(help="Consumer group (default: ttsync's).")] = None,
    topic: Annotated[str | None, typer.Option(help="Only this topic.")] = None,
    as_json: JsonOpt = False,
    watch: Annotated[float | None, typer.Option(help="Refresh every N seconds until Ctrl-C.")] = None,
    check: Annotated[bool, typer.Option(help="Exit 1 when the group is WARN or worse (cron, alerting).")] = False,
    window: Annotated[int, typer.Option(help="Samples kept between runs to judge the status.")] = 10,
    stop_after: Annotated[float, typer.Option(help="STOP when a committed offset stands still this many seconds "
                                                   "while there is lag.")] = 300.0,
) -> None:
    """Consumer lag per partition: messages and seconds behind, owner, and a status (Burrow's rules, with time):
    OK, WARN, STALL, STOP, REWIND, ERR."""
    from rich.live import Live

    from consumer.lag import STATUSES, GroupNotFound, evaluate, measure

    settings = _settings()
    group = group or settings.group_id
    live = Live(console=console, auto_refresh=False) if watch is not None and not as_json else None
    try:
        if live is not None:
            live.start()
        while True:
            try:
                _require_kafka(settings)
                result = evaluate(measure(settings.kafka, group, topic), window=window, stop_after_s=stop_after)
            except GroupNotFound as exc:
                if as_json:
                    _emit_json({"group": group, "status": "NOTFOUND", "message": str(exc)})
                else:
                    err_console.print(f"[red]{exc}[/]")
                raise typer.Exit(EXIT_FAILED) from exc
            if as_json:
                _emit_json(result.to_json())
            elif live is not None:  # --watch: the same screen, refreshed in place
                live.update(_lag_view(result), refresh=True)
            else:
                console.print(_lag_view(result))
            if watch is None:
                break
            time.sleep(watch)
    finally:
        if live is not None:
            live.stop()
    bad = STATUSES.index(result.status) >= STATUSES.index("WARN")
    raise typer.Exit(EXIT_FAILED if check and bad else EXIT_OK)


_STATUS_COLOUR = {"OK": "green", "WARN": "yellow", "STALL": "magenta", "STOP": "red", "REWIND": "bold red",
                  "ERR": "bold red"}


def _lag_view(result: Any) -> Any:
    from rich.console import Group
    table = Table(title=f"group {result.group} ({result.state}, {len(result.members)} members) - "
                        f"[{_STATUS_COLOUR[result.status]}]{result.status}[/]")
    for col in ("topic", "partition", "committed", "log end", "lag", "lag (s)", "owner", "status", "note"):
        table.add_column(col, justify="right" if col in ("partition", "committed", "log end", "lag", "lag (s)")
                         else "left")
    for p in result.partitions:
        table.add_row(p.topic, str(p.partition), "-" if p.committed is None else str(p.committed), str(p.log_end),
                      "-" if p.lag is None else str(p.lag), f"{p.lag_seconds:.1f}", p.member or "-",
                      f"[{_STATUS_COLOUR[p.status]}]{p.status}[/]",
                      f"no committed offset ({p.from_log_start} from the log start)" if p.committed is None else "")
    for t, totals in sorted(result.totals().items()):
        table.add_row(f"[bold]{t}[/]", "all", "", "", f"[bold]{int(totals['lag'])}[/]",
                      f"{totals['max_lag_seconds']:.1f}", "", "", "")
    notes = [f"[yellow]{result.message}[/]"] if result.message else []
    return Group(table, *notes, f"status judged over {result.window_samples} sample(s)")


def _dlq_filter(event_type: str | None, aggregate: str | None, error: str | None, since: str | None,
                until: str | None) -> Any:
    from consumer.dlq_tools import DlqFilter

    return DlqFilter(event_type, aggregate, error, _parse_date(since, "--since"), _parse_date(until, "--until"))


TypeOpt = Annotated[str | None, typer.Option("--type", help="Event type, e.g. expense or invoice.updated.")]
AggOpt = Annotated[str | None, typer.Option("--aggregate", help="Aggregate id (the record key).")]
ErrOpt = Annotated[str | None, typer.Option("--error", help="Error code (missing_account, 6240) or class.")]
SinceOpt = Annotated[str | None, typer.Option(help="Dead-lettered at or after (ISO 8601).")]
UntilOpt = Annotated[str | None, typer.Option(help="Dead-lettered at or before (ISO 8601).")]


@dlq_app.command("list")
def dlq_list(event_type: TypeOpt = None, aggregate: AggOpt = None, error: ErrOpt = None, since: SinceOpt = None,
             until: UntilOpt = None, as_json: JsonOpt = False,
             state: Annotated[str | None, typer.Option(help="Only open, replayed or resolved dead letters.")] = None,
             limit: Annotated[int | None, typer.Option(min=1, help="Show at most this many (oldest first).")] = None,
             check: Annotated[bool, typer.Option(help="Exit 1 when open dead letters exist (cron, alerting).")]
             = False) -> None:
    """Dead-lettered records with their reason and state (open, replayed, resolved), and counts."""
    from collections import Counter

    from consumer.dlq_tools import DLQ_STATES, dead_letter_state, list_dead_letters, replay_positions
    from schemas.contract import dlq_topic

    settings = _settings()
    if state is not None and state not in DLQ_STATES:
        _fail(f"--state must be one of {', '.join(DLQ_STATES)}", EXIT_USAGE, as_json)
    _require_kafka(settings)
    topic = dlq_topic(settings.topic_prefix)
    found, _ = list_dead_letters(settings.kafka, topic, _dlq_filter(event_type, aggregate, error, since, until))
    positions = replay_positions(settings.kafka, topic, settings.group_id)
    processed = _state_store().processed_among([d.event_id for d in found if d.event_id]) if found else set()
    states = {d.ref: dead_letter_state(d, positions.get(d.partition), processed) for d in found}
    by_state = Counter(states.values())
    shown = [d for d in found if state is None or states[d.ref] == state][:limit]
    counts = Counter(d.error_code for d in found if states[d.ref] == "open")
    if as_json:
        _emit_json({"count": len(found), "by_state": {s: by_state.get(s, 0) for s in DLQ_STATES},
                    "by_reason": dict(Counter(d.error_code for d in found)), "open_by_reason": dict(counts),
                    "records": [{**d.summary(), "state": states[d.ref]} for d in shown]})
    else:
        table = Table(title=f"{topic}: {len(found)} record(s), " + ", ".join(
            f"{by_state.get(s, 0)} {s}" for s in DLQ_STATES))
        for col in ("ref", "dead-lettered at", "event", "aggregate", "reason", "message", "replays", "state"):
            table.add_column(col)
        for d in shown:
            info = d.summary()
            table.add_row(d.ref, info["dead_lettered_at"][:19], d.event_type, d.key or "-", d.error_code,
                          info["message"][:80], str(d.replay_count), states[d.ref])
        console.print(table)
        for reason, n in counts.most_common():
            console.print(f"  open, {reason}: {n}")
    if check and by_state.get("open"):
        raise typer.Exit(EXIT_FAILED)


@dlq_app.command("show")
def dlq_show(ref: Annotated[str, typer.Argument(help="partition:offset, as `ttsync dlq list` shows it")],
             as_json: JsonOpt = False) -> None:
    """One dead-lettered record in full, headers decoded."""
    from consumer.dlq_tools import show
    from schemas.contract import dlq_topic

    settings = _settings()
    _require_kafka(settings)
    found = show(settings.kafka, dlq_topic(settings.topic_prefix), ref)
    if found is None:
        err_console.print(f"[red]no dead-lettered record {ref}[/]")
        raise typer.Exit(EXIT_FAILED)
    if as_json:
        _emit_json(found.full())
    else:
        console.print_json(json.dumps(found.full(), default=str))


@dlq_app.command("replay")
def dlq_replay(event_type: TypeOpt = None, aggregate: AggOpt = None, error: ErrOpt = None,
               since: SinceOpt = None, until: UntilOpt = None,
               dry_run: Annotated[bool, typer.Option(help="Show what would be replayed; change nothing.")] = False,
               limit: Annotated[int | None, typer.Option(help="Replay at most this many.")] = None,
               rate: Annotated[float | None, typer.Option(help="At most this many records per second.")] = None,
               from_beginning: Annotated[bool, typer.Option(help="Scan the whole topic, not from the last "
                                                                "replay position.")] = False,
               as_json: JsonOpt = False) -> None:
    """Send dead letters back to their original topics (after fixing the cause). Safe to run twice."""
    from consumer.dlq_tools import replay
    from schemas.contract import dlq_topic

    settings = _settings()
    log = structlog.get_logger("ttsync.dlq")

    _require_kafka(settings)
    seen = {"scanned": 0, "chosen": 0}
    with _progress("dlq replay", None, as_json=as_json) as bar:
        def progress(d: Any, chosen: bool) -> None:
            seen["scanned"] += 1
            seen["chosen"] += chosen
            bar(completed=seen["scanned"], description=f"dlq replay: {seen['chosen']} sent back")
            if chosen:
                log.info("dlq_replay" if not dry_run else "dlq_replay_dry_run", ref=d.ref,
                         event_type=d.event_type, aggregate_id=d.key, to=d.original_topic, reason=d.error_code)

        result = replay(settings.kafka, dlq_topic(settings.topic_prefix), settings.group_id,
                        _dlq_filter(event_type, aggregate, error, since, until), dry_run=dry_run, limit=limit,
                        rate_per_s=rate, from_beginning=from_beginning, on_record=progress)
    if as_json:
        _emit_json(result.__dict__)
    else:
        verb = "would replay" if dry_run else "replayed"
        console.print(f"{verb} {result.replayed} of {result.considered} record(s) scanned"
                      + (f"; {result.skipped_no_origin} without an original topic" if result.skipped_no_origin
                         else ""))


@map_app.command("set")
def map_set(
    kind: Annotated[str, typer.Argument(help="expense-account | paying-account | item | vendor | customer")],
    key: Annotated[str, typer.Argument(help="The TimeTracker value: a category, a payment method (cash, "
                                            "credit_card, ...) or CreditCard/Cash/Check, 'default', a vendor name "
                                            "or a client id.")],
    target: Annotated[str, typer.Argument(help="The QBO name or id it maps to.")],
    as_json: JsonOpt = False,
) -> None:
    """Map a TimeTracker value to a QBO account/item/vendor/customer (takes effect at once; then replay).
    The target is checked in QBO first: it must exist, and an account must be of the right type."""
    from consumer.wiring import build_parts

    kind_key = _override_kind(kind)
    parts = build_parts(_settings())
    problem = _target_problem(parts.applier.resolver, kind_key, key, target)
    if problem:
        _fail(f"not mapped: {kind} {key!r} -> {target!r}: {problem}", EXIT_FAILED, as_json)
    parts.store.set_ref(f"override:{kind_key}", key.strip().lower(), target, target)
    if as_json:
        _emit_json({"kind": kind, "key": key, "target": target})
    else:
        console.print(f"{kind} {key!r} -> {target!r}")


def _target_problem(resolver: Any, kind: str, key: str, target: str) -> str | None:
    """Why QBO cannot take ``target`` for this mapping, or None (read-only: nothing is created)."""
    from consumer.references import EXPENSE_ACCOUNT_TYPES, PAYING_ACCOUNT_TYPES

    if kind in ("expense_account", "paying_account"):
        if kind == "expense_account":
            types = EXPENSE_ACCOUNT_TYPES
        else:
            ptype = key if key in PAYING_ACCOUNT_TYPES else resolver.options.payment_types.get(
                key.strip().lower(), resolver.options.default_payment_type)
            types = PAYING_ACCOUNT_TYPES[ptype]
        _found, problem = resolver.account_problem(target, types)
        return problem[1] if problem else None
    entity, field = {"item": ("Item", "Name"), "vendor": ("Vendor", "DisplayName"),
                     "customer": ("Customer", "DisplayName")}[kind]
    if target.isdigit():
        try:
            resolver.client.read(entity, target)
        except Exception:  # noqa: BLE001 - any refusal to read it means QBO has no such entity for us
            return f"QBO has no {entity} with id {target}"
        return None
    return None if resolver._find(entity, field, target) else f"QBO has no {entity} named {target!r}"


@map_app.command("check")
def map_check(as_json: JsonOpt = False) -> None:
    """Preflight: every expense category and payment method (TimeTracker's, those in its data, and every
    configured mapping) with the QBO account it resolves to. Exit 1 when one is missing or of the wrong type."""
    from consumer.reconcile import expense_values_in_use
    from consumer.wiring import build_parts
    from producer.database import make_engine

    settings = _settings()
    categories, methods = expense_values_in_use(make_engine(settings.database_url))
    rows = build_parts(settings).applier.resolver.preflight(categories, methods)
    bad = [r for r in rows if r.problem]
    if as_json:
        _emit_json({"ok": not bad, "mappings": [r.__dict__ for r in rows]})
    else:
        table = Table(title="ttsync map check")
        for col in ("mapping", "wanted", "QBO id", "QBO name", "type", "problem"):
            table.add_column(col)
        for r in rows:
            table.add_row(r.kind, r.wanted or "", r.qbo_id or "", r.name or "", r.account_type or "",
                          f"[red]{r.problem}[/]" if r.problem else "[green]ok[/]")
        console.print(table)
        console.print(f"{len(bad)} problem(s)" if bad else "every mapping resolves")
    raise typer.Exit(EXIT_FAILED if bad else EXIT_OK)


@map_app.command("unset")
def map_unset(kind: str, key: str, as_json: JsonOpt = False) -> None:
    """Remove an operator mapping."""
    removed = _state_store().delete_ref(f"override:{_override_kind(kind)}", key.strip().lower())
    if as_json:
        _emit_json({"removed": removed})
    else:
        console.print("removed" if removed else "no such mapping")
    raise typer.Exit(EXIT_OK if removed else EXIT_FAILED)


@map_app.command("list")
def map_list(as_json: JsonOpt = False) -> None:
    """Operator mappings and the references resolved so far (cached in the state database)."""
    rows = _state_store().refs()
    if as_json:
        _emit_json([{k: str(v) for k, v in r.items()} for r in rows])
        return
    table = Table(title="ttsync mappings")
    for col in ("kind", "key", "qbo", "name"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["kind"], r["key"], r["qbo_id"], r["name"] or "")
    console.print(table)


def _override_kind(kind: str) -> str:
    from consumer.references import OVERRIDE_KINDS

    if kind not in OVERRIDE_KINDS:
        err_console.print(f"[red]unknown kind {kind!r}; one of {', '.join(OVERRIDE_KINDS)}[/]")
        raise typer.Exit(EXIT_USAGE)
    return OVERRIDE_KINDS[kind]


def _state_store() -> Any:
    from consumer.state_store import StateStore
    from producer.database import make_engine

    settings = _settings()
    return StateStore(make_engine(settings.effective_state_database_url), settings.qbo_realm_id, settings.group_id)


def _serve_metrics(settings: Settings, engine: Any, registry: Any, port: int | None,
                   heartbeat: Any = None) -> Any:
    """/metrics, /healthz (ready when broker and database answer) and /livez (the worker's loop turns), or None
    when no port is set."""
    port = settings.metrics_port if port is None else port
    if not port:
        return None
    from consumer.observability import readiness
    from ttsync.health_server import HealthServer

    server = HealthServer(registry, lambda: readiness(settings.kafka, engine), port,
                          settings.metrics_host, heartbeat=heartbeat).start()
    host = str(server.httpd.server_address[0])  # where it really listens (TTSYNC_METRICS_HOST may be 0.0.0.0)
    shown = f"[{host}]" if ":" in host else host
    structlog.get_logger("ttsync.cli").info("metrics_listening", url=f"http://{shown}:{server.port}/metrics",
                                            host=host, port=server.port)
    return server


@outbox_app.command("status")
def outbox_status_cmd(
    as_json: JsonOpt = False,
    check: Annotated[bool, typer.Option(help="Exit 1 when rows keep failing, the oldest unpublished row is older "
                                             "than --max-age (a dead or starved relay), or the slot is not "
                                             "active.")] = False,
    max_age: Annotated[float | None, typer.Option(help="Seconds an unpublished row may wait before --check fails "
                                                       "(default TTSYNC_OUTBOX_MAX_AGE_S).")] = None,
    slot: Annotated[str | None, typer.Option(help="Also show this Debezium replication slot (its unconfirmed "
                                                  "WAL is what is in flight when Debezium relays).")] = None,
) -> None:
    """Backlog, oldest unpublished age, publish rate, rows that keep failing."""
    from producer.database import make_engine
    from producer.outbox_status import outbox_status, replication_slot

    settings = _settings()
    engine = make_engine(settings.database_url)
    status = outbox_status(engine)
    limit = settings.outbox_max_age_s if max_age is None else max_age
    problems = []
    if status["failing"]:
        problems.append(f"{status['failing']} row(s) keep failing")
    if status["oldest_unpublished_age_seconds"] > limit:
        problems.append(f"the oldest unpublished row waits {status['oldest_unpublished_age_seconds']:.0f} s "
                        f"(more than {limit:g} s): is a relay running, and does it hold every bucket?")
    if slot:
        status["replication_slot"] = replication_slot(engine, slot)
        if not (status["replication_slot"] and status["replication_slot"]["active"]):
            problems.append(f"replication slot {slot} is missing or inactive")
    status["max_age_seconds"] = limit
    status["problems"] = problems
    if as_json:
        _emit_json(status)
    else:
        table = Table(title="ttsync outbox")
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_row("backlog (unpublished rows)", str(status["backlog"]))
        for t, n in sorted(status["backlog_by_type"].items()):
            table.add_row(f"  {t}", str(n))
        table.add_row("oldest unpublished age (s)", f"{status['oldest_unpublished_age_seconds']:.1f}")
        table.add_row(f"publish rate (/s, last {status['rate_window_seconds']}s)",
                      f"{status['publish_rate_per_second']:.2f}")
        table.add_row("published rows retained", str(status["published_retained"]))
        table.add_row("failing rows", str(status["failing"]))
        console.print(table)
        for row in status["failing_rows"]:
            console.print(f"[red]{row['type']} {row['aggregate_id']}[/] attempts={row['attempts']} "
                          f"next={row['next_attempt_at']} error={row['last_error']}")
        if slot:
            info = status["replication_slot"]
            console.print(f"slot {slot}: " + ("[red]does not exist[/]" if info is None else
                                              f"{'active' if info['active'] else '[red]inactive[/]'}, "
                                              f"{info['lag_bytes']:,} WAL bytes not confirmed"))
        for p in problems:
            console.print(f"[red]{p}[/]")
    raise typer.Exit(EXIT_FAILED if check and problems else EXIT_OK)


@outbox_app.command("purge")
def outbox_purge_cmd(
    older_than_hours: Annotated[float, typer.Option(help="Delete rows older than this (more than 0).")] = 72.0,
    include_unpublished: Annotated[bool, typer.Option(
        help="Also rows never marked published (the Debezium relay marks none): only those the replication slot "
             "given with --slot has confirmed.")] = False,
    slot: Annotated[str | None, typer.Option(help="The Debezium relay's replication slot (with "
                                                  "--include-unpublished).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete old outbox rows. `ttsync relay` does this itself; with the Debezium relay, run it from cron."""
    from producer.database import make_engine
    from producer.outbox_status import PurgeRefused, purge

    settings = _settings()
    if include_unpublished and not slot:
        _fail("--include-unpublished needs --slot: only rows a replication slot has confirmed may go", EXIT_USAGE,
              as_json)
    try:
        deleted = purge(make_engine(settings.database_url), dt.timedelta(hours=older_than_hours),
                        slot=slot if include_unpublished else None)
    except PurgeRefused as exc:
        _fail(f"purge refused: {exc}", EXIT_USAGE if older_than_hours <= 0 else EXIT_FAILED, as_json)
    if as_json:
        _emit_json({"deleted": deleted})
    else:
        console.print(f"deleted {deleted} outbox row(s) older than {older_than_hours:g} h")


@outbox_app.command("cdc-role")
def outbox_cdc_role_cmd(
    role: Annotated[str, typer.Option(help="The PostgreSQL role Debezium logs in as.")] = "ttsync_cdc",
    slot: Annotated[str | None, typer.Option(help="Debezium's slot and publication name (default "
                                                  "ttsync_outbox_<database>, as `connect.sh register`).")] = None,
    password_env: Annotated[str, typer.Option(
        help="Environment variable holding the role's password (never an argument: the process list would show "
             "it).")] = "TTSYNC_CDC_PASSWORD",
    yes: Annotated[bool, typer.Option("--yes", help="Carry the plan out without asking.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create (or update) a least-privilege role for Debezium: LOGIN REPLICATION, SELECT on the outbox only, and
    the publication made by the table's owner. Register the connector with the role's URL and
    DEBEZIUM_PUBLICATION_EXISTS=1."""
    import os

    from sqlalchemy.engine import make_url

    from producer import cdc_role
    from producer.database import make_engine
    from producer.debezium_config import default_slot

    settings = _settings()
    url = make_url(settings.database_url)
    if not url.drivername.startswith("postgresql"):
        _fail("a Debezium role needs PostgreSQL (TTSYNC_DATABASE_URL)", EXIT_USAGE, as_json)
    password = os.environ.get(password_env, "")
    if len(password) < 12:
        _fail(f"{password_env} must hold the role's password (12 characters or more)", EXIT_USAGE, as_json)
    publication = slot or default_slot(url.database or "postgres")
    engine = make_engine(settings.database_url)
    with engine.connect() as conn:
        role_exists, pub_exists = cdc_role.current_state(conn, role, publication)
    steps = cdc_role.plan(role, url.database or "postgres", publication, role_exists=role_exists,
                          publication_exists=pub_exists)
    if not yes:
        if as_json or not sys.stdin.isatty():
            _fail("outbox cdc-role would run: " + "; ".join(steps) + " (add --yes to carry it out)", EXIT_USAGE,
                  as_json)
        err_console.print("outbox cdc-role will run:\n" + "\n".join(f"  {st}" for st in steps))
        if not typer.confirm("Go ahead?", default=False, err=True):
            _fail("nothing changed", EXIT_USAGE, as_json)
    with engine.begin() as conn:
        ran = cdc_role.apply(conn, role, password, publication)
    masked = make_url(cdc_role.role_url(settings.database_url, role, password)).render_as_string(hide_password=True)
    if as_json:
        _emit_json({"role": role, "publication": publication, "ran": ran, "database_url": masked})
    else:
        console.print("\n".join(f"  {st}" for st in ran))
        console.print(f"Register Debezium as {masked} (password from {password_env}) with "
                      "DEBEZIUM_PUBLICATION_EXISTS=1.")


# --- sandbox ----------------------------------------------------------------------------------------


def sandbox_settings(url: str, token_url: str, realm: str, refresh_token: str, need_key: bool) -> dict[str, str]:
    env = {"TTSYNC_QBO_BASE_URL": url, "TTSYNC_QBO_TOKEN_URL": token_url, "TTSYNC_QBO_REALM_ID": realm,
           "TTSYNC_QBO_REFRESH_TOKEN": refresh_token}
    if need_key:  # tokens are kept encrypted: a key is needed; a random one does for a local trial
        import secrets

        env["TTSYNC_SECRET_KEY"] = secrets.token_urlsafe(32)
    return env


@app.command()
def sandbox(
    port: Annotated[int, typer.Option(help="Port (0 = any free port).")] = 8765,
    host: Annotated[str, typer.Option(help="Address to listen on: 127.0.0.1, or 0.0.0.0 inside a container "
                                           "(compose) for the other services to reach it.")] = "127.0.0.1",
    public_url: Annotated[str | None, typer.Option(help="The URL the other services reach it by, written in "
                                                        "--env-file (compose: http://sandbox:8765).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the fault-injection random source.")] = 0,
    throttle: Annotated[bool, typer.Option(help="Enforce QBO's per-realm limits.")] = True,
    requests_per_minute: Annotated[int, typer.Option(help="Per-realm request limit.")] = 500,
    concurrent: Annotated[int, typer.Option(help="Per-realm concurrent request limit.")] = 10,
    error_rate: Annotated[float, typer.Option(help="Share of API calls answered 500/503.")] = 0.0,
    latency_ms: Annotated[float, typer.Option(help="Latency added to every API call.")] = 0.0,
    timeout_rate: Annotated[float, typer.Option(help="Share of API calls that never answer.")] = 0.0,
    token_lifetime: Annotated[float, typer.Option(help="Access-token lifetime in seconds.")] = 3600.0,
    duplicate_requestid: Annotated[str, typer.Option(help="'replay' the first answer or 'fault' (600).")] = "replay",
    realm: Annotated[str, typer.Option(help="The company created at start.")] = "9130000000000001",
    env_file: Annotated[Path | None, typer.Option(help="Write the TTSYNC_* settings for this sandbox (with a "
                                                        "fresh refresh token) to this file instead of printing "
                                                        "them.")] = None,
) -> None:
    """Run the local QuickBooks Online sandbox (OAuth, entities, Faults, throttling, fault injection). At start
    it prints the settings `ttsync consume` needs to use it, a fresh refresh token included."""
    from ttsync.qbo_sandbox.server import SandboxConfig, SandboxServer

    settings = _settings()
    config = SandboxConfig(
        host=host, port=port, seed=seed, throttle_enabled=throttle, requests_per_minute=requests_per_minute,
        concurrent_requests=concurrent, error_rate=error_rate, latency_ms=latency_ms, timeout_rate=timeout_rate,
        access_token_lifetime_s=token_lifetime, duplicate_requestid_mode=duplicate_requestid, default_realm=realm,
        clients={settings.qbo_client_id: settings.qbo_client_secret.get_secret_value()},
    )
    server = SandboxServer(config)
    server.state.company(realm)
    log = structlog.get_logger("ttsync.sandbox")
    log.info("sandbox_listening", url=server.url, realm=realm, page=f"{server.url}/",
             token_endpoint=server.token_url, admin=f"{server.url}/__admin/stats")
    console.print(f"QBO sandbox on {server.url}  (page: {server.url}/, admin: {server.url}/__admin/)")
    # What a first `ttsync consume` needs, ready to paste: a refresh token of this sandbox's realm (printed,
    # never logged; a new one at every start, since the sandbox keeps its tokens in memory).
    token = server.state.authority.issue_refresh_token(settings.qbo_client_id, realm)
    base = (public_url or server.url).rstrip("/")
    env = sandbox_settings(base, f"{base}/oauth2/v1/tokens/bearer", realm, token, settings.secret_key is None)
    if env_file is not None:
        # Written whole, then renamed: a service waiting for the file never reads half of it.
        partial = env_file.with_name(env_file.name + ".partial")
        partial.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        partial.chmod(0o600)
        partial.replace(env_file)
        console.print(f"settings for this sandbox written to {env_file}")
    else:
        console.print("Settings for `ttsync consume` against this sandbox:", highlight=False)
        console.print("".join(f"export {k}='{v}'\n" for k, v in env.items()), highlight=False, soft_wrap=True)

    def _stop(signum: int, _frame: Any) -> None:
        threading.Thread(target=server.httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.serve_forever()
    server.httpd.server_close()
    log.info("sandbox_stopped")


# --- schemas ----------------------------------------------------------------------------------------


@schemas_app.command("export")
def schemas_export(
    directory: Annotated[Path, typer.Argument(help="Where to write <type>.<action>.json files.")],
    as_json: JsonOpt = False,
) -> None:
    """Write JSON Schema for every event type."""
    from schemas.json_schema import export_json_schemas

    written = export_json_schemas(directory)
    if as_json:
        _emit_json({"files": [str(p) for p in written]})
    else:
        console.print(f"wrote {len(written)} schemas to {directory}")


def _end(exc: BaseException) -> None:
    """Any failure a command did not handle: one line (or a JSON error object with --json) and its exit code."""
    database = kafka = ""
    try:
        settings = get_settings()
        database = make_url(settings.database_url).render_as_string(hide_password=True)
        kafka = settings.kafka.bootstrap_servers
    except Exception:  # noqa: BLE001 - the settings themselves may be what failed
        pass
    failure = describe(exc, database=database, kafka=kafka)
    if failure.code == EXIT_FAILED:
        structlog.get_logger("ttsync.cli").debug("unexpected_error", exc_info=exc)
    if "--json" in sys.argv[1:]:
        _emit_json(failure.to_json())
    else:
        err_console.print(f"[red]{failure.message}[/]", soft_wrap=True)
    sys.exit(failure.code)


def main() -> None:
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - translated into one line and a documented exit code
        _end(exc)


if __name__ == "__main__":
    main()
