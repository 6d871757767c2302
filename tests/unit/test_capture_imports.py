"""Capture runs inside TimeTracker's process: importing it must not need what only the pipeline uses."""

from __future__ import annotations

import subprocess
import sys

PIPELINE_ONLY = ("pydantic", "pydantic_settings", "kafka", "typer", "rich", "structlog", "requests",
                 "prometheus_client", "cryptography")


def test_capture_imports_only_sqlalchemy() -> None:
    code = ("import sys; import producer.session_capture, producer.trigger_capture; "
            f"print(','.join(m for m in {PIPELINE_ONLY!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == ""
