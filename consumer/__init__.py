"""Kafka events to QuickBooks Online requests."""
