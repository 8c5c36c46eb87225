"""The provisioned Grafana dashboards query only what the services really export.

Checked without Grafana or Prometheus: the provisioning files agree with each other and with
the dashboards (one datasource uid everywhere, the provider reads the directory compose mounts
the dashboards at), and every query names only series the services export (read from their own
metrics objects, tests/support/exported_metrics.py) and only labels those series carry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.exported_metrics import (
    SCRAPE_SERIES,
    TARGET_LABELS,
    exported_series,
    labels_by_series,
)

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "streamops.yml"
DASHBOARD_DIR = GRAFANA / "dashboards"
EXPECTED = ("api-performance.json", "model-behaviour.json", "pipeline-streams.json")
# Where compose mounts deploy/grafana/dashboards (deploy/grafana/provisioning goes to
# /etc/grafana/provisioning), and where Prometheus answers in compose.
MOUNTED_DASHBOARDS = "/var/lib/grafana/dashboards"
PROMETHEUS_URL = "http://prometheus:9090"

PROJECT_SERIES = re.compile(r"\b(?:streamops|faststream)_[A-Za-z0-9_]+")
SCRAPE = re.compile(r"(?<![\w:$])(?:" + "|".join(sorted(SCRAPE_SERIES)) + r")\b")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
SELECTOR = re.compile(r"\b([A-Za-z_:][\w:]*)\s*\{([^{}]*)\}")
MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(by|without)\s*\(([^()]*)\)")
AGGREGATOR = re.compile(
    r"\b(?:sum|min|max|avg|group|stddev|stdvar|count|count_values|bottomk|topk|quantile|"
    r"limitk|limit_ratio)\s*$"
)
LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*(?:\{[^{}]*\})?\s*,\s*(\w+)")
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


@dataclass(frozen=True)
class Query:
    dashboard: str
    where: str  # the panel and target, or the template variable
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard}: {self.where}"


def _yaml(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), f"{path} is not a YAML mapping"
    return loaded


@cache
def _dashboards() -> dict[str, dict[str, Any]]:
    names = sorted({*EXPECTED, *(p.name for p in DASHBOARD_DIR.glob("*.json"))})
    found = {}
    for name in names:
        path = DASHBOARD_DIR / name
        assert path.is_file(), f"dashboard {path} is missing"
        loaded = json.loads(path.read_text())
        assert isinstance(loaded, dict), f"{name} is not a JSON object"
        found[name] = loaded
    return found


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels (collapsed rows) included; rows themselves too."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def _data_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    return (p for p in _panels(dashboard) if p.get("type") != "row")


def _label(panel: dict[str, Any]) -> str:
    return f"panel {panel.get('title')!r} (id {panel.get('id')})"


def _variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query", "")
    return str(query.get("query", "") if isinstance(query, dict) else query)


def _queries() -> Iterator[Query]:
    for name, dashboard in _dashboards().items():
        for panel in _data_panels(dashboard):
            for target in panel.get("targets", []):
                where = f"{_label(panel)}, target {target.get('refId')}"
                yield Query(name, where, str(target.get("expr", "")))
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable.get("type") == "query":
                yield Query(name, f"variable ${variable.get('name')}", _variable_query(variable))


def _code(expr: str) -> str:
    """`expr` with its string literals emptied (label values are not names)."""
    return STRING.sub('""', expr)


def _series(code: str) -> list[str]:
    return PROJECT_SERIES.findall(code) + SCRAPE.findall(code)


def _closing(code: str, start: int) -> int:
    """Index of the parenthesis closing the one at `start`."""
    depth = 0
    for i in range(start, len(code)):
        depth += {"(": 1, ")": -1}.get(code[i], 0)
        if depth == 0:
            return i
    raise ValueError(f"unbalanced parentheses in {code!r}")


def _opening(code: str, end: int) -> int:
    """Index of the parenthesis opening the one closed at `end`."""
    depth = 0
    for i in range(end, -1, -1):
        depth += {")": 1, "(": -1}.get(code[i], 0)
        if depth == 0:
            return i
    raise ValueError(f"unbalanced parentheses in {code!r}")


def _groupings(code: str) -> Iterator[tuple[str, list[str], str]]:
    """(by or without, its labels, the expression it aggregates) for each grouping clause,
    whether written before the aggregated expression (`sum by (a) (x)`) or after it
    (`sum(x) by (a)`)."""
    for match in GROUPING.finditer(code):
        labels = [label.strip() for label in match[2].split(",") if label.strip()]
        before = code[: match.start()].rstrip()
        if AGGREGATOR.search(before):
            rest = code[match.end() :]
            start = match.end() + len(rest) - len(rest.lstrip())
            if start >= len(code) or code[start] != "(":
                raise ValueError(f"no aggregated expression after {match[0]!r} in {code!r}")
            yield match[1], labels, code[start : _closing(code, start) + 1]
        elif before.endswith(")"):
            end = len(before) - 1
            yield match[1], labels, code[_opening(code, end) : end + 1]
        else:
            raise ValueError(f"{match[0]!r} aggregates nothing in {code!r}")


def _labels_of(series: str) -> frozenset[str] | None:
    """The labels `series` has once scraped; None for a series no service exports (the series
    check reports those)."""
    if series in SCRAPE_SERIES:
        return TARGET_LABELS
    own = _exported_labels().get(series)
    return None if own is None else own | TARGET_LABELS


@cache
def _exported_labels() -> dict[str, frozenset[str]]:
    return labels_by_series()


def _label_problems(code: str) -> Iterator[str]:
    """Labels a matcher, a grouping clause or label_values() uses that its series lack."""
    for match in SELECTOR.finditer(code):
        series = match[1]
        if _series(series) != [series]:  # a function's braces, not a series we know of
            continue
        known = _labels_of(series)
        for label in MATCHER_LABEL.findall(match[2]):
            if known is not None and label != "__name__" and label not in known:
                yield f"matcher label {label!r} is not a label of {series}"
    try:
        groupings = list(_groupings(code))
    except ValueError as exc:
        yield f"cannot tell what a grouping clause aggregates: {exc}"
        return
    for kind, labels, body in groupings:
        for series in sorted(set(_series(body))):
            known = _labels_of(series)
            for label in labels:
                if known is not None and label not in known:
                    yield f"{kind} ({label}) names a label {series} does not have"
    for series, label in LABEL_VALUES.findall(code):
        known = _labels_of(series)
        if known is not None and label not in known:
            yield f"label_values() asks for {label!r}, not a label of {series}"


# ---------------------------------------------------------------------- provisioning


def test_the_datasource_is_the_compose_prometheus_under_a_fixed_uid() -> None:
    provisioning = _yaml(DATASOURCES)
    assert provisioning.get("apiVersion") == 1
    (source,) = provisioning["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == PROMETHEUS_URL
    assert source["access"] == "proxy"
    assert source["isDefault"] is True
    assert isinstance(source["uid"], str)
    assert source["uid"]


def test_the_provider_loads_the_mounted_dashboards_into_the_streamops_folder() -> None:
    provisioning = _yaml(PROVIDERS)
    assert provisioning.get("apiVersion") == 1
    (provider,) = provisioning["providers"]
    assert provider["type"] == "file"
    assert provider["folder"] == "streamops"
    assert provider["options"]["path"] == MOUNTED_DASHBOARDS
    assert provider.get("allowUiUpdates", False) is False  # the JSON files are the source


def test_every_panel_and_variable_uses_the_provisioned_datasource() -> None:
    uid = _yaml(DATASOURCES)["datasources"][0]["uid"]
    wrong: list[str] = []
    for name, dashboard in _dashboards().items():
        used: list[tuple[str, Any]] = []
        for panel in _data_panels(dashboard):
            used.append((_label(panel), panel.get("datasource")))
            used.extend(
                (f"{_label(panel)}, target {t.get('refId')}", t["datasource"])
                for t in panel.get("targets", [])
                if "datasource" in t
            )
        used.extend(
            (f"variable ${v.get('name')}", v.get("datasource"))
            for v in dashboard.get("templating", {}).get("list", [])
            if v.get("type") == "query"
        )
        wrong.extend(
            f"{name}: {where} uses datasource {source!r}, not {{'type': 'prometheus', "
            f"'uid': {uid!r}}}"
            for where, source in used
            if not isinstance(source, dict)
            or source.get("uid") != uid
            or source.get("type") != "prometheus"
        )
    assert not wrong, "\n".join(wrong)


# ---------------------------------------------------------------------- dashboards


def test_the_three_dashboards_parse_with_unique_uids_and_titles() -> None:
    dashboards = _dashboards()
    assert set(EXPECTED) <= set(dashboards)
    uids = [d.get("uid") for d in dashboards.values()]
    titles = [d.get("title") for d in dashboards.values()]
    assert all(isinstance(u, str) and u for u in uids), uids
    assert all(isinstance(t, str) and t for t in titles), titles
    assert len(set(uids)) == len(uids), f"duplicate uids: {uids}"
    assert len(set(titles)) == len(titles), f"duplicate titles: {titles}"
    for name, dashboard in dashboards.items():
        assert isinstance(dashboard.get("schemaVersion"), int), name
        ids = [p.get("id") for p in _panels(dashboard)]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids {ids}"
        boxes: list[tuple[str, set[tuple[int, int]]]] = []
        for panel in _panels(dashboard):
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{name}: {_label(panel)} overflows the grid"
            cells = {
                (x, y)
                for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])
            }
            for other, taken in boxes:
                assert not cells & taken, f"{name}: {_label(panel)} overlaps {other}"
            boxes.append((_label(panel), cells))


def test_every_panel_has_a_query() -> None:
    empty = [
        f"{name}: {_label(panel)} has no target with an expression"
        for name, dashboard in _dashboards().items()
        for panel in _data_panels(dashboard)
        if not any(str(t.get("expr", "")).strip() for t in panel.get("targets", []))
    ]
    assert not empty, "\n".join(empty)


def test_every_query_names_only_exported_series() -> None:
    known = exported_series() | SCRAPE_SERIES
    problems: list[str] = []
    for query in _queries():
        named = _series(_code(query.expr))
        if not named:
            problems.append(f"{query}: names no exported series in {query.expr!r}")
        problems.extend(
            f"{query}: {series} is not exported by any service"
            for series in named
            if series not in known
        )
    assert not problems, "\n".join(problems)


def test_every_label_a_query_uses_is_on_its_series() -> None:
    problems = [
        f"{query}: {problem}"
        for query in _queries()
        for problem in _label_problems(_code(query.expr))
    ]
    assert not problems, "\n".join(problems)


def test_every_variable_a_query_uses_is_defined() -> None:
    problems: list[str] = []
    for name, dashboard in _dashboards().items():
        defined = {v.get("name") for v in dashboard.get("templating", {}).get("list", [])}
        for query in (q for q in _queries() if q.dashboard == name):
            for braced, bare in VARIABLE.findall(query.expr):
                variable = braced or bare
                if not variable.startswith("__") and variable not in defined:
                    problems.append(f"{query}: ${variable} is not a variable of the dashboard")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------- the checks themselves


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ('sum by (route) (rate(streamops_http_requests_total{route=~"$route"}[5m]))', None),
        ("sum(rate(streamops_http_requests_total[5m])) by (status)", None),
        ("sum by (model) (rate(streamops_http_requests_total[5m]))", "by (model)"),
        ("sum(rate(streamops_http_request_seconds_count[5m])) by (le)", "by (le)"),
        ('streamops_feature_psi{model="m", dataset="d"}', "matcher label 'dataset'"),
        ('up{job="predictor"}', None),
        ('up{stream="x"}', "matcher label 'stream'"),
        ("label_values(streamops_stream_length, group)", "label_values() asks for 'group'"),
        ('streamops_dead_letters{stream="{not a selector}"}', None),
        ("by (route) streamops_http_requests_total", "cannot tell what a grouping"),
    ],
)
def test_the_label_check_sees_matchers_groupings_and_label_values(
    expr: str, problem: str | None
) -> None:
    found = list(_label_problems(_code(expr)))
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1
        assert problem in found[0]


def test_the_labels_are_known_for_every_exported_series() -> None:
    assert set(labels_by_series()) == set(exported_series())
    assert labels_by_series()["streamops_feature_psi"] == {"model", "version", "feature"}
    assert "le" in labels_by_series()["streamops_prediction_probability_bucket"]


def test_the_series_check_sees_unknown_and_scrape_series() -> None:
    assert _series(_code('sum(rate(streamops_nope_total{job="up"}[5m])) + up')) == [
        "streamops_nope_total",
        "up",
    ]
    assert "streamops_nope_total" not in exported_series()
