"""One QuickBooks company (realm): its entities, their validation, SyncTokens, voids, deletes and CDC.

Values are kept as QBO returns them: Ids and SyncTokens are strings, amounts are JSON numbers, dates are
``YYYY-MM-DD``. Behaviour follows ../shared/qbo-notes.md; where Intuit documents nothing we pick the
stricter answer, so a client that passes here is ready for the real thing.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from ttsync.qbo_sandbox import faults
from ttsync.qbo_sandbox.faults import QboFault
from ttsync.qbo_sandbox.query import execute, parse

RESOURCES = {
    "invoice": "Invoice", "purchase": "Purchase", "payment": "Payment", "customer": "Customer",
    "vendor": "Vendor", "item": "Item", "account": "Account",
}
TRANSACTIONS = ("Invoice", "Purchase", "Payment")
NAME_LISTS = ("Customer", "Vendor", "Item", "Account")
CENT = Decimal("0.01")

SEED_ACCOUNTS = [
    ("Checking", "Bank", "Checking"),
    ("Savings", "Bank", "Savings"),
    ("Visa", "Credit Card", "CreditCard"),
    ("Accounts Receivable (A/R)", "Accounts Receivable", "AccountsReceivable"),
    ("Undeposited Funds", "Other Current Asset", "UndepositedFunds"),
    ("Services", "Income", "ServiceFeeIncome"),
    ("Sales of Product Income", "Income", "SalesOfProductIncome"),
    ("Travel", "Expense", "Travel"),
    ("Meals and Entertainment", "Expense", "EntertainmentMeals"),
    ("Office Supplies", "Expense", "OfficeGeneralAdministrativeExpenses"),
    ("Software", "Expense", "OtherMiscellaneousServiceCost"),
    ("Uncategorized Expense", "Expense", "OtherMiscellaneousServiceCost"),
    ("Office Expenses", "Expense", "OfficeGeneralAdministrativeExpenses"),
    ("Legal & Professional Fees", "Expense", "LegalProfessionalFees"),
    ("Advertising", "Expense", "AdvertisingPromotional"),
    ("Dues & Subscriptions", "Expense", "DuesSubscriptions"),
]
CLASSIFICATION = {
    "Bank": "Asset", "Credit Card": "Liability", "Accounts Receivable": "Asset", "Other Current Asset": "Asset",
    "Income": "Revenue", "Expense": "Expense", "Other Expense": "Expense", "Cost of Goods Sold": "Expense",
    "Equity": "Equity", "Accounts Payable": "Liability", "Other Current Liability": "Liability",
    "Fixed Asset": "Asset", "Other Asset": "Asset", "Long Term Liability": "Liability", "Other Income": "Revenue",
}


def money(value: Any, field: str) -> Decimal:
    try:
        return Decimal(str(value)).quantize(CENT, rounding=ROUND_HALF_UP)
    except (InvalidOperation, ValueError) as exc:
        raise faults.validation(2010, "Request has invalid or unsupported property",
                                f"Property Name:{field} has an invalid value {value!r}", field) from exc


def num(d: Decimal) -> float | int:
    """Amounts leave the sandbox as JSON numbers, as QBO sends them."""
    return int(d) if d == d.to_integral_value() else float(d)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone(dt.timedelta(hours=-8))).isoformat(timespec="seconds")


def _ref(obj: dict[str, Any] | None, name: str) -> str | None:
    ref = (obj or {}).get(name)
    if isinstance(ref, dict) and ref.get("value") not in (None, ""):
        return str(ref["value"])
    return None


class Company:
    def __init__(self, realm_id: str, *, warn_duplicate_doc_number: bool = True, home_currency: str = "USD",
                 multicurrency: bool = True) -> None:
        self.realm_id = realm_id
        self.home_currency = home_currency
        self.multicurrency = multicurrency
        self.warn_duplicate_doc_number = warn_duplicate_doc_number
        self.entities: dict[str, dict[str, dict[str, Any]]] = {e: {} for e in RESOURCES.values()}
        self.deleted: dict[str, dict[str, dict[str, Any]]] = {e: {} for e in RESOURCES.values()}
        self._next_id = 1
        self.writes = 0
        self.changes: list[tuple[str, str, str, str]] = []  # (entity, id, operation, lastUpdated), see take_changes
        # Uniqueness indexes, so that checks stay O(1) as a company grows to many thousand records.
        self._names: dict[tuple[str, str], tuple[str, str]] = {}  # (scope, name) -> (entity, id)
        self._docs: dict[tuple[str, str], set[str]] = {}  # (entity, DocNumber) -> ids
        self._seed()
        self.changes.clear()  # the chart of accounts a new company comes with is no change to announce

    # -- helpers ------------------------------------------------------------------------------------

    def take_changes(self) -> list[tuple[str, str, str, str]]:
        """The entity changes since the last call, oldest first: (entity, id, operation, lastUpdated). What
        webhook deliveries announce (SandboxState's dispatcher)."""
        changes, self.changes = self.changes, []
        return changes

    def _new_id(self) -> str:
        ident = str(self._next_id)
        self._next_id += 1
        return ident

    def _seed(self) -> None:
        for name, acct_type, sub in SEED_ACCOUNTS:
            self._store("Account", {"Name": name, "AccountType": acct_type, "AccountSubType": sub,
                                    "Classification": CLASSIFICATION[acct_type], "Active": True,
                                    "CurrentBalance": 0, "FullyQualifiedName": name})
        income = self.find("Account", "Name", "Services")
        assert income is not None
        for name in ("Services", "Hours"):
            self._store("Item", {"Name": name, "Type": "Service", "Active": True, "FullyQualifiedName": name,
                                 "IncomeAccountRef": {"value": income["Id"], "name": "Services"}})
        self.writes = 0

    def _store(self, entity: str, obj: dict[str, Any]) -> dict[str, Any]:
        stamp = now_iso()
        obj["Id"] = self._new_id()
        obj["SyncToken"] = "0"
        obj["domain"] = "QBO"
        obj["sparse"] = False
        obj["MetaData"] = {"CreateTime": stamp, "LastUpdatedTime": stamp}
        self.entities[entity][obj["Id"]] = obj
        self._index(entity, None, obj)
        self.writes += 1
        self.changes.append((entity, obj["Id"], "Create", stamp))
        return obj

    def _bump(self, entity: str, obj: dict[str, Any], before: dict[str, Any] | None = None,
              operation: str = "Update") -> dict[str, Any]:
        obj["SyncToken"] = str(int(obj["SyncToken"]) + 1)
        obj["MetaData"]["LastUpdatedTime"] = now_iso()
        self.entities[entity][obj["Id"]] = obj
        self._index(entity, before, obj)
        self.writes += 1
        self.changes.append((entity, obj["Id"], operation, obj["MetaData"]["LastUpdatedTime"]))
        return obj

    @staticmethod
    def _name_key(entity: str, obj: dict[str, Any] | None) -> tuple[str, str] | None:
        if obj is None:
            return None
        if entity in ("Customer", "Vendor"):
            return ("party", str(obj["DisplayName"])) if obj.get("DisplayName") else None
        if entity in ("Item", "Account"):
            return (entity, str(obj["Name"])) if obj.get("Name") else None
        return None

    def _index(self, entity: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
        old, new = self._name_key(entity, before), self._name_key(entity, after)
        if old is not None and old != new:
            self._names.pop(old, None)
        if new is not None and after is not None:
            self._names[new] = (entity, after["Id"])
        if before is not None and before.get("DocNumber") is not None:
            self._docs.get((entity, str(before["DocNumber"])), set()).discard(before["Id"])
        if after is not None and after.get("DocNumber") is not None:
            self._docs.setdefault((entity, str(after["DocNumber"])), set()).add(after["Id"])

    def find(self, entity: str, field: str, value: str) -> dict[str, Any] | None:
        return next((o for o in self.entities[entity].values() if o.get(field) == value), None)

    def get(self, entity: str, ident: str) -> dict[str, Any]:
        obj = self.entities[entity].get(str(ident))
        if obj is None:
            raise faults.object_not_found(entity, str(ident))
        return obj

    def _require_ref(self, obj: dict[str, Any], field: str, entity: str | tuple[str, ...],
                     *, required: bool = True) -> dict[str, Any] | None:
        ident = _ref(obj, field)
        if ident is None:
            if required:
                raise faults.required(field)
            return None
        entities = (entity,) if isinstance(entity, str) else entity
        for e in entities:
            found = self.entities[e].get(ident)
            if found is not None:
                if found.get("Active") is False:
                    raise faults.object_not_found(e, ident)
                return found
        raise faults.invalid_reference(field, ident)

    # -- reads ---------------------------------------------------------------------------------------

    def read(self, entity: str, ident: str) -> dict[str, Any]:
        return copy.deepcopy(self.get(entity, ident))

    def query(self, text: str) -> dict[str, Any]:
        q = parse(text)
        if q.entity not in self.entities:
            raise QboFault(4001, "Invalid query", f"QueryValidationError: Entity {q.entity} is not supported",
                           fault_type="QueryValidationError")
        return copy.deepcopy(execute(q, list(self.entities[q.entity].values())))

    def cdc(self, entities: list[str], changed_since: dt.datetime) -> list[dict[str, Any]]:
        out = []
        for entity in entities:
            if entity not in self.entities:
                raise faults.validation(2010, "Request has invalid or unsupported property",
                                        f"Entity {entity} is not supported by CDC")
            changed = [copy.deepcopy(o) for o in self.entities[entity].values()
                       if dt.datetime.fromisoformat(o["MetaData"]["LastUpdatedTime"]) >= changed_since]
            changed += [copy.deepcopy(o) for o in self.deleted[entity].values()
                        if dt.datetime.fromisoformat(o["MetaData"]["LastUpdatedTime"]) >= changed_since]
            out.append({entity: changed[:1000], "startPosition": 1, "maxResults": len(changed[:1000])})
        return out

    # -- writes --------------------------------------------------------------------------------------

    def save(self, entity: str, body: dict[str, Any], *, allow_duplicate_doc_number: bool = False) -> dict[str, Any]:
        """POST /{resource}: a create without Id, an update (full, or sparse with ``"sparse": true``) with it."""
        if not isinstance(body, dict):
            raise faults.validation(2010, "Request has invalid or unsupported property", "body must be an object")
        body = copy.deepcopy(body)
        if body.get("Id") not in (None, ""):
            return self._update(entity, body, allow_duplicate_doc_number)
        obj = self._validate(entity, body, None, allow_duplicate_doc_number)
        stored = self._store(entity, obj)
        self._after_write(entity, None, stored)
        return copy.deepcopy(stored)

    def _update(self, entity: str, body: dict[str, Any], allow_dup: bool) -> dict[str, Any]:
        current = self.get(entity, str(body["Id"]))
        if "SyncToken" not in body:
            raise faults.required("SyncToken")
        if str(body["SyncToken"]) != current["SyncToken"]:
            raise faults.stale_object(entity)
        keep = {k: current[k] for k in ("Id", "SyncToken", "MetaData", "domain")}
        # A full update clears what it omits; a sparse one changes only what it carries.
        merged = {**copy.deepcopy(current), **body} if body.get("sparse") is True else dict(body)
        merged.update(keep)
        if entity == "Invoice":
            merged["Line"] = [ln for ln in merged.get("Line", []) if ln.get("DetailType") != "SubTotalLineDetail"]
        obj = self._validate(entity, merged, current, allow_dup)
        obj.update(keep)
        obj["sparse"] = False
        before = copy.deepcopy(current)
        self._after_write(entity, before, obj)
        return copy.deepcopy(self._bump(entity, obj, before))

    def delete(self, entity: str, body: dict[str, Any]) -> dict[str, Any]:
        if entity not in TRANSACTIONS:
            raise QboFault(500, "Unsupported Operation",
                           f"Operation Delete is not supported for {entity}: make it inactive instead")
        current = self.get(entity, str(body.get("Id")))
        if str(body.get("SyncToken")) != current["SyncToken"]:
            raise faults.stale_object(entity)
        if entity == "Invoice" and self._payments_for(current["Id"]):
            raise faults.business("This invoice has payments applied; delete or unapply them first")
        self._after_write(entity, copy.deepcopy(current), None)
        self._index(entity, current, None)
        del self.entities[entity][current["Id"]]
        tomb = {"Id": current["Id"], "status": "Deleted", "domain": "QBO",
                "MetaData": {"LastUpdatedTime": now_iso()}}
        self.deleted[entity][current["Id"]] = tomb
        self.writes += 1
        self.changes.append((entity, current["Id"], "Delete", tomb["MetaData"]["LastUpdatedTime"]))
        return {"Id": current["Id"], "status": "Deleted", "domain": "QBO"}

    def void(self, entity: str, body: dict[str, Any]) -> dict[str, Any]:
        current = self.get(entity, str(body.get("Id")))
        if str(body.get("SyncToken")) != current["SyncToken"]:
            raise faults.stale_object(entity)
        if entity == "Invoice":
            if self._payments_for(current["Id"]):
                raise faults.business("You can't void an invoice that has payments applied")
            for line in current.get("Line", []):
                line["Amount"] = 0
                detail = line.get("SalesItemLineDetail")
                if isinstance(detail, dict):
                    detail.pop("Qty", None)
                    detail["UnitPrice"] = 0
            current["TotalAmt"] = 0
            current["Balance"] = 0
            current.setdefault("TxnTaxDetail", {})["TotalTax"] = 0
        elif entity == "Payment":
            self._after_write("Payment", copy.deepcopy(current), None)
            current["TotalAmt"] = 0
            current["UnappliedAmt"] = 0
            for line in current.get("Line", []):
                line["Amount"] = 0
        else:
            raise QboFault(500, "Unsupported Operation", f"Operation Void is not supported for {entity}")
        note = current.get("PrivateNote") or ""
        current["PrivateNote"] = f"Voided{(' - ' + note) if note and not note.startswith('Voided') else ''}"
        current["Voided"] = True  # the sandbox's marker; QBO shows zero amounts and a 'Voided' memo
        return copy.deepcopy(self._bump(entity, current, operation="Void"))

    # -- validation ----------------------------------------------------------------------------------

    def _validate(self, entity: str, obj: dict[str, Any], current: dict[str, Any] | None,
                  allow_dup: bool) -> dict[str, Any]:
        validator: Callable[[dict[str, Any], dict[str, Any] | None, bool], dict[str, Any]] = getattr(
            self, f"_validate_{entity.lower()}")
        return validator(obj, current, allow_dup)

    def _check_doc_number(self, entity: str, obj: dict[str, Any], current: dict[str, Any] | None,
                          allow_dup: bool, *, reject_duplicates: bool) -> None:
        doc = obj.get("DocNumber")
        if doc is None:
            return
        doc = str(doc)
        if len(doc) > 21:
            raise faults.string_too_long("DocNumber", 21)
        if reject_duplicates and not allow_dup:
            holders = self._docs.get((entity, doc), set()) - ({current["Id"]} if current else set())
            if holders:
                raise faults.duplicate_doc_number(doc)

    def _check_text(self, obj: dict[str, Any], field: str, maximum: int) -> None:
        value = obj.get(field)
        if value is not None and len(str(value)) > maximum:
            raise faults.string_too_long(field, maximum)

    def _check_date(self, obj: dict[str, Any], field: str) -> None:
        value = obj.get(field)
        if value is None:
            return
        try:
            dt.date.fromisoformat(str(value))
        except ValueError as exc:
            raise faults.validation(2060, "Invalid Date", f"Invalid date {value!r} for {field}", field) from exc

    def _name_list(self, entity: str, obj: dict[str, Any], current: dict[str, Any] | None, name_field: str) -> None:
        """Names are unique: DisplayName across customers and vendors, Name among items, among accounts."""
        name = obj.get(name_field)
        if not name or not str(name).strip():
            raise faults.required(name_field)
        if len(str(name)) > 500:
            raise faults.string_too_long(name_field, 500)
        key = self._name_key(entity, {name_field: name, "DisplayName": name, "Name": name})
        owner = self._names.get(key) if key else None
        if owner is not None and (current is None or owner != (entity, current["Id"])):
            raise faults.duplicate_name(str(name))
        obj.setdefault("Active", True)
        if not isinstance(obj["Active"], bool):
            raise faults.validation(2010, "Request has invalid or unsupported property", "Active must be a boolean")

    def _validate_customer(self, obj: dict[str, Any], current: dict[str, Any] | None, _dup: bool) -> dict[str, Any]:
        if not obj.get("DisplayName"):
            parts = [obj.get("GivenName"), obj.get("FamilyName")]
            derived = obj.get("CompanyName") or " ".join(p for p in parts if p)
            if derived:
                obj["DisplayName"] = derived
        self._name_list("Customer", obj, current, "DisplayName")
        for f in ("CompanyName", "GivenName", "FamilyName"):
            self._check_text(obj, f, 100)
        obj["FullyQualifiedName"] = obj["DisplayName"]
        obj.setdefault("Balance", 0)
        # QBO: a customer's currency is set when it is created (home currency by default) and fixed after.
        fixed = _ref(current, "CurrencyRef") if current else None
        wanted = _ref(obj, "CurrencyRef") or fixed or self.home_currency
        if fixed is not None and wanted != fixed:
            raise faults.business(f"You can't change the currency of a customer ({fixed} to {wanted})")
        self._check_currency(wanted)
        obj["CurrencyRef"] = {"value": wanted}
        return obj

    def _check_currency(self, code: str) -> None:
        if not self.multicurrency and code != self.home_currency:
            raise faults.business(f"Multicurrency is off: only the home currency {self.home_currency} can be used, "
                                  f"not {code}")

    def _txn_currency(self, obj: dict[str, Any], customer: dict[str, Any]) -> None:
        """A sales transaction is in its customer's currency (QBO refuses any other)."""
        theirs = _ref(customer, "CurrencyRef") or self.home_currency
        wanted = _ref(obj, "CurrencyRef") or theirs
        if wanted != theirs:
            raise faults.business(f"The transaction currency {wanted} must be the customer's currency {theirs}")
        obj["CurrencyRef"] = {"value": wanted}

    def _validate_vendor(self, obj: dict[str, Any], current: dict[str, Any] | None, _dup: bool) -> dict[str, Any]:
        if not obj.get("DisplayName") and obj.get("CompanyName"):
            obj["DisplayName"] = obj["CompanyName"]
        self._name_list("Vendor", obj, current, "DisplayName")
        obj.setdefault("Balance", 0)
        return obj

    def _validate_item(self, obj: dict[str, Any], current: dict[str, Any] | None, _dup: bool) -> dict[str, Any]:
        self._name_list("Item", obj, current, "Name")
        obj.setdefault("Type", "Service")
        if obj["Type"] not in ("Service", "NonInventory", "Inventory", "Group", "Category"):
            raise faults.invalid_enum("Type", obj["Type"])
        if obj["Type"] in ("Service", "NonInventory", "Inventory"):
            self._require_ref(obj, "IncomeAccountRef", "Account")
        obj["FullyQualifiedName"] = obj["Name"]
        return obj

    def _validate_account(self, obj: dict[str, Any], current: dict[str, Any] | None, _dup: bool) -> dict[str, Any]:
        self._name_list("Account", obj, current, "Name")
        if not obj.get("AccountType"):
            raise faults.required("AccountType")
        if obj["AccountType"] not in CLASSIFICATION:
            raise faults.invalid_enum("AccountType", obj["AccountType"])
        obj["Classification"] = CLASSIFICATION[obj["AccountType"]]
        obj.setdefault("CurrentBalance", 0)
        obj["FullyQualifiedName"] = obj["Name"]
        return obj

    def _validate_invoice(self, obj: dict[str, Any], current: dict[str, Any] | None,
                          allow_dup: bool) -> dict[str, Any]:
        customer = self._require_ref(obj, "CustomerRef", "Customer")
        assert customer is not None
        self._txn_currency(obj, customer)
        lines = obj.get("Line")
        if not isinstance(lines, list) or not lines:
            raise faults.required("Line")
        self._check_doc_number("Invoice", obj, current, allow_dup, reject_duplicates=self.warn_duplicate_doc_number)
        self._check_date(obj, "TxnDate")
        self._check_date(obj, "DueDate")
        self._check_text(obj, "PrivateNote", 4000)
        subtotal = Decimal("0")
        out_lines = []
        for n, line in enumerate(lines, start=1):
            if not isinstance(line, dict):
                raise faults.required("Line.DetailType")
            detail_type = line.get("DetailType")
            if not detail_type:
                raise faults.required("Line.DetailType")
            if "Amount" not in line:
                raise faults.required("Line.Amount")
            amount = money(line["Amount"], "Line.Amount")
            if detail_type == "SalesItemLineDetail":
                detail = line.get("SalesItemLineDetail")
                if not isinstance(detail, dict):
                    raise faults.required("SalesItemLineDetail")
                self._require_ref(detail, "ItemRef", "Item", required=False)
                if "Qty" in detail and "UnitPrice" in detail:
                    expected = (money(detail["Qty"], "Qty") * Decimal(str(detail["UnitPrice"]))).quantize(
                        CENT, rounding=ROUND_HALF_UP)
                    if expected != amount:
                        raise faults.validation(6070, "Amount is not equal to UnitPrice * Qty",
                                                f"Amount {amount} != UnitPrice * Qty ({expected})", "Line.Amount")
            elif detail_type not in ("DescriptionOnly", "DiscountLineDetail", "GroupLineDetail"):
                raise faults.invalid_enum("Line.DetailType", detail_type)
            self._check_text(line, "Description", 4000)
            subtotal += amount if detail_type != "DiscountLineDetail" else -amount
            out_lines.append({**line, "Id": str(n), "LineNum": n, "Amount": num(amount)})
        out_lines.append({"Amount": num(subtotal), "DetailType": "SubTotalLineDetail", "SubTotalLineDetail": {}})
        obj["Line"] = out_lines
        tax = money((obj.get("TxnTaxDetail") or {}).get("TotalTax", 0), "TxnTaxDetail.TotalTax")
        total = subtotal + tax
        paid = sum((Decimal(str(p["amount"])) for p in self._payments_for(current["Id"])), Decimal("0")) \
            if current else Decimal("0")
        if paid > total:
            raise faults.business(f"the invoice total {total} would be below the {paid} already paid")
        obj["TotalAmt"] = num(total)
        obj["Balance"] = num(total - paid)
        obj.setdefault("TxnDate", dt.date.today().isoformat())
        if "DocNumber" not in obj:
            obj["DocNumber"] = str(1000 + len(self.entities["Invoice"]) + 1)
        return obj

    def _validate_purchase(self, obj: dict[str, Any], current: dict[str, Any] | None,
                           allow_dup: bool) -> dict[str, Any]:
        ptype = obj.get("PaymentType")
        if not ptype:
            raise faults.required("PaymentType")
        if ptype not in ("Cash", "Check", "CreditCard"):
            raise faults.invalid_enum("PaymentType", ptype)
        account = self._require_ref(obj, "AccountRef", "Account")
        assert account is not None
        wanted = "Credit Card" if ptype == "CreditCard" else "Bank"
        if account["AccountType"] != wanted:
            raise faults.business(f"PaymentType {ptype} needs a {wanted} account, not {account['AccountType']}")
        if obj.get("EntityRef"):
            kind = (obj["EntityRef"] or {}).get("type", "Vendor")
            self._require_ref(obj, "EntityRef", ("Vendor",) if kind == "Vendor" else ("Customer", "Vendor"))
        lines = obj.get("Line")
        if not isinstance(lines, list) or not lines:
            raise faults.required("Line")
        self._check_doc_number("Purchase", obj, current, allow_dup, reject_duplicates=ptype in ("Cash", "CreditCard"))
        self._check_date(obj, "TxnDate")
        self._check_text(obj, "PrivateNote", 4000)
        total = Decimal("0")
        out_lines = []
        for n, line in enumerate(lines, start=1):
            detail_type = line.get("DetailType") if isinstance(line, dict) else None
            if detail_type == "AccountBasedExpenseLineDetail":
                detail = line.get("AccountBasedExpenseLineDetail") or {}
                self._require_ref(detail, "AccountRef", "Account")
            elif detail_type == "ItemBasedExpenseLineDetail":
                self._require_ref(line.get("ItemBasedExpenseLineDetail") or {}, "ItemRef", "Item")
            elif not detail_type:
                raise faults.required("Line.DetailType")
            else:
                raise faults.invalid_enum("Line.DetailType", detail_type)
            if "Amount" not in line:
                raise faults.required("Line.Amount")
            amount = money(line["Amount"], "Line.Amount")
            self._check_text(line, "Description", 4000)
            total += amount
            out_lines.append({**line, "Id": str(n), "Amount": num(amount)})
        if "TotalAmt" in obj and obj["TotalAmt"] is not None and money(obj["TotalAmt"], "TotalAmt") != total:
            raise faults.business(f"TotalAmt {obj['TotalAmt']} does not equal the sum of the lines ({total})")
        obj["Line"] = out_lines
        obj["TotalAmt"] = num(total)
        obj.setdefault("TxnDate", dt.date.today().isoformat())
        obj.setdefault("CurrencyRef", {"value": "USD", "name": "United States Dollar"})
        return obj

    def _validate_payment(self, obj: dict[str, Any], current: dict[str, Any] | None, _dup: bool) -> dict[str, Any]:
        customer = self._require_ref(obj, "CustomerRef", "Customer")
        assert customer is not None
        self._txn_currency(obj, customer)
        if obj.get("TotalAmt") is None:
            raise faults.required("TotalAmt")
        total = money(obj["TotalAmt"], "TotalAmt")
        if total < 0:
            raise faults.business("TotalAmt cannot be negative")
        self._check_date(obj, "TxnDate")
        if obj.get("DepositToAccountRef"):
            self._require_ref(obj, "DepositToAccountRef", "Account")
        applied = Decimal("0")
        out_lines = []
        own = {p["invoice"]: p["amount"] for p in self._links_of(current)} if current else {}
        for line in obj.get("Line") or []:
            amount = money(line.get("Amount", 0), "Line.Amount")
            for link in line.get("LinkedTxn") or []:
                if link.get("TxnType") != "Invoice":
                    raise faults.invalid_enum("LinkedTxn.TxnType", link.get("TxnType"))
                invoice = self.entities["Invoice"].get(str(link.get("TxnId")))
                if invoice is None:
                    raise faults.invalid_reference("LinkedTxn.TxnId", str(link.get("TxnId")))
                if _ref(invoice, "CustomerRef") != customer["Id"]:
                    raise faults.business("a payment can only be applied to invoices of its customer")
                available = Decimal(str(invoice["Balance"])) + Decimal(str(own.get(invoice["Id"], 0)))
                if amount > available:
                    raise faults.business(f"amount {amount} exceeds the invoice balance {available}")
            applied += amount
            out_lines.append({**line, "Amount": num(amount)})
        if applied > total:
            raise faults.business(f"applied amount {applied} exceeds TotalAmt {total}")
        obj["Line"] = out_lines
        obj["TotalAmt"] = num(total)
        obj["UnappliedAmt"] = num(total - applied)
        obj.setdefault("TxnDate", dt.date.today().isoformat())
        return obj

    # -- payments move invoice balances ------------------------------------------------------------

    @staticmethod
    def _links_of(payment: dict[str, Any] | None) -> list[dict[str, Any]]:
        out = []
        for line in (payment or {}).get("Line") or []:
            for link in line.get("LinkedTxn") or []:
                if link.get("TxnType") == "Invoice":
                    out.append({"invoice": str(link.get("TxnId")), "amount": line.get("Amount", 0)})
        return out

    def _payments_for(self, invoice_id: str) -> list[dict[str, Any]]:
        return [{"payment": p["Id"], **link} for p in self.entities["Payment"].values()
                for link in self._links_of(p) if link["invoice"] == invoice_id and Decimal(str(link["amount"])) > 0]

    def _after_write(self, entity: str, before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
        """Applying, changing or removing a payment changes the balance (and SyncToken) of its invoices."""
        if entity != "Payment":
            return
        delta: dict[str, Decimal] = {}
        for link in self._links_of(before):
            delta[link["invoice"]] = delta.get(link["invoice"], Decimal("0")) + Decimal(str(link["amount"]))
        for link in self._links_of(after):
            delta[link["invoice"]] = delta.get(link["invoice"], Decimal("0")) - Decimal(str(link["amount"]))
        for invoice_id, change in delta.items():
            invoice = self.entities["Invoice"].get(invoice_id)
            if invoice is None or change == 0:
                continue
            invoice["Balance"] = num(Decimal(str(invoice["Balance"])) + change)
            self._bump("Invoice", invoice)
