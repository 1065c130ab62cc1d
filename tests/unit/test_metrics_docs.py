"""docs/operations.md lists every metric the sidecar exports, checked against the registry: the
collectors of every part (decisions, IdP guard, fleet, ports, process) registered on one registry,
each with its type, labels and help text. A metric added in the code and not in the table (or a
row left for one removed) fails here, with the table to paste."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase

from sidecar.fleet.store import FleetMetrics
from sidecar.fronts.connections import PortMetrics
from sidecar.idp.guard import GuardMetrics
from sidecar.support.metrics import LatencyHistogram, Metrics

DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
BEGIN, END = "<!-- metrics:begin -->", "<!-- metrics:end -->"
PROCESS = ("| `process_*` | counter, gauge | | CPU seconds, resident and virtual memory, open and maximum file "
           "descriptors, start time (prometheus_client's process collector) |")


def every_metric() -> Metrics:
    metrics = Metrics()
    GuardMetrics(metrics)
    FleetMetrics(metrics)
    PortMetrics(metrics.registry)
    return metrics


def expected_table() -> str:
    metrics = every_metric()
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    collectors = metrics.registry._collector_to_names
    for collector in collectors:
        if isinstance(collector, MetricWrapperBase):
            kind, labels = collector._type, collector._labelnames
            name = collector._name + ("_total" if kind == "counter" else "")
            doc = collector._documentation
        elif isinstance(collector, LatencyHistogram):
            (family,) = collector.describe()
            kind, name, labels, doc = "histogram", family.name, collector._labels, family.documentation
        else:
            continue  # the fold (no metric) and the process collector (one row below)
        rows.append(f"| `{name}` | {kind} | {', '.join(f'`{label}`' for label in labels)} | {doc} |")
    return "\n".join([*rows[:2], *sorted(rows[2:]), PROCESS]) + "\n"


def test_the_metrics_table_of_the_operations_docs_is_the_registry() -> None:
    text = DOCS.read_text(encoding="utf-8")
    between = text.partition(BEGIN)[2].partition(END)[0]
    assert between == "\n" + expected_table(), f"docs/operations.md, between the metrics markers:\n{expected_table()}"


def test_the_registry_exports_build_info_process_metrics_and_no_created_series() -> None:
    text = generate_latest(every_metric().registry).decode()
    assert 'sidecar_build_info{python="' in text and "process_cpu_seconds_total" in text
    assert "_created" not in text
