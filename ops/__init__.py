"""Operator tools: reconcile (TimeTracker against QBO), the dead-letter topic (list, show, replay), consumer lag
and the lag/readiness exporters. Above the runtime packages: they use ``producer``, ``consumer`` and ``schemas``,
and nothing in those uses them."""
