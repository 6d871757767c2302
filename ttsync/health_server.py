"""``/metrics`` (Prometheus) and ``/healthz`` for the relay and the consumer, on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Readiness = Callable[[], dict[str, str]]  # check name -> "" when fine, else the problem


class HealthServer:
    def __init__(self, registry: CollectorRegistry, readiness: Readiness, port: int, host: str = "127.0.0.1",
                 heartbeat: Callable[[], float] | None = None, stale_after_s: float = 300.0):
        """/healthz (readiness): the broker and the database answer. /livez (liveness): the worker's loop has
        turned within ``stale_after_s`` (``heartbeat`` returns its last turn, time.monotonic()); a broker or
        database outage makes a pod unready, never restarts it."""
        # Loopback by default; a container sets TTSYNC_METRICS_HOST=0.0.0.0 so the kubelet's probes reach it.
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    body, status, ctype = generate_latest(registry), 200, CONTENT_TYPE_LATEST
                elif self.path.startswith("/livez"):
                    age = 0.0 if heartbeat is None else time.monotonic() - heartbeat()
                    status = 200 if age <= stale_after_s else 503
                    body = json.dumps({"alive": status == 200, "loop_turned_s_ago": round(age, 1)}).encode()
                    ctype = "application/json"
                elif self.path.startswith("/healthz"):
                    problems = {k: v for k, v in outer.readiness().items() if v}
                    status = 503 if problems else 200
                    body = json.dumps({"ready": not problems, "problems": problems}).encode()
                    ctype = "application/json"
                else:
                    body, status, ctype = b"not found", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.readiness = readiness
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
