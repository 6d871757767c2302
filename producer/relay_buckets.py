"""Which hash buckets of aggregates this relay may publish: session-level advisory locks on PostgreSQL.

Several relays (TimeTracker runs its scheduler in every web worker) share the outbox without breaking the
order of any aggregate: an aggregate's rows are published only by the relay holding its bucket. Each relay
also holds a membership lock, so every relay can count the live ones and take a fair share,
``ceil(buckets / relays)``; a relay that crashes loses its locks with its session and the others take over
its buckets at their next refresh.
"""

from __future__ import annotations

import math
import random
import time

import structlog
from sqlalchemy import Connection, Engine, text

log = structlog.get_logger("ttsync.relay.buckets")

BUCKET_LOCK_CLASS = 0x74747379  # "ttsy": first key of the bucket locks
MEMBER_LOCK_CLASS = 0x7474736D  # "ttsm": first key of the membership locks (second key: backend pid)


def bucket_of_sql(column: str, n_param: str = ":n") -> str:
    """The SQL expression of an aggregate id's bucket (hashtext is stable across PostgreSQL sessions)."""
    return f"((hashtext({column})::bigint + 2147483648) % {n_param})"


class BucketLeases:
    def __init__(self, engine: Engine, buckets: int, *, refresh_every_s: float = 1.0) -> None:
        self.engine = engine
        self.buckets = buckets
        self.refresh_every_s = refresh_every_s
        self.held: set[int] = set()
        self._conn: Connection | None = None
        self._last_refresh = 0.0
        self.live_relays = 1

    def _connect(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._conn.execute(text("SELECT pg_advisory_lock(:k, pg_backend_pid())"), {"k": MEMBER_LOCK_CLASS})
            self.held = set()
        return self._conn

    def refresh(self, *, rebalance: bool, force: bool = False) -> set[int]:
        """Take free buckets up to the fair share; with ``rebalance`` (nothing in flight) give back extras."""
        now = time.monotonic()
        if not force and self.held and now - self._last_refresh < self.refresh_every_s:
            return self.held
        self._last_refresh = now
        try:
            conn = self._connect()
            # pg_locks spans the server, advisory locks are per database: count this database's relays only
            # (a relay of another TimeTracker database on the same server is no peer of ours).
            self.live_relays = max(1, int(conn.execute(
                text("SELECT count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                     "AND classid = CAST(:k AS oid) "
                     "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
                {"k": MEMBER_LOCK_CLASS}).scalar_one()))
            fair = math.ceil(self.buckets / self.live_relays)
            if rebalance and len(self.held) > fair:
                extra = random.sample(sorted(self.held), len(self.held) - fair)
                for b in extra:
                    conn.execute(text("SELECT pg_advisory_unlock(:k, :b)"), {"k": BUCKET_LOCK_CLASS, "b": b})
                    self.held.discard(b)
                log.info("buckets_released", released=sorted(extra), live_relays=self.live_relays)
            if len(self.held) < fair:
                candidates = [b for b in range(self.buckets) if b not in self.held]
                random.shuffle(candidates)
                got = conn.execute(
                    text("SELECT b FROM unnest(CAST(:cands AS int[])) AS b "
                         "WHERE pg_try_advisory_lock(:k, b) LIMIT :need"),
                    {"cands": candidates, "k": BUCKET_LOCK_CLASS, "need": fair - len(self.held)},
                ).scalars().all()
                if got:
                    self.held.update(got)
                    log.info("buckets_acquired", acquired=sorted(got), held=len(self.held),
                             live_relays=self.live_relays)
        except Exception as exc:  # noqa: BLE001 - a lost lease connection means we hold nothing
            log.warning("bucket_lease_lost", error=repr(exc))
            self.close()
        return self.held

    def close(self) -> None:
        if self._conn is not None:
            try:
                # Not close(): that would hand the session back to the pool with its advisory locks still held,
                # and the next relay in this process (or this one, reconnecting) could never take those buckets.
                # invalidate() closes the DBAPI connection: the session ends, PostgreSQL drops every lock.
                self._conn.invalidate()
            except Exception as exc:  # noqa: BLE001 - the session is gone either way
                log.debug("lease_close_failed", error=repr(exc))
        self._conn = None
        self.held = set()
