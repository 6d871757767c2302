"""Invoices voided or deleted in QBO, and customer edits, reaching TimeTracker (in-memory QBO, SQLite)."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from consumer.writes import Result
from importer.apply_customer import CustomerImporter
from importer.apply_invoice import InvoiceImporter
from importer.notifications import Change
from producer.timetracker_schema import Client
from tests.consumer_harness import REALM, FakeParts
from tests.timetracker_data import base_rows
from tests.unit.test_import_payments import Books


@pytest.fixture
def books(parts: FakeParts, sqlite_engine: Engine) -> Books:
    return Books(parts, sqlite_engine)


def change(entity: str, qbo_id: str, operation: str = "Update") -> Change:
    return Change(REALM, entity, qbo_id, operation, "", "webhook")


def test_an_invoice_voided_in_qbo_cancels_the_timetracker_invoice_once(books: Books) -> None:
    importer = InvoiceImporter(books.parts.qbo, books.timetracker, books.parts.store)
    qid = books.qbo_invoice["Id"]
    assert importer.apply(change("Invoice", qid)).result is Result.SKIPPED  # a balance or an edit: TT owns content
    books.parts.qbo.void("Invoice", qid, books.parts.qbo.read("Invoice", qid)["SyncToken"], "v-1")
    assert importer.apply(change("Invoice", qid, "Void")).result is Result.VOIDED
    assert books.invoice().status == "cancelled"
    assert books.parts.store.mapped("invoice", str(books.invoice_id)).qbo_status == "voided"  # type: ignore[union-attr]
    assert importer.apply(change("Invoice", qid, "Void")).result is Result.SKIPPED  # delivered again: no change


def test_an_invoice_voided_by_ttsync_is_an_echo_and_flag_leaves_timetracker_alone(books: Books) -> None:
    qid = books.qbo_invoice["Id"]
    books.parts.store.mark_status("invoice", str(books.invoice_id), "voided")  # the export voided it
    importer = InvoiceImporter(books.parts.qbo, books.timetracker, books.parts.store)
    assert importer.apply(change("Invoice", qid, "Void")).reason.startswith("voided by ttsync")
    books.parts.store.mark_status("invoice", str(books.invoice_id), "active")
    flagging = InvoiceImporter(books.parts.qbo, books.timetracker, books.parts.store, on_void="flag")
    assert flagging.apply(change("Invoice", qid, "Delete")).result is Result.SKIPPED
    assert books.invoice().status == "sent"


def test_customer_edits_in_qbo_reach_the_allowed_client_fields_only(parts: FakeParts, sqlite_engine: Engine) -> None:
    with Session(sqlite_engine) as s:
        _, client, _ = base_rows(s, name="Acme Corp")
        s.commit()
        client_id = client.id
    customer = parts.qbo.create("Customer", {"DisplayName": "Acme Corp", "PrimaryEmailAddr": {"Address": "a@x.io"}},
                                "c-1")
    parts.store.adopt("client", str(client_id), customer)
    edited = parts.qbo.update("Customer", {"Id": customer["Id"], "SyncToken": customer["SyncToken"], "sparse": True,
                                           "DisplayName": "ACME (renamed in QBO)",
                                           "PrimaryEmailAddr": {"Address": "ap@acme.test"},
                                           "PrimaryPhone": {"FreeFormNumber": "+1 555 0100"}}, "c-2")
    importer = CustomerImporter(parts.qbo, sqlite_engine, parts.store, fields=("email",))
    assert importer.apply(change("Customer", edited["Id"])).result is Result.UPDATED
    with sqlite_engine.connect() as conn:
        row = conn.execute(select(Client.__table__).where(Client.__table__.c.id == client_id)).one()
    assert (row.name, row.email, row.phone) == ("Acme Corp", "ap@acme.test", None)  # name and phone: not QBO's
    assert importer.apply(change("Customer", edited["Id"])).result is Result.SKIPPED  # equal now: no write, no loop


def test_a_customer_made_in_qbo_becomes_a_client_only_when_allowed(parts: FakeParts, sqlite_engine: Engine) -> None:
    made = parts.qbo.create("Customer", {"DisplayName": "Walk-in Ltd", "PrimaryPhone": {"FreeFormNumber": "42"}},
                            "c-9")
    off = CustomerImporter(parts.qbo, sqlite_engine, parts.store)
    assert off.apply(change("Customer", made["Id"], "Create")).result is Result.SKIPPED
    on = CustomerImporter(parts.qbo, sqlite_engine, parts.store, new_customers=True)
    assert on.apply(change("Customer", made["Id"], "Create")).result is Result.CREATED
    with sqlite_engine.connect() as conn:
        row = conn.execute(select(Client.__table__).where(Client.__table__.c.name == "Walk-in Ltd")).one()
    assert row.phone == "42" and parts.store.owner_of(made["Id"], ("client",)) == str(row.id)
    assert on.apply(change("Customer", made["Id"])).result is Result.SKIPPED  # ours now, and equal


def test_ttsyncs_own_customer_write_coming_back_does_not_rewrite_the_client(parts: FakeParts,
                                                                             sqlite_engine: Engine) -> None:
    """The export sends the address without its blank lines and the phone cut to 30 characters; reading that
    back is no change of the client's."""
    from consumer.mapping import MappingOptions, customer_request
    from schemas.events import ClientState

    address, phone = "1 Main St\n\n  Springfield  \n", "+1 555 0100 ext. 4242 (reception desk)"
    with Session(sqlite_engine) as s:
        _, client, _ = base_rows(s, name="Echo Ltd")
        client.address, client.phone = address, phone
        s.commit()
        client_id, email = client.id, client.email
    body = customer_request(ClientState(id=client_id, name="Echo Ltd", address=address, phone=phone, email=email),
                            MappingOptions())
    written = parts.qbo.create("Customer", body, "c-echo")
    parts.store.adopt("client", str(client_id), written)
    importer = CustomerImporter(parts.qbo, sqlite_engine, parts.store)
    assert importer.apply(change("Customer", written["Id"], "Create")).result is Result.SKIPPED
    with sqlite_engine.connect() as conn:
        row = conn.execute(select(Client.__table__).where(Client.__table__.c.id == client_id)).one()
    assert (row.address, row.phone) == (address, phone)


def test_the_echo_of_an_export_is_skipped_while_a_newer_timetracker_edit_is_on_its_way(
        parts: FakeParts, sqlite_engine: Engine) -> None:
    """The export wrote e-mail A; the client was edited to B in TimeTracker, its export not done yet; the
    notification of A's write then arrives. Compared field by field, A differed from B and was written back into
    TimeTracker: a change nobody made on the QBO side. The SyncToken ttsync recorded says it is its own write."""
    with Session(sqlite_engine) as s:
        _, client, _ = base_rows(s, name="Race Ltd")
        client.email = "a@race.test"
        s.commit()
        client_id = client.id
    written = parts.qbo.create("Customer", {"DisplayName": "Race Ltd", "PrimaryEmailAddr": {"Address": "a@race.test"}},
                               "c-race")
    parts.store.adopt("client", str(client_id), written)
    with Session(sqlite_engine) as s:
        s.get_one(Client, client_id).email = "b@race.test"
        s.commit()
    outcome = CustomerImporter(parts.qbo, sqlite_engine, parts.store).apply(change("Customer", written["Id"]))
    assert outcome.result is Result.SKIPPED and "echo" in outcome.reason
    with sqlite_engine.connect() as conn:
        assert conn.execute(select(Client.__table__.c.email).where(Client.__table__.c.id == client_id)).scalar() \
            == "b@race.test"
