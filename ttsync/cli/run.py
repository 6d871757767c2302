"""The long-running workers: `relay`, `consume`, the local QBO `sandbox`, and the `demo` of them all."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import structlog
import typer
from rich.console import Console

from ttsync.cli.base import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    JsonOpt,
    app,
    console,
    emit_json,
    err_console,
    fail,
    fatal_exit_code,
    load_settings,
    services_named,
)
from ttsync.logging_setup import configure_logging
from ttsync.settings import Settings
from ttsync.startup import wait_for_services
from ttsync.wiring import serve_metrics, stop_on_signals

if TYPE_CHECKING:
    from consumer.group_consumer import GroupConsumer
    from producer.outbox_relay import OutboxRelay
    from ttsync.wiring import ConsumerParts


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
    from producer.migrate import require_current
    from producer.relay_metrics import relay_registry
    from ttsync.wiring import build_relay, ensure_relay_topics, freeze_startup_heap

    settings = load_settings()
    log = structlog.get_logger("ttsync.cli")
    engine = make_engine(settings.database_url)

    def start() -> OutboxRelay:
        require_current(engine, "TimeTracker database")  # an old outbox would fail every batch, for ever
        if create_topics:
            try:
                created = ensure_relay_topics(settings)
                if created:
                    log.info("topics_created", topics=created)
            except Exception as exc:  # noqa: BLE001 - the relay still runs and retries publishing
                log.warning("topic_creation_failed", error=repr(exc))
        return build_relay(settings, engine, on_batch=lambda s: log.info(
            "progress", published=s.published, failed=s.failed, batches=s.batches) if s.batches % 20 == 0
            else None)

    daemon = not once and max_seconds is None
    worker = wait_for_services(start, budget_s=settings.startup_wait_s if daemon else 0, what="relay",
                               services=services_named())
    stop_on_signals(worker.stop, "finishing in-flight batch")
    server = serve_metrics(settings, engine, relay_registry(engine, worker), metrics_port,
                           heartbeat=lambda: worker.heartbeat)
    freeze_startup_heap()
    try:
        stats = worker.run(max_seconds=max_seconds, idle_exit=once)
    except Exception:
        # The CLI prints one line; the log keeps where it came from (#21: an exit seen only as "exit 4").
        log.exception("relay_failed")
        raise
    finally:
        worker.publisher.close()
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
    from producer.database import make_engine
    from producer.migrate import require_current
    from ttsync.wiring import build_consumer, build_parts, ensure_consumer_topics, freeze_startup_heap

    settings = load_settings()
    if settings.sync_direction == "import":
        fail("TTSYNC_SYNC_DIRECTION=import: nothing goes from TimeTracker to QBO, so there is nothing to consume "
             "(run `ttsync import`)", EXIT_USAGE, False)
    log = structlog.get_logger("ttsync.cli")

    def start() -> tuple[ConsumerParts, GroupConsumer]:
        # Without its tables the consumer would retry every record for ever: say what to run instead.
        state = make_engine(settings.effective_state_database_url)
        try:
            require_current(state, "state database")
        finally:
            state.dispose()  # the consumer makes its own engine (build_parts)
        if create_topics:
            ensure_consumer_topics(settings)
        parts = build_parts(settings)
        try:
            return parts, build_consumer(settings, parts)
        except BaseException:
            parts.engine.dispose()  # the next attempt builds its own: this one's pool would stay open until exit
            raise

    try:
        parts, worker = wait_for_services(start, budget_s=settings.startup_wait_s if max_seconds is None else 0,
                                          what="consumer", services=services_named())
    except FatalError as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(fatal_exit_code(exc)) from exc
    from consumer import metrics
    from ops.observability import LagCollector

    if metrics_port or settings.metrics_port:
        metrics.REGISTRY.register(LagCollector(
            settings.kafka, settings.group_id, cluster_name=settings.kafka_cluster_name,
            owned=lambda: {(tp.topic, tp.partition) for tp in worker.port.assignment()}))
    server = serve_metrics(settings, parts.engine, metrics.REGISTRY, metrics_port,
                            heartbeat=lambda: worker.heartbeat)

    stop_on_signals(worker.stop, "finishing the current event")
    freeze_startup_heap()
    try:
        stats = worker.run(max_seconds=max_seconds, on_progress=lambda s: log.info(
            "progress", applied=s.applied, skipped=s.skipped, duplicates=s.duplicates,
            retried=s.forwarded_to_retry, dead_lettered=s.dead_lettered) if (s.applied + s.skipped) % 50 == 0
            else None)
    except FatalError as exc:
        log.error("consumer_fatal", error=str(exc))
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(fatal_exit_code(exc)) from exc
    except ConsumerStuck as exc:
        log.error("consumer_stuck", error=str(exc))
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(EXIT_FAILED) from exc
    except Exception:
        # The CLI prints one line; the log keeps where it came from (#21: an exit seen only as "exit 4").
        log.exception("consumer_failed")
        raise
    finally:
        worker.close()
        if server is not None:
            server.stop()
    log.info("consumer_exit", applied=stats.applied, dead_lettered=stats.dead_lettered)


@app.command()
def demo(
    postgres: Annotated[bool, typer.Option(help="Use PostgreSQL (deploy/local/postgres.sh) instead of SQLite.")]
    = False,
    quick: Annotated[bool, typer.Option(help="A shorter stretch of activity (used by the tests).")] = False,
    keep: Annotated[bool, typer.Option(help="Keep the sandbox and the broker running afterwards.")] = False,
    kafka: Annotated[str | None, typer.Option(help="Use this broker (bootstrap servers) instead of starting one; "
                                                   "the demo's topics are deleted at the end.")] = None,
    direction: Annotated[str, typer.Option(help="export, or both: then a payment received in QBO also comes back "
                                                "to TimeTracker (webhook -> ttsync import).")] = "export",
    as_json: JsonOpt = False,
) -> None:
    """The whole pipeline on this machine: TimeTracker activity -> outbox -> Kafka -> QuickBooks sandbox."""
    if direction not in ("export", "both"):
        fail("--direction must be export or both", EXIT_USAGE, as_json)
    from ttsync.demo import Demo

    settings = load_settings()
    if kafka:
        settings = settings.model_copy(update={"kafka_bootstrap_servers": kafka})
    # The live table is the demo's output: its retries and dead letters are expected and counted there, not
    # printed as warnings (a failure of the demo itself still ends it with its problems listed).
    configure_logging("CRITICAL", settings.log_format)
    out = Console(stderr=True) if as_json else console
    runner = Demo(postgres=postgres, quick=quick, keep=keep, console=out, direction=direction)
    result = runner.run(settings)
    if as_json:
        emit_json(result.__dict__)
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

    settings = load_settings()
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

    # shutdown() waits for serve_forever() to return: from another thread, not from the handler that interrupts it
    stop_on_signals(lambda: threading.Thread(target=server.httpd.shutdown, daemon=True).start(), "stopping")
    server.serve_forever()
    server.httpd.server_close()
    log.info("sandbox_stopped")


# --- the import direction (QBO -> TimeTracker) --------------------------------------------------------------


def _require_import(settings: Settings, command: str) -> None:
    if settings.sync_direction == "export":
        fail(f"TTSYNC_SYNC_DIRECTION=export: `ttsync {command}` is for the import direction (set it to import or "
             "both)", EXIT_USAGE, False)


@app.command()
def webhook(
    create_topics: Annotated[bool, typer.Option(help="Create the changes topic at start.")] = True,
    max_seconds: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
) -> None:
    """Receive Intuit's webhooks: each signed delivery's entity changes go to <prefix>.qbo.changes (answered 200
    once the broker has them); a bad signature is refused (401) and nothing reaches Kafka."""
    from ttsync.wiring import build_webhook, ensure_import_topics

    settings = load_settings()
    _require_import(settings, "webhook")
    if create_topics:
        ensure_import_topics(settings)
    receiver = build_webhook(settings)
    log = structlog.get_logger("ttsync.webhook")
    log.info("webhook_listening", url=receiver.url)
    console.print(f"webhook receiver on {receiver.url} (behind your TLS proxy: Intuit delivers to https only)")
    stop_on_signals(lambda: threading.Thread(target=receiver.httpd.shutdown, daemon=True).start(),
                    "answering the delivery in hand")
    if max_seconds is not None:
        threading.Timer(max_seconds, receiver.httpd.shutdown).start()
    receiver.serve_forever()
    receiver.close()
    log.info("webhook_stopped", **receiver.stats)


@app.command("import")
def import_changes(
    max_seconds: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    create_topics: Annotated[bool, typer.Option(help="Create the changes topic at start.")] = True,
) -> None:
    """Apply QBO changes to TimeTracker: a payment received in QBO becomes a TimeTracker payment and marks the
    invoice paid, as TimeTracker's own payment route does; a voided or deleted one is reversed."""
    from consumer.errors import ConsumerStuck, FatalError
    from ttsync.wiring import build_cdc_poller, build_importer, build_parts, ensure_import_topics

    settings = load_settings()
    _require_import(settings, "import")
    if create_topics:
        ensure_import_topics(settings)
    log = structlog.get_logger("ttsync.import")
    try:
        parts = build_parts(settings)
        poller, publisher = build_cdc_poller(settings, parts) if settings.import_poll_interval_s else (None, None)
        worker = build_importer(settings, parts, on_webhook=poller.wake if poller is not None else lambda: None)
    except FatalError as exc:
        fail(str(exc), fatal_exit_code(exc), False)
    polling = threading.Event()
    if poller is not None:
        threading.Thread(target=poller.run, args=(polling, settings.import_poll_interval_s), name="ttsync-cdc",
                         daemon=True).start()

    def stop() -> None:
        polling.set()
        if poller is not None:
            poller.wake()
        worker.stop()

    stop_on_signals(stop, "finishing the current change")
    try:
        stats = worker.run(max_seconds=max_seconds)
    except FatalError as exc:
        fail(str(exc), fatal_exit_code(exc), False)
    except ConsumerStuck as exc:
        fail(str(exc), EXIT_FAILED, False)
    finally:
        stop()
        worker.close()
        if publisher is not None:
            publisher.close()
    log.info("import_exit", applied=stats.applied, skipped=stats.skipped, dead_lettered=stats.dead_lettered)
