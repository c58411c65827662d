"""Write deploy/grafana/paramserver.json, the Grafana dashboard of the Prometheus metrics
(`serve --metrics-port`, `attach(metrics_port=)`): `python tools/grafana_dashboard.py`.

Kept as code so the panels stay few and regular; the JSON is committed (import it in
Grafana: Dashboards > New > Import) and a unit test checks every query names a metric we
export.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "paramserver.json"
RATE = "[$__rate_interval]"


def _quantile(q: float, histogram: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({histogram}_bucket{RATE})))"


# (title, unit, [(query, legend)])
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Steps per second", "ops", [(f"rate(paramserver_steps_total{RATE})", "{{instance}}")]),
    ("Model version", "none", [("paramserver_model_version", "{{instance}}")]),
    ("Live workers", "none", [("paramserver_live_workers", "live {{instance}}"),
                              ("paramserver_expected_workers", "expected {{instance}}")]),
    ("Evictions and rejoins", "none", [
        (f"increase(paramserver_evictions_total{RATE})", "evicted {{instance}}"),
        (f"increase(paramserver_rejoins_total{RATE})", "rejoined {{instance}}")]),
    ("RPC latency p50 / p99", "s", [
        (_quantile(0.5, "paramserver_rpc_duration_seconds", "method"), "p50 {{method}}"),
        (_quantile(0.99, "paramserver_rpc_duration_seconds", "method"), "p99 {{method}}")]),
    ("Server bytes per second", "Bps", [
        (f"sum by (method) (rate(paramserver_rpc_received_bytes_total{RATE}))", "in {{method}}"),
        (f"sum by (method) (rate(paramserver_rpc_sent_bytes_total{RATE}))", "out {{method}}")]),
    ("RPC errors per second", "ops", [
        (f'sum by (method, code) (rate(paramserver_rpc_calls_total{{code!="OK"}}{RATE}))',
         "{{method}} {{code}}")]),
    ("Worker push / pull bytes per second by codec", "Bps", [
        (f"sum by (codec) (rate(paramserver_worker_push_bytes_total{RATE}))", "push {{codec}}"),
        (f"sum by (codec) (rate(paramserver_worker_pull_bytes_total{RATE}))", "pull {{codec}}")]),
    ("Worker step latency p50 / p99 by codec", "s", [
        (_quantile(0.5, "paramserver_worker_step_seconds", "codec"), "p50 {{codec}}"),
        (_quantile(0.99, "paramserver_worker_step_seconds", "codec"), "p99 {{codec}}")]),
    ("Compression ratio", "none", [("paramserver_worker_compression_ratio", "{{instance}}")]),
    ("Pending pushes and held parts", "bytes", [
        ("paramserver_held_part_bytes", "held bytes {{instance}}"),
        ("paramserver_pending_pushes", "pending pushes {{instance}}")]),
    ("SSP lead (staleness)", "none", [("paramserver_staleness_max_lead", "{{instance}}")]),
    ("Checkpoint age and duration", "s", [
        ("paramserver_checkpoint_age_seconds", "age {{instance}}"),
        ("paramserver_checkpoint_duration_seconds", "duration {{instance}}")]),
    ("Federated rounds and dropouts", "none", [
        (f"increase(paramserver_federated_rounds_total{RATE})", "rounds {{instance}}"),
        (f"increase(paramserver_federated_dropouts_total{RATE})", "dropouts {{instance}}"),
        (f"increase(paramserver_federated_skipped_rounds_total{RATE})", "skipped {{instance}}")]),
]


def dashboard() -> dict[str, object]:
    panels = []
    for index, (title, unit, queries) in enumerate(PANELS):
        panels.append({
            "id": index + 1, "type": "timeseries", "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                        for i, (expr, legend) in enumerate(queries)],
        })
    return {
        "title": "paramserver", "uid": "paramserver", "schemaVersion": 39, "version": 1,
        "tags": ["paramserver"], "time": {"from": "now-30m", "to": "now"}, "refresh": "10s",
        "templating": {"list": [{"name": "datasource", "type": "datasource",
                                 "query": "prometheus", "label": "Prometheus"}]},
        "panels": panels,
    }


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dashboard(), indent=1) + "\n")
    print(f"wrote {OUT}")
