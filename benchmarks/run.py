"""Every benchmark in one run, one table, one JSON file (benchmarks/latest.json by default), with the machine the
figures came from. Each benchmark runs as a process of its own, one after the other, so they do not compete.

    python3 -m benchmarks.run [--quick] [--json benchmarks/latest.json]

--quick shrinks every size (a smoke run, figures not for the README). --only pipeline --merge runs some benchmarks
again and keeps the others' results from the JSON file; each result carries the time it was measured ("at").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# name, module, full-size arguments, quick arguments
BENCHMARKS: list[tuple[str, str, list[str], list[str]]] = [
    ("relay", "benchmarks.relay", [], ["--events", "5000", "--seconds", "5", "--rate", "200"]),
    ("consumer", "benchmarks.consumer", [], ["--events", "300", "--limit-seconds", "15"]),
    ("sandbox", "benchmarks.sandbox", [], ["--requests", "1000"]),
    ("lag", "benchmarks.lag", [], ["--partitions", "30", "--runs", "2"]),
    ("pipeline", "benchmarks.pipeline", [],
     ["--rate", "10", "--seconds", "5", "--backlog", "20000", "--consume-seconds", "10"]),
    ("debezium", "benchmarks.debezium", [], ["--events", "2000", "--seconds", "5", "--rate", "100"]),
    ("backfill", "benchmarks.backfill", [], ["--records", "500", "--drain-records", "100"]),
    ("import", "benchmarks.import_latency", [], ["--payments", "5"]),
]


def machine() -> dict[str, Any]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    mem_kb = next((int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                   if ln.startswith("MemTotal")), 0) if Path("/proc/meminfo").exists() else 0
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kb / 1024 / 1024, 1),
            "python": platform.python_version(), "system": platform.platform()}


def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        data = data.get(key, {}) if isinstance(data, dict) else {}
    return data if data != {} else None


# One row per figure: (benchmark, figure, how to read it from that benchmark's JSON, format)
Figure = tuple[str, str, Callable[[dict[str, Any]], Any], str]
FIGURES: list[Figure] = [
    *[figure for client, name in (("kafka-python", "kafka-python"), ("confluent", "librdkafka")) for figure in (
        ("relay", f"relay events/s, {name} (vs its bare producer)",
         lambda d, c=client: (_get(d, c, "throughput", "relay_eps"), _get(d, c, "throughput", "ratio")),
         "{0:,.0f} ({1:.0%})"),
        ("relay", f"commit-to-Kafka p50 / p99, {name}",
         lambda d, c=client: (_get(d, c, "latency", "p50_ms"), _get(d, c, "latency", "p99_ms")),
         "{0:.1f} / {1:.1f} ms"))],
    ("relay", "relay with an instant broker (the ceiling of any client)",
     lambda d: (_get(d, "ceiling", "relay_eps"),), "{0:,.0f} events/s"),
    ("consumer", "consumer events/s, throttling off (vs bare)",
     lambda d: (_get(d, "throughput", "ttsync_eps"), _get(d, "throughput", "ratio")), "{0:,.0f} ({1:.1%})"),
    ("consumer", "QBO requests/min at QBO's limits (of 500)",
     lambda d: (_get(d, "limits", "requests_in_minute"), _get(d, "limits", "efficiency")), "{0} ({1:.1%})"),
    ("consumer", "429 answers at QBO's limits", lambda d: (_get(d, "limits", "throttled_429"),), "{0}"),
    ("consumer", "writes/min with batching, in requests",
     lambda d: (_get(d, "limits_batch", "writes_in_minute"), _get(d, "limits_batch", "requests_in_minute")),
     "{0} in {1}"),
    ("sandbox", "sandbox creates/s", lambda d: (d.get("creates_per_s"),), "{0:,.0f}"),
    ("lag", "ttsync lag, one answer (median)", lambda d: (sorted(d.get("seconds") or [0])[len(d.get("seconds") or
                                                                                             [0]) // 2],
                                                          d.get("partitions")), "{0:.2f} s over {1} partitions"),
    ("pipeline", "commit-to-QBO p50 / p99 (end to end)",
     lambda d: (_get(d, "latency", "p50_ms"), _get(d, "latency", "p99_ms")), "{0:.0f} / {1:.0f} ms"),
    ("pipeline", "relay draining the backlog: rows, events/s",
     lambda d: (_get(d, "memory", "backlog"), _get(d, "memory", "relay_eps")), "{0:,} at {1:,.0f}/s"),
    ("pipeline", "relay peak RSS draining it", lambda d: (_get(d, "memory", "relay_peak_rss_mb"),), "{0:.0f} MB"),
    ("debezium", "backlog events/s: relay kafka-python / relay librdkafka / Debezium",
     lambda d: (_get(d, "relay", "relay_eps"), _get(d, "relay_librdkafka", "relay_eps"),
                _get(d, "debezium", "debezium_eps")), "{0:,.0f} / {1:,.0f} / {2:,.0f}"),
    ("debezium", "commit-to-Kafka p50/p99: relay, Debezium",
     lambda d: (_get(d, "latency_relay", "p50_ms"), _get(d, "latency_relay", "p99_ms"),
                _get(d, "latency_debezium", "p50_ms"), _get(d, "latency_debezium", "p99_ms")),
     "{0:.0f}/{1:.0f} ms, {2:.0f}/{3:.0f} ms"),
    ("backfill", "snapshot records/s (PostgreSQL COPY, one-row INSERT tx)",
     lambda d: (_get(d, "snapshot", "per_s"), _get(d, "ceiling", "copy_per_s"), _get(d, "ceiling", "insert_tx_per_s")),
     "{0:,.0f} ({1:,.0f}, {2:,.0f})"),
    ("backfill", "backfill drain at QBO's limits, writes/min of 1,660: with / without adoption",
     lambda d: (_get(d, "drain_adopt", "writes_per_min"), _get(d, "drain_no_adopt", "writes_per_min"),
                d.get("adoption_extra_time")), "{0:,.0f} / {1:,.0f} (adoption {2:+.1%})"),
    ("import", "QBO payment -> TimeTracker paid p50/p99: webhook, polling",
     lambda d: (_get(d, "webhook", "p50_ms"), _get(d, "webhook", "p99_ms"), _get(d, "polling", "p50_ms"),
                _get(d, "polling", "p99_ms")), "{0:.0f}/{1:.0f} ms, {2:.0f}/{3:.0f} ms"),
    ("import", "QBO requests per imported change", lambda d: (d.get("requests_per_change"),), "{0:.2f}"),
    ("pipeline", "consumer peak RSS in it (first half / whole)",
     lambda d: (_get(d, "memory", "consumer_peak_rss_mb_first_half"), _get(d, "memory", "consumer_peak_rss_mb")),
     "{0:.0f} / {1:.0f} MB"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=str(HERE / "latest.json"))
    parser.add_argument("--only", help="comma-separated benchmark names")
    parser.add_argument("--merge", action="store_true",
                        help="keep the results of the benchmarks not run from the --json file")
    args = parser.parse_args()
    wanted = set(args.only.split(",")) if args.only else None
    results: dict[str, Any] = {}
    failures: list[str] = []
    if args.merge and Path(args.json).exists():
        earlier = json.loads(Path(args.json).read_text())
        if earlier.get("quick") != args.quick:
            sys.exit(f"--merge: {args.json} was {'' if earlier.get('quick') else 'not '}a --quick run")
        results = {name: {"at": earlier.get("at"), **value} for name, value in earlier.get("results", {}).items()
                   if wanted is None or name not in wanted}
        failures = [f for f in earlier.get("failures", []) if wanted is not None and f.split()[0] not in wanted]
    with tempfile.TemporaryDirectory() as tmp:
        for name, module, full, quick in BENCHMARKS:
            if wanted and name not in wanted:
                continue
            out = Path(tmp) / f"{name}.json"
            started = time.perf_counter()
            print(f"== {name} ({module}) ...", flush=True)
            proc = subprocess.run([sys.executable, "-m", module, *(quick if args.quick else full), "--json", str(out)],
                                  check=False)
            seconds = time.perf_counter() - started
            if proc.returncode != 0 or not out.exists():
                failures.append(f"{name} exited {proc.returncode}")
                continue
            results[name] = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": round(seconds, 1),
                             **json.loads(out.read_text())}
    rows = []
    for bench, label, read, fmt in FIGURES:
        if bench not in results:
            continue
        try:
            rows.append((label, fmt.format(*read(results[bench]))))
        except (TypeError, ValueError, IndexError):
            rows.append((label, "n/a"))
    info = machine()
    print(f"\nttsync benchmarks, {time.strftime('%Y-%m-%d')}, {info['cpus']} CPUs ({info['cpu']}), "
          f"{info['memory_gib']} GiB, Python {info['python']}{' (quick)' if args.quick else ''}")
    width = max((len(r[0]) for r in rows), default=10)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    report = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "quick": args.quick, "machine": info,
              "figures": dict(rows), "results": results, "failures": failures}
    Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"written to {args.json}")
    if failures:
        print("failed: " + "; ".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
