"""A faithful local QuickBooks Online: OAuth, entities, SyncToken, requestid, query, batch, CDC, Faults,
throttling and fault injection. Started with ``ttsync sandbox``; tests and the demo talk to it like to Intuit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ttsync.qbo_sandbox.server import SandboxConfig, SandboxServer, serve

__all__ = ["SandboxConfig", "SandboxServer", "serve"]


def __getattr__(name: str) -> Any:
    # The server is imported on first use, not with the package: the settings read the sandbox's OAuth client
    # from ttsync.qbo_sandbox.oauth, and every ttsync process (relay, consumer) would otherwise load the whole
    # sandbox (its HTTP server, company model and requests) at start-up without ever serving it.
    if name in __all__:
        from ttsync.qbo_sandbox import server
        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
