"""deploy/k8s-per-worker-tls/: a Job per worker, each pod mounting only its own worker's
key (the Indexed Job's pods all mount every worker's). The committed Jobs are the
generator's output (tools/k8s_per_worker.py), validate against the Kubernetes schemas,
parse with our CLI, and no two pods share a Secret; the overlay renders in place of the
Indexed Job where kubectl is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.unit.test_deploy import VERSIONS
from tools.k8s_per_worker import OUT, SOURCE, render

OVERLAY = OUT.parent


def _jobs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(OUT.read_text()) if d]


def _flag(args: list[str], flag: str) -> str:
    [value] = [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]
    return value


def test_the_committed_jobs_are_generated() -> None:
    assert OUT.read_text() == render(), "run: python tools/k8s_per_worker.py"


@pytest.mark.parametrize("version", VERSIONS)
def test_the_jobs_validate_offline(version: str) -> None:
    for job in _jobs():
        kubernetes_validate.validate(job, version, strict=True)


def test_each_worker_mounts_only_its_own_key() -> None:
    from paramserver.cli.main import build_parser

    [indexed] = [d for d in yaml.safe_load_all(SOURCE.read_text()) if d]
    jobs = _jobs()
    assert len(jobs) == indexed["spec"]["completions"]
    secrets = []
    for index, job in enumerate(jobs):
        assert job["spec"]["completions"] == 1 and "completionMode" not in job["spec"]
        pod = job["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        [container] = pod["containers"]
        args = container["args"]
        assert "$(" not in str(args)  # nothing left for the kubelet to fill in
        build_parser().parse_args(args)  # a flag our CLI does not know would crash-loop
        assert (_flag(args, "--rank"), _flag(args, "--worker-id")) == (str(index),
                                                                       f"worker-{index}")
        [volume] = pod["volumes"]
        [mount] = container["volumeMounts"]
        assert volume["name"] == mount["name"] and mount["readOnly"]
        secrets.append(volume["secret"]["secretName"])
        # The TLS flags name the files the Secret's keys are mounted as.
        files = {item["path"]: item["key"] for item in volume["secret"]["items"]}
        tls = {f: _flag(args, f) for f in ("--tls-ca", "--tls-cert", "--tls-key")}
        assert all(Path(p).parent == Path(mount["mountPath"]) for p in tls.values())
        assert [files[Path(tls[f]).name] for f in ("--tls-ca", "--tls-cert", "--tls-key")] \
            == ["ca.crt", "tls.crt", "tls.key"]
        assert Path(tls["--tls-cert"]).stem == f"worker-{index}"  # the certificate's name
    assert secrets == [f"paramserver-worker-{i}-tls" for i in range(len(jobs))]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl to render kustomize")
def test_the_overlay_renders_in_place_of_the_indexed_job() -> None:
    done = subprocess.run(["kubectl", "kustomize", str(OVERLAY)], capture_output=True,
                          text=True, timeout=60, check=True)
    documents = [d for d in yaml.safe_load_all(done.stdout) if d]
    for document in documents:
        kubernetes_validate.validate(document, VERSIONS[-1], strict=True)
    names = {f"{d['kind']}/{d['metadata']['name']}" for d in documents}
    jobs = sorted(n for n in names if n.startswith("Job/"))
    assert jobs == [f"Job/ps-worker-{i}" for i in range(len(_jobs()))]  # no ps-workers
    assert {"StatefulSet/ps", "Service/ps", "PodDisruptionBudget/ps"} <= names
    # Only the servers' Secret and each worker's own are mounted anywhere.
    mounted = re.findall(r"secretName: (\S+)", done.stdout)
    assert sorted(mounted) == sorted(["paramserver-server-tls",
                                      *(f"paramserver-worker-{i}-tls" for i in range(4))])
