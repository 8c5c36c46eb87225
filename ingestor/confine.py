"""Sources come from events, and events come from outside: confine what they may reach.

- files: only regular files under a configured data root, after resolving symlinks and `..`;
- SQL: only URLs matching an allow-list pattern, and only a single SELECT;
- REST: only http(s) hosts on an allow-list, checked again for every page.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from shared.errors import SourceRejected
from shared.paths import confine_file

if TYPE_CHECKING:
    from sqlalchemy.engine import URL


def confine_path(uri: str, roots: list[Path]) -> Path:
    """The real path of a CSV source, if it is a regular file inside one of `roots`."""
    return confine_file(uri, roots, "a CSV source", "data roots", SourceRejected)


def confine_sql(url: str, query: str, allow: list[str]) -> URL:
    """The parsed URL of a SQL source, if an allow-list pattern admits it and the query is one
    SELECT. Patterns match the URL with its password removed."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise SourceRejected(f"not a SQLAlchemy URL: {exc}") from exc
    # URL.set(password=None) keeps the password; a NamedTuple replace really drops it.
    bare = parsed._replace(password=None).render_as_string(hide_password=False)
    if not any(fnmatch.fnmatchcase(bare, pattern) for pattern in allow):
        hint = "" if allow else " (no SQL source is allowed: set STREAMOPS_INGESTOR_SQL_ALLOW)"
        raise SourceRejected(f"database {bare} is not on the SQL allow-list{hint}")
    check_select(query)
    return parsed


_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)


def check_select(query: str) -> None:
    """Refuse anything but a single SELECT (or WITH ... SELECT) statement.

    This is a first line only: the query also runs in a read-only transaction where the
    database supports one.
    """
    text = _COMMENT.sub(" ", query).strip().rstrip(";").strip()
    if ";" in text:
        raise SourceRejected("the query must be a single statement")
    if not re.match(r"(?is)^(select|with)\b", text):
        raise SourceRejected("the query must be a SELECT (or WITH ... SELECT)")
    if re.search(
        r"(?i)\b(insert|update|delete|merge|drop|alter|create|truncate|grant|copy)\b", text
    ):
        raise SourceRejected("the query must not modify anything")


def confine_url(url: str, allow_hosts: list[str]) -> httpx.URL:
    """The parsed URL of a REST page, if its host (or host:port) is on the allow-list."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise SourceRejected(f"not a URL: {url!r}") from exc
    if parsed.scheme not in ("http", "https"):
        raise SourceRejected(f"REST sources must be http or https, got {parsed.scheme!r}")
    host = parsed.host
    with_port = f"{host}:{parsed.port}" if parsed.port else host
    if host not in allow_hosts and with_port not in allow_hosts:
        hint = "" if allow_hosts else " (none allowed: set STREAMOPS_INGESTOR_REST_ALLOW_HOSTS)"
        raise SourceRejected(f"host {with_port} is not on the REST allow-list{hint}")
    return parsed
