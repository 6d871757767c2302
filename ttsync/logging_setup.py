"""structlog configuration: JSON lines for machines, a readable console for people, secrets redacted."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Field names whose values are secrets: access_token, refresh_token, client_secret, secret_key, password, ...
_SECRET_KEY = re.compile(
    r"(?:^|_)(token|secret|password|passwd|authorization|api_key|secret_key|credentials)$", re.IGNORECASE
)
_BEARER = re.compile(r"(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+):[^@/\s]+@")  # postgresql://user:pass@host -> user:***@
_PARAM = re.compile(r"((?:refresh_token|access_token|client_secret|password|code)=)[^&\s\"']+", re.IGNORECASE)
REDACTED = "***"


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        value = _BEARER.sub(r"\1 " + REDACTED, value)
        value = _URL_PASSWORD.sub(r"\1:" + REDACTED + "@", value)
        return _PARAM.sub(r"\1" + REDACTED, value)
    if isinstance(value, dict):
        return {k: (REDACTED if _SECRET_KEY.search(str(k)) else _redact_value(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(v) for v in value)
    if isinstance(value, BaseException):
        return _redact_value(f"{type(value).__name__}: {value}")
    return value


def redact_secrets(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Never let a token or a client secret reach a log line, whatever a caller passes."""
    for key in list(event_dict):
        if key == "event":
            event_dict[key] = _redact_value(event_dict[key])
        elif _SECRET_KEY.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_value(event_dict[key])
    return event_dict


class _StderrLogger:
    """Writes to whatever ``sys.stderr`` is at call time (it may be swapped, e.g. by test capture)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _stderr_logger_factory(*_args: Any) -> _StderrLogger:
    return _StderrLogger()


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=True)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Tracebacks are text first, then redacted like everything else (a URL with its password, a token
            # in an exception's message).
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=_stderr_logger_factory,
        cache_logger_on_first_use=False,
    )
    # kafka-python logs through stdlib logging; keep its chatter out unless something is wrong.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)
