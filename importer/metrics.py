"""The import direction's Prometheus metrics, on the consumer's registry (served by the same /metrics)."""

from __future__ import annotations

from prometheus_client import Counter

from consumer.metrics import REGISTRY

IMPORTED = Counter("ttsync_import_changes_total", "QBO changes the importer handled, by entity and outcome",
                   ["entity", "outcome"], registry=REGISTRY)
CONFLICTS = Counter("ttsync_import_conflicts_total", "Records both sides changed since the last sync, by entity "
                    "and the side whose change won (the documented policy)", ["entity", "winner"], registry=REGISTRY)
