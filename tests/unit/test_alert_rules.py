"""The alert rules (deploy/alerts.yml) with Prometheus's own tool: they load, and each alert
fires when it should and stays silent when it should not (tests/alerts/alerts_test.yml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "alerts.yml"
RULE_TESTS = ROOT / "tests" / "alerts" / "alerts_test.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus.yml"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: tools/system-deps.sh installs Debian's prometheus package"
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_the_rules_and_the_scrape_config_load() -> None:
    checked = _promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = _promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert config.returncode == 0, config.stdout + config.stderr


def test_every_alert_fires_and_stays_silent_as_its_unit_tests_say() -> None:
    result = _promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_a_severity_and_a_runbook_section() -> None:
    rules = [r for group in yaml.safe_load(RULES.read_text())["groups"] for r in group["rules"]]
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")  # a firing case, not only silent ones
    }
    operations = (ROOT / "docs" / "operations.md").read_text().lower()
    for rule in rules:
        assert rule["alert"] in tested, f"{rule['alert']} has no test where it fires"
        assert rule["labels"]["severity"] in ("critical", "warning")
        page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert page == "docs/operations.md"
        assert f"### {rule['alert'].lower()}" in operations, f"no runbook section for {rule['alert']}"
        assert anchor == rule["alert"].lower()
