"""Capture TimeTracker changes into the ``ttsync_outbox`` table and relay them to Kafka."""
