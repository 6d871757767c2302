from __future__ import annotations

import json
from typing import Any

import pytest
import structlog

from ttsync.logging_setup import configure_logging, redact_secrets
from ttsync.settings import Settings


def test_redaction_of_secret_fields_and_bearer_values() -> None:
    event = {
        "event": "calling Authorization: Bearer eyJhbGciOi.secret.part",
        "refresh_token": "AB11-very-secret",
        "client_secret": "s3cr3t",
        "headers": {"Authorization": "Basic Zm9vOmJhcg==", "Accept": "application/json"},
        "detail": "token was Bearer abc.def",
        "retry_count": 3,
        "token_endpoint": "http://127.0.0.1:8765/oauth2/v1/tokens/bearer",
    }
    out = redact_secrets(None, "info", dict(event))
    text = json.dumps(out)
    for secret in ("eyJhbGciOi", "AB11-very-secret", "s3cr3t", "Zm9vOmJhcg==", "abc.def"):
        assert secret not in text
    assert out["headers"]["Accept"] == "application/json"
    assert out["retry_count"] == 3
    assert out["token_endpoint"].startswith("http://")  # a URL, not a secret


def test_urls_lists_and_tracebacks_are_redacted_too(capsys: pytest.CaptureFixture[str]) -> None:
    out = redact_secrets(None, "info", {
        "event": "db_unavailable", "url": "postgresql+psycopg://tt:s3cretpw@db:5432/timetracker",
        "calls": ["Bearer abc.def", {"client_secret": "s3cr3t"}],
        "body": "grant_type=refresh_token&refresh_token=RT-9"})
    text = json.dumps(out)
    for secret in ("s3cretpw", "abc.def", "s3cr3t", "RT-9"):
        assert secret not in text
    assert "tt:***@db:5432" in out["url"]
    configure_logging("INFO", "json")
    try:
        raise RuntimeError("connect to postgresql://tt:hunter2hunter2@db/tt failed")
    except RuntimeError:
        structlog.get_logger("t").exception("failed")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "hunter2hunter2" not in line and "tt:***@db" in line


def test_json_log_lines_never_carry_the_secret(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    structlog.get_logger("t").info("token_refreshed", access_token="at-123456", realm="9130")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["access_token"] == "***" and record["realm"] == "9130"
    assert "at-123456" not in line


def test_settings_hide_secrets_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTSYNC_QBO_CLIENT_SECRET", "very-secret-value")
    monkeypatch.setenv("TTSYNC_QBO_REFRESH_TOKEN", "rt-secret-value")
    settings = Settings()
    assert settings.qbo_client_secret.get_secret_value() == "very-secret-value"
    assert "very-secret-value" not in repr(settings) and "rt-secret-value" not in repr(settings)
    assert settings.effective_state_database_url == settings.database_url


def test_the_metrics_log_line_tells_the_address_it_really_listens_on() -> None:
    """It said 127.0.0.1 whatever TTSYNC_METRICS_HOST was, so a container's operator was told a wrong URL."""
    from prometheus_client import CollectorRegistry
    from structlog.testing import capture_logs

    from tests.services import free_port
    from ttsync.wiring import serve_metrics

    with capture_logs() as logs:
        server = serve_metrics(Settings(metrics_host="127.0.0.2"), None, CollectorRegistry(), free_port())
    try:
        (line,) = [entry for entry in logs if entry["event"] == "metrics_listening"]
        assert line["url"] == f"http://127.0.0.2:{server.port}/metrics" and line["host"] == "127.0.0.2"
    finally:
        server.stop()


@pytest.mark.parametrize("values, refused", [
    ({"qbo_base_url": "http://quickbooks.api.intuit.com", "qbo_token_url": "https://oauth.platform.intuit.com/t",
      "qbo_client_secret": "an-app-secret"}, "TTSYNC_QBO_BASE_URL must be https"),
    ({"qbo_base_url": "https://quickbooks.api.intuit.com", "qbo_token_url": "http://oauth.example/t",
      "qbo_client_secret": "an-app-secret"}, "TTSYNC_QBO_TOKEN_URL must be https"),
    ({"qbo_base_url": "https://quickbooks.api.intuit.com", "qbo_token_url": "https://oauth.platform.intuit.com/t"},
     "published secret"),
])
def test_a_real_qbo_needs_https_and_a_secret_of_its_own(values: dict[str, str], refused: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=refused):
        Settings(**values)


def test_the_sandbox_defaults_stay_usable_locally_and_in_compose() -> None:
    assert Settings().qbo_base_url.startswith("http://127.0.0.1")  # the demo's embedded defaults
    Settings(qbo_sandbox=True, qbo_base_url="http://sandbox:8765", qbo_token_url="http://sandbox:8765/t")
    Settings(qbo_base_url="https://quickbooks.api.intuit.com", qbo_token_url="https://oauth.platform.intuit.com/t",
             qbo_authorize_url="https://appcenter.intuit.com/connect/oauth2", qbo_client_secret="an-app-secret")


def test_the_lag_window_finds_a_writable_place_without_a_home(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ttsync lag` crashed in the image: its user had no home directory for ~/.cache."""
    from ops.lag import state_dir

    monkeypatch.delenv("TTSYNC_LAG_STATE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    no_home = tmp_path / "no-home"
    no_home.write_text("")  # a home that cannot hold ~/.cache, even for root (useradd --system leaves none)
    monkeypatch.setenv("HOME", str(no_home))
    where = state_dir()
    where.mkdir(parents=True, exist_ok=True)
    (where / "probe.json").write_text("[]")
    assert not str(where).startswith(str(no_home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert state_dir() == tmp_path / "ttsync" / "lag"


def test_livez_follows_the_loop_and_not_the_dependencies() -> None:
    """Liveness once asked the broker and the database: an outage of either restarted every pod."""
    import time as _time

    import requests
    from prometheus_client import CollectorRegistry

    from ttsync.health_server import HealthServer

    turned = [_time.monotonic()]
    server = HealthServer(CollectorRegistry(), lambda: {"broker": "no Kafka broker answers"}, 0,
                          heartbeat=lambda: turned[0], stale_after_s=60).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 503  # not ready: the broker is away
        assert requests.get(f"{base}/livez", timeout=5).status_code == 200  # but alive: no restart
        turned[0] -= 61  # the loop has not turned for a minute: hung
        assert requests.get(f"{base}/livez", timeout=5).status_code == 503
    finally:
        server.stop()


def test_progress_bars_show_a_count_and_an_eta_at_a_terminal_and_nothing_for_scripts() -> None:
    import io

    from rich.console import Console

    from ttsync.cli.base import progress_bar

    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=100)
    with progress_bar("snapshot", 10, as_json=False, out=terminal) as bar:
        bar(completed=3)
        terminal.print("")  # let the live display render once
    assert "snapshot" in screen.getvalue() and "3/10" in screen.getvalue() and "ETA" in screen.getvalue()
    piped = io.StringIO()
    with progress_bar("snapshot", 10, as_json=False, out=Console(file=piped, force_terminal=False)) as bar:
        bar(completed=3)
    with progress_bar("snapshot", 10, as_json=True, out=terminal) as bar:
        bar(completed=3)
    assert piped.getvalue() == ""
