"""Sources named by events cannot reach outside what the operator allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestor.confine import check_select, confine_path, confine_sql, confine_url
from shared.errors import SourceRejected


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ok.csv").write_text("a\n1\n")
    (tmp_path / "secret.csv").write_text("a\n1\n")
    return (tmp_path / "data").resolve()


def test_files_inside_a_root_are_found_by_path_uri_or_relative_name(root: Path) -> None:
    assert confine_path(str(root / "ok.csv"), [root]) == root / "ok.csv"
    assert confine_path(f"file://{root}/ok.csv", [root]) == root / "ok.csv"
    assert confine_path("ok.csv", [root]) == root / "ok.csv"


@pytest.mark.parametrize(
    "uri",
    [
        "/etc/passwd",
        "../secret.csv",
        "{root}/../secret.csv",
        "file:///etc/passwd",
        "file://evil.example/x.csv",
        "http://127.0.0.1/x.csv",
        "{root}/link.csv",
    ],
)
def test_anything_else_is_rejected_with_a_reason(root: Path, uri: str) -> None:
    (root / "link.csv").symlink_to(root.parent / "secret.csv")
    with pytest.raises(SourceRejected, match=r"outside|not allowed|must be"):
        confine_path(uri.format(root=root), [root])


def test_a_missing_file_inside_a_root_says_so(root: Path) -> None:
    with pytest.raises(SourceRejected, match="no such file"):
        confine_path(str(root / "nope.csv"), [root])


def test_sql_urls_must_match_the_allow_list_ignoring_the_password() -> None:
    allow = ["postgresql://reader@db.internal:5432/*", "sqlite:////srv/data/*.db"]
    confine_sql("postgresql://reader:s3cret@db.internal:5432/sales", "select 1", allow)
    confine_sql("sqlite:////srv/data/a.db", "select 1", allow)
    with pytest.raises(SourceRejected, match="allow-list"):
        confine_sql("postgresql://admin:x@db.internal:5432/sales", "select 1", allow)
    with pytest.raises(SourceRejected, match="STREAMOPS_INGESTOR_SQL_ALLOW"):
        confine_sql("sqlite:///x.db", "select 1", [])
    with pytest.raises(SourceRejected, match="not a SQLAlchemy URL"):
        confine_sql("nonsense", "select 1", allow)


@pytest.mark.parametrize(
    "query",
    [
        "select * from t",
        "SELECT a FROM t;",
        "with x as (select 1) select * from x",
        "-- comment\nselect updated_at from t",
    ],
)
def test_a_single_select_is_allowed(query: str) -> None:
    check_select(query)


@pytest.mark.parametrize(
    "query",
    [
        "delete from t",
        "select 1; drop table t",
        "update t set a = 1",
        "with x as (delete from t returning *) select * from x",
        "insert into t select 1",
    ],
)
def test_anything_that_could_write_is_refused(query: str) -> None:
    with pytest.raises(SourceRejected):
        check_select(query)


def test_rest_hosts_must_be_allowed_by_name_or_name_and_port() -> None:
    confine_url("http://127.0.0.1:8080/data", ["127.0.0.1:8080"])
    confine_url("https://api.example.com/v1", ["api.example.com"])
    with pytest.raises(SourceRejected, match="allow-list"):
        confine_url("http://169.254.169.254/latest", ["api.example.com"])
    with pytest.raises(SourceRejected, match="http or https"):
        confine_url("file:///etc/passwd", ["api.example.com"])


@pytest.fixture
def two_roots(tmp_path: Path) -> tuple[Path, Path]:
    """Two data roots, as `streamops up` has them: the datasets, then an inbox."""
    first, second = (tmp_path / "datasets").resolve(), (tmp_path / "inbox").resolve()
    for root in (first, second):
        root.mkdir()
        (root / "both.csv").write_text(f"root\n{root.name}\n")
    (second / "dropped.csv").write_text("a\n1\n")
    (tmp_path / "secret.csv").write_text("a\n1\n")
    return first, second


@pytest.mark.parametrize("order", ["datasets first", "inbox first"])
def test_a_relative_name_in_several_roots_is_the_first_roots(
    two_roots: tuple[Path, Path], order: str
) -> None:
    roots = list(two_roots) if order == "datasets first" else list(reversed(two_roots))
    assert confine_path("both.csv", roots) == roots[0] / "both.csv"


@pytest.mark.parametrize("order", ["datasets first", "inbox first"])
def test_a_relative_name_is_found_in_whichever_root_holds_it(
    two_roots: tuple[Path, Path], order: str
) -> None:
    first, second = two_roots
    roots = [first, second] if order == "datasets first" else [second, first]
    assert confine_path("dropped.csv", roots) == second / "dropped.csv"


def test_a_name_in_no_root_says_so_naming_the_roots_tried(two_roots: tuple[Path, Path]) -> None:
    first, second = two_roots
    with pytest.raises(SourceRejected) as caught:
        confine_path("nowhere.csv", [first, second])
    assert str(caught.value) == (
        f"nowhere.csv: no such file in the data roots (tried {first}, {second})"
    )


def test_a_directory_is_not_a_file(two_roots: tuple[Path, Path]) -> None:
    first, second = two_roots
    (first / "sub").mkdir()
    with pytest.raises(SourceRejected, match="no such file in the data roots"):
        confine_path("sub", [first, second])


def test_a_name_escaping_every_root_is_outside_them(two_roots: tuple[Path, Path]) -> None:
    first, second = two_roots
    for root in (first, second):
        (root / "link.csv").symlink_to(root.parent / "secret.csv")
    for name in ("../secret.csv", "link.csv"):
        with pytest.raises(SourceRejected) as caught:
            confine_path(name, [first, second])
        assert str(caught.value) == f"{name} is outside the data roots ({first}, {second})"


def test_an_escape_from_the_first_root_does_not_hide_the_second(
    two_roots: tuple[Path, Path],
) -> None:
    first, second = two_roots
    (first / "dropped.csv").symlink_to(first.parent / "secret.csv")
    assert confine_path("dropped.csv", [first, second]) == second / "dropped.csv"


def test_an_absolute_path_is_used_as_is_never_joined_to_a_root(
    two_roots: tuple[Path, Path],
) -> None:
    first, second = two_roots
    assert confine_path(str(second / "dropped.csv"), [first, second]) == second / "dropped.csv"
    with pytest.raises(SourceRejected) as caught:
        confine_path(str(first / "dropped.csv"), [first, second])
    assert str(caught.value) == f"{first / 'dropped.csv'}: no such file"
    with pytest.raises(SourceRejected, match="is outside the data roots"):
        confine_path(str(first.parent / "secret.csv"), [first, second])


def test_with_no_roots_nothing_is_allowed(two_roots: tuple[Path, Path]) -> None:
    with pytest.raises(SourceRejected, match=r"outside the data roots \(none configured\)"):
        confine_path("dropped.csv", [])
