"""Operating a running pipeline: `doctor`, `reconcile`, `lag`, and the outbox (`outbox status|purge|cdc-role`)."""

from __future__ import annotations

import datetime as dt
import sys
import time
from typing import Annotated, Any

import structlog
import typer
from rich.table import Table

from ttsync.cli.base import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    JsonOpt,
    SinceDateOpt,
    TypesOpt,
    app,
    console,
    emit_json,
    err_console,
    fail,
    fatal_exit_code,
    load_settings,
    outbox_app,
    parse_date,
    progress_bar,
    record_types,
    require_kafka,
)


@app.command()
def doctor(
    as_json: JsonOpt = False,
    start: Annotated[bool, typer.Option(help="Start a local Kafka broker when none answers.")] = True,
    roundtrip: Annotated[bool, typer.Option(help="Also send one record through a probe topic of its own (creates "
                                                 "and deletes that topic: not for a production broker).")] = False,
) -> None:
    """Check the database, the broker, the topics and the QBO connection; reads only (see --roundtrip)."""
    from ttsync.doctor import run_doctor

    settings = load_settings()
    checks = run_doctor(settings, start_services=start, roundtrip=roundtrip)
    ok = all(c.ok for c in checks)
    if as_json:
        emit_json({"ok": ok, "checks": [c.__dict__ for c in checks]})
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
    from ops.reconcile import compare, repair
    from producer.database import make_engine
    from ttsync.wiring import build_parts

    settings = load_settings()
    wanted = record_types(types)
    after = parse_date(since, "--since")
    log = structlog.get_logger("ttsync.reconcile")
    timetracker = make_engine(settings.database_url)
    try:
        parts = build_parts(settings)
        # Steps: TimeTracker, each QBO entity (paged reads at QBO's rate: the long part), the comparison.
        with progress_bar("reading TimeTracker", 2 + len(wanted), as_json=as_json) as bar:
            def step(done: int, what: str, count: int) -> None:
                log.info("progress", step=what, count=count)
                bar(completed=done + 1, description=f"reading QBO {QBO_ENTITY[wanted[done]]}s"
                    if done < len(wanted) else "comparing")

            report = compare(timetracker, parts.client, parts.store, parts.applier.policy, settings.source,
                             wanted, after, on_step=step)
        if fix and report.drift:
            _confirm_removals(report, parts.store, yes=yes, max_deletes=max_deletes, as_json=as_json)
            repair(report.drift, timetracker=timetracker, client=parts.client, store=parts.store,
                   source=settings.source)
    except FatalError as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(fatal_exit_code(exc)) from exc
    except SyncError as exc:
        err_console.print(f"[red]reconcile stopped: {type(exc).__name__}: {exc}[/]")
        raise typer.Exit(EXIT_FAILED) from exc
    if as_json:
        emit_json(report.as_dict())
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
    from ops.drift import removal_refusal, removals
    from ops.reconcile import keeper_of

    plan = removals(report.drift, lambda d: keeper_of(d, store))
    if not plan:
        return
    refusal = removal_refusal(plan, report.checked, max_removals=max_deletes)
    if refusal:
        fail(f"reconcile --fix refused: {refusal}", EXIT_USAGE, as_json)
    lines = [f"  {r.how} {r.entity} {r.qbo_id}: {r.why}" for r in plan]
    if not yes:
        if as_json or not sys.stdin.isatty():
            fail(f"reconcile --fix would void, delete or deactivate {len(plan)} QBO entities "
                  f"({'; '.join(f'{r.how} {r.entity} {r.qbo_id}' for r in plan)}): add --yes to carry it out",
                  EXIT_USAGE, as_json)
        err_console.print(f"reconcile --fix will take {len(plan)} entities out of QBO:\n" + "\n".join(lines))
        if not typer.confirm("Go ahead?", default=False, err=True):
            fail("nothing changed", EXIT_USAGE, as_json)


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

    from ops.lag import STATUSES, GroupNotFound, evaluate, measure

    settings = load_settings()
    group = group or settings.group_id
    live = Live(console=console, auto_refresh=False) if watch is not None and not as_json else None
    try:
        if live is not None:
            live.start()
        while True:
            try:
                require_kafka(settings)
                result = evaluate(measure(settings.kafka, group, topic), window=window, stop_after_s=stop_after)
            except GroupNotFound as exc:
                if as_json:
                    emit_json({"group": group, "status": "NOTFOUND", "message": str(exc)})
                else:
                    err_console.print(f"[red]{exc}[/]")
                raise typer.Exit(EXIT_FAILED) from exc
            if as_json:
                emit_json(result.to_json())
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

    settings = load_settings()
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
        emit_json(status)
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

    settings = load_settings()
    if include_unpublished and not slot:
        fail("--include-unpublished needs --slot: only rows a replication slot has confirmed may go", EXIT_USAGE,
              as_json)
    try:
        deleted = purge(make_engine(settings.database_url), dt.timedelta(hours=older_than_hours),
                        slot=slot if include_unpublished else None)
    except PurgeRefused as exc:
        fail(f"purge refused: {exc}", EXIT_USAGE if older_than_hours <= 0 else EXIT_FAILED, as_json)
    if as_json:
        emit_json({"deleted": deleted})
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

    settings = load_settings()
    url = make_url(settings.database_url)
    if not url.drivername.startswith("postgresql"):
        fail("a Debezium role needs PostgreSQL (TTSYNC_DATABASE_URL)", EXIT_USAGE, as_json)
    password = os.environ.get(password_env, "")
    if len(password) < 12:
        fail(f"{password_env} must hold the role's password (12 characters or more)", EXIT_USAGE, as_json)
    publication = slot or default_slot(url.database or "postgres")
    engine = make_engine(settings.database_url)
    with engine.connect() as conn:
        role_exists, pub_exists = cdc_role.current_state(conn, role, publication)
    steps = cdc_role.plan(role, url.database or "postgres", publication, role_exists=role_exists,
                          publication_exists=pub_exists)
    if not yes:
        if as_json or not sys.stdin.isatty():
            fail("outbox cdc-role would run: " + "; ".join(steps) + " (add --yes to carry it out)", EXIT_USAGE,
                  as_json)
        err_console.print("outbox cdc-role will run:\n" + "\n".join(f"  {st}" for st in steps))
        if not typer.confirm("Go ahead?", default=False, err=True):
            fail("nothing changed", EXIT_USAGE, as_json)
    with engine.begin() as conn:
        ran = cdc_role.apply(conn, role, password, publication)
    masked = make_url(cdc_role.role_url(settings.database_url, role, password)).render_as_string(hide_password=True)
    if as_json:
        emit_json({"role": role, "publication": publication, "ran": ran, "database_url": masked})
    else:
        console.print("\n".join(f"  {st}" for st in ran))
        console.print(f"Register Debezium as {masked} (password from {password_env}) with "
                      "DEBEZIUM_PUBLICATION_EXISTS=1.")
