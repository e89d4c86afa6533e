"""deploy/monitoring: the alerts are valid Prometheus rules (promtool check rules), each fires on
the series it is about and stays quiet otherwise (promtool test rules), and every metric they
read is one the controller exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from reconciler.run.metrics import Metrics
from tests.system import require_executable

RULE = Path(__file__).resolve().parent.parent / "deploy" / "monitoring" / "prometheusrule.yaml"
INSTALL = "apt-get install prometheus (promtool; tests/system/packages-monitoring.txt)"

#: promtool unit tests: input series over time, and the alerts expected at given times.
UNIT_TESTS: dict[str, Any] = {
    "rule_files": ["rules.yaml"],
    "evaluation_interval": "1m",
    "tests": [
        {"interval": "1m",
         "input_series": [
             {"series": "email_reconciler_accounts{instance=\"a\"}", "values": "10x60"},
             {"series": "email_reconciler_accounts_ready{instance=\"a\"}", "values": "10x20 8x40"},
             {"series": "email_reconciler_oldest_probe_age_seconds{namespace=\"shop\"}",
              "values": "60+60x60"},
             {"series": "email_reconciler_oldest_probe_age_seconds{namespace=\"mail\"}",
              "values": "60x60"},
             {"series": "email_reconciler_certificate_days_remaining{namespace=\"shop\","
                        "name=\"billing\"}", "values": "13x120"},
             {"series": "email_reconciler_certificate_days_remaining{namespace=\"shop\","
                        "name=\"alerts\"}", "values": "90x120"},
             {"series": "email_reconciler_api_requests_total{verb=\"patch\",code=\"200\"}",
              "values": "0+10x60"},
             {"series": "email_reconciler_api_requests_total{verb=\"patch\",code=\"503\"}",
              "values": "0+0x20 0+10x40"},
         ],
         "alert_rule_test": [
             {"eval_time": "19m", "alertname": "EmailAccountsNotReady", "exp_alerts": []},
             {"eval_time": "55m", "alertname": "EmailAccountsNotReady", "exp_alerts": [
                 {"exp_labels": {"severity": "warning"}}]},
             {"eval_time": "30m", "alertname": "EmailAccountProbesStale", "exp_alerts": [
                 {"exp_labels": {"severity": "warning", "namespace": "shop"}}]},
             {"eval_time": "10m", "alertname": "EmailAccountProbesStale", "exp_alerts": []},
             {"eval_time": "90m", "alertname": "EmailServerCertificateExpiringSoon",
              "exp_alerts": [{"exp_labels": {"severity": "warning", "namespace": "shop",
                                             "name": "billing"}}]},
             {"eval_time": "30m", "alertname": "EmailReconcilerApiErrors", "exp_alerts": []},
             {"eval_time": "50m", "alertname": "EmailReconcilerApiErrors", "exp_alerts": [
                 {"exp_labels": {"severity": "warning"}}]},
             {"eval_time": "50m", "alertname": "EmailReconcilerMetricsAbsent", "exp_alerts": []},
         ]},
        {"interval": "1m",
         "input_series": [{"series": "up{job=\"other\"}", "values": "1x30"}],
         "alert_rule_test": [
             {"eval_time": "20m", "alertname": "EmailReconcilerMetricsAbsent",
              "exp_alerts": [{"exp_labels": {"severity": "warning"}}]}]},
    ],
}


def _groups() -> dict[str, Any]:
    rule = yaml.safe_load(RULE.read_text())
    assert rule["kind"] == "PrometheusRule" and rule["apiVersion"] == "monitoring.coreos.com/v1"
    return {"groups": rule["spec"]["groups"]}


def test_rules_check_and_every_alert_fires_when_it_should(tmp_path: Path) -> None:
    promtool = require_executable("promtool", INSTALL)
    (tmp_path / "full.yaml").write_text(yaml.safe_dump(_groups()))
    # The unit tests judge when each alert fires; promtool would also compare the annotations
    # (templated text) exactly, so they run on the rules without them. `check` reads them all.
    bare = _groups()
    for group in bare["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(bare))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(UNIT_TESTS))
    check = subprocess.run([promtool, "check", "rules", "full.yaml"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run([promtool, "test", "rules", "tests.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    tested = {t["alertname"] for case in UNIT_TESTS["tests"] for t in case["alert_rule_test"]}
    alerts = {r["alert"] for g in _groups()["groups"] for r in g["rules"]}
    assert alerts == tested, "every alert needs a unit test above"


def test_rules_read_only_metrics_the_controller_exports() -> None:
    exported = {m.name for m in Metrics().registry.collect()}
    exported |= {f"{name}_total" for name in exported}
    used = set()
    for group in _groups()["groups"]:
        for rule in group["rules"]:
            used |= set(re.findall(r"\bemail_reconciler_[a-z_]+", rule["expr"]))
    assert used and used <= exported, sorted(used - exported)
