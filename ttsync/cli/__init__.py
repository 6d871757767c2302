"""``ttsync``: the one command operators use. Every sub-command has --help; scripts get --json.

One module per group of commands: ``base`` (the app, settings, output, how a command ends), ``setup`` (qbo, db,
capture, schemas), ``run`` (relay, consume, sandbox, demo), ``operate`` (doctor, reconcile, lag, outbox),
``dlq`` and ``maps``. Workers are built in ``ttsync.wiring``."""

from __future__ import annotations

from ttsync.cli import dlq, maps, operate, run, setup  # noqa: F401 - importing a module registers its commands
from ttsync.cli.base import app, end

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - translated into one line and a documented exit code
        end(exc)


if __name__ == "__main__":
    main()
