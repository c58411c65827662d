"""The shared-memory data plane (issue #14, docs/wire.md 5g): a sync job over /dev/shm ends
with the very parameters the same job gets over the gRPC streams; a server without
--shm-data-plane keeps the streams; a worker's segments are gone once it closes."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from paramserver.optimizer import OptimizerConfig
from paramserver.shm import segments
from paramserver.types import CodecSpec, Mode
from tests.conftest import ServerFactory
from workers import ParameterClient

pytestmark = pytest.mark.skipif(not segments.available(), reason="no writable /dev/shm")

WORKERS, STEPS = 2, 3


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(40, 30), torch.nn.Linear(30, 5))


def _run_job(server_factory: ServerFactory, shm_server: bool, shm_workers: bool,
             codec: str) -> tuple[dict[str, torch.Tensor], list[bool], list[str]]:
    """Train WORKERS workers for STEPS sync steps (fixed seeded gradients, codec both
    ways); the final parameters, whether each connection used shm, and its segments."""
    server = server_factory(mode=Mode.SYNC, expected_workers=WORKERS, chunk_bytes=1024,
                            shm_data_plane=shm_server,
                            optimizer=OptimizerConfig(lr=0.1, momentum=0.9))
    models = [_model() for _ in range(WORKERS)]
    offers = (CodecSpec(codec),)
    clients = [ParameterClient(server.address, f"w{i}", push_codecs=offers, pull_codecs=offers,
                               timeout_s=10, retry_s=10, step_call_bytes=0, shm=shm_workers)
               for i in range(WORKERS)]
    errors: list[BaseException] = []

    def train(worker: int) -> None:
        try:
            generator = torch.Generator().manual_seed(worker)
            for _ in range(STEPS):
                for param in models[worker].parameters():
                    param.grad = torch.randn(param.shape, generator=generator)
                clients[worker].step()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    used = [c.connections[0].shm is not None for c in clients]
    names = [n for c in clients if c.connections[0].shm is not None
             for n in (c.connections[0].shm.push_segment, c.connections[0].shm.pull_segment)]
    try:
        for client, model in zip(clients, models):
            client.attach(model)
        threads = [threading.Thread(target=train, args=(w,)) for w in range(WORKERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not errors, errors
        assert server.core.store.version == STEPS
        final = {n: p.detach().clone() for n, p in models[0].named_parameters()}
        for model in models[1:]:
            for name, param in model.named_parameters():
                assert torch.equal(param.detach(), final[name]), name
        for name, param in server.core.store.params.items():
            assert torch.equal(param.detach().reshape(-1).to(torch.float32),
                               final[name].reshape(-1)) or codec != "none", name
        moved = sum(c.connections[0].bytes_pushed + c.connections[0].bytes_pulled
                    for c in clients)
        model_bytes = sum(p.numel() * 4 for p in models[0].parameters())
        # Over shm only the registration's values and the headers travel on gRPC: each
        # worker's Register stream may send the initial values (some or all of them)
        # before the server answers that another worker registered them first.
        assert ((moved < (WORKERS + 1) * model_bytes) if all(used)
                else moved > 2 * STEPS * model_bytes)
        return final, used, names
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize("codec", ["none", "fp16"])
def test_a_job_over_shm_ends_with_the_parameters_it_gets_over_grpc(
        server_factory: ServerFactory, codec: str) -> None:
    over_grpc, used_grpc, _ = _run_job(server_factory, False, False, codec)
    over_shm, used_shm, names = _run_job(server_factory, True, True, codec)
    assert used_grpc == [False, False] and used_shm == [True, True]
    for name, value in over_grpc.items():
        assert torch.equal(over_shm[name], value), name
    leftovers = [n for n in names if (segments.SHM_DIR / n).exists()]
    assert len(names) == 2 * WORKERS and not leftovers  # removed at close


def test_a_server_without_the_flag_keeps_the_grpc_streams(
        server_factory: ServerFactory) -> None:
    """The workers offer shm, the server runs without --shm-data-plane: the offer is
    declined, the segments are removed at once, and the job runs on the streams."""
    before = {p.name for p in segments.SHM_DIR.glob(segments.NAME_PREFIX + "*")}
    _, used, names = _run_job(server_factory, False, True, "none")
    assert used == [False, False] and names == []
    after = {p.name for p in segments.SHM_DIR.glob(segments.NAME_PREFIX + "*")}
    assert after <= before  # nothing left behind by the declined offers


def test_a_worker_that_exits_without_closing_leaves_no_segments(tmp_path: Path) -> None:
    """Interpreter exit removes a connection's segments (weakref.finalize runs at exit)."""
    script = ("from workers.shm_plane import ShmSegments\n"
              "segs = ShmSegments()\n"
              "print(segs.push_segment, segs.pull_segment)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[2], check=True)
    names = done.stdout.split()
    assert len(names) == 2 and all(n.startswith(segments.NAME_PREFIX) for n in names)
    assert not [n for n in names if (segments.SHM_DIR / n).exists()]
