"""prometheus/skyguard.rules.yml: valid (`promtool check rules`), its unit tests pass (`promtool test rules`), and
every skyguard_* series it names is one the daemon exports (a renamed metric would silence an alert for good)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from tests.conftest import ROOT, skip_or_fail
from tests.unit.test_prometheus_export import FakeCols, FakeSnapshot, _exporter_status, _metrics

RULES = ROOT / "prometheus" / "skyguard.rules.yml"
RULE_TESTS = ROOT / "prometheus" / "skyguard.rules.test.yml"
ALERTS = {"SkyguardDown", "SkyguardTargetMissing", "SkyguardStalled", "SkyguardEventsLost", "SkyguardIpfixRecordsLost",
          "SkyguardFlowTableNearFull", "SkyguardFlowInsertFailures", "SkyguardPolicyReloadFailed",
          "SkyguardXdpGenericMode", "SkyguardXdpDetached"}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        skip_or_fail("promtool is missing (Debian package prometheus; `make setup`)")
    return path


def test_promtool_check_rules(promtool):
    r = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in r.stdout, r.stdout


def test_promtool_test_rules(promtool):
    # run from the rules' directory: the test file names the rule file relative to itself
    r = subprocess.run([promtool, "test", "rules", RULE_TESTS.name], cwd=RULES.parent, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_every_alert_has_a_unit_test():
    defined = set(re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.M))
    tested = set(re.findall(r"^\s*alertname: (\w+)$", RULE_TESTS.read_text(), re.M))
    assert defined == ALERTS
    assert tested == defined


def test_rules_name_only_exported_series():
    # with a flow exporter configured: the IPFIX series exist only then
    _m, text = _metrics(FakeSnapshot(FakeCols(np.zeros(1, np.uint8)), 1, 1), ipfix=_exporter_status())
    exported = set(re.findall(r"^(skyguard_\w+?)(?:\{| )", text, re.M))
    named = set(re.findall(r"\b(skyguard_[a-z_]+)", RULES.read_text())) - {"skyguard_"}
    assert named, "the rules name no skyguard series"
    assert named <= exported, named - exported
