"""ttsync: keeps QuickBooks Online in step with TimeTracker (outbox -> Kafka -> idempotent QBO consumer)."""

__version__ = "0.1.0"
