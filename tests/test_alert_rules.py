"""deploy/prometheus/alerts.yml: the rules parse, and name what workers really export.

The metric names are checked against a real worker's /metrics (its ``# TYPE``
lines: a labelled counter shows there before its first sample). Where
``promtool`` is installed (Debian: the prometheus package), it checks the
rules and runs alerts.test.yml, which feeds series and expects each alert to
fire when it should and not before.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from forwarder import Forwarder
from forwarder.redis_server import free_port
from tests.conftest import capture_event, wait_until

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
#: PromQL words that are not metric names.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan"}


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((RULES / "alerts.yml").read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The series an expression reads: identifiers that are not functions or keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    names = set()
    for found in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)\s*(\()?", text):
        name, call = found.groups()
        if not call and name.lower() not in KEYWORDS:
            names.add(name)
    return names


def test_rules_have_what_an_on_call_person_needs() -> None:
    found = rules()
    assert len(found) >= 6
    names = [r["alert"] for r in found]
    assert len(set(names)) == len(names)
    for rule in found:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        assert metric_names(rule["expr"]), rule["alert"]
    # The alerts the issue asks for: DLQ growth, breaker open, queue age.
    assert {"DistinctForwarderDeadLetters", "DistinctForwarderBreakerOpen",
            "DistinctForwarderQueueOld"} <= set(names)


def test_metric_names_are_read_from_expressions() -> None:
    assert metric_names('sum(increase(a_total{status=~"401|403"}[5m])) > 0') == {"a_total"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(h_bucket[10m])))") == {
        "h_bucket"}
    assert metric_names("max(g) == 1 and on (x) absent(other)") == {"g", "other"}


def exported_series(metrics_text: str) -> set[str]:
    """Every series name the exposition declares, from its # TYPE lines."""
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_count", "_sum"],
                "summary": ["_count", "_sum", ""]}
    names = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            base = name.removesuffix("_total") if kind == "counter" else name
            names.update(base + suffix for suffix in suffixes.get(kind, [""]))
    return names


def test_every_expression_names_metrics_a_real_worker_exports(settings, sandbox, start_worker
                                                              ) -> None:
    port = free_port()
    start_worker(env={"FORWARDER_METRICS_PORT": str(port)})
    # Distinct down: retries pile up, the breaker opens and holds the due ones back.
    sandbox.faults.update({"outage_seconds": 120})
    fwd = Forwarder(settings=settings)
    for i in range(25):
        fwd.capture(capture_event(i))

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return str(answer.read().decode())

    def value(text: str, name: str) -> float | None:
        found = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(found.group(1)) if found else None

    text = wait_until(lambda: (t := scrape()) and value(t, "distinct_forwarder_breaker_open")
                      == 1.0 and (value(t, "distinct_forwarder_retry_due") or 0) > 0 and t,
                      60, 0.5, "the breaker open, retries due and held back")
    assert value(text, "distinct_forwarder_queue_oldest_age_seconds") is not None
    exported = exported_series(text)
    for rule in rules():
        missing = metric_names(rule["expr"]) - exported
        assert not missing, f"{rule['alert']} reads {missing}, which no worker exports"


def _promtool() -> str:
    found = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not found:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus, or "
                    "PROMTOOL=/path/to/promtool)")
    return found


def test_promtool_checks_the_rules_and_their_unit_tests() -> None:
    promtool = _promtool()
    check = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=RULES,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(rules())} rules found" in check.stdout
    test = subprocess.run([promtool, "test", "rules", "alerts.test.yml"], cwd=RULES,
                          capture_output=True, text=True, timeout=60)
    assert test.returncode == 0, test.stdout + test.stderr
