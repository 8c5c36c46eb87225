"""SQL (SQLite and the local PostgreSQL server) and REST (a local HTTP server) sources."""

from __future__ import annotations

import http.server
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest

from ingestor.service import ingest
from shared.events import DataArrived, DataIngested, DataRejected
from shared.feature_store import FeatureStore
from shared.settings import IngestorSettings
from tests.support.data import COLUMNS, churn_rows

pytestmark = pytest.mark.integration
Make = Callable[..., IngestorSettings]


def _typed(row: dict[str, str]) -> tuple[Any, ...]:
    return (
        row["customer_id"],
        int(row["tenure_months"]),
        float(row["monthly_charges"]),
        int(row["support_calls"]),
        float(row["usage_gb"]),
        float(row["satisfaction"]) if row["satisfaction"] else None,
        row["plan"],
        row["autopay"] == "true",
        row["signup_at"],
        int(row["churned"]),
    )


def _ingest(settings: IngestorSettings, source: dict[str, Any]) -> DataIngested | DataRejected:
    store = FeatureStore(settings.common.feature_store_root)
    return ingest(DataArrived(dataset="churn", source=source), settings, store)


# --- SQL ---------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Path:
    path = tmp_path / "crm.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"create table customers ({', '.join(COLUMNS)})")
        rows = [_typed(r) for r in churn_rows(300)]
        rows[10] = (*rows[10][:6], "gold", *rows[10][7:])
        conn.executemany(f"insert into customers values ({', '.join('?' * 10)})", rows)
    return path


def test_a_sqlite_query_becomes_a_version(make_settings: Make, sqlite_db: Path) -> None:
    settings = make_settings(sql_allow=[f"sqlite:///{sqlite_db.parent}/*.db"], sql_chunk_rows=100)
    source = {"kind": "sql", "url": f"sqlite:///{sqlite_db}", "query": "select * from customers"}
    result = _ingest(settings, source)
    assert isinstance(result, DataIngested), result
    assert (result.rows, result.quarantined_rows) == (299, 1)
    (line,) = FeatureStore(settings.common.feature_store_root).quarantine("churn", 1).to_pylist()
    assert (line["row"], line["column"], line["value"]) == (11, "plan", "gold")
    again = _ingest(settings, source)
    assert isinstance(again, DataIngested)
    assert again.new_version is False


def test_sql_off_the_allow_list_or_not_a_select_is_rejected(
    make_settings: Make, sqlite_db: Path
) -> None:
    url = f"sqlite:///{sqlite_db}"
    refused = _ingest(make_settings(), {"kind": "sql", "url": url, "query": "select 1"})
    assert isinstance(refused, DataRejected)
    assert "allow-list" in refused.reason
    settings = make_settings(sql_allow=["sqlite:///*"])
    writing = _ingest(settings, {"kind": "sql", "url": url, "query": "delete from customers"})
    assert isinstance(writing, DataRejected)
    assert "SELECT" in writing.reason
    broken = _ingest(settings, {"kind": "sql", "url": url, "query": "select * from nowhere"})
    assert isinstance(broken, DataRejected)
    assert "no such table" in broken.reason


def test_a_postgresql_query_becomes_a_version(make_settings: Make, postgres_db: str) -> None:
    with psycopg.connect(postgres_db) as conn, conn.cursor() as cur:
        cur.execute(
            "create table customers (customer_id text, tenure_months int, monthly_charges float8,"
            " support_calls int, usage_gb float8, satisfaction float8, plan text,"
            " autopay boolean, signup_at timestamptz, churned int)"
        )
        rows = [_typed(r) for r in churn_rows(500)]
        rows[42] = (*rows[42][:1], -3, *rows[42][2:])
        cur.executemany(f"insert into customers values ({', '.join(['%s'] * 10)})", rows)
    settings = make_settings(
        sql_allow=[postgres_db.rsplit("/", 1)[0] + "/streamops_test_*"], sql_chunk_rows=128
    )
    source = {
        "kind": "sql",
        "url": postgres_db,
        "query": "select * from customers order by customer_id",
    }
    result = _ingest(settings, source)
    assert isinstance(result, DataIngested), result
    assert (result.rows, result.quarantined_rows) == (499, 1)
    table = FeatureStore(settings.common.feature_store_root).read("churn")
    assert str(table.schema.field("signup_at").type) == "timestamp[us, tz=UTC]"


def test_the_query_runs_read_only(make_settings: Make, postgres_db: str) -> None:
    with psycopg.connect(postgres_db) as conn, conn.cursor() as cur:
        cur.execute("create table t (a int)")
    settings = make_settings(sql_allow=[postgres_db.rsplit("/", 1)[0] + "/*"])
    # Slips past the keyword check (a function call), stopped by the read-only transaction.
    sneaky = "select * from (select 1) x where pg_catalog.nextval('t_seq') > 0"
    with psycopg.connect(postgres_db) as conn, conn.cursor() as cur:
        cur.execute("create sequence t_seq")
    result = _ingest(settings, {"kind": "sql", "url": postgres_db, "query": sneaky})
    assert isinstance(result, DataRejected)
    assert "read-only transaction" in result.reason


# --- REST --------------------------------------------------------------------------------------


class _Api(http.server.BaseHTTPRequestHandler):
    rows: list[dict[str, Any]] = []
    page_size = 40

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/linked":
            start = int(query.get("offset", ["0"])[0])
            chunk = self.rows[start : start + self.page_size]
            nxt = start + self.page_size
            body: Any = {
                "data": chunk,
                "next": f"/linked?offset={nxt}" if nxt < len(self.rows) else None,
            }
        elif url.path == "/paged":
            page = int(query.get("page", ["1"])[0])
            body = self.rows[(page - 1) * self.page_size : page * self.page_size]
        elif url.path == "/escape":
            body = {"data": self.rows[:5], "next": "http://169.254.169.254/latest/meta-data"}
        else:
            self.send_error(404)
            return
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def api() -> Iterator[str]:
    rows = churn_rows(170)
    rows[99]["autopay"] = "sometimes"
    _Api.rows = [{**r, "satisfaction": r["satisfaction"] or None} for r in rows]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_rest_pages_followed_by_next_link(make_settings: Make, api: str) -> None:
    settings = make_settings(rest_allow_hosts=[api])
    result = _ingest(
        settings,
        {
            "kind": "rest",
            "url": f"http://{api}/linked",
            "records_field": "data",
            "pagination": {"type": "next_link"},
        },
    )
    assert isinstance(result, DataIngested), result
    assert (result.rows, result.quarantined_rows) == (169, 1)
    (line,) = FeatureStore(settings.common.feature_store_root).quarantine("churn", 1).to_pylist()
    assert (line["row"], line["column"]) == (100, "autopay")


def test_rest_pages_by_number_until_an_empty_one(make_settings: Make, api: str) -> None:
    settings = make_settings(rest_allow_hosts=[api])
    result = _ingest(
        settings,
        {
            "kind": "rest",
            "url": f"http://{api}/paged",
            "pagination": {"type": "page", "param": "page", "start": 1},
        },
    )
    assert isinstance(result, DataIngested), result
    assert result.rows + result.quarantined_rows == 170


def test_rest_hosts_off_the_allow_list_are_refused_even_as_next_links(
    make_settings: Make, api: str
) -> None:
    refused = _ingest(
        make_settings(rest_allow_hosts=["api.example.com"]),
        {"kind": "rest", "url": f"http://{api}/linked"},
    )
    assert isinstance(refused, DataRejected)
    assert "allow-list" in refused.reason
    escaped = _ingest(
        make_settings(rest_allow_hosts=[api]),
        {
            "kind": "rest",
            "url": f"http://{api}/escape",
            "records_field": "data",
            "pagination": {"type": "next_link"},
        },
    )
    assert isinstance(escaped, DataRejected)
    assert "169.254.169.254 is not on the REST allow-list" in escaped.reason
