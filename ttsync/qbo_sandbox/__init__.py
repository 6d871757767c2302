"""A faithful local QuickBooks Online: OAuth, entities, SyncToken, requestid, query, batch, CDC, Faults,
throttling and fault injection. Started with ``ttsync sandbox``; tests and the demo talk to it like to Intuit."""

from ttsync.qbo_sandbox.server import SandboxConfig, SandboxServer, serve

__all__ = ["SandboxConfig", "SandboxServer", "serve"]
