"""The build's monitoring as one typed model: the resolved SLOs of one spec, and every document made from them.

The compiler builds it once (`deployc.monitoring.build_monitoring`) and puts it in the EmitContext; each writer
serializes from it (Prometheus rules, promtool tests, the Grafana dashboard, CloudWatch alarms, KServe's
PrometheusRule), so no emitter reads another emitter's output.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deployc import conventions as C
from deployc.monitoring.model import BudgetSLO, DriftSLO, InputSLO
from deployc.monitoring.promtool import RULES_FILE, TESTS_FILE

RULES_PATH = f"{C.MONITORING_DIR}/{RULES_FILE}"
TESTS_PATH = f"{C.MONITORING_DIR}/{TESTS_FILE}"
DASHBOARD_PATH = f"{C.MONITORING_DIR}/grafana-dashboard.json"
CLOUDWATCH_PATH = C.CLOUDWATCH_ALARMS


@dataclass(frozen=True)
class Monitoring:
    """The SLOs of one spec, defaults filled and budgets computed, with what the generated files need."""

    name: str  # the spec's name: the `model` label of every series and the prefix of alarm names
    version: str
    spec_file: str  # for generated-file headers
    slos: tuple[BudgetSLO | DriftSLO | InputSLO, ...]

    @property
    def header(self) -> str:
        return C.GENERATED_HEADER.format(spec=self.spec_file)

    def rule_groups(self) -> list[dict[str, Any]]:
        """Recording and alerting rule groups, one set per SLO, in spec order."""
        from deployc.monitoring.inputs import input_groups
        from deployc.monitoring.rules import budget_groups
        from deployc.monitoring.stability import drift_groups

        groups: list[dict[str, Any]] = []
        for s in self.slos:
            if isinstance(s, BudgetSLO):
                groups += budget_groups(s, self.name)
            elif isinstance(s, DriftSLO):
                groups += drift_groups(s, self.name)
            else:
                groups += input_groups(s, self.name)
        return groups

    def alarms(self, endpoint_name: str, variant_name: str) -> list[dict[str, Any]]:
        """CloudWatch alarms ({logical_id, properties}) of the availability and latency SLOs."""
        from deployc.monitoring.cloudwatch import alarms_of

        return alarms_of([s for s in self.slos if isinstance(s, BudgetSLO)], endpoint_name, variant_name)

    def alarms_document(self, endpoint_name: str, variant_name: str) -> bytes:
        """cloudwatch-alarms.json: the alarms with the endpoint and variant they watch."""
        from deployc.render import dump_json

        return dump_json({"comment": self.header, "endpoint_name": endpoint_name, "variant_name": variant_name,
                          "alarms": self.alarms(endpoint_name, variant_name)})

    def files(self) -> dict[str, bytes]:
        """The monitoring folder every build with SLOs ships: rules, their promtool tests, the dashboard."""
        from deployc.monitoring.dashboard import dashboard
        from deployc.monitoring.promtests import unit_tests
        from deployc.render import dump_json, dump_yaml

        slos = list(self.slos)
        return {
            RULES_PATH: dump_yaml({"groups": self.rule_groups()}, self.header),
            TESTS_PATH: dump_yaml(unit_tests(slos, self.name, RULES_FILE), self.header),
            DASHBOARD_PATH: dump_json(dashboard(slos, self.name, self.version, self.spec_file)),
        }
