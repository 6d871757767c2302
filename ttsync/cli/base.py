"""What every command shares: the Typer app and its groups, settings, output (tables, JSON, progress), and how a
command ends (one line, a documented exit code: ttsync.failures)."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import structlog
import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn
from sqlalchemy.engine import make_url

from ttsync.failures import EXIT_FAILED, EXIT_OK, EXIT_RECONNECT, EXIT_USAGE, SettingsInvalid, describe
from ttsync.logging_setup import configure_logging
from ttsync.settings import Settings, get_settings

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_RECONNECT", "EXIT_USAGE"]

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
map_app = typer.Typer(help="Operator mappings: TimeTracker values -> QBO accounts, items, vendors.",
                      no_args_is_help=True)
dlq_app = typer.Typer(help="The dead-letter topic: list, show, replay.", no_args_is_help=True)
qbo_app = typer.Typer(help="The QuickBooks Online connection.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(capture_app, name="capture")
app.add_typer(outbox_app, name="outbox")
app.add_typer(schemas_app, name="schemas")
app.add_typer(map_app, name="map")
app.add_typer(dlq_app, name="dlq")
app.add_typer(qbo_app, name="qbo")

console = Console(stderr=False)


err_console = Console(stderr=True)


JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


SinceDateOpt = Annotated[str | None, typer.Option(help="Only records created or changed since (ISO date).")]


TypesOpt = Annotated[str, typer.Option(help="Comma-separated record types.")]


def load_settings() -> Settings:
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


def require_kafka(settings: Settings) -> None:
    """Fail in seconds, not after kafka-python's 30 s bootstrap wait, when no broker answers."""
    from ttsync.local_services import ServiceUnavailable, kafka_answers

    if not kafka_answers(settings.kafka, timeout_s=5):
        raise ServiceUnavailable(f"no answer within 5 s ({settings.kafka.security_protocol})")


@contextmanager
def progress_bar(description: str, total: float | None, *, as_json: bool, out: Console | None = None
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


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def fatal_exit_code(exc: BaseException) -> int:
    """A wrong setting is exit 2 (fix the setting); only a refused QBO authorisation is exit 3 (reconnect)."""
    from consumer.errors import ConfigurationError

    return EXIT_USAGE if isinstance(exc, ConfigurationError) else EXIT_RECONNECT


def fail(message: str, code: int, as_json: bool) -> None:
    """End a command in one line: an error object on stdout with --json, else a red line on stderr."""
    if as_json:
        emit_json({"error": message, "exit_code": code})
    else:
        err_console.print(f"[red]{message}[/]")
    raise typer.Exit(code)


def record_types(value: str) -> list[str]:
    from producer.outbox_snapshot import parse_types

    try:
        return parse_types(value)
    except ValueError as exc:
        err_console.print(f"[red]--types[/]: {exc}")
        raise typer.Exit(EXIT_USAGE) from None


def parse_date(value: str | None, option: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        err_console.print(f"[red]{option}[/]: not an ISO date or timestamp: {value!r}")
        raise typer.Exit(EXIT_USAGE) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def state_store() -> Any:
    from consumer.state_store import StateStore
    from producer.database import make_engine

    settings = load_settings()
    return StateStore(make_engine(settings.effective_state_database_url), settings.qbo_realm_id, settings.group_id)


def services_named() -> dict[str, str]:
    """Where the commands look for their services, as ``describe`` names them (the password hidden)."""
    try:
        settings = get_settings()
        return {"database": make_url(settings.database_url).render_as_string(hide_password=True),
                "kafka": settings.kafka.bootstrap_servers}
    except Exception:  # noqa: BLE001 - the settings themselves may be what failed
        return {}


def end(exc: BaseException) -> None:
    """Any failure a command did not handle: one line (or a JSON error object with --json) and its exit code."""
    failure = describe(exc, **services_named())
    if failure.code == EXIT_FAILED:
        structlog.get_logger("ttsync.cli").debug("unexpected_error", exc_info=exc)
    if "--json" in sys.argv[1:]:
        emit_json(failure.to_json())
    else:
        err_console.print(f"[red]{failure.message}[/]", soft_wrap=True)
    sys.exit(failure.code)
