"""deploy/: every Kubernetes manifest validates offline against the Kubernetes schemas
(kubernetes-validate, strict: unknown fields fail), the manifests agree with each other
(shard count, worker count, grace period), and the Grafana dashboard queries only metrics
we export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())  # oldest supported, newest
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _by_kind() -> dict[str, dict[str, Any]]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for p in MANIFESTS for d in _documents(p)}


def _flag(args: list[str], flag: str) -> str:
    [value] = [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]
    return value


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_offline(path: Path, version: str) -> None:
    for document in _documents(path):
        kubernetes_validate.validate(document, version, strict=True)


def test_the_validator_refuses_a_wrong_manifest() -> None:
    document = _documents(K8S / "ps-statefulset.yaml")[0]
    document["spec"]["replica"] = 2  # a typo of `replicas`
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(document, VERSIONS[-1], strict=True)


def test_the_manifests_agree() -> None:
    kinds = _by_kind()
    servers, service = kinds["StatefulSet/ps"], kinds["Service/ps"]
    job = kinds["Job/ps-workers"]
    assert servers["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"  # headless: ps-0.ps, ps-1.ps
    pod = servers["spec"]["template"]["spec"]
    server_args = pod["containers"][0]["args"]
    worker_args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    shards = _flag(worker_args, "--servers").split(",")
    assert shards == [f"ps-{i}.ps:50051" for i in range(servers["spec"]["replicas"])]
    workers = int(_flag(server_args, "--workers"))
    assert job["spec"]["completions"] == workers == int(_flag(worker_args, "--num-workers"))
    assert job["spec"]["completionMode"] == "Indexed"
    # SIGKILL must not cut the drain (--grace) or the final checkpoint after it short.
    assert pod["terminationGracePeriodSeconds"] >= float(_flag(server_args, "--grace")) + 10
    probes = pod["containers"][0]
    assert probes["readinessProbe"]["grpc"]["port"] == probes["livenessProbe"]["grpc"]["port"]
    # The kubelet's gRPC probe speaks no TLS: it asks the plaintext health-only port.
    assert probes["readinessProbe"]["grpc"]["port"] == int(_flag(server_args, "--health-port"))
    assert servers["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "checkpoints"
    assert kinds["PodDisruptionBudget/ps"]["spec"]["selector"] == servers["spec"]["selector"]


def _mounted_secret_files(pod: dict[str, Any], paths: list[str]) -> set[str]:
    """The secrets whose volume is mounted where each of `paths` lies (each path must lie
    under such a mount)."""
    container = pod["containers"][0]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    mounts = {m["mountPath"]: secrets[m["name"]] for m in container["volumeMounts"]
              if m["name"] in secrets and m.get("readOnly")}
    found = set()
    for path in paths:
        [secret] = [name for mount, name in mounts.items() if path.startswith(mount + "/")]
        found.add(secret)
    # The image runs as uid 10001: the files must be readable by its group.
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"] == 10001
    assert all(v["secret"]["defaultMode"] == 0o440 for v in pod["volumes"] if "secret" in v)
    return found


def test_the_default_manifests_use_mutual_tls_from_mounted_secrets() -> None:
    kinds = _by_kind()
    server_pod = kinds["StatefulSet/ps"]["spec"]["template"]["spec"]
    server_args = server_pod["containers"][0]["args"]
    assert "--insecure" not in server_args
    tls = [_flag(server_args, f) for f in ("--tls-cert", "--tls-key", "--tls-client-ca")]
    assert _mounted_secret_files(server_pod, tls) == {"paramserver-server-tls"}
    assert [Path(p).name for p in tls] == ["server.crt", "server.key", "ca.crt"]  # `certs`

    worker_pod = kinds["Job/ps-workers"]["spec"]["template"]["spec"]
    worker_args = worker_pod["containers"][0]["args"]
    tls = [_flag(worker_args, f) for f in ("--tls-ca", "--tls-cert", "--tls-key")]
    assert _mounted_secret_files(worker_pod, tls) == {"paramserver-worker-tls"}
    # Under mutual TLS the worker id is the certificate's name (worker-N from `certs`).
    worker_id = _flag(worker_args, "--worker-id")
    assert [Path(p).name for p in tls] == ["ca.crt", f"{worker_id}.crt", f"{worker_id}.key"]

    gpu_pod = kinds["Job/ps-workers-gpu"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in gpu_pod["containers"][0]["env"]}
    tls = [env[f"PARAMSERVER_TLS_{k}"] for k in ("CA", "CERT", "KEY")]
    assert _mounted_secret_files(gpu_pod, tls) == {"paramserver-worker-tls"}
    assert tls[1].endswith("/rank-$(RANK).crt")  # attach's worker id under RANK


def test_the_manifests_flags_are_ones_the_cli_knows() -> None:
    """The servers' and built-in workers' args parse with `paramserver`'s own parser (a
    misspelt flag would crash-loop the pods)."""
    from paramserver.cli.main import build_parser

    kinds = _by_kind()
    kubelet = {"POD_NAME": "ps-0", "JOB_COMPLETION_INDEX": "0"}  # what $(VAR) becomes
    for kind in ("StatefulSet/ps", "Job/ps-workers"):
        args = kinds[kind]["spec"]["template"]["spec"]["containers"][0]["args"]
        build_parser().parse_args([re.sub(r"\$\((\w+)\)", lambda m: kubelet[m[1]], a)
                                   for a in args])


def test_kustomization_lists_the_cpu_manifests() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    # the GPU job and the torchrun workers replace the CPU job: applied by hand
    assert listed == {p.name for p in MANIFESTS} - {"workers-job-gpu.yaml",
                                                     "workers-torchrun.yaml"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl to render kustomize")
def test_kustomize_renders() -> None:
    done = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True,
                          timeout=60, check=True)
    for document in yaml.safe_load_all(done.stdout):
        kubernetes_validate.validate(document, VERSIONS[-1], strict=True)


def test_grafana_dashboard_queries_only_exported_metrics() -> None:
    exported = set()
    for module in ("paramserver/server/metrics.py", "workers/metrics.py"):
        exported |= set(re.findall(r'"(paramserver_[a-z_]+)"', (REPO / module).read_text()))
    dashboard = json.loads((REPO / "deploy/grafana/paramserver.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"paramserver_[a-z_]+", target["expr"])}
    suffixes = ("_total", "_bucket", "_count", "_sum")
    unknown = {q for q in queried if q not in exported and not any(
        q.endswith(s) and q.removesuffix(s) in exported for s in suffixes)}
    assert not unknown
    assert len(dashboard["panels"]) >= 10


def test_grafana_dashboard_is_generated() -> None:
    from tools.grafana_dashboard import dashboard

    committed = json.loads((REPO / "deploy/grafana/paramserver.json").read_text())
    assert committed == dashboard()
