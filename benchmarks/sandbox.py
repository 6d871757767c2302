"""Sandbox benchmark: simple creates per second with throttling off (it must never be the bottleneck of the
consumer benchmarks: target >= 1,000 creates/s).

    python3 -m benchmarks.sandbox [--requests 6000] [--threads 4]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import socket
import subprocess
import sys
import time

import requests

from benchmarks._env import percentile, print_table


def start_sandbox_process(*extra: str) -> tuple[subprocess.Popen, str]:
    """`ttsync sandbox` in a process of its own, as the consumer meets it (no shared interpreter lock)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ttsync", "sandbox", "--port", str(port), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/__admin/health", timeout=1).ok:
                return proc, url
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("sandbox did not start")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _client(base: str, token: str, first: int, step: int, total: int, out: multiprocessing.Queue) -> None:
    """A lean keep-alive client (http.client, bodies built up front) so the load generator is not the limit."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    path = "/v3/company/9130000000000001/customer?minorversion=75"
    bodies = [json.dumps({"DisplayName": f"Customer {i}"}) for i in range(first, total, step)]
    latencies = []
    for body in bodies:
        started = time.perf_counter()
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        latencies.append(time.perf_counter() - started)
        if resp.status != 200:
            raise RuntimeError(f"unexpected {resp.status}")
    out.put(latencies)


def run(total: int, clients: int) -> dict:
    proc, base = start_sandbox_process("--no-throttle")
    token = requests.post(f"{base}/__admin/tokens", json={}, timeout=10).json()["refresh_token"]
    auth = requests.post(f"{base}/oauth2/v1/tokens/bearer",
                         data={"grant_type": "refresh_token", "refresh_token": token},
                         auth=("ttsync-local", "ttsync-local-secret"), timeout=10).json()["access_token"]
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    pool = [ctx.Process(target=_client, args=(base, auth, i, clients, total, queue)) for i in range(clients)]
    started = time.perf_counter()
    for p in pool:
        p.start()
    latencies: list[float] = []
    for _ in pool:
        latencies.extend(queue.get(timeout=600))
    elapsed = time.perf_counter() - started
    for p in pool:
        p.join(10)
    count = requests.get(f"{base}/__admin/stats", timeout=10).json()["writes"]["9130000000000001"]
    proc.terminate()
    proc.wait(10)
    return {"requests": total, "clients": clients, "creates_per_s": total / elapsed, "customers_created": count,
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--clients", type=int, default=4, help="client processes, one connection each")
    parser.add_argument("--json")
    args = parser.parse_args()
    result = run(args.requests, args.clients)
    print_table("QBO sandbox benchmark (throttling off, keep-alive, sandbox in its own process)", [
        ("creates", f"{result['requests']:,} from {result['clients']} keep-alive client processes"),
        ("creates per second", f"{result['creates_per_s']:,.0f}  (target >= 1,000)"),
        ("latency p50 / p99", f"{result['p50_ms']:.2f} / {result['p99_ms']:.2f} ms"),
        ("customers stored by the sandbox", f"{result['customers_created']:,}"),
    ])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
