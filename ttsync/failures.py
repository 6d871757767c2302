"""How a command ends when something fails: one line saying what, where and what to do, and an exit code.

Exit codes (the README's runbook lists them):

    0  done
    1  done, but what was checked is not fine (a failed check, dead letters with --check, a stuck consumer)
    2  a setting or the setup must be fixed (a bad TTSYNC_* value, an unmigrated database, a refused plan)
    3  QuickBooks must be reconnected (`ttsync qbo connect`)
    4  a service does not answer (the database, the Kafka broker, QBO): try again once it is back

``describe`` is pure: it maps an exception to a ``Failure``; ``ttsync.cli.main`` prints it (a JSON error object
on stdout with --json, else one line on stderr) and exits with its code.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_RECONNECT, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class Failure:
    code: int
    message: str

    def to_json(self) -> dict[str, object]:
        return {"error": self.message, "exit_code": self.code}


class SettingsInvalid(Exception):
    """TTSYNC_* values that do not load; the message names each, without echoing secrets."""


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def describe(exc: BaseException, *, database: str = "", kafka: str = "") -> Failure:
    """``database`` and ``kafka``: where the command was looking (password hidden), named in the message."""
    from kafka.errors import (
        AuthorizationError,
        KafkaConnectionError,
        KafkaTimeoutError,
        SaslAuthenticationFailedError,
    )
    from sqlalchemy import exc as sa_exc

    from consumer.errors import ConfigurationError, ReconnectNeeded, StateUnavailable, SyncError
    from producer.migrate import SchemaNotMigrated
    from schemas.kafka_client import KafkaConfigError
    from ttsync.local_services import ServiceUnavailable

    if isinstance(exc, SettingsInvalid | KafkaConfigError):
        return Failure(EXIT_USAGE, str(exc))
    if isinstance(exc, SchemaNotMigrated):
        return Failure(EXIT_USAGE, str(exc))
    if isinstance(exc, ConfigurationError):
        return Failure(EXIT_USAGE, f"configuration: {exc}")
    if isinstance(exc, ReconnectNeeded):
        return Failure(EXIT_RECONNECT, f"{exc} (run `ttsync qbo connect`)")
    if isinstance(exc, StateUnavailable) and exc.__cause__ is not None:
        exc = exc.__cause__  # translated at the consumer's state stores: name the database as below
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.DisconnectionError):
        cause = _first_line(getattr(exc, "orig", None) or exc)
        return Failure(EXIT_UNAVAILABLE, f"database {database or '?'} does not answer: {cause} (is it running? "
                                         "TTSYNC_DATABASE_URL)")
    if isinstance(exc, SaslAuthenticationFailedError | AuthorizationError):
        return Failure(EXIT_USAGE, f"the Kafka broker at {kafka or '?'} refused us: {_first_line(exc)} (check the "
                                   "SASL user and password, and the ACLs the README lists)")
    if isinstance(exc, KafkaConnectionError | KafkaTimeoutError | ServiceUnavailable):
        return Failure(EXIT_UNAVAILABLE, f"no Kafka broker answers at {kafka or '?'}: {_first_line(exc)} (is it "
                                         "running? TTSYNC_KAFKA_BOOTSTRAP_SERVERS and the security settings)")
    if isinstance(exc, SyncError) and exc.retryable:
        return Failure(EXIT_UNAVAILABLE, f"{type(exc).__name__}: {_first_line(exc)}")
    return Failure(EXIT_FAILED, f"unexpected {type(exc).__name__}: {_first_line(exc)} (TTSYNC_LOG_LEVEL=DEBUG "
                                "prints the traceback)")
