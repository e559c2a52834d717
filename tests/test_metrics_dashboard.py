"""The Grafana dashboard stays in step with the metrics this service and Ray Serve actually export."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from serve_app.observability import metrics

DASHBOARD = Path(__file__).resolve().parent.parent / "configs" / "grafana" / "csm-serve.json"
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def referenced(prefix: str) -> set[str]:
    return {m for e in exprs() for m in re.findall(rf"\b({prefix}[a-z0-9_]+)", e)}


def test_dashboard_is_importable_grafana_json() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in board["templating"]["list"]} >= {"datasource", "application"}
    for expr in exprs():
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr


def test_every_csm_metric_is_on_the_dashboard_and_every_csm_series_exists() -> None:
    defined = {m.name: m for m in vars(metrics).values() if isinstance(m, metrics.Metric)}
    series = {m.name + s for m in defined.values() for s in SUFFIXES[m.kind]}
    used = referenced("csm_")
    assert used <= series, f"dashboard names series nobody exports: {used - series}"
    unused = {n for n in defined if not any(u.startswith(n) for u in used)}
    assert not unused, f"metrics missing from the dashboard: {unused}"
    # csm series are matched under both names: this process's and Ray's export (ray_csm_*).
    assert all('__name__=~"(ray_)?csm_' in e for e in exprs() if "csm_" in e)


def test_ray_serve_series_on_the_dashboard_exist_in_this_ray() -> None:
    serve_private = Path(pytest.importorskip("ray.serve").__file__).parent / "_private"
    source = "\n".join(p.read_text() for p in serve_private.glob("*.py"))
    # Metric names in Ray's source, f-string ones (f"serve_num_{protocol_name}_requests") as patterns.
    names = [re.compile(re.sub(r"\\{[a-z_]+\\}", "[a-z]+", re.escape(n)))
             for n in re.findall(r'f?"(serve_[a-z_{}]+)"', source)]
    used = referenced("ray_serve_")
    assert used, "the dashboard should show Ray Serve's own metrics"
    for series in used:
        base = re.sub(r"_(total|bucket|sum|count)$", "", series).removeprefix("ray_")
        assert any(n.fullmatch(base) for n in names), f"{series}: Ray Serve defines no metric {base!r}"
