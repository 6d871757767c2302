"""Find the QBO ids a request refers to: customers, items, vendors, accounts.

Order for each: an operator override (``ttsync map set``), the configured mapping, what was resolved before
(cached in the state database), a QBO query by name (quotes escaped), and last, creating it when allowed.
A value that cannot be found and may not be created is a ``MissingMapping`` (dead-letter, fix, replay).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog

from consumer.errors import MissingMapping, QboValidationFault
from consumer.mapping import MappingOptions, customer_request, request_id, vendor_request
from consumer.qbo_client import QboClient, quote
from consumer.state_store import StateStore
from schemas.events import ClientState

log = structlog.get_logger("ttsync.resolve")

OVERRIDE_KINDS = {"expense-account": "expense_account", "item": "item", "vendor": "vendor",
                  "paying-account": "paying_account", "customer": "customer"}


@dataclass(frozen=True)
class ResolverConfig:
    default_item: str = "Services"
    bank_account: str = "Checking"
    credit_card_account: str = "Visa"
    deposit_account: str | None = None
    expense_accounts: dict[str, str] = field(default_factory=dict)  # category -> account name or id
    auto_create_customers: bool = True
    auto_create_vendors: bool = True
    auto_create_items: bool = False
    auto_create_accounts: bool = False


class ReferenceResolver:
    def __init__(self, client: QboClient, store: StateStore, config: ResolverConfig, options: MappingOptions):
        self.client = client
        self.store = store
        self.config = config
        self.options = options

    # -- generic ---------------------------------------------------------------------------------------

    def _find(self, entity: str, field_name: str, value: str) -> dict[str, Any] | None:
        rows = self.client.query(f"SELECT * FROM {entity} WHERE {field_name} = {quote(value)}", entity)
        return rows[0] if rows else None

    def _cached(self, kind: str, key: str) -> str | None:
        return self.store.ref(kind, key.lower())

    def _remember(self, kind: str, key: str, qbo_id: str, name: str | None) -> str:
        self.store.set_ref(kind, key.lower(), qbo_id, name)
        return qbo_id

    def _override(self, kind: str, key: str) -> str | None:
        rows = [r for r in self.store.refs(f"override:{kind}") if r["key"] == key.lower()]
        return rows[0]["name"] if rows else None

    def account(self, name_or_id: str) -> str | None:
        """An account by id (digits) or by name."""
        if name_or_id.isdigit():
            return name_or_id
        cached = self._cached("account", name_or_id)
        if cached:
            return cached
        found = self._find("Account", "Name", name_or_id)
        return self._remember("account", name_or_id, found["Id"], found["Name"]) if found else None

    # -- accounts ----------------------------------------------------------------------------------------

    def expense_account(self, category: str) -> str:
        key = category.strip().lower()
        wanted = self._override("expense_account", key) or self.config.expense_accounts.get(key) \
            or self.config.expense_accounts.get(category)
        if wanted:
            found = self.account(wanted)
            if found is None:
                raise MissingMapping(f"expense category {category!r} is mapped to account {wanted!r}, which QBO "
                                     "does not have", code="missing_account")
            return found
        for candidate in dict.fromkeys([category, category.strip().title()]):
            found = self.account(candidate)
            if found:
                return found
        if self.config.auto_create_accounts:
            name = category.strip().title()
            created = self.client.create("Account", {"Name": name, "AccountType": "Expense"},
                                         request_id(f"account:{key}", "create", name))
            log.info("account_created", name=name, id=created["Id"])
            return self._remember("account", name, created["Id"], name)
        raise MissingMapping(
            f"no QBO expense account for category {category!r}: map it (`ttsync map set expense-account "
            f"{key!r} <account>` or TTSYNC_EXPENSE_ACCOUNT_MAP) or allow TTSYNC_AUTO_CREATE_ACCOUNTS",
            code="missing_account")

    def paying_account(self, payment_type: str) -> str:
        name = self._override("paying_account", payment_type) or (
            self.config.credit_card_account if payment_type == "CreditCard" else self.config.bank_account)
        found = self.account(name)
        if found is None:
            raise MissingMapping(f"no QBO account {name!r} to pay {payment_type} expenses from",
                                 code="missing_account")
        return found

    def deposit_account(self) -> str | None:
        if not self.config.deposit_account:
            return None  # QBO puts payments into Undeposited Funds
        found = self.account(self.config.deposit_account)
        if found is None:
            raise MissingMapping(f"no QBO deposit account {self.config.deposit_account!r}", code="missing_account")
        return found

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
        created = self.client.create("Item", {"Name": name, "Type": "Service",
                                              "IncomeAccountRef": {"value": income[0]["Id"]}},
                                     request_id(f"item:{name}", "create", name))
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
        for display in (name, f"{name} (vendor)"):
            try:
                created = self.client.create("Vendor", vendor_request(display),
                                             request_id(f"vendor:{display}", "create", display))
                return self._remember("vendor", name, created["Id"], display)
            except QboValidationFault as fault:
                if fault.code != "6240":
                    raise
                again = self._find("Vendor", "DisplayName", display)
                if again:  # created by a previous attempt of ours, or by a person
                    return self._remember("vendor", name, again["Id"], display)
                # the name belongs to a customer: QBO names are unique across both; try the suffixed one
        raise MissingMapping(f"cannot create a QBO vendor for {name!r}", code="missing_vendor")

    # -- customers ---------------------------------------------------------------------------------------

    def customer(self, client_id: int, client: ClientState | None, name: str, email: str | None) -> str:
        """The QBO customer of a TimeTracker client, created from its state when it is not in QBO yet."""
        override = self._override("customer", str(client_id))
        if override:
            return override
        mapped = self.store.mapped("client", str(client_id))
        if mapped is not None and mapped.qbo_id:
            return mapped.qbo_id
        state = client or ClientState(id=client_id, name=name, email=email)
        found = self._find("Customer", "DisplayName", state.name)
        if found is None and self.config.auto_create_customers:
            for display in (state.name, f"{state.name} (customer)"):
                body = customer_request(state, self.options, display_name=display)
                try:
                    found = self.client.create("Customer", body, request_id(f"client:{client_id}", "create", body))
                    break
                except QboValidationFault as fault:
                    if fault.code != "6240":
                        raise
                    found = self._find("Customer", "DisplayName", display)
                    if found:
                        break
        if found is None:
            raise MissingMapping(f"no QBO customer for client {client_id} ({state.name!r})", code="missing_customer")
        self.store.adopt("client", str(client_id), found)
        return str(found["Id"])
