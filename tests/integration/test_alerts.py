"""The alerting rules: valid for Prometheus, each tested by promtool, each with its runbook section;
and compose's Prometheus configuration, valid with them.

``promtool`` comes with Debian's ``prometheus`` package (``.ci/run`` installs it); without it the
promtool tests are skipped, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards import metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = metrics.ALERTS
RULE_TESTS = RULES.with_name("alerts.test.yaml")
RUNBOOK = ROOT / "docs" / "runbook.md"
PROMETHEUS_CONFIG = ROOT / "dashboards" / "prometheus.yml"
RULE_NAMES = [rule["alert"] for rule in metrics.alert_rules()]
SEVERITIES = {"critical", "warning", "info"}


def _promtool() -> str:
    found = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").is_file() else None)
    if found is None:
        message = "promtool is missing: apt-get install -y prometheus (Debian's package carries it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(f"{message}; under CI=true this test fails instead")
    return found


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, check=False)


def _rule_cases() -> list[dict[str, Any]]:
    """Every ``alert_rule_test`` entry of ``alerts.test.yaml``, across its tests."""
    document = yaml.safe_load(RULE_TESTS.read_text())
    return [case for test in document["tests"] for case in test.get("alert_rule_test", [])]


def _anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes of the headings: lower case, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_promtool_checks_the_rules() -> None:
    result = _run("check", "rules", RULES)
    assert result.returncode == 0, f"promtool check rules:\n{result.stdout}{result.stderr}"
    assert f"SUCCESS: {len(RULE_NAMES)} rules found" in result.stdout


def test_promtool_checks_the_prometheus_config_and_the_rules_it_loads() -> None:
    result = _run("check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, f"promtool check config:\n{result.stdout}{result.stderr}"
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert f"SUCCESS: {len(RULE_NAMES)} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = _run("test", "rules", RULE_TESTS)
    assert result.returncode == 0, f"promtool test rules:\n{result.stdout}{result.stderr}"


def test_every_alert_fires_in_one_case_and_stays_quiet_in_another() -> None:
    firing = {case["alertname"] for case in _rule_cases() if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in _rule_cases() if not case.get("exp_alerts")}
    assert set(RULE_NAMES) <= firing, f"never seen firing: {sorted(set(RULE_NAMES) - firing)}"
    assert set(RULE_NAMES) <= quiet, f"never seen quiet: {sorted(set(RULE_NAMES) - quiet)}"
    assert {case["alertname"] for case in _rule_cases()} <= set(RULE_NAMES), "a test names no alert"


MUTATIONS = {"always fires": "vector(1)", "never fires": "vector(1) == 0"}


@pytest.fixture(scope="module")
def mutants(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], bool]:
    """Whether ``alerts.test.yaml`` still passes with one alert's expression replaced, per mutation.

    One folder per (mutation, alert) with the changed rules beside a copy of the tests, all run by a
    single promtool call (each start costs a second).
    """
    folders: dict[Path, tuple[str, str]] = {}
    for mutation, expr in MUTATIONS.items():
        for name in RULE_NAMES:
            folder = tmp_path_factory.mktemp(f"{mutation.replace(' ', '-')}-{name}")
            document = yaml.safe_load(RULES.read_text())
            for group in document["groups"]:
                for rule in group["rules"]:
                    if rule.get("alert") == name:
                        rule["expr"] = expr
            (folder / RULES.name).write_text(yaml.safe_dump(document, sort_keys=False))
            shutil.copy(RULE_TESTS, folder / RULE_TESTS.name)
            folders[folder / RULE_TESTS.name] = (mutation, name)
    result = _run("test", "rules", *folders)
    outcomes: dict[tuple[str, str], bool] = {}
    for section in result.stdout.split("Unit Testing:")[1:]:
        path, _, report = section.partition("\n")
        outcomes[folders[Path(path.strip())]] = report.lstrip().startswith("SUCCESS")
    assert set(outcomes) == set(folders.values()), (
        f"promtool did not report every file:\n{result.stdout}{result.stderr}"
    )
    return outcomes


@pytest.mark.parametrize("mutation", MUTATIONS)
@pytest.mark.parametrize("name", RULE_NAMES)
def test_the_unit_tests_catch_a_broken_alert(name: str, mutation: str, mutants: dict[tuple[str, str], bool]) -> None:
    """A quiet case notices the alert firing on a healthy system; a firing case notices it silent."""
    assert not mutants[mutation, name], (
        f"{name} could be replaced by one that {mutation} and alerts.test.yaml would pass"
    )


@pytest.mark.parametrize("rule", list(metrics.alert_rules()), ids=RULE_NAMES)
def test_every_alert_says_what_it_is_and_where_its_runbook_is(rule: dict[str, Any]) -> None:
    assert re.fullmatch(r"Notifier[A-Z]\w+", rule["alert"]), rule["alert"]
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    page, _, anchor = annotations["runbook_url"].partition("#")
    assert page == "docs/runbook.md"
    assert anchor == rule["alert"].lower()
    assert anchor in _anchors(RUNBOOK.read_text()), f"docs/runbook.md has no section {rule['alert']}"


def test_every_runbook_section_belongs_to_an_alert() -> None:
    sections = re.findall(r"^## (\S+)\s*$", RUNBOOK.read_text(), flags=re.MULTILINE)
    assert sections == RULE_NAMES, "docs/runbook.md's sections and alerts.yaml's alerts differ (or their order)"


def test_every_runbook_link_points_at_a_section() -> None:
    text = RUNBOOK.read_text()
    links = set(re.findall(r"\]\(#([\w-]+)\)", text))
    assert links <= _anchors(text), sorted(links - _anchors(text))


def test_alert_names_are_unique() -> None:
    assert len(RULE_NAMES) == len(set(RULE_NAMES))
