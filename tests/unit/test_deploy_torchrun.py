"""deploy/k8s/workers-torchrun.yaml: the torchrun launch agrees with the servers (ranks =
--workers, shard list), its rendezvous endpoint names pod 0 through the headless Service,
torchrun's own parser and the training loop's parser accept the args, and the per-rank
TLS wrapper hands each rank its own certificate. (tests/unit/test_deploy.py validates the
file against the Kubernetes schemas with the others.)"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
SCRIPT = "/src/examples/embed_existing_loop.py"  # where the Dockerfile puts the example


def _kinds(*names: str) -> dict[str, dict[str, Any]]:
    docs = [d for name in names for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def _flag(args: list[str], flag: str) -> str:
    [value] = [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]
    return value


def _torchrun() -> tuple[dict[str, Any], dict[str, Any], Any]:
    """(the Job, its Service, torchrun's parsed args)."""
    from torch.distributed.run import get_args_parser

    kinds = _kinds("workers-torchrun.yaml")
    job, service = kinds["Job/ps-torchrun"], kinds["Service/ps-torchrun"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["torchrun"]
    return job, service, get_args_parser().parse_args(container["args"])


def test_torchrun_job_matches_the_servers() -> None:
    job, _, run = _torchrun()
    servers = _kinds("ps-statefulset.yaml")["StatefulSet/ps"]
    server_args = servers["spec"]["template"]["spec"]["containers"][0]["args"]
    nnodes, nproc = int(run.nnodes), int(run.nproc_per_node)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == nnodes
    assert nnodes * nproc == int(_flag(server_args, "--workers"))  # WORLD_SIZE ranks

    from examples.embed_existing_loop import build_parser

    assert run.no_python and run.training_script == "sh"
    dash_c, script, zero, *loop_args = run.training_script_args
    assert (dash_c, zero) == ("-c", "sh") and SCRIPT in script
    loop = build_parser().parse_args(loop_args)
    shards = [f"ps-{i}.ps:50051" for i in range(servers["spec"]["replicas"])]
    assert loop.servers.split(",") == shards


def test_rendezvous_endpoint_is_pod_zero_through_the_headless_service() -> None:
    job, service, run = _torchrun()
    pod = job["spec"]["template"]
    assert run.rdzv_backend == "c10d"
    host, port = run.rdzv_endpoint.rsplit(":", 1)
    # Indexed Job pods are named (and get the hostname) JOB-INDEX; `subdomain` makes
    # JOB-INDEX.SERVICE resolve to the pod.
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert pod["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    [rdzv] = service["spec"]["ports"]
    [container_port] = pod["spec"]["containers"][0]["ports"]
    assert int(port) == rdzv["port"] == container_port["containerPort"]
    assert rdzv["targetPort"] == container_port["name"]


def test_the_dockerfile_ships_the_example() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "WORKDIR /src" in text and "COPY examples ./examples" in text
    assert "examples" not in (REPO / ".dockerignore").read_text().split()


def test_each_rank_gets_its_own_certificate_from_the_mounted_secret(tmp_path: Path) -> None:
    """Run the pod's `sh -c` wrapper as torchrun would (RANK set per process), with a
    stand-in `python` that prints what it was given."""
    job, _, run = _torchrun()
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    [mount] = container["volumeMounts"]
    [volume] = pod["volumes"]
    assert mount["readOnly"] and volume["name"] == mount["name"]
    assert volume["secret"]["secretName"] == "paramserver-worker-tls"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PARAMSERVER_TLS_CA"] == f"{mount['mountPath']}/ca.crt"

    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "$PARAMSERVER_TLS_CERT $PARAMSERVER_TLS_KEY $*"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    for rank in (0, 3):
        done = subprocess.run(["sh", *run.training_script_args],
                              env={"PATH": f"{tmp_path}:{os.environ['PATH']}", "RANK": str(rank)},
                              capture_output=True, text=True, timeout=10, check=True)
        cert, key, *argv = done.stdout.split()
        assert cert == f"{mount['mountPath']}/rank-{rank}.crt"  # attach's id: rank-RANK
        assert key == f"{mount['mountPath']}/rank-{rank}.key"
        assert argv == [SCRIPT, *run.training_script_args[3:]]
    assert not re.search(r"\$\(RANK\)", str(run.training_script_args))  # not the kubelet's


PYTORCHJOB = REPO / "deploy" / "k8s-kubeflow" / "workers-pytorchjob.yaml"


def _pytorchjob() -> dict[str, Any]:
    [job] = [d for d in yaml.safe_load_all(PYTORCHJOB.read_text()) if d]
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    return job


def test_pytorchjob_pod_template_validates_against_the_core_schemas() -> None:
    """The CRD has no schema here; its pod template is a core PodTemplateSpec."""
    import kubernetes_validate

    from tests.unit.test_deploy import VERSIONS

    template = _pytorchjob()["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]
    wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "worker"},
               "template": template}
    for version in VERSIONS:
        kubernetes_validate.validate(wrapped, version, strict=True)


def test_pytorchjob_runs_the_torchrun_manifests_ranks(monkeypatch: Any) -> None:
    """With the variables the operator sets in elastic mode, torchrun's parser gives 2
    nodes x 2 processes = the servers' --workers, over a c10d rendezvous; the rest of the
    container is the Indexed Job's (same loop, TLS wrapper, Secret)."""
    from torch.distributed.run import get_args_parser

    job = _pytorchjob()
    policy, worker = job["spec"]["elasticPolicy"], job["spec"]["pytorchReplicaSpecs"]["Worker"]
    assert policy["minReplicas"] == policy["maxReplicas"] == worker["replicas"]
    operator_env = {"PET_NNODES": f"{policy['minReplicas']}:{policy['maxReplicas']}",
                    "PET_RDZV_BACKEND": policy["rdzvBackend"],
                    "PET_RDZV_ENDPOINT": f"{job['metadata']['name']}-worker-0:23456",
                    "PET_MAX_RESTARTS": str(policy["maxRestarts"])}
    for name, value in operator_env.items():
        monkeypatch.setenv(name, value)
    pod = worker["template"]["spec"]
    [container] = pod["containers"]
    assert container["name"] == "pytorch" and container["command"] == ["torchrun"]
    run = get_args_parser().parse_args(container["args"])  # reads PET_* as defaults
    assert run.rdzv_backend == "c10d" and run.nnodes == "2:2"
    servers = _kinds("ps-statefulset.yaml")["StatefulSet/ps"]
    server_args = servers["spec"]["template"]["spec"]["containers"][0]["args"]
    assert worker["replicas"] * int(run.nproc_per_node) == int(_flag(server_args, "--workers"))

    indexed, _, indexed_run = _torchrun()
    indexed_pod = indexed["spec"]["template"]["spec"]
    [indexed_container] = indexed_pod["containers"]
    assert run.no_python and run.training_script == indexed_run.training_script
    assert run.training_script_args == indexed_run.training_script_args
    for key in ("image", "env", "volumeMounts", "resources"):
        assert container[key] == indexed_container[key], key
    assert pod["volumes"] == indexed_pod["volumes"]
    assert pod["securityContext"] == indexed_pod["securityContext"]
