"""``ttsync lag``: per partition committed offset, log-end offset, lag in messages and in seconds (age of the
oldest unconsumed record, read from the broker), the owning member, and a status in Burrow's spirit judged
over samples kept between runs (``TTSYNC_LAG_STATE_DIR``, default ``~/.cache/ttsync/lag/<group>.json``) and over
time: every partition remembers since when its committed offset has stood still.

Statuses, Burrow's (github.com/linkedin/Burrow/wiki/Consumer-Lag-Evaluation-Rules) judged with time, worst last:

- OK: no lag, or the consumer keeps up.
- WARN: lag grew over the window, though it shrank at times.
- STALL: the committed offset moves, but the lag never shrinks over the window (a consumer that cannot keep up).
- STOP: the committed offset has not moved for longer than ``stop_after_s`` while there is lag (a stuck member).
- REWIND: a committed offset went back (a reset, or a member that lost its place).
- ERR: the group has no active members and there is lag: nobody is consuming.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from schemas.kafka_client import KafkaConnection, as_connection, open_consumer

STATUSES = ("OK", "WARN", "STALL", "STOP", "REWIND", "ERR")
DEFAULT_STOP_AFTER_S = 300.0
REBALANCING = ("PreparingRebalance", "CompletingRebalance")


class GroupNotFound(LookupError):
    pass


@dataclass
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    log_end: int
    lag: int | None
    """None without a committed offset, as Kafka's own tool shows it ("-")."""
    lag_seconds: float
    member: str | None
    status: str = "OK"
    from_log_start: int = 0
    """Without a committed offset: the records a member starting now would read (auto.offset.reset=earliest)."""
    consumer_id: str = ""
    member_host: str = ""
    client_id: str = ""


@dataclass
class GroupLag:
    group: str
    state: str
    members: list[dict[str, Any]]
    partitions: list[PartitionLag]
    status: str = "OK"
    message: str = ""
    window_samples: int = 1
    measured_at: float = field(default_factory=time.time)

    def totals(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for p in self.partitions:
            t = out.setdefault(p.topic, {"lag": 0, "max_lag_seconds": 0.0})
            t["lag"] += p.lag or 0
            t["max_lag_seconds"] = max(t["max_lag_seconds"], p.lag_seconds)
        return out

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["totals"] = self.totals()
        data["total_lag"] = sum(p.lag or 0 for p in self.partitions)
        return data


def _members(described: dict[str, Any]
             ) -> tuple[list[dict[str, Any]], dict[tuple[str, int], tuple[str, str, str]]]:
    members: list[dict[str, Any]] = []
    owner: dict[tuple[str, int], tuple[str, str, str]] = {}
    for m in described.get("members") or []:
        # The member id and host: every replica has the same client id (ttsync-consumer).
        who = (m.get("member_id") or "", m.get("client_host") or "", m.get("client_id") or "")
        assignment = m.get("member_assignment") or {}
        parts = []
        entries = (assignment.get("assigned_partitions") or assignment.get("assignment") or []) \
            if isinstance(assignment, dict) else []
        for entry in entries:
            topic = entry.get("topic") if isinstance(entry, dict) else entry[0]
            plist = entry.get("partitions") if isinstance(entry, dict) else entry[1]
            for p in plist or []:
                parts.append((str(topic), int(p)))
                owner[(str(topic), int(p))] = who
        members.append({"member_id": m.get("member_id"), "client_id": m.get("client_id"),
                        "host": m.get("client_host"), "partitions": len(parts)})
    return members, owner


def measure(bootstrap: KafkaConnection | str, group: str, topic: str | None = None) -> GroupLag:
    admin = KafkaAdminClient(**as_connection(bootstrap).client_config(), client_id="ttsync-lag")
    try:
        described = admin.describe_groups([group]).get(group, {})
        committed = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    state = described.get("group_state") or "Unknown"
    if not committed and state in ("Dead", "Unknown", "Empty") and not described.get("members"):
        raise GroupNotFound(f"consumer group {group!r} does not exist or has never committed an offset")
    members, owner = _members(described)
    topics = sorted({tp.topic for tp in committed} | {t for t, _ in owner})
    if topic:
        topics = [t for t in topics if t == topic]
    reader = open_consumer(bootstrap, group_id=None, enable_auto_commit=False,
                           client_id=f"ttsync-lag-{uuid.uuid4().hex[:6]}")
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(reader.partitions_for_topic(t) or [])]
        ends = reader.end_offsets(tps) if tps else {}
        starts = reader.beginning_offsets(tps) if tps else {}
        positions = {tp: (committed[tp].offset if tp in committed and committed[tp].offset >= 0 else starts[tp])
                     for tp in tps}
        lagging = [tp for tp in tps if ends[tp] > positions[tp]]
        oldest = _oldest_timestamps(reader, lagging, positions)
    finally:
        reader.close()
    now = time.time()
    parts = []
    for tp in tps:
        has_commit = tp in committed and committed[tp].offset >= 0
        behind = max(0, ends[tp] - positions[tp])
        ts = oldest.get(tp)
        member_id, host, client = owner.get((tp.topic, tp.partition), ("", "", ""))
        parts.append(PartitionLag(tp.topic, tp.partition, committed[tp].offset if has_commit else None, ends[tp],
                                  behind if has_commit else None,
                                  round(max(0.0, now - ts), 3) if (behind and ts and has_commit) else 0.0,
                                  f"{member_id} {host}".strip() or None,
                                  from_log_start=0 if has_commit else behind, consumer_id=member_id,
                                  member_host=host, client_id=client))
    return GroupLag(group, state, members, parts)


def _oldest_timestamps(reader: KafkaConsumer, tps: list[TopicPartition],
                       positions: dict[TopicPartition, int]) -> dict[TopicPartition, float]:
    """The timestamp of the first unconsumed record of each lagging partition, read in one pass."""
    if not tps:
        return {}
    reader.assign(tps)
    for tp in tps:
        reader.seek(tp, positions[tp])
    found: dict[TopicPartition, float] = {}
    deadline = time.monotonic() + 5
    while len(found) < len(tps) and time.monotonic() < deadline:
        for tp, records in reader.poll(timeout_ms=200, max_records=len(tps) * 50).items():
            if tp not in found and records:
                found[tp] = records[0].timestamp / 1000.0
                reader.pause(tp)
    return found


# -- status over a window of samples ------------------------------------------------------------------


def state_dir() -> Path:
    """TTSYNC_LAG_STATE_DIR, else $XDG_CACHE_HOME/ttsync/lag (~/.cache), else a directory of this user under the
    system's temporary directory: a container user may have no home, or a read-only one."""
    configured = os.environ.get("TTSYNC_LAG_STATE_DIR")
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path(os.path.expanduser("~")) / ".cache")
    candidate = Path(cache) / "ttsync" / "lag"
    try:
        candidate.mkdir(parents=True, exist_ok=True)
        if os.access(candidate, os.W_OK):
            return candidate
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"ttsync-lag-{os.getuid()}"


def state_path(group: str) -> Path:
    return state_dir() / f"{group.replace('/', '_')}.json"


def _load(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        state = {}
    if not isinstance(state, dict):  # the list of samples earlier versions kept
        state = {"samples": state}
    state.setdefault("samples", [])
    state.setdefault("since", {})
    return state


def evaluate(result: GroupLag, *, window: int = 10, path: Path | None = None,
             stop_after_s: float = DEFAULT_STOP_AFTER_S) -> GroupLag:
    """Add this sample to the group's window, judge every partition and the group."""
    path = path or state_path(result.group)
    state = _load(path)
    now = result.measured_at
    samples = [*state["samples"], {"ts": now, "p": {f"{p.topic}:{p.partition}": [p.committed, p.lag]
                                                     for p in result.partitions}}][-window:]
    since: dict[str, list[Any]] = state["since"]
    for p in result.partitions:
        key = f"{p.topic}:{p.partition}"
        if key not in since or since[key][0] != p.committed:
            since[key] = [p.committed, now]  # the committed offset moved (or is new): its clock starts now
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"samples": samples, "since": since}))
    alive = bool(result.members)
    for p in result.partitions:
        key = f"{p.topic}:{p.partition}"
        history = [s["p"][key] for s in samples if key in s["p"]]
        p.status = judge(history, alive, still_for_s=now - since[key][1], stop_after_s=stop_after_s)
    result.window_samples = len(samples)
    result.status = max((p.status for p in result.partitions), key=STATUSES.index, default="OK")
    if result.state in REBALANCING:
        result.message = f"group {result.group} is rebalancing: members and assignments are changing"
    elif not alive and any(p.lag for p in result.partitions):
        result.message = f"group {result.group} has no active members, and lag: nobody is consuming"
    elif result.status == "STOP":
        result.message = f"a committed offset of group {result.group} has not moved for over {stop_after_s:.0f}s"
    return result


def judge(history: list[list[int | None]], alive: bool, *, still_for_s: float = 0.0,
          stop_after_s: float = DEFAULT_STOP_AFTER_S) -> str:
    """Burrow's rules with time. ``history``: [committed offset, lag], oldest first, the last one now;
    ``still_for_s``: how long the committed offset has stood where it is now."""
    if not history or not int(history[-1][1] or 0):
        return "OK"
    if not alive:
        return "ERR"
    offsets = [h[0] for h in history]
    lags = [int(h[1] or 0) for h in history]
    known = [o for o in offsets if o is not None]
    if any(b < a for a, b in pairwise(known)):
        return "REWIND"
    if still_for_s > stop_after_s:
        return "STOP"
    moved = len(set(offsets)) > 1
    if len(history) >= 3 and moved and all(b >= a for a, b in pairwise(lags)):
        return "STALL"
    if len(history) >= 3 and lags[-1] > lags[0]:
        return "WARN"
    return "OK"
