"""The dead-letter topic: `dlq list`, `dlq show`, `dlq replay`."""

from __future__ import annotations

import json
from typing import Annotated, Any

import structlog
import typer
from rich.table import Table

from ttsync.cli.base import (
    EXIT_FAILED,
    EXIT_USAGE,
    JsonOpt,
    console,
    dlq_app,
    emit_json,
    err_console,
    fail,
    load_settings,
    parse_date,
    progress_bar,
    require_kafka,
    state_store,
)


def _dlq_filter(event_type: str | None, aggregate: str | None, error: str | None, since: str | None,
                until: str | None) -> Any:
    from ops.dlq import DlqFilter

    return DlqFilter(event_type, aggregate, error, parse_date(since, "--since"), parse_date(until, "--until"))


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

    from ops.dlq import DLQ_STATES, dead_letter_state, list_dead_letters, replay_positions
    from schemas.contract import IMPORT_GROUP_SUFFIX, dlq_topic

    settings = load_settings()
    if state is not None and state not in DLQ_STATES:
        fail(f"--state must be one of {', '.join(DLQ_STATES)}", EXIT_USAGE, as_json)
    require_kafka(settings)
    topic = dlq_topic(settings.topic_prefix)
    found, _ = list_dead_letters(settings.kafka, topic, _dlq_filter(event_type, aggregate, error, since, until))
    positions = replay_positions(settings.kafka, topic, settings.group_id)
    processed = state_store().processed_among([d.event_id for d in found if d.event_id], also_groups=(
        settings.group_id + IMPORT_GROUP_SUFFIX,)) if found else set()
    states = {d.ref: dead_letter_state(d, positions.get(d.partition), processed) for d in found}
    by_state = Counter(states.values())
    shown = [d for d in found if state is None or states[d.ref] == state][:limit]
    counts = Counter(d.error_code for d in found if states[d.ref] == "open")
    if as_json:
        emit_json({"count": len(found), "by_state": {s: by_state.get(s, 0) for s in DLQ_STATES},
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
    from ops.dlq import show
    from schemas.contract import dlq_topic

    settings = load_settings()
    require_kafka(settings)
    found = show(settings.kafka, dlq_topic(settings.topic_prefix), ref)
    if found is None:
        err_console.print(f"[red]no dead-lettered record {ref}[/]")
        raise typer.Exit(EXIT_FAILED)
    if as_json:
        emit_json(found.full())
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
    from ops.dlq import replay
    from schemas.contract import dlq_topic

    settings = load_settings()
    log = structlog.get_logger("ttsync.dlq")

    require_kafka(settings)
    seen = {"scanned": 0, "chosen": 0}
    with progress_bar("dlq replay", None, as_json=as_json) as bar:
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
        emit_json(result.__dict__)
    else:
        verb = "would replay" if dry_run else "replayed"
        console.print(f"{verb} {result.replayed} of {result.considered} record(s) scanned"
                      + (f"; {result.skipped_no_origin} without an original topic" if result.skipped_no_origin
                         else ""))
