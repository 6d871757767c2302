"""``/metrics`` (Prometheus) and ``/healthz`` for the relay and the consumer, on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Readiness = Callable[[], dict[str, str]]  # check name -> "" when fine, else the problem


class HealthServer:
    def __init__(self, registry: CollectorRegistry, readiness: Readiness, port: int, host: str = "127.0.0.1"):
        # Loopback by default; a container sets TTSYNC_METRICS_HOST=0.0.0.0 so the kubelet's probes reach it.
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    body, status, ctype = generate_latest(registry), 200, CONTENT_TYPE_LATEST
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
