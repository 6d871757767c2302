"""The sandbox's HTTP face: QBO's REST paths, the OAuth endpoints, an admin API and a small HTML page.

    ttsync sandbox --port 8765              # or SandboxServer(SandboxConfig(port=0)).start() in tests

Everything listens on 127.0.0.1. Fault injection and throttling are set at start (SandboxConfig) and at run
time (``POST /__admin/config``); the random source is seeded so a failing run can be replayed.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import random
import re
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import structlog

from ttsync.qbo_sandbox import faults
from ttsync.qbo_sandbox.company import RESOURCES, Company
from ttsync.qbo_sandbox.faults import QboFault, qbo_time
from ttsync.qbo_sandbox.oauth import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, OAuthError, TokenAuthority
from ttsync.qbo_sandbox.throttle import Throttle
from ttsync.qbo_sandbox.webhooks import WebhookDispatcher

log = structlog.get_logger("ttsync.sandbox")

DEFAULT_REALM = "9130000000000001"
BATCH_LIMIT = 30


@dataclass
class SandboxConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    seed: int = 0
    access_token_lifetime_s: float = 3600.0
    refresh_rotation: str = "always"  # "always" | "never"
    clients: dict[str, str] = field(default_factory=lambda: {SANDBOX_CLIENT_ID: SANDBOX_CLIENT_SECRET})
    default_realm: str = DEFAULT_REALM
    throttle_enabled: bool = True
    requests_per_minute: int = 500
    concurrent_requests: int = 10
    batch_requests_per_minute: int = 40
    duplicate_requestid_mode: str = "replay"  # "replay" the first response, or answer "fault" 600
    error_rate: float = 0.0  # share of API calls answered 500/503 before doing anything
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    timeout_rate: float = 0.0  # share of API calls that never answer (connection dropped after timeout_hang_s)
    timeout_hang_s: float = 30.0
    timeout_after_apply: bool = True  # the nasty case: the write happened, the answer is lost
    throttle_rate: float = 0.0  # share of API calls answered 429 regardless of the limits (a storm)
    throttle_retry_after_s: float = 0.0  # send Retry-After on 429 (Intuit does not document one: 0 = none)
    warn_duplicate_doc_number: bool = True
    home_currency: str = "USD"  # a new company's; QBO fixes it when the company is set up
    multicurrency: bool = True
    token_outage_page: bool = False  # the token endpoint answers 200 with an HTML page (a proxy, a portal)
    webhook_url: str = ""  # where entity changes are delivered (webhooks.py); "" = no deliveries
    webhook_verifier_token: str = "sandbox-webhook-verifier-token"
    webhook_format: str = "classic"  # "classic" eventNotifications | "cloudevents"
    webhook_interval_s: float = 0.2
    webhook_duplicate_rate: float = 0.0  # share of deliveries sent twice
    webhook_reverse_order: bool = False  # a delivery's changes newest first

    RUNTIME = ("seed", "access_token_lifetime_s", "refresh_rotation", "throttle_enabled", "requests_per_minute",
               "concurrent_requests", "batch_requests_per_minute", "duplicate_requestid_mode", "error_rate",
               "latency_ms", "latency_jitter_ms", "timeout_rate", "timeout_hang_s", "timeout_after_apply",
               "throttle_rate", "throttle_retry_after_s", "warn_duplicate_doc_number", "token_outage_page",
               "webhook_url", "webhook_verifier_token", "webhook_format", "webhook_interval_s",
               "webhook_duplicate_rate", "webhook_reverse_order")


class _Hang(Exception):
    """Drop the connection without an answer, as a request lost in a timeout."""


@dataclass
class Reply:
    status: int
    body: Any
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    writes: int = 0  # entities written while answering (a batch may write up to 30)


class SandboxState:
    """Everything the sandbox knows, behind one lock (requests are served by many threads)."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.lock = threading.RLock()
        self.random = random.Random(config.seed)
        self.companies: dict[str, Company] = {}
        self.authority = TokenAuthority(clients=dict(config.clients),
                                        access_lifetime_s=config.access_token_lifetime_s,
                                        rotate=config.refresh_rotation)
        self.throttle = Throttle(config.requests_per_minute, config.concurrent_requests,
                                 config.batch_requests_per_minute, config.throttle_enabled)
        self.request_cache: dict[tuple[str, str], Reply] = {}
        self.writes_per_requestid: Counter[tuple[str, str]] = Counter()
        self.requests: deque[dict[str, Any]] = deque(maxlen=20_000)
        self.status_counts: Counter[int] = Counter()
        self.injected: Counter[str] = Counter()

    def company(self, realm: str) -> Company:
        with self.lock:
            if realm not in self.companies:
                self.companies[realm] = Company(realm, warn_duplicate_doc_number=self.config.warn_duplicate_doc_number,
                                                home_currency=self.config.home_currency,
                                                multicurrency=self.config.multicurrency)
            return self.companies[realm]

    def apply_config(self, changes: dict[str, Any]) -> SandboxConfig:
        with self.lock:
            for key, value in changes.items():
                if key not in SandboxConfig.RUNTIME:
                    raise ValueError(f"{key} cannot be changed at run time")
                setattr(self.config, key, type(getattr(self.config, key))(value))
            self.random = random.Random(self.config.seed) if "seed" in changes else self.random
            self.authority.access_lifetime_s = self.config.access_token_lifetime_s
            self.authority.rotate = self.config.refresh_rotation
            self.throttle.enabled = self.config.throttle_enabled
            self.throttle.per_minute = self.config.requests_per_minute
            self.throttle.concurrent = self.config.concurrent_requests
            self.throttle.batch_per_minute = self.config.batch_requests_per_minute
            for company in self.companies.values():
                company.warn_duplicate_doc_number = self.config.warn_duplicate_doc_number
            return self.config

    def reset(self) -> None:
        with self.lock:
            self.companies.clear()
            self.request_cache.clear()
            self.writes_per_requestid.clear()
            self.requests.clear()
            self.status_counts.clear()
            self.injected.clear()
            self.throttle.reset()
            self.authority.refresh_tokens.clear()
            self.authority.access_tokens.clear()
            self.authority.codes.clear()

    def roll(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self.lock:
            return self.random.random() < rate


_API = re.compile(r"^/v3/company/(?P<realm>[^/]+)/(?P<rest>.+)$")


class Api:
    """QBO's REST semantics, independent of HTTP plumbing."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    def handle(self, method: str, path: str, params: dict[str, str], body: bytes, headers: dict[str, str]) -> Reply:
        m = _API.match(path)
        if not m:
            return Reply(404, faults.QboFault(2030, "Invalid ID", f"Unknown path {path}", status=404).to_json())
        realm, rest = m.group("realm"), m.group("rest")
        cfg = self.state.config
        if not self.state.authority.check(headers.get("authorization"), realm):
            return Reply(401, faults.authentication_failed().to_json())
        is_batch = rest == "batch"
        if self.state.roll(cfg.throttle_rate) or not self.state.throttle.enter(realm, batch=is_batch):
            if self.state.config.throttle_rate > 0:
                self.state.injected["throttle"] += 1
            retry_after = self.state.config.throttle_retry_after_s
            headers = {"Retry-After": f"{retry_after:g}"} if retry_after > 0 else {}
            return Reply(429, faults.throttle_xml(), "application/xml", headers)
        try:
            return self._admitted(method, realm, rest, params, body)
        finally:
            self.state.throttle.leave(realm)

    def _admitted(self, method: str, realm: str, rest: str, params: dict[str, str], body: bytes) -> Reply:
        cfg = self.state.config
        if cfg.latency_ms or cfg.latency_jitter_ms:
            with self.state.lock:
                jitter = self.state.random.uniform(0, cfg.latency_jitter_ms)
            time.sleep((cfg.latency_ms + jitter) / 1000)
        if self.state.roll(cfg.error_rate):
            self.state.injected["error"] += 1
            with self.state.lock:
                status = self.state.random.choice([500, 503])
            return Reply(status, faults.system_fault(status).to_json())
        hang = self.state.roll(cfg.timeout_rate)
        if hang and not cfg.timeout_after_apply:
            self.state.injected["timeout"] += 1
            time.sleep(cfg.timeout_hang_s)
            raise _Hang()
        reply = self._dispatch(method, realm, rest, params, body)
        if hang:
            self.state.injected["timeout"] += 1
            time.sleep(cfg.timeout_hang_s)
            raise _Hang()
        return reply

    def _dispatch(self, method: str, realm: str, rest: str, params: dict[str, str], body: bytes) -> Reply:
        is_write = method == "POST" and rest not in ("query",) and not rest.startswith("cdc")
        request_id = params.get("requestid")
        if is_write and request_id:
            if len(request_id) > 50:
                return Reply(400, faults.validation(2130, "Invalid Request Id Format",
                                                    "requestid longer than 50 characters").to_json())
            with self.state.lock:
                cached = self.state.request_cache.get((realm, request_id))
                if cached is not None:
                    if self.state.config.duplicate_requestid_mode == "fault":
                        return Reply(400, faults.duplicate_request_id(request_id).to_json())
                    return cached
                reply = self._perform(method, realm, rest, params, body)
                if reply.status < 500:
                    self.state.request_cache[(realm, request_id)] = reply
                return reply
        with self.state.lock:
            return self._perform(method, realm, rest, params, body)

    def _perform(self, method: str, realm: str, rest: str, params: dict[str, str], body: bytes) -> Reply:
        company = self.state.company(realm)
        writes_before = company.writes
        try:
            reply = self._route(company, method, rest, params, body)
        except QboFault as fault:
            reply = Reply(fault.status, fault.to_json())
        reply.writes = company.writes - writes_before
        if reply.writes and params.get("requestid"):
            self.state.writes_per_requestid[(realm, params["requestid"])] += 1
        return reply

    def _route(self, company: Company, method: str, rest: str, params: dict[str, str], body: bytes) -> Reply:
        parts = rest.split("/")
        resource = parts[0].lower()
        if resource == "query":
            text = params.get("query") if method == "GET" else body.decode("utf-8", "replace")
            if not text:
                raise faults.required("query")
            return Reply(200, {"QueryResponse": company.query(text), "time": qbo_time()})
        if resource == "batch" and method == "POST":
            return Reply(200, self._batch(company, _json(body)))
        if resource == "cdc" and method == "GET":
            return Reply(200, self._cdc(company, params))
        if resource == "companyinfo":
            return Reply(200, {"CompanyInfo": {"Id": company.realm_id, "CompanyName": f"Sandbox {company.realm_id}",
                                               "Country": "US", "SyncToken": "0"}, "time": qbo_time()})
        entity = RESOURCES.get(resource)
        if entity is None:
            raise QboFault(2030, "Invalid ID", f"Unsupported resource {parts[0]}", status=400)
        if method == "GET" and len(parts) == 2:
            return Reply(200, {entity: company.read(entity, parts[1]), "time": qbo_time()})
        if method != "POST" or len(parts) != 1:
            raise QboFault(500, "Unsupported Operation", f"{method} /{rest} is not supported")
        return Reply(200, {**self._write(company, entity, params, _json(body)), "time": qbo_time()})

    def _write(self, company: Company, entity: str, params: dict[str, str], obj: Any) -> dict[str, Any]:
        operation = params.get("operation", "")
        include = params.get("include", "")
        if operation == "delete":
            return {entity: company.delete(entity, obj)}
        if operation == "void" or (operation == "update" and include == "void"):
            return {entity: company.void(entity, obj)}
        if operation not in ("", "create", "update"):
            raise QboFault(500, "Unsupported Operation", f"operation={operation} is not supported")
        return {entity: company.save(entity, obj, allow_duplicate_doc_number=include == "allowduplicatedocnum")}

    def _batch(self, company: Company, body: Any) -> dict[str, Any]:
        items = body.get("BatchItemRequest") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            raise faults.required("BatchItemRequest")
        if len(items) > BATCH_LIMIT:
            raise faults.validation(2010, "Request has invalid or unsupported property",
                                    f"A batch can hold at most {BATCH_LIMIT} items, got {len(items)}")
        out = []
        for item in items:
            bid = str(item.get("bId", ""))
            try:
                if "Query" in item:
                    out.append({"bId": bid, "QueryResponse": company.query(item["Query"])})
                    continue
                entity = next((e for e in RESOURCES.values() if e in item), None)
                if entity is None:
                    raise faults.required("entity")
                op = item.get("operation", "create")
                params = {"delete": {"operation": "delete"}, "void": {"operation": "void"}}.get(op, {})
                if op not in ("create", "update", "delete", "void"):
                    raise faults.invalid_enum("operation", op)
                out.append({"bId": bid, **self._write(company, entity, params, item[entity])})
            except QboFault as fault:
                out.append({"bId": bid, "Fault": fault.fault_body()})
        return {"BatchItemResponse": out, "time": qbo_time()}

    def _cdc(self, company: Company, params: dict[str, str]) -> dict[str, Any]:
        entities = [e for e in params.get("entities", "").split(",") if e]
        since_text = params.get("changedSince")
        if not entities or not since_text:
            raise faults.required("entities and changedSince")
        try:
            since = dt.datetime.fromisoformat(since_text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise faults.validation(2060, "Invalid Date", f"changedSince {since_text!r}") from exc
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
        if dt.datetime.now(dt.UTC) - since > dt.timedelta(days=30):
            raise faults.validation(2010, "Request has invalid or unsupported property",
                                    "changedSince cannot be more than 30 days ago")
        return {"CDCResponse": [{"QueryResponse": company.cdc(entities, since)}], "time": qbo_time()}


def _json(body: bytes) -> Any:
    try:
        return json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise faults.validation(2010, "Request has invalid or unsupported property",
                                f"Request body is not valid JSON: {exc}") from exc


class Admin:
    """Inspection and control for tests and people: never part of QBO's surface."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    def handle(self, method: str, path: str, params: dict[str, str], body: bytes) -> Reply:
        s = self.state
        parts = [p for p in path.split("/") if p][1:]  # drop "__admin"
        data = json.loads(body or b"{}") if method == "POST" else {}
        with s.lock:
            if parts == ["health"]:
                return Reply(200, {"ok": True})
            if parts == ["config"]:
                if method == "POST":
                    try:
                        s.apply_config(data)
                    except (ValueError, TypeError) as exc:
                        return Reply(400, {"error": str(exc)})
                cfg = asdict(s.config)
                cfg.pop("clients", None)
                return Reply(200, cfg)
            if parts == ["reset"] and method == "POST":
                s.reset()
                return Reply(200, {"reset": True})
            if parts == ["tokens"] and method == "POST":
                realm = str(data.get("realm_id") or s.config.default_realm)
                client = str(data.get("client_id") or next(iter(s.authority.clients)))
                s.company(realm)
                return Reply(200, {"realm_id": realm, "client_id": client,
                                   "refresh_token": s.authority.issue_refresh_token(client, realm)})
            if parts == ["expire-tokens"] and method == "POST":
                return Reply(200, {"expired": s.authority.expire_access_tokens()})
            if parts == ["realms"]:
                return Reply(200, {"realms": sorted(s.companies)})
            if len(parts) == 3 and parts[0] == "realms" and parts[2] == "entities":
                company = s.company(parts[1])
                kinds = [params["type"]] if "type" in params else list(company.entities)
                return Reply(200, {k: list(company.entities[k].values()) for k in kinds} |
                             {"deleted": {k: list(company.deleted[k].values()) for k in kinds}})
            if len(parts) == 3 and parts[0] == "realms" and parts[2] == "seed" and method == "POST":
                company = s.company(parts[1])
                try:
                    created = {k: [company.save(k, obj, allow_duplicate_doc_number=True)["Id"] for obj in objs]
                               for k, objs in data.items()}
                except QboFault as fault:  # what the test seeded is invalid: say why, as QBO would
                    return Reply(fault.status, fault.to_json())
                return Reply(200, created)
            if len(parts) == 3 and parts[0] == "realms" and parts[2] == "receive-payment" and method == "POST":
                # A customer pays an invoice in QBO (QuickBooks Payments, a deposit the bookkeeper matched).
                company = s.company(parts[1])
                try:
                    invoice = company.get("Invoice", str(data["invoice_id"]))
                    amount = data.get("amount", invoice["Balance"])
                    payment = company.save("Payment", {
                        "CustomerRef": dict(invoice["CustomerRef"]), "TotalAmt": amount,
                        **({"CurrencyRef": dict(invoice["CurrencyRef"])} if invoice.get("CurrencyRef") else {}),
                        "TxnDate": data.get("txn_date") or dt.date.today().isoformat(),
                        "PaymentRefNum": data.get("reference", "QBP-SANDBOX"),
                        "PaymentMethodRef": {"value": "1", "name": data.get("method", "Credit Card")},
                        "Line": [{"Amount": amount, "LinkedTxn": [{"TxnId": invoice["Id"], "TxnType": "Invoice"}]}]})
                except QboFault as fault:
                    return Reply(fault.status, fault.to_json())
                except KeyError:
                    return Reply(400, {"error": "invoice_id is required"})
                return Reply(200, {"Payment": payment})
            if parts == ["requests"]:
                limit = int(params.get("limit", "1000"))
                return Reply(200, {"requests": list(s.requests)[-limit:]})
            if parts == ["requestids"]:
                realm = params.get("realm", s.config.default_realm)
                return Reply(200, {rid: n for (r, rid), n in s.writes_per_requestid.items() if r == realm})
            if parts == ["stats"]:
                return Reply(200, {
                    "status_counts": {str(k): v for k, v in s.status_counts.items()},
                    "throttled": s.throttle.throttled,
                    "injected": dict(s.injected),
                    "token_refreshes": s.authority.refreshes,
                    "writes": {r: c.writes for r, c in s.companies.items()},
                    "requests_last_minute": {r: s.throttle.used_last_minute(r) for r in s.companies},
                })
        return Reply(404, {"error": f"unknown admin path {path}"})


LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


def _foreign_admin_request(headers: dict[str, str]) -> str | None:
    """Why an /__admin request is refused, or None. The admin API can reset or reconfigure the sandbox: a web
    page the operator visits must not reach it, by a cross-site request (Origin) or by DNS rebinding (Host)."""
    host = headers.get("host", "").rsplit(":", 1)[0] if not headers.get("host", "").startswith("[") else \
        headers.get("host", "").split("]")[0] + "]"
    if host not in LOCAL_HOSTS:
        return f"admin requests must be addressed to 127.0.0.1 or localhost, not {host!r}"
    origin = headers.get("origin")
    if origin and urlsplit(origin).hostname not in LOCAL_HOSTS:
        return f"admin requests from another site ({origin}) are refused"
    return None


def render_page(state: SandboxState) -> str:
    rows = []
    with state.lock:
        for realm, company in sorted(state.companies.items()):
            rows.append(f"<h2>Company {html.escape(realm)}</h2>")
            for entity in ("Customer", "Invoice", "Payment", "Purchase", "Vendor", "Item", "Account"):
                objs = list(company.entities[entity].values())
                rows.append(f"<h3>{entity} ({len(objs)}, {len(company.deleted[entity])} deleted)</h3>")
                if not objs:
                    continue
                rows.append("<table><tr><th>Id</th><th>SyncToken</th><th>Name / DocNumber</th><th>Amount</th>"
                            "<th>Balance</th><th>Note</th></tr>")
                for o in objs[-200:]:
                    name = o.get("DisplayName") or o.get("Name") or o.get("DocNumber") or ""
                    # Every cell escaped: a client can store any value in any field (stored XSS otherwise).
                    cells = (o.get("Id"), o.get("SyncToken"), name, o.get("TotalAmt", ""), o.get("Balance", ""),
                             str(o.get("PrivateNote", ""))[:80])
                    rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
                rows.append("</table>")
    body = "\n".join(rows) or "<p>Nothing synced yet.</p>"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='5'>"
        "<title>ttsync QBO sandbox</title><style>body{font-family:sans-serif;margin:2em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}</style>"
        f"</head><body><h1>ttsync QuickBooks Online sandbox</h1>{body}</body></html>"
    )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes: without TCP_NODELAY, Nagle plus the client's delayed
        # ACK add ~40 ms to every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are logged structurally below

    def _respond(self, reply: Reply) -> None:
        payload = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
        data = payload.encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("intuit_tid", f"sandbox-{id(reply):x}")
        for k, v in reply.headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _serve(self, method: str) -> None:
        state = self.server.state
        url = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        started = time.monotonic()
        try:
            if url.path.startswith("/v3/company/"):
                reply = self.server.api.handle(method, url.path, params, body, headers)
            elif url.path == "/oauth2/v1/tokens/bearer" and method == "POST":
                reply = self._token(body, headers)
            elif url.path == "/oauth2/v1/tokens/revoke" and method == "POST":
                reply = self._revoke(body, headers)
            elif url.path == "/connect/oauth2" and method == "GET":
                reply = self._authorize(params)
            elif url.path.startswith("/__admin"):
                refusal = _foreign_admin_request(headers)
                reply = Reply(403, {"error": refusal}) if refusal else \
                    self.server.admin.handle(method, url.path, params, body)
            elif url.path in ("/", "/index.html") and method == "GET":
                reply = Reply(200, render_page(state), "text/html; charset=utf-8")
            else:
                reply = Reply(404, {"error": "not found"})
        except _Hang:
            self.close_connection = True
            self._record(method, url.path, params, 0, started)
            return
        except Exception as exc:
            log.exception("sandbox_internal_error", path=url.path)
            reply = Reply(500, faults.system_fault(500).to_json() | {"sandbox_error": repr(exc)})
        self._respond(reply)
        self._record(method, url.path, params, reply.status, started, reply)

    def _record(self, method: str, path: str, params: dict[str, str], status: int, started: float,
                reply: Reply | None = None) -> None:
        state = self.server.state
        fault_code = None
        if reply is not None and isinstance(reply.body, dict) and "Fault" in reply.body:
            fault_code = reply.body["Fault"]["Error"][0]["code"]
        entry = {"ts": time.time(), "method": method, "path": path, "status": status,
                 "requestid": params.get("requestid"), "operation": params.get("operation"),
                 "minorversion": params.get("minorversion"), "fault": fault_code,
                 "ms": round((time.monotonic() - started) * 1000, 2), "writes": reply.writes if reply else 0}
        with state.lock:
            state.requests.append(entry)
            state.status_counts[status] += 1

    def _token(self, body: bytes, headers: dict[str, str]) -> Reply:
        form = {k: v[-1] for k, v in parse_qs(body.decode()).items()}
        if self.server.state.config.token_outage_page:
            return Reply(200, "<html><body><h1>Service temporarily unavailable</h1></body></html>",
                         content_type="text/html")
        try:
            with self.server.state.lock:
                return Reply(200, self.server.state.authority.token(form, headers.get("authorization")))
        except OAuthError as exc:
            return Reply(exc.status, {"error": exc.error, "error_description": exc.description})

    def _revoke(self, body: bytes, headers: dict[str, str]) -> Reply:
        try:
            token = json.loads(body or b"{}").get("token", "")
            with self.server.state.lock:
                self.server.state.authority.revoke(token, headers.get("authorization"))
            return Reply(200, {})
        except OAuthError as exc:
            return Reply(exc.status, {"error": exc.error, "error_description": exc.description})

    def _authorize(self, params: dict[str, str]) -> Reply:
        """Intuit's consent page, approved at once: redirect back with a code and the company's realmId."""
        state = self.server.state
        redirect = params.get("redirect_uri", "")
        try:
            with state.lock:
                realm = params.get("realm_id") or state.config.default_realm
                code = state.authority.authorize(params.get("client_id", ""), redirect, realm)
                state.company(realm)
        except OAuthError as exc:
            return Reply(exc.status, {"error": exc.error, "error_description": exc.description})
        location = f"{redirect}?{urlencode({'code': code, 'state': params.get('state', ''), 'realmId': realm})}"
        return Reply(302, "", "text/plain", {"Location": location})

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], state: SandboxState) -> None:
        self.state = state
        self.api = Api(state)
        self.admin = Admin(state)
        super().__init__(address, _Handler)


class SandboxServer:
    """Start in a background thread (tests) with ``start()``, or in the foreground with ``serve_forever()``."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        # Loopback unless told otherwise (`ttsync sandbox --host 0.0.0.0` inside a container, whose port the
        # compose file publishes on the host's 127.0.0.1 only): its data is fake, its /__admin API open.
        self.state = SandboxState(self.config)
        self.httpd = _HTTPServer((self.config.host, self.config.port), self.state)
        self.port = self.httpd.server_address[1]
        self._thread: threading.Thread | None = None
        self.webhooks = WebhookDispatcher(self.state)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "::", "") else self.config.host
        return f"http://{host}:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.url}/oauth2/v1/tokens/bearer"

    def start(self) -> SandboxServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="qbo-sandbox", daemon=True)
        self._thread.start()
        self.webhooks.start()
        return self

    def serve_forever(self) -> None:
        self.webhooks.start()
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.webhooks.stop()
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(config: SandboxConfig) -> None:
    server = SandboxServer(config)
    log.info("sandbox_listening", url=server.url, realm=config.default_realm)
    try:
        server.serve_forever()
    finally:
        server.httpd.server_close()
