"""Thousands of TimeTracker changes, as TimeTracker makes them: one transaction per user action, through its
ORM, against the tables the capture triggers watch.

The generator keeps a small model of what exists only to choose plausible next actions. What the pipeline
must end with is read back from the database afterwards (``invariant.py``), so a transaction whose commit
answer was lost (PostgreSQL restart) may or may not have happened without confusing the check. What the
database must still hold is the workload's own record: ``acknowledged``, the outbox events of every transaction
whose commit PostgreSQL confirmed (``invariant.acknowledged_missing``), so a crash that loses a confirmed commit
is seen, not read back as if it never happened.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal

import structlog
from sqlalchemy import Engine, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from producer.timetracker_schema import Client, Expense, ExtraGood, Invoice, InvoiceItem, Payment, Project, User

log = structlog.get_logger("ttsync.chaos.workload")

# The outbox rows this transaction's capture triggers wrote: their xmin is its transaction id (xid8 to xid). The
# workload is the only writer of the outbox, so they are among its newest rows: an index scan, not the whole table.
OWN_EVENTS = text("SELECT id FROM (SELECT id, xmin FROM ttsync_outbox ORDER BY seq DESC LIMIT 500) AS newest "
                  "WHERE xmin = CAST(CAST(CAST(CAST(pg_current_xact_id() AS text) AS bigint) % 4294967296 AS text) "
                  "AS xid)")

DOC_NUMBER_MAX = 21
# Hostile but valid: quotes for QBO's query escaping, unicode, an ampersand, a long tail; and names as
# TimeTracker's web forms store them (bleach: & -> &amp;), which must reach QBO decoded.
NAME_STYLES = ["Acme {n}", "O'Brien & Sons {n}", 'The "Quoted" Co {n}', "Müller Ünlü GmbH {n}", "株式会社 {n}",
               "Smith's \\ Partners {n}", "O'Brien &amp; Sons &quot;Ltd&quot; {n}", "Müller &amp; Söhne GmbH {n}"]
# TimeTracker's fixed lists (Expense.get_expense_categories(), the expense form).
CATEGORIES = ("travel", "meals", "accommodation", "supplies", "software", "equipment", "services", "marketing",
              "training", "other")
PAYMENT_METHODS = ("cash", "credit_card", "debit_card", "bank_transfer", "company_card", "paypal", "other")
CURRENCY = "EUR"  # TimeTracker's default


@dataclass
class WorkloadStats:
    committed: int = 0
    failed: int = 0  # transactions whose commit answer never came (the database went away): maybe committed
    by_action: dict[str, int] = field(default_factory=dict)


@dataclass
class _Model:
    user_id: int = 0
    clients: list[int] = field(default_factory=list)
    projects: dict[int, int] = field(default_factory=dict)  # client id -> project id
    invoices: dict[int, str] = field(default_factory=dict)  # id -> status
    poison_invoices: set[int] = field(default_factory=set)
    expenses: dict[int, str] = field(default_factory=dict)
    payments: dict[int, str] = field(default_factory=dict)


class Workload:
    """Plays ``changes`` committed actions. ``poison_rate`` of new invoices carry a number QBO refuses (longer
    than DocNumber's 21 characters): they must end in the dead-letter topic, every version of them."""

    def __init__(self, engine: Engine, *, changes: int, seed: int = 7, poison_rate: float = 0.0,
                 tag: str = "chaos", pace_s: float = 0.0, duration_s: float = 0.0) -> None:
        self.engine = engine
        self.changes = changes
        self.rng = random.Random(seed)
        self.poison_rate = poison_rate
        self.tag = tag
        self.pace_s = pace_s
        self.duration_s = duration_s  # spread the changes evenly over this long (a soak), whatever each one takes
        self.stats = WorkloadStats()
        self.acknowledged: set[str] = set()  # outbox event ids of the transactions whose commit was confirmed
        self.model = _Model()
        self._seq = 0
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # -- running ---------------------------------------------------------------------------------------

    def run(self) -> WorkloadStats:
        self._do(self._setup, "setup")
        started = time.monotonic()
        while self.stats.committed < self.changes:
            action = self._choose()
            self._do(action, action.__name__.lstrip("_"))
            if self.pace_s:
                time.sleep(self.pace_s)
            if self.duration_s:
                due = started + self.duration_s * self.stats.committed / self.changes
                time.sleep(max(0.0, due - time.monotonic()))
        return self.stats

    def start(self) -> Workload:
        def target() -> None:
            try:
                self.run()
            except BaseException as exc:  # noqa: BLE001 - handed to the test through join()
                self.error = exc
        self._thread = threading.Thread(target=target, name="workload", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout_s: float) -> WorkloadStats:
        assert self._thread is not None
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise AssertionError(f"the workload did not finish in {timeout_s}s ({self.stats.committed} done)")
        if self.error is not None:
            raise self.error
        return self.stats

    @property
    def progress(self) -> float:
        return self.stats.committed / self.changes

    def _do(self, action: object, name: str) -> None:
        try:
            with Session(self.engine, expire_on_commit=False) as s:
                if action(s) is False:  # type: ignore[operator]
                    return
                s.flush()
                # The capture triggers are deferred to the commit: fire them now (nothing changes after this
                # point, so they capture what they would have), to learn this transaction's events before it ends.
                s.execute(text("SET CONSTRAINTS ALL IMMEDIATE"))
                events = {str(i) for i in s.scalars(OWN_EVENTS)}
                s.commit()
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            # The database went away (a restart scenario): the action may or may not have committed. Wait
            # for it, then re-read the model rather than guess.
            self.stats.failed += 1
            log.warning("workload_db_unavailable", error=str(exc)[:200])
            self._reload()
            return
        self.acknowledged |= events
        self.stats.committed += 1
        self.stats.by_action[name] = self.stats.by_action.get(name, 0) + 1

    def _reload(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            time.sleep(0.5)
            try:
                with Session(self.engine) as s:
                    m = _Model(user_id=self.model.user_id)
                    for c_id, p_id in s.execute(select(Project.client_id, Project.id)):
                        m.clients.append(c_id)
                        m.projects[c_id] = p_id
                    for i_id, status, number in s.execute(select(Invoice.id, Invoice.status, Invoice.invoice_number)):
                        m.invoices[i_id] = status
                        if len(number) > DOC_NUMBER_MAX:
                            m.poison_invoices.add(i_id)
                    m.expenses = {i: st for i, st in s.execute(select(Expense.id, Expense.status))}
                    m.payments = {i: st for i, st in s.execute(select(Payment.id, Payment.status))}
                self.model = m
                return
            except (sa_exc.OperationalError, sa_exc.InterfaceError):
                if time.monotonic() > deadline:
                    raise

    def _choose(self):  # type: ignore[no-untyped-def]
        m = self.model
        options: list[tuple[int, object]] = [(4, self._new_client), (18, self._new_invoice), (12, self._new_expense)]
        if m.clients:
            options.append((4, self._update_client))
        if any(st == "sent" for st in m.invoices.values()):
            options += [(22, self._update_invoice), (8, self._pay_invoice), (3, self._cancel_invoice)]
            if any(st == "approved" for st in m.expenses.values()):
                options.append((3, self._link_expense))
        if any(st in ("sent", "overdue") for st in m.invoices.values()):
            options.append((3, self._mark_paid))
        if any(st == "draft" for st in m.invoices.values()):
            options.append((3, self._send_draft))
        if any(st in ("draft", "sent") for st in m.invoices.values()):
            options.append((1, self._overdue_job))
        if any(st in ("pending", "approved") for st in m.expenses.values()):
            options += [(10, self._update_expense), (3, self._reject_expense), (3, self._delete_expense)]
        if any(st == "pending" for st in m.expenses.values()):
            options.append((4, self._approve_expense))
        if any(st == "completed" for st in m.payments.values()):
            options += [(3, self._update_payment), (2, self._refund_payment)]
        total = sum(w for w, _ in options)
        pick = self.rng.uniform(0, total)
        for weight, action in options:
            pick -= weight
            if pick <= 0:
                return action
        return options[-1][1]

    def _pick(self, ids: dict[int, str], *statuses: str, exclude: set[int] | None = None) -> int | None:
        found = [i for i, st in ids.items() if st in statuses and not (exclude and i in exclude)]
        return self.rng.choice(found) if found else None

    # -- actions: each one TimeTracker transaction -------------------------------------------------------

    def _setup(self, s: Session) -> None:
        user = User(username=f"{self.tag}-user-{self.rng.randrange(10**9)}")
        s.add(user)
        s.flush()
        self.model.user_id = user.id
        self._new_client(s)

    def _new_client(self, s: Session) -> None:
        self._seq += 1
        name = self.rng.choice(NAME_STYLES).format(n=f"{self.tag}-{self._seq}")
        client = Client(name=name, email=f"billing{self._seq}@example.com", contact_person="Pat Doe",
                        address=f"{self._seq} Main St\nSpringfield")
        s.add(client)
        s.flush()
        project = Project(name=f"Project {self._seq}", client_id=client.id)
        s.add(project)
        s.flush()
        self.model.clients.append(client.id)
        self.model.projects[client.id] = project.id

    def _update_client(self, s: Session) -> None:
        client = s.get_one(Client, self.rng.choice(self.model.clients))
        self._seq += 1
        client.email = f"accounts{self._seq}@example.com"

    def _new_invoice(self, s: Session) -> None:
        self._seq += 1
        client = s.get_one(Client, self.rng.choice(self.model.clients))
        poison = self.rng.random() < self.poison_rate
        number = f"{self.tag[:6]}-{self._seq}"
        if poison:
            number = f"{number}-{'X' * DOC_NUMBER_MAX}"  # QBO's DocNumber holds 21 characters
        status = "sent" if self.rng.random() < 0.8 else "draft"
        # Invoices without a project exist (invoices.project_id is nullable in the migrated schema).
        project = self.model.projects[client.id] if self.rng.random() < 0.8 else None
        inv = Invoice(invoice_number=number, project_id=project, client_id=client.id,
                      client_name=client.name, client_email=client.email, issue_date=dt.date(2026, 11, 2),
                      due_date=dt.date(2026, 12, 2), status=status, created_by=self.model.user_id,
                      currency_code=CURRENCY, tax_rate=Decimal("10.00"), notes="rev 0")
        # Some carry extra goods (in TimeTracker's totals), a few only extra goods and no item line.
        if self.rng.random() < 0.3:
            qty, price = Decimal(self.rng.randint(1, 4)), Decimal(self.rng.choice(["15.50", "9.99", "120.00"]))
            inv.extra_goods.append(ExtraGood(name="Cable &amp; plug", category="product", quantity=qty,
                                             unit_price=price, total_amount=qty * price,
                                             created_by=self.model.user_id))
        for i in range(self.rng.randint(1 if not inv.extra_goods or self.rng.random() < 0.7 else 0, 3)):
            qty, price = Decimal(self.rng.randint(1, 8)), Decimal(self.rng.choice(["75.50", "120.00", "42.25"]))
            inv.items.append(InvoiceItem(description=f"Consulting block {i + 1} – “review” ü", quantity=qty,  # noqa: RUF001 - hostile unicode on purpose
                                         unit_price=price, total_amount=qty * price))
        s.add(inv)
        s.flush()
        _totals(s, inv)
        self.model.invoices[inv.id] = status
        if poison:
            self.model.poison_invoices.add(inv.id)

    def _update_invoice(self, s: Session) -> bool:
        inv_id = self._pick(self.model.invoices, "sent")
        if inv_id is None:
            return False
        inv = s.get_one(Invoice, inv_id)
        self._seq += 1
        inv.notes = f"rev {self._seq}"
        lines: list[InvoiceItem | ExtraGood] = [*inv.items, *inv.extra_goods]
        line = self.rng.choice(lines)  # an invoice has items, extra goods or both
        line.quantity = Decimal(self.rng.randint(1, 12))
        line.total_amount = line.quantity * line.unit_price
        if self.rng.random() < 0.2:
            inv.items.append(InvoiceItem(description=f"Extra {self._seq}", quantity=Decimal(1),
                                         unit_price=Decimal("10.00"), total_amount=Decimal("10.00")))
        s.flush()
        _totals(s, inv)
        return True

    def _link_expense(self, s: Session) -> bool:
        """The invoice's "expenses sync": an approved expense is billed on a sent invoice, then totals."""
        inv_id = self._pick(self.model.invoices, "sent", exclude=self.model.poison_invoices)
        exp_id = self._pick(self.model.expenses, "approved")
        if inv_id is None or exp_id is None:
            return False
        exp = s.get_one(Expense, exp_id)
        if exp.invoice_id is not None:
            return False
        exp.invoice_id, exp.invoiced = inv_id, True
        s.flush()
        _totals(s, s.get_one(Invoice, inv_id))
        return True

    def _mark_paid(self, s: Session) -> bool:
        """The status menu's "paid": amount_paid = total, no payments row."""
        inv_id = self._pick(self.model.invoices, "sent", "overdue", exclude=self.model.poison_invoices)
        if inv_id is None:
            return False
        inv = s.get_one(Invoice, inv_id)
        inv.status, inv.amount_paid, inv.payment_status = "paid", inv.total_amount, "fully_paid"
        inv.payment_date = dt.date(2026, 11, 25)
        self.model.invoices[inv_id] = "paid"
        return True

    def _overdue_job(self, s: Session) -> bool:
        """``check_overdue_invoices``: drafts *and* sent invoices past due become overdue (a few at a time
        here, as their due dates pass)."""
        ids = [i for i, st in self.model.invoices.items() if st in ("draft", "sent")]
        chosen = self.rng.sample(ids, min(len(ids), 3))
        for inv_id in chosen:
            s.get_one(Invoice, inv_id).status = "overdue"
            self.model.invoices[inv_id] = "overdue"
        return bool(chosen)

    def _send_draft(self, s: Session) -> bool:
        inv_id = self._pick(self.model.invoices, "draft")
        if inv_id is None:
            return False
        s.get_one(Invoice, inv_id).status = "sent"
        self.model.invoices[inv_id] = "sent"
        return True

    def _pay_invoice(self, s: Session) -> bool:
        inv_id = self._pick(self.model.invoices, "sent", exclude=self.model.poison_invoices)
        if inv_id is None:
            return False
        inv = s.get_one(Invoice, inv_id)
        inv.status = "paid"
        inv.amount_paid = inv.total_amount
        inv.payment_status = "fully_paid"
        pay = Payment(invoice_id=inv.id, amount=inv.total_amount, currency=CURRENCY, payment_date=dt.date(2026, 11, 20),
                      method="bank_transfer", status="completed", notes="rev 0")
        s.add(pay)
        s.flush()
        self.model.invoices[inv_id] = "paid"
        self.model.payments[pay.id] = "completed"
        return True

    def _cancel_invoice(self, s: Session) -> bool:
        inv_id = self._pick(self.model.invoices, "sent", "draft")
        if inv_id is None:
            return False
        s.get_one(Invoice, inv_id).status = "cancelled"
        self.model.invoices[inv_id] = "cancelled"
        return True

    def _new_expense(self, s: Session) -> None:
        status = "approved" if self.rng.random() < 0.7 else "pending"
        exp = Expense(user_id=self.model.user_id, title=f"Train “{self._seq}” to O'Hare",
                      category=self.rng.choice(CATEGORIES), amount=Decimal(self.rng.randint(500, 20000)) / 100,
                      tax_amount=Decimal("1.50"), currency_code=CURRENCY, expense_date=dt.date(2026, 11, 3),
                      status=status, vendor=self.rng.choice(["Rail Co", "Kaffee &amp; Kuchen"]),
                      payment_method=self.rng.choice(PAYMENT_METHODS), notes="rev 0")
        s.add(exp)
        s.flush()
        self.model.expenses[exp.id] = status

    def _update_expense(self, s: Session) -> bool:
        exp_id = self._pick(self.model.expenses, "pending", "approved")
        if exp_id is None:
            return False
        exp = s.get_one(Expense, exp_id)
        exp.amount = Decimal(self.rng.randint(500, 20000)) / 100
        self._seq += 1
        exp.notes = f"rev {self._seq}"
        return True

    def _approve_expense(self, s: Session) -> bool:
        exp_id = self._pick(self.model.expenses, "pending")
        if exp_id is None:
            return False
        s.get_one(Expense, exp_id).status = "approved"
        self.model.expenses[exp_id] = "approved"
        return True

    def _reject_expense(self, s: Session) -> bool:
        exp_id = self._pick(self.model.expenses, "pending", "approved")
        if exp_id is None:
            return False
        exp = s.get_one(Expense, exp_id)
        exp.status = "rejected"
        exp.rejection_reason = "no receipt"
        self.model.expenses[exp_id] = "rejected"
        return True

    def _delete_expense(self, s: Session) -> bool:
        exp_id = self._pick(self.model.expenses, "pending", "approved")
        if exp_id is None:
            return False
        s.delete(s.get_one(Expense, exp_id))
        del self.model.expenses[exp_id]
        return True

    def _update_payment(self, s: Session) -> bool:
        pay_id = self._pick(self.model.payments, "completed")
        if pay_id is None:
            return False
        self._seq += 1
        s.get_one(Payment, pay_id).notes = f"rev {self._seq}"
        return True

    def _refund_payment(self, s: Session) -> bool:
        pay_id = self._pick(self.model.payments, "completed")
        if pay_id is None:
            return False
        pay = s.get_one(Payment, pay_id)
        pay.status = "refunded"
        # As TimeTracker's payment edit does: amount_paid drops, and a paid invoice goes back to sent.
        inv = s.get_one(Invoice, pay.invoice_id)
        inv.amount_paid = max(Decimal("0"), (inv.amount_paid or Decimal("0")) - pay.amount)
        inv.payment_status = "partially_paid" if inv.amount_paid > 0 else "unpaid"
        if inv.status == "paid":
            inv.status = "sent"
            self.model.invoices[inv.id] = "sent"
        self.model.payments[pay_id] = "refunded"
        return True


def _totals(s: Session, inv: Invoice) -> None:
    """``Invoice.calculate_totals()``: items + extra goods + linked expenses (amount + tax), then 10% tax."""
    linked = s.scalars(select(Expense).where(Expense.invoice_id == inv.id)).all()
    inv.subtotal = sum((i.total_amount for i in inv.items), Decimal("0")) + \
        sum((g.total_amount for g in inv.extra_goods), Decimal("0")) + \
        sum((e.amount + (e.tax_amount or Decimal("0")) for e in linked), Decimal("0"))
    inv.tax_amount = (inv.subtotal * Decimal("0.10")).quantize(Decimal("0.01"))
    inv.total_amount = inv.subtotal + inv.tax_amount
