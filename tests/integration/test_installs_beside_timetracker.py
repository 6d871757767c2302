"""ttsync installs into TimeTracker's own Python environment (SQLAlchemy capture runs inside its process):
with TimeTracker 5.10.0's pins as constraints (its requirements.txt, tests/fixtures/), pip resolves without
upgrading anything TimeTracker pins, and the session-capture tests pass on the pinned SQLAlchemy."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PINS = ROOT / "tests" / "fixtures" / "timetracker_5_10_0_requirements.txt"


def test_installs_with_timetrackers_pins_and_captures_on_them(tmp_path: Path) -> None:
    env_dir = tmp_path / "tt-env"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", str(PINS),
                              str(ROOT), "pytest", "pytest-timeout"], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    versions = subprocess.run([python, "-c", "import sqlalchemy, prometheus_client.metrics as m, importlib.metadata "
                               "as md; print(sqlalchemy.__version__, md.version('prometheus-client'))"],
                              capture_output=True, text=True, timeout=60)
    assert versions.stdout.split() == ["2.0.23", "0.19.0"], versions.stdout + versions.stderr
    # -o addopts=: the project's addopts ask for two xdist workers; this environment has pytest alone.
    tests = subprocess.run([python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-o", "addopts=",
                            "tests/unit/test_session_capture_sqlite.py", "tests/unit/test_capture_imports.py"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-3000:]
