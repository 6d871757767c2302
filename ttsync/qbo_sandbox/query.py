"""QBO's query language, the subset QBO supports:

``SELECT * | COUNT(*) FROM Entity [WHERE p op v [AND ...]] [ORDERBY f [ASC|DESC], ...] [STARTPOSITION n]
[MAXRESULTS n]`` with ops ``= < > <= >= LIKE IN``, ``'`` escaped as ``\\'``, no OR, no JOIN, no projections.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from ttsync.qbo_sandbox.faults import QboFault

MAX_RESULTS_CAP = 1000


def parse_error(detail: str) -> QboFault:
    return QboFault(4000, "Error parsing query", f"QueryParserError: {detail}", fault_type="QueryParserError")


@dataclass
class Condition:
    field: str
    op: str
    value: Any


@dataclass
class Query:
    entity: str
    count: bool = False
    where: list[Condition] = field(default_factory=list)
    order_by: list[tuple[str, bool]] = field(default_factory=list)  # (field, descending)
    start_position: int = 1
    max_results: int = 100


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:\\.|[^'\\])*')
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<op><=|>=|<>|!=|=|<|>|\(|\)|,|\*)
      | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.strip().rstrip(";")
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise parse_error(f"Encountered \"{text[pos:pos + 10]}\" at column {pos + 1}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _unquote(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s[1:-1])


def parse(text: str) -> Query:
    toks = _tokens(text)
    i = 0

    def peek(k: int = 0) -> tuple[str, str]:
        return toks[i + k] if i + k < len(toks) else ("eof", "")

    def take(expected: str | None = None) -> tuple[str, str]:
        nonlocal i
        tok = peek()
        if expected is not None and tok[1].upper() != expected:
            raise parse_error(f"expected {expected} but found \"{tok[1] or 'end of query'}\"")
        i += 1
        return tok

    take("SELECT")
    count = False
    if peek()[1] == "*":
        take()
    elif peek()[1].upper() == "COUNT":
        take()
        take("(")
        take("*")
        take(")")
        count = True
    else:
        raise parse_error("only SELECT * and SELECT COUNT(*) are supported (no projections)")
    take("FROM")
    kind, entity = take()
    if kind != "word":
        raise parse_error("missing entity name")
    q = Query(entity=entity, count=count)
    if peek()[1].upper() == "WHERE":
        take()
        while True:
            kind, fld = take()
            if kind != "word":
                raise parse_error(f"expected a property name, found \"{fld}\"")
            _, op = take()
            op = op.upper()
            if op not in ("=", "<", ">", "<=", ">=", "LIKE", "IN", "!=", "<>"):
                raise parse_error(f"unsupported operator \"{op}\"")
            if op == "IN":
                take("(")
                values = []
                while True:
                    values.append(_literal(take()))
                    if peek()[1] == ",":
                        take()
                        continue
                    take(")")
                    break
                q.where.append(Condition(fld, op, values))
            else:
                q.where.append(Condition(fld, op, _literal(take())))
            if peek()[1].upper() == "AND":
                take()
                continue
            if peek()[1].upper() == "OR":
                raise parse_error("OR is not supported")
            break
    if peek()[1].upper() == "ORDERBY" or (peek()[1].upper() == "ORDER" and peek(1)[1].upper() == "BY"):
        if take()[1].upper() == "ORDER":
            take("BY")
        while True:
            kind, fld = take()
            if kind != "word":
                raise parse_error("expected a property name after ORDERBY")
            desc = False
            if peek()[1].upper() in ("ASC", "DESC"):
                desc = take()[1].upper() == "DESC"
            q.order_by.append((fld, desc))
            if peek()[1] == ",":
                take()
                continue
            break
    while peek()[1].upper() in ("STARTPOSITION", "MAXRESULTS"):
        word = take()[1].upper()
        kind, num = take()
        if kind != "number":
            raise parse_error(f"{word} needs a number")
        if word == "STARTPOSITION":
            q.start_position = max(1, int(num))
        else:
            q.max_results = min(MAX_RESULTS_CAP, max(1, int(num)))
    if peek()[0] != "eof":
        raise parse_error(f"unexpected \"{peek()[1]}\"")
    return q


def _literal(tok: tuple[str, str]) -> Any:
    kind, value = tok
    if kind == "string":
        return _unquote(value)
    if kind == "number":
        return Decimal(value)
    if kind == "word" and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise parse_error(f"expected a value, found \"{value}\"")


def _get(obj: dict[str, Any], path: str) -> Any:
    cur: Any = obj
    for part in path.split("."):
        if isinstance(cur, dict):
            # QBO compares a reference by its value: CustomerRef = '12'
            cur = next((v for k, v in cur.items() if k.lower() == part.lower()), None)
        else:
            return None
    if isinstance(cur, dict) and "value" in cur:
        cur = cur["value"]
    return cur


def _comparable(a: Any, b: Any) -> tuple[Any, Any]:
    if isinstance(b, Decimal):
        try:
            return Decimal(str(a)), b
        except (InvalidOperation, ValueError):
            return str(a), str(b)
    if isinstance(b, bool):
        return bool(a), b
    return ("" if a is None else str(a)), b


def _like(value: str, pattern: str) -> bool:
    regex = "^" + ".*".join(re.escape(part) for part in pattern.split("%")) + "$"
    return re.match(regex, value, flags=re.IGNORECASE | re.S) is not None


def matches(obj: dict[str, Any], cond: Condition) -> bool:
    actual = _get(obj, cond.field)
    if cond.op == "IN":
        return any(_comparable(actual, v)[0] == _comparable(actual, v)[1] for v in cond.value)
    if actual is None:
        return False
    a, b = _comparable(actual, cond.value)
    if cond.op == "LIKE":
        return _like(str(a), str(b))
    if cond.op == "=":
        return bool(a == b)
    if cond.op in ("!=", "<>"):
        return bool(a != b)
    try:
        return bool({"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[cond.op])
    except TypeError:
        return False


def _row_key(field: str, row: dict[str, Any]) -> Any:
    return _sort_key(_get(row, field))


def execute(q: Query, rows: list[dict[str, Any]]) -> dict[str, Any]:
    selected = [r for r in rows if all(matches(r, c) for c in q.where)]
    if q.count:
        return {"totalCount": len(selected)}
    for fld, desc in reversed(q.order_by or [("Id", False)]):
        selected.sort(key=functools.partial(_row_key, fld), reverse=desc)
    page = selected[q.start_position - 1 : q.start_position - 1 + q.max_results]
    if not page:
        return {}
    return {q.entity: page, "startPosition": q.start_position, "maxResults": len(page)}


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, "")
    try:
        return (1, Decimal(str(value)))
    except (InvalidOperation, ValueError):
        return (2, str(value))
