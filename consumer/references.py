"""Find the QBO ids a request refers to: customers, items, vendors, accounts.

Order for each: an operator override (``ttsync map set``), the configured mapping, what was resolved before
(cached in the state database), a QBO query by name (quotes escaped), and last, creating it when allowed.
A value that cannot be found and may not be created is a ``MissingMapping`` (dead-letter, fix, replay).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

from consumer.errors import DuplicateRequestId, MissingMapping, QboValidationFault
from consumer.mapping import MappingOptions, customer_request, qbo_display_name, request_id, vendor_request
from consumer.qbo_port import QboPort, query_pages
from consumer.qbo_queries import quote, select_in
from consumer.state_store import StateStore
from schemas.events import ClientState

log = structlog.get_logger("ttsync.resolve")

NAMES_PER_QUERY = 100  # DisplayNames in one IN list (the query goes in a POST body: no URL length limit)

OVERRIDE_KINDS = {"expense-account": "expense_account", "item": "item", "vendor": "vendor",
                  "paying-account": "paying_account", "customer": "customer"}

# What an expense line may be booked to, and what may pay for a purchase of each QBO PaymentType.
EXPENSE_ACCOUNT_TYPES = frozenset({"Expense", "Other Expense", "Cost of Goods Sold"})
PAYING_ACCOUNT_TYPES = {"Cash": frozenset({"Bank"}), "Check": frozenset({"Bank"}),
                        "CreditCard": frozenset({"Credit Card"})}

# TimeTracker's fixed lists (Expense.get_expense_categories(), the expense form's payment methods).
TIMETRACKER_CATEGORIES = ("travel", "meals", "accommodation", "supplies", "software", "equipment", "services",
                          "marketing", "training", "other")
TIMETRACKER_PAYMENT_METHODS = ("cash", "credit_card", "debit_card", "bank_transfer", "company_card", "paypal",
                               "other")
# Defaults for every category, named as in QBO's standard US chart of accounts (all Expense accounts).
DEFAULT_EXPENSE_ACCOUNTS = {
    "travel": "Travel", "meals": "Meals and Entertainment", "accommodation": "Travel",
    "supplies": "Office Supplies", "software": "Software", "equipment": "Office Expenses",
    "services": "Legal & Professional Fees", "marketing": "Advertising", "training": "Dues & Subscriptions",
    "other": "Uncategorized Expense",
}


@dataclass(frozen=True)
class Resolution:
    """What one mapping resolves to in QBO, for ``ttsync map check``."""

    kind: str
    key: str
    wanted: str | None
    qbo_id: str | None = None
    name: str | None = None
    account_type: str | None = None
    problem: str | None = None


@dataclass(frozen=True)
class ResolverConfig:
    default_item: str = "Services"
    bank_account: str = "Checking"
    credit_card_account: str = "Visa"
    deposit_account: str | None = None
    expense_accounts: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_EXPENSE_ACCOUNTS))
    paying_accounts: dict[str, str] = field(default_factory=dict)  # payment method -> account name or id
    auto_create_customers: bool = True
    auto_create_vendors: bool = True
    auto_create_items: bool = False
    auto_create_accounts: bool = False


class ReferenceResolver:
    def __init__(self, client: QboPort, store: StateStore, config: ResolverConfig, options: MappingOptions) -> None:
        self.client = client
        self.store = store
        self.config = config
        self.options = options
        # Customers read together by name for a backlog (``prefetch_customers``): lower-cased DisplayName -> the
        # customer, or None when QBO had none of that name.
        self._customers_named: dict[str, dict[str, Any] | None] = {}
        # The operator's overrides, read once per event (``new_event``): an event looked them up kind by kind, up
        # to five reads of the state database; a ``map set`` applies from the next event on.
        self._overrides: dict[tuple[str, str], str] | None = None
        self._resolved: dict[tuple[str, str], str] = {}  # (kind, key) -> QBO id, see ``_cached``

    # -- generic ---------------------------------------------------------------------------------------

    def _find(self, entity: str, field_name: str, value: str) -> dict[str, Any] | None:
        rows = self.client.query(f"SELECT * FROM {entity} WHERE {field_name} = {quote(value)}", entity)
        return rows[0] if rows else None

    def _create(self, entity: str, candidates: list[tuple[dict[str, Any], str]], name_field: str
                ) -> dict[str, Any] | None:
        """Create a name-list entity under the first of its candidate names QBO takes: (body, requestid) each. A
        name refused as taken (6240), or a requestid QBO says it saw (600: an earlier attempt of ours, whose answer
        was lost, created it, or was refused and QBO does not repeat why), is looked up by that name (QBO keeps
        names unique): found, it is the one. None when every name belongs to another kind of entity."""
        for body, requestid in candidates:
            try:
                return self.client.create(entity, body, requestid)
            except DuplicateRequestId:
                log.info("reference_create_seen", entity=entity, requestid=requestid)
            except QboValidationFault as fault:
                if fault.code != "6240":
                    raise
            found = self._find(entity, name_field, str(body[name_field]))
            if found is not None:  # created by a previous attempt of ours, or by a person
                return found
            # the name belongs to another list (a vendor's is a customer's too): the next candidate
        return None

    def _cached(self, kind: str, key: str) -> str | None:
        """A reference resolved before, by this process (kept in memory) or another (in the state database). Kept
        for the process's life, as in the database: nothing removes a resolved reference, and a changed mapping
        is another key (``_typed_account``)."""
        found = self._resolved.get((kind, key.lower()))
        if found is None:
            found = self.store.ref(kind, key.lower())
            if found:
                self._resolved[(kind, key.lower())] = found
        return found

    def _remember(self, kind: str, key: str, qbo_id: str, name: str | None) -> str:
        self.store.set_ref(kind, key.lower(), qbo_id, name)
        self._resolved[(kind, key.lower())] = qbo_id
        return qbo_id

    def new_event(self) -> None:
        """The next event reads the overrides afresh."""
        self._overrides = None

    def _current_overrides(self) -> dict[tuple[str, str], str]:
        if self._overrides is None:
            self._overrides = self.store.overrides()
        return self._overrides

    def _override(self, kind: str, key: str) -> str | None:
        return self._current_overrides().get((kind, key.lower()))

    def account_entity(self, name_or_id: str) -> dict[str, Any] | None:
        """An account by id (digits) or by name, as QBO has it (with its AccountType), or None."""
        if name_or_id.isdigit():
            try:
                return self.client.read("Account", name_or_id)
            except QboValidationFault as fault:
                if fault.code in ("610", "2030", "2500"):
                    return None
                raise
        return self._find("Account", "Name", name_or_id)

    def account(self, name_or_id: str) -> str | None:
        """An account's id by id (digits) or by name, whatever its type (deposit accounts)."""
        if name_or_id.isdigit():
            return name_or_id
        cached = self._cached("account", name_or_id)
        if cached:
            return cached
        found = self._find("Account", "Name", name_or_id)
        return self._remember("account", name_or_id, found["Id"], found["Name"]) if found else None

    def _typed_account(self, cache_kind: str, key: str, wanted: str, types: frozenset[str], what: str) -> str:
        """``wanted`` (name or id) if QBO has it with one of ``types``; remembered under (cache_kind, key) only
        once checked, so a mapping to an Income account can never slip through a cache."""
        key = f"{key}->{wanted.strip().lower()}"  # a changed mapping misses the cache
        cached = self._cached(cache_kind, key)
        if cached:
            return cached
        found, problem = self.account_problem(wanted, types)
        if problem is not None or found is None:
            code, text = problem or ("missing_account", "")
            raise MissingMapping(f"{what}: {text}. `ttsync map set` it to one that fits (`ttsync map check` lists "
                                 "every mapping)", code=code)
        return self._remember(cache_kind, key, str(found["Id"]), str(found.get("Name")))

    def account_problem(self, wanted: str, types: frozenset[str] | None
                        ) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
        """(the account QBO has for ``wanted``, why it cannot serve: (error code, text)) — one rule for the
        consumer, ``ttsync map check`` and ``ttsync map set``. Reads only."""
        found = self.account_entity(wanted)
        if found is None:
            return None, ("missing_account", f"QBO has no account {wanted!r}")
        if types is not None and found.get("AccountType") not in types:
            return found, ("wrong_account_type", f"account {found.get('Name')!r} (id {found['Id']}) is a "
                           f"{found.get('AccountType')} account; it must be {' or '.join(sorted(types))}")
        return found, None

    # -- accounts ----------------------------------------------------------------------------------------

    def expense_account_wanted(self, category: str) -> str | None:
        key = category.strip().lower()
        return self._override("expense_account", key) or self.config.expense_accounts.get(key) \
            or self.config.expense_accounts.get(category)

    def expense_account(self, category: str) -> str:
        """The account an expense line of this category is booked to: only ever an expense-type account."""
        key = category.strip().lower()
        wanted = self.expense_account_wanted(category)
        if wanted:
            return self._typed_account("expense_account", key, wanted, EXPENSE_ACCOUNT_TYPES,
                                       f"expense category {category!r}")
        for candidate in dict.fromkeys([category.strip(), category.strip().title()]):
            found = self._find("Account", "Name", candidate)
            if found is None:
                continue
            if found.get("AccountType") in EXPENSE_ACCOUNT_TYPES:
                return self._remember("expense_account", key, str(found["Id"]), str(found["Name"]))
            log.warning("account_by_name_wrong_type", category=category, account=found.get("Name"),
                        account_type=found.get("AccountType"), reason="not an expense account; not used")
        if self.config.auto_create_accounts:
            name = category.strip().title()
            created = self._create("Account", [({"Name": name, "AccountType": "Expense"},
                                                 request_id(f"account:{key}", "create", name))], "Name")
            if created is None:
                raise MissingMapping(f"QBO refused to create the expense account {name!r}", code="missing_account")
            log.info("account_created", name=name, id=created["Id"])
            return self._remember("account", name, created["Id"], name)
        raise MissingMapping(
            f"no QBO expense account for category {category!r}: map it (`ttsync map set expense-account "
            f"{key!r} <account>` or TTSYNC_EXPENSE_ACCOUNT_MAP) or allow TTSYNC_AUTO_CREATE_ACCOUNTS",
            code="missing_account")

    def paying_account_wanted(self, payment_type: str, method: str | None = None) -> str:
        key = (method or "").strip().lower()
        return (self._override("paying_account", key) if key else None) \
            or self.config.paying_accounts.get(key) \
            or self._override("paying_account", payment_type) \
            or (self.config.credit_card_account if payment_type == "CreditCard" else self.config.bank_account)

    def paying_account(self, payment_type: str, method: str | None = None) -> str:
        """The account a purchase is paid from: per TimeTracker payment method when mapped, else per QBO
        PaymentType; a Bank account for Cash/Check, a Credit Card account for CreditCard."""
        wanted = self.paying_account_wanted(payment_type, method)
        label = f"payment method {method!r} ({payment_type})" if method else f"payment type {payment_type}"
        return self._typed_account(f"paying_account:{payment_type}", (method or payment_type).strip().lower(),
                                   wanted, PAYING_ACCOUNT_TYPES[payment_type], label)

    def deposit_account(self) -> str | None:
        if not self.config.deposit_account:
            return None  # QBO puts payments into Undeposited Funds
        found = self.account(self.config.deposit_account)
        if found is None:
            raise MissingMapping(f"no QBO deposit account {self.config.deposit_account!r}", code="missing_account")
        return found

    # -- preflight ---------------------------------------------------------------------------------------

    def preflight(self, categories: list[str], methods: list[str]) -> list[Resolution]:
        """What every expense category and payment method (TimeTracker's fixed lists, those in its data, and
        every configured mapping) resolves to in QBO, with a problem where one is missing or of the wrong type.
        Reads only: nothing is created, nothing cached."""
        self.new_event()
        overridden = [key for kind, key in self._current_overrides() if kind == "expense_account"]
        cats = dict.fromkeys([*TIMETRACKER_CATEGORIES, *(c.strip().lower() for c in categories if c),
                              *self.config.expense_accounts, *overridden])
        out = [self._check(f"expense-account {c}", c, self.expense_account_wanted(c) or c.strip().title(),
                           EXPENSE_ACCOUNT_TYPES) for c in cats]
        meths = dict.fromkeys([*TIMETRACKER_PAYMENT_METHODS, *(m.strip().lower() for m in methods if m),
                               *self.config.paying_accounts])
        for m in meths:
            ptype = self.options.payment_types.get(m.replace("-", "_").replace(" ", "_"),
                                                   self.options.default_payment_type)
            out.append(self._check(f"paying-account {m} ({ptype})", m, self.paying_account_wanted(ptype, m),
                                   PAYING_ACCOUNT_TYPES[ptype]))
        if self.config.deposit_account:
            out.append(self._check("deposit-account", "payments", self.config.deposit_account, None))
        item = self._override("item", "default") or self.config.default_item
        found = self._find("Item", "Name", item) if not item.isdigit() else {"Id": item, "Name": item}
        out.append(Resolution("item", "default", item, str(found["Id"]) if found else None,
                              str(found.get("Name")) if found else None,
                              None, None if found or self.config.auto_create_items else "QBO has no such item"))
        return out

    def _check(self, kind: str, key: str, wanted: str, types: frozenset[str] | None) -> Resolution:
        found, problem = self.account_problem(wanted, types)
        if found is None:
            return Resolution(kind, key, wanted, problem=problem[1] if problem else None)
        return Resolution(kind, key, wanted, str(found["Id"]), found.get("Name"), found.get("AccountType"),
                          problem[1] if problem else None)

    # -- items and vendors -------------------------------------------------------------------------------

    def item(self) -> str:
        name = self._override("item", "default") or self.config.default_item
        if name.isdigit():
            return name
        cached = self._cached("item", name)
        if cached:
            return cached
        found = self._find("Item", "Name", name)
        if found:
            return self._remember("item", name, found["Id"], name)
        if not self.config.auto_create_items:
            raise MissingMapping(f"no QBO item {name!r} for invoice lines: create it, set TTSYNC_QBO_DEFAULT_ITEM "
                                 "or allow TTSYNC_AUTO_CREATE_ITEMS", code="missing_item")
        income = self.client.query("SELECT * FROM Account WHERE AccountType = 'Income' MAXRESULTS 1", "Account")
        if not income:
            raise MissingMapping("QBO has no income account to create the invoice item with", code="missing_account")
        body = {"Name": name, "Type": "Service", "IncomeAccountRef": {"value": income[0]["Id"]}}
        created = self._create("Item", [(body, request_id(f"item:{name}", "create", name))], "Name")
        if created is None:
            raise MissingMapping(f"QBO refused to create the item {name!r}", code="missing_item")
        return self._remember("item", name, created["Id"], name)

    def vendor(self, name: str | None) -> str | None:
        if not name or not name.strip():
            return None
        name = name.strip()
        override = self._override("vendor", name)
        if override and override.isdigit():
            return override
        name = override or name
        cached = self._cached("vendor", name)
        if cached:
            return cached
        found = self._find("Vendor", "DisplayName", name)
        if found:
            return self._remember("vendor", name, found["Id"], name)
        if not self.config.auto_create_vendors:
            raise MissingMapping(f"no QBO vendor {name!r}", code="missing_vendor")
        candidates = [(vendor_request(display), request_id(f"vendor:{display}", "create", display))
                      for display in (name, f"{name} (vendor)")]
        created = self._create("Vendor", candidates, "DisplayName")
        if created is not None:
            return self._remember("vendor", name, created["Id"], str(created["DisplayName"]))
        raise MissingMapping(f"cannot create a QBO vendor for {name!r}", code="missing_vendor")

    # -- customers ---------------------------------------------------------------------------------------

    def customer(self, client_id: int, client: ClientState | None, name: str, email: str | None,
                 currency: str | None = None) -> str:
        """The QBO customer of a TimeTracker client, created from its state when it is not in QBO yet."""
        override = self._override("customer", str(client_id))
        if override:
            return override
        mapped = self.store.mapped("client", str(client_id))
        if mapped is not None and mapped.qbo_id:
            return mapped.qbo_id
        state = client or ClientState(id=client_id, name=name, email=email)
        found = self.customer_named(state.name)
        if found is None and self.config.auto_create_customers:
            bodies = [customer_request(state, self.options, display_name=display,
                                       currency=currency or self.options.default_currency)
                      for display in (state.name, f"{state.name} (customer)")]
            found = self._create("Customer", [(b, request_id(f"client:{client_id}", "create", b)) for b in bodies],
                                 "DisplayName")
        if found is None:
            raise MissingMapping(f"no QBO customer for client {client_id} ({state.name!r})", code="missing_customer")
        self.store.adopt("client", str(client_id), found)
        return str(found["Id"])

    def customer_named(self, name: str, *, query: bool = True) -> dict[str, Any] | None:
        """The QBO customer of this DisplayName: as read by ``prefetch_customers`` when it was, else by a query
        (none when not ``query``)."""
        display = qbo_display_name(name)
        if display.lower() in self._customers_named:
            return self._customers_named[display.lower()]
        return self._find("Customer", "DisplayName", display) if display and query else None

    def prefetch_customers(self, names: Iterable[str]) -> None:
        """Read the customers of these names together, ``NAMES_PER_QUERY`` to a query, for ``customer_named``.

        A backlog's clients and the invoices of clients not mapped yet each looked their customer up alone, and
        a client taken over from the old connector (its name taken in QBO) was then adopted by a write of its own:
        a quarter of a backfill's request budget. What is read here may go stale before ``forget_customers``
        (someone makes or renames a customer meanwhile): QBO's unique names still guard it, since a create
        refused as a duplicate name (6240) is looked up again by a query."""
        wanted = {d.lower(): d for n in names if (d := qbo_display_name(n)) and d.lower() not in self._customers_named}
        todo = sorted(wanted.values())
        for start in range(0, len(todo), NAMES_PER_QUERY):
            chunk = todo[start:start + NAMES_PER_QUERY]
            for rows in query_pages(self.client, select_in("Customer", "DisplayName", chunk), "Customer"):
                for row in rows:
                    self._customers_named[str(row.get("DisplayName", "")).lower()] = row
            for display in chunk:
                self._customers_named.setdefault(display.lower(), None)

    def forget_customers(self) -> None:
        """Drop what ``prefetch_customers`` read (the end of a backlog's poll)."""
        self._customers_named.clear()
