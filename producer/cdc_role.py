"""A least-privilege PostgreSQL role for Debezium: it logs in, replicates, and reads ttsync's outbox; no more.

Debezium's PostgreSQL connector needs REPLICATION (to create and stream its slot) and SELECT on the tables it
captures. Creating a publication needs ownership of the table, so the publication is made here, by the owner,
and the connector is told not to make one (``publication.autocreate.mode=disabled``). The role never sees
TimeTracker's own tables: the outbox holds all Debezium relays.

``plan`` is pure (the statements, the password left out); ``apply`` runs them in one transaction.
"""

from __future__ import annotations

from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from producer.database import ttsync_schema
from producer.outbox_tables import outbox


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def plan(role: str, database: str, publication: str, *, role_exists: bool, publication_exists: bool) -> list[str]:
    """What ``apply`` will run, for the operator to read before confirming (``PASSWORD ***``)."""
    schema = ttsync_schema()
    steps = [f"ALTER ROLE {_ident(role)} LOGIN REPLICATION PASSWORD ***" if role_exists else
             f"CREATE ROLE {_ident(role)} LOGIN REPLICATION PASSWORD ***",
             f"GRANT CONNECT ON DATABASE {_ident(database)} TO {_ident(role)}",
             f"GRANT USAGE ON SCHEMA {_ident(schema)} TO {_ident(role)}",
             f"GRANT SELECT ON {_ident(schema)}.{_ident(outbox.name)} TO {_ident(role)}"]
    if not publication_exists:
        steps.append(f"CREATE PUBLICATION {_ident(publication)} FOR TABLE {_ident(schema)}.{_ident(outbox.name)}")
    return steps


def current_state(conn: Connection, role: str, publication: str) -> tuple[bool, bool]:
    """(the role exists, the publication exists)."""
    role_exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first() is not None
    pub_exists = conn.execute(text("SELECT 1 FROM pg_publication WHERE pubname = :p"),
                              {"p": publication}).first() is not None
    return role_exists, pub_exists


def apply(conn: Connection, role: str, password: str, publication: str) -> list[str]:
    """Create or update the role, grant it the outbox, create the publication; returns the plan it ran."""
    database = str(conn.execute(text("SELECT current_database()")).scalar_one())
    role_exists, pub_exists = current_state(conn, role, publication)
    steps = plan(role, database, publication, role_exists=role_exists, publication_exists=pub_exists)
    for step in steps:
        if "PASSWORD ***" in step:
            # A literal, quoted by the server's own rules: PASSWORD takes no bind parameter.
            quoted = conn.execute(text("SELECT quote_literal(:p)"), {"p": password}).scalar_one()
            conn.execute(text(step.replace("PASSWORD ***", f"PASSWORD {quoted}")))
        else:
            conn.execute(text(step))
    return steps


def role_url(database_url: str, role: str, password: str) -> str:
    """The database URL Debezium should use: the same server and database, as the role."""
    return make_url(database_url).set(username=role, password=password).render_as_string(hide_password=False)
