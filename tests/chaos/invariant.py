"""The invariant every chaos scenario ends with, checked against the sandbox's inspection API:

every committed TimeTracker change is in QBO exactly once at its latest version, or in the dead-letter topic
with its reason; nothing else.

What "in QBO at its latest version" means follows the sync policy (consumer/lifecycle.py): an invoice sent or
paid is one live Invoice with TimeTracker's lines and note; a cancelled one is voided if it ever reached QBO;
a draft never goes; an approved expense is one Purchase with its amount, a rejected or deleted one is not
live; a completed payment is one Payment, a refunded one voided if it reached QBO; every client is one
Customer with its current e-mail. QBO entities are told apart by the marker each carries (mapping.marker).
"""

from __future__ import annotations

import html
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, selectinload

from consumer.mapping import invoice_lines
from producer.aggregate_snapshots import snapshot
from producer.outbox_tables import outbox
from producer.timetracker_schema import Client, Expense, Invoice, Payment
from schemas.events import InvoiceState

EXPENSE_ACCOUNT_TYPES = {"Expense", "Other Expense", "Cost of Goods Sold"}
PAYING_ACCOUNT_TYPE = {"Cash": "Bank", "Check": "Bank", "CreditCard": "Credit Card"}

MARKER = re.compile(r"ttsync:(client|invoice|expense|payment):(\d+)@")
DOC_NUMBER_MAX = 21
ENTITY_OF = {"client": "Customer", "invoice": "Invoice", "expense": "Purchase", "payment": "Payment"}


@dataclass
class Verdict:
    changes: int = 0  # events the committed TimeTracker transactions produced (outbox rows)
    aggregates: int = 0
    applied: int = 0  # aggregates live in QBO exactly once at their latest version
    dead_lettered: int = 0  # aggregates whose latest version is in the dead-letter topic, as expected
    junk_dead_lettered: int = 0  # records that were never TimeTracker changes (injected garbage)
    lost: int = 0  # missing, stale, or dead-lettered although nothing was wrong with them
    duplicated: int = 0  # more than one QBO entity for one aggregate, or one write performed twice
    problems: list[str] = field(default_factory=list)
    converged: bool = True  # the pipeline settled (outbox drained, group lag 0) before the scenario's deadline

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.converged


def _marker_index(entities: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    index: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for entity, rows in entities.items():
        for row in rows:
            text = row.get("Notes") if entity == "Customer" else row.get("PrivateNote")
            m = MARKER.search(text or "")
            if m:
                index[(m.group(1), m.group(2))].append(row)
    return index


def _payload(value: Any) -> dict[str, Any]:
    event = json.loads(value) if isinstance(value, str) else value
    return (event or {}).get("payload") or {}


def _amount(value: Any) -> Decimal:
    return Decimal(str(value)).quantize(Decimal("0.01"))


def check(engine: Engine, live: dict[str, list[dict[str, Any]]], dead_letters: list[tuple[str, str | None]],
          writes_per_requestid: dict[str, int], *, junk_expected: int = 0,
          history: list[tuple[str, str, Any]] | None = None) -> Verdict:
    """``live``: the sandbox's non-deleted entities per type; ``dead_letters``: (event type, key) per DLQ record;
    ``history``: every event as (aggregate type, aggregate id, envelope), when the outbox no longer holds them all
    (its retention purged published rows: a soak), else read from the outbox."""
    v = Verdict()
    index = _marker_index(live)
    dlq: dict[tuple[str, str], int] = defaultdict(int)
    junk = 0
    for event_type, key in dead_letters:
        kind = (event_type or "?").split(".")[0]
        if kind in ENTITY_OF and key is not None and key.isdigit():
            dlq[(kind, key)] += 1
        else:
            junk += 1
    v.junk_dead_lettered = junk
    if junk != junk_expected:
        v.problems.append(f"{junk} dead-lettered records are not TimeTracker changes; {junk_expected} were injected")
        v.lost += abs(junk_expected - junk)

    def problem(kind: str, agg: str, what: str) -> None:
        v.lost += 1
        if len(v.problems) < 25:
            v.problems.append(f"{kind} {agg}: {what}")

    def judge(kind: str, agg: str, expect: str, matches: Any = None, poison: bool = False) -> None:
        """expect: 'live' (exactly one live, matching), 'absent' (none live), 'voided' (none or one voided)."""
        v.aggregates += 1
        found = index.get((kind, agg), [])
        in_dlq = dlq.pop((kind, agg), 0) > 0
        if len(found) > 1:
            v.duplicated += 1
            v.problems.append(f"{kind} {agg}: {len(found)} QBO entities {[e['Id'] for e in found]}")
            return
        if poison:  # every version QBO was asked to take is refused; a draft or cancelled one may never be sent
            if found:
                problem(kind, agg, "QBO took a record it must refuse")
            elif in_dlq:
                v.dead_lettered += 1
            elif expect == "live":
                problem(kind, agg, "refused record is in neither QBO nor the dead-letter topic")
            return
        if in_dlq:
            problem(kind, agg, "dead-lettered although it is valid")
            return
        if expect == "absent":
            if found and not found[0].get("Voided"):
                problem(kind, agg, f"live in QBO ({found[0]['Id']}) but must not be")
            return
        if expect == "voided":
            if found and not found[0].get("Voided"):
                problem(kind, agg, f"must be voided in QBO, is live ({found[0]['Id']})")
            elif found:
                v.applied += 1
            return
        if not found:
            problem(kind, agg, "missing in QBO")
            return
        entity = found[0]
        if entity.get("Voided"):
            problem(kind, agg, "voided in QBO but live in TimeTracker")
            return
        wrong = matches(entity) if matches else None
        if wrong:
            problem(kind, agg, f"stale in QBO: {wrong}")
        else:
            v.applied += 1

    accounts = {str(a["Id"]): a for a in live.get("Account", [])}
    # Every customer and transaction in QBO is ttsync's, so each carries a marker: one without (a second customer
    # created by name, an invoice written twice) is a duplicate whatever the per-record checks say.
    # Listed after the per-record problems (a few of them): 97 of these once filled the list, and the reasons 358
    # records were lost went unseen (CI, 2026-12-03).
    unmarked: list[str] = []
    for entity in ("Customer", "Invoice", "Purchase", "Payment"):
        for row in live.get(entity, []):
            text = row.get("Notes") if entity == "Customer" else row.get("PrivateNote")
            if "ttsync:" not in (text or "") and not row.get("Voided"):
                v.duplicated += 1
                unmarked.append(f"{entity} {row['Id']} carries no ttsync marker: {str(text)[:60]!r}")

    def qbo_id_of(kind: str, agg: int | str) -> str | None:
        found = index.get((kind, str(agg)), [])
        return str(found[0]["Id"]) if len(found) == 1 else None
    with Session(engine) as s:
        if history is None:
            history = [(t, str(a), p) for t, a, p in s.execute(
                select(outbox.c.aggregatetype, outbox.c.aggregateid, outbox.c.payload))]
        v.changes = len(history)
        agg_seen = {(t, a) for t, a, _ in history}
        # Invoices ever captured as issued, sent or paid: an overdue one belongs in QBO only then (TimeTracker's
        # daily job also makes never-sent drafts overdue).
        issued = {a for t, a, p in history if t == "invoice" and
                  str(_payload(p).get("status")) in ("issued", "sent", "paid")}

        for client in s.scalars(select(Client)):
            def client_matches(e: dict[str, Any], c: Client = client) -> str | None:
                email = (e.get("PrimaryEmailAddr") or {}).get("Address")
                name = html.unescape(c.name)  # as the web form's bleach stored it, decoded
                if e.get("DisplayName") not in (name, f"{name} (customer)"):
                    return f"name {e.get('DisplayName')!r}, TimeTracker has {name!r}"
                return None if email == c.email else f"e-mail {email!r}, TimeTracker has {c.email!r}"
            judge("client", str(client.id), "live", client_matches)

        for inv in s.scalars(select(Invoice).options(selectinload(Invoice.items))):
            poison = len(inv.invoice_number) > DOC_NUMBER_MAX
            if inv.status in ("sent", "paid") or (inv.status == "overdue" and str(inv.id) in issued):
                def invoice_matches(e: dict[str, Any], i: Invoice = inv) -> str | None:
                    customer = qbo_id_of("client", i.client_id)
                    if (e.get("CustomerRef") or {}).get("value") != customer:
                        return f"CustomerRef {e.get('CustomerRef')}, the client's QBO customer is {customer}"
                    # To the cent, against TimeTracker's own stored figures (what it shows and bills).
                    if _amount(e.get("TotalAmt", 0)) != _amount(i.total_amount):
                        return f"TotalAmt {e.get('TotalAmt')}, TimeTracker has {i.total_amount}"
                    balance = _amount(i.total_amount) - _amount(i.amount_paid or 0)
                    if _amount(e.get("Balance", 0)) != balance:
                        return f"Balance {e.get('Balance')}, TimeTracker has {balance}"
                    state = InvoiceState.model_validate(snapshot(s.connection(), "invoice", i.id))
                    want = [_amount(ln["Amount"]) for ln in invoice_lines(state, "-")]
                    got = [_amount(ln["Amount"]) for ln in e.get("Line", []) if ln.get("DetailType") ==
                           "SalesItemLineDetail"]
                    if sorted(want) != sorted(got):
                        return f"lines {got}, TimeTracker has {want}"
                    if not (e.get("PrivateNote") or "").endswith(i.notes or ""):
                        return f"note {e.get('PrivateNote')!r}, TimeTracker has {i.notes!r}"
                    return None if e.get("DocNumber") == i.invoice_number else f"DocNumber {e.get('DocNumber')}"
                judge("invoice", str(inv.id), "live", invoice_matches, poison=poison)
            elif inv.status == "cancelled":
                judge("invoice", str(inv.id), "voided", poison=poison)
            else:
                judge("invoice", str(inv.id), "absent", poison=poison)

        expense_ids = set()
        for exp in s.scalars(select(Expense)):
            expense_ids.add(str(exp.id))
            if exp.status == "approved":
                def expense_matches(e: dict[str, Any], x: Expense = exp) -> str | None:
                    want = _amount(x.amount + (x.tax_amount or 0))
                    got = _amount(e.get("TotalAmt", 0))
                    if got != want:
                        return f"TotalAmt {got}, TimeTracker has {want}"
                    if accounts:
                        paying = accounts[str(e["AccountRef"]["value"])]
                        if paying["AccountType"] != PAYING_ACCOUNT_TYPE[e["PaymentType"]]:
                            return f"paid from {paying['Name']!r}, a {paying['AccountType']} account"
                        for line in e.get("Line", []):
                            booked = accounts[str(line["AccountBasedExpenseLineDetail"]["AccountRef"]["value"])]
                            if booked["AccountType"] not in EXPENSE_ACCOUNT_TYPES:
                                return f"booked to {booked['Name']!r}, a {booked['AccountType']} account"
                    return None if (e.get("PrivateNote") or "").endswith(x.notes or "") else \
                        f"note {e.get('PrivateNote')!r}, TimeTracker has {x.notes!r}"
                judge("expense", str(exp.id), "live", expense_matches)
            else:
                judge("expense", str(exp.id), "absent")
        for kind, agg in sorted(agg_seen):
            if kind == "expense" and agg not in expense_ids:  # deleted in TimeTracker
                judge("expense", agg, "absent")

        for pay in s.scalars(select(Payment)):
            if pay.status == "completed":
                def payment_matches(e: dict[str, Any], p: Payment = pay) -> str | None:
                    linked = [t.get("TxnId") for ln in e.get("Line", []) for t in ln.get("LinkedTxn", [])]
                    if linked != [qbo_id_of("invoice", p.invoice_id)]:
                        return f"LinkedTxn {linked}, its invoice is {qbo_id_of('invoice', p.invoice_id)}"
                    got = _amount(e.get("TotalAmt", 0))
                    if got != _amount(p.amount):
                        return f"TotalAmt {got}, TimeTracker has {p.amount}"
                    return None if (e.get("PrivateNote") or "").endswith(p.notes or "") else \
                        f"note {e.get('PrivateNote')!r}, TimeTracker has {p.notes!r}"
                judge("payment", str(pay.id), "live", payment_matches)
            else:
                judge("payment", str(pay.id), "voided")

    for (kind, agg), _n in dlq.items():
        problem(kind, agg, "dead-lettered, but no such TimeTracker record")
    v.problems += unmarked[:5] + ([f"... and {len(unmarked) - 5} more entities without a marker"]
                                  if len(unmarked) > 5 else [])
    twice = {rid: n for rid, n in writes_per_requestid.items() if n > 1}
    if twice:
        v.duplicated += len(twice)
        v.problems.append(f"{len(twice)} requestids performed more than once, e.g. {list(twice.items())[:3]}")
    return v


def acknowledged_missing(engine: Engine, acknowledged: set[str], also_held: set[str] | None = None) -> list[str]:
    """The outbox events of confirmed commits (the workload's own record) that the database no longer holds: a
    commit PostgreSQL confirmed and then lost. Every event it holds is judged against QBO by ``check``.
    ``also_held``: events known otherwise (published to Kafka, then purged from the outbox by its retention)."""
    with engine.connect() as conn:
        held = {str(i) for i in conn.scalars(select(outbox.c.id))}
    return sorted(acknowledged - held - (also_held or set()))
