"""A faithful local QuickBooks Online: OAuth, entities, SyncToken, requestid, query, batch, CDC, Faults,
throttling and fault injection. Started with ``ttsync sandbox``; tests and the demo talk to it like to Intuit.

The package imports nothing itself: the settings read the sandbox's OAuth client from ``ttsync.qbo_sandbox.oauth``,
and every relay and consumer would otherwise load the HTTP server and company model without ever serving them.
Import what you use from its module (``ttsync.qbo_sandbox.server.SandboxServer``)."""
