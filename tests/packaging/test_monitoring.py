"""packaging/grafana and packaging/prometheus: every metric they use is exported by a running
sip4ai's /metrics (except the PROPOSED ones, not in sip4ai/metrics.py yet), the dashboard has
the promised panels, and, where promtool is installed, the PromQL parses and the alerts fire
on the series they are meant for (promtool test rules).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.harness.ports import free_port
from tests.packaging.helpers import PACKAGING, NotifySocket, clean_env, require, run_checked


pytestmark = pytest.mark.component

DASHBOARD = PACKAGING / "grafana" / "sip4ai-dashboard.json"
RULES = PACKAGING / "prometheus" / "sip4ai-alerts.yml"
SCRAPE_CONFIG = PACKAGING / "prometheus" / "prometheus.yml"

PROPOSED_METRICS: dict[str, str] = {}
"""Used by the dashboard's latency and pacing panels, to be added to sip4ai/metrics.py.
Remove an entry once the metric exists (test_proposed_metrics_are_still_proposed says so)."""

PROMETHEUS_OWN = {"up"}
"""Series Prometheus makes itself for every scrape target."""

METRIC = re.compile(r"\b(sip4ai_[a-z0-9_]+|up)\b(?!\s*[(:])")
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m"}


# ----- what the files use -----


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p["targets"]]


def rule_exprs() -> list[str]:
    """The `expr:` values of the rules file (plain or folded `>-` YAML scalars)."""
    exprs: list[str] = []
    lines = RULES.read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped.startswith("expr:"):
            continue
        value = stripped.removeprefix("expr:").strip()
        if value in (">-", ">", "|", "|-"):
            indent = len(line) - len(line.lstrip()) + 2
            body = []
            for follow in lines[i + 1 :]:
                if follow.strip() and len(follow) - len(follow.lstrip()) < indent:
                    break
                body.append(follow.strip())
            value = " ".join(body)
        exprs.append(value)
    return exprs


def used_metrics(exprs: list[str]) -> set[str]:
    """Metric names in PromQL, without label values, strings or rule names."""
    names: set[str] = set()
    for expr in exprs:
        without_strings = re.sub(r'"[^"]*"', '""', expr)
        without_labels = re.sub(r"\{[^}]*\}", "{}", without_strings)
        names |= set(METRIC.findall(without_labels))
    return names


def family_of(name: str) -> str:
    """The metric a sample name belongs to (histogram series, counters' _total)."""
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


# ----- what sip4ai exports -----


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Sample names /metrics of a running sip4ai (API-only) has or will have: from the TYPE
    lines too, since a labelled metric shows no sample before its first label set."""
    workdir = tmp_path_factory.mktemp("metrics")
    port = free_port(udp=False)
    notify = NotifySocket(Path(tempfile.mkdtemp(prefix="sip4ai-")) / "notify.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sip4ai"],
        env=clean_env(
            API_PORT=str(port),
            SIP4AI_DATA_DIR=str(workdir / "data"),
            NOTIFY_SOCKET=str(notify.path),
        ),
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert notify.wait_for("READY=1", 20.0), "sip4ai did not start"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        proc.terminate()
        proc.communicate(timeout=15)
        notify.close()
        notify.path.parent.rmdir()
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count", name}
            else:
                names.add(name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_every_metric_used_is_exported(exported: set[str]) -> None:
    used = used_metrics(dashboard_exprs()) | used_metrics(rule_exprs())
    missing = {
        name
        for name in used - PROMETHEUS_OWN
        if name not in exported and family_of(name) not in PROPOSED_METRICS
    }
    assert not missing, f"used but not exported by /metrics: {sorted(missing)}"


def test_proposed_metrics_are_still_proposed(exported: set[str]) -> None:
    used_families = {family_of(n) for n in used_metrics(dashboard_exprs())}
    assert set(PROPOSED_METRICS) <= used_families, "a proposed metric is no longer used"
    landed = sorted(m for m in PROPOSED_METRICS if m in exported or f"{m}_bucket" in exported)
    assert not landed, f"now exported, remove from PROPOSED_METRICS: {landed}"


def test_the_alert_rules_use_no_proposed_metric() -> None:
    """Alerts must work today: only metrics that exist."""
    assert not {family_of(n) for n in used_metrics(rule_exprs())} & set(PROPOSED_METRICS)


# ----- dashboard and rules content -----


def test_dashboard_has_the_promised_panels() -> None:
    data = dashboard()
    rows = [p["title"] for p in data["panels"] if p["type"] == "row"]
    assert rows == ["Overview", "Calls", "Registration", "Latency", "Audio pacing"]
    panels = dashboard_panels()
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
    variables = {v["name"] for v in data["templating"]["list"]}
    assert variables == {"datasource", "instance"}
    exprs = " ".join(dashboard_exprs())
    for metric in ("sip4ai_active_calls", "sip4ai_calls_total", "sip4ai_sip_registered"):
        assert metric in exprs


def test_alerts_cover_registration_errors_and_restarts() -> None:
    alerts = re.findall(r"^\s*- alert: (\S+)", RULES.read_text(), flags=re.MULTILINE)
    assert {
        "Sip4aiDown",
        "Sip4aiNotRegistered",
        "Sip4aiCallErrorRate",
        "Sip4aiRestarted",
        "Sip4aiRestartLoop",
    } <= set(alerts)
    assert "sip4ai-alerts.yml" in SCRAPE_CONFIG.read_text()
    assert "job_name: sip4ai" in SCRAPE_CONFIG.read_text()


# ----- promtool (optional: Debian's prometheus package ships it) -----


@pytest.fixture
def promtool() -> str:
    """On PATH, or next to this Python (the venv's bin/, where `make` may extract it)."""
    path = shutil.which("promtool") or shutil.which(
        "promtool", path=str(Path(sys.executable).parent)
    )
    require(path is not None, "promtool not installed (`make deps` extracts it into .venv/bin)")
    assert path is not None
    return path


def test_promtool_accepts_config_and_rules(promtool: str, tmp_path: Path) -> None:
    shutil.copy2(SCRAPE_CONFIG, tmp_path / "prometheus.yml")
    shutil.copy2(RULES, tmp_path / "sip4ai-alerts.yml")
    result = run_checked([promtool, "check", "config", str(tmp_path / "prometheus.yml")])
    assert "SUCCESS: 8 rules found" in result.stdout, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_promql_parses(promtool: str, tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, as a recording rule for promtool."""
    rules = []
    for index, expr in enumerate(dashboard_exprs()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        expr = expr.replace("$instance", ".*")
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_checked([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def calls(status: str, end_reason: str) -> str:
    labels = f'direction="inbound", status="{status}", end_reason="{end_reason}"'
    return f'sip4ai_calls_total{{job="sip4ai", instance="sip:8080", {labels}}}'


def alert_test_cases() -> Iterator[dict[str, Any]]:
    sip = 'job="sip4ai", instance="sip:8080"'
    api_only = 'job="sip4ai", instance="api:8080"'
    yield {
        "interval": "1m",
        "input_series": [
            {"series": f"sip4ai_sip_registered{{{sip}}}", "values": "1 1 0x8"},
            {"series": f'sip4ai_build_info{{{sip}, sip_engine="baresip"}}', "values": "1x10"},
            {"series": f"sip4ai_sip_registered{{{api_only}}}", "values": "0x10"},
            {"series": f'sip4ai_build_info{{{api_only}, sip_engine="none"}}', "values": "1x10"},
            {"series": f"up{{{sip}}}", "values": "1x10"},
            {"series": f"up{{{api_only}}}", "values": "1 1 1 0x7"},
        ],
        "alert_rule_test": [
            {
                "eval_time": "5m",
                "alertname": "Sip4aiNotRegistered",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "critical",
                            "job": "sip4ai",
                            "instance": "sip:8080",
                        }
                    }
                ],
            },
            {"eval_time": "3m", "alertname": "Sip4aiNotRegistered", "exp_alerts": []},
            {
                "eval_time": "6m",
                "alertname": "Sip4aiDown",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "critical",
                            "job": "sip4ai",
                            "instance": "api:8080",
                        }
                    }
                ],
            },
        ],
    }
    # Uptime in seconds, scraped every minute: restarts at minute 5, 7 and 9.
    yield {
        "interval": "1m",
        "input_series": [
            {"series": f"sip4ai_uptime_seconds{{{sip}}}", "values": "0+60x4 10 70 5 65 3 63"},
        ],
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": "Sip4aiRestarted", "exp_alerts": []},
            {
                "eval_time": "6m",
                "alertname": "Sip4aiRestarted",
                "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "job": "sip4ai", "instance": "sip:8080"}}
                ],
            },
            {"eval_time": "8m", "alertname": "Sip4aiRestartLoop", "exp_alerts": []},
            {
                "eval_time": "10m",
                "alertname": "Sip4aiRestartLoop",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "critical",
                            "job": "sip4ai",
                            "instance": "sip:8080",
                        }
                    }
                ],
            },
        ],
    }
    # 2 of 10 calls per minute fail: 20 % > 10 %, for 5 minutes.
    yield {
        "interval": "1m",
        "input_series": [
            {"series": calls("failed", "provider_error"), "values": "0+2x20"},
            {"series": calls("completed", "remote_hangup"), "values": "0+8x20"},
        ],
        "alert_rule_test": [
            {
                "eval_time": "16m",
                "alertname": "Sip4aiCallErrorRate",
                "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "job": "sip4ai", "instance": "sip:8080"}}
                ],
            },
        ],
    }


def test_alerts_fire_on_the_series_they_are_for(promtool: str, tmp_path: Path) -> None:
    """promtool test rules on the real rules, minus annotations (promtool compares them
    verbatim; `promtool check rules` above checks their templates)."""
    yaml = pytest.importorskip("yaml")
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "sip4ai-alerts.yml").write_text(json.dumps(rules))
    spec = {
        "rule_files": ["sip4ai-alerts.yml"],
        "evaluation_interval": "1m",
        "tests": list(alert_test_cases()),
    }
    (tmp_path / "alerts-test.yml").write_text(json.dumps(spec))
    result = run_checked([promtool, "test", "rules", str(tmp_path / "alerts-test.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
