"""Model-level client: register a torch model, push its gradients, pull its parameters.

The model may be split over several servers (shards) by a partition plan; pushes and pulls
go to every shard concurrently, and pulled bytes land straight in the model's own tensors
(through a pinned host mirror when the model is on a GPU), so optimizers and hooks holding
references keep seeing current values and no full-model copy is made.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from paramserver.codecs import Codec, ErrorFeedback, make_codec
from paramserver.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    ParamServerError,
    SessionExpired,
)
from paramserver.sharding import PartitionPlan, plan_partition
from paramserver.types import CodecSpec, Mode, ModelLayout, PushResult, Role, Session, TensorSpec
from workers.connection import ServerConnection
from workers.routes import ShardRoutes
from workers.tensor_io import HostMirror, widen

log = logging.getLogger(__name__)
T = TypeVar("T")


def parse_servers(servers: str | Sequence[str]) -> list[str]:
    """'a:1,b:2' or ['a:1', 'b:2'] -> ['a:1', 'b:2']; the order is the shard order."""
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    addresses = [a.strip() for a in items if a.strip()]
    if not addresses:
        raise InvalidArgument("no server address given")
    return addresses


class ParameterClient:
    """A worker (or observer) attached to the shards of one parameter-server job.

    Typical loop, after `attach(model)`:

        loss.backward()
        client.step(num_samples=len(batch))

    `version` is the server version of the parameters now in the model (the lowest over the
    shards; in sync mode all shards move in lockstep).

    Faults: a background thread heartbeats every shard so the servers know this worker is
    alive. A shard that answers SessionExpired (this worker was evicted, or the shard
    restarted) is rejoined: new handshake and incarnation, register (join), pull its current
    parameters; that step's push to it is dropped. A push ABORTED because its step closed
    without it (backup workers) or its gradient was too stale is dropped likewise. `close()`
    leaves the job so that nobody waits for this worker.
    """

    def __init__(self, servers: str | Sequence[str], worker_id: str, role: Role = Role.WORKER,
                 push_codecs: Sequence[CodecSpec] = (), pull_codecs: Sequence[CodecSpec] = (),
                 timeout_s: float = 60.0, connect_timeout_s: float = 30.0,
                 error_feedback: bool = True, ef_momentum: float = 0.0,
                 bandwidth_bytes_per_s: float | None = None, retry_s: float = 60.0) -> None:
        self.worker_id = worker_id
        self.role = role
        self._offers = (tuple(push_codecs), tuple(pull_codecs))
        addresses = parse_servers(servers)
        # bandwidth_bytes_per_s emulates a slower link to each shard (benchmarks).
        self.connections = [ServerConnection(a, timeout_s, bandwidth_bytes_per_s, retry_s)
                            for a in addresses]
        self._pool = ThreadPoolExecutor(max_workers=len(addresses), thread_name_prefix="shard")
        self._fan_out(lambda c: c.wait_ready(connect_timeout_s))
        self.sessions: list[Session] = self._fan_out(
            lambda c: c.handshake(worker_id, role, push_codecs, pull_codecs))
        self.versions = [s.version for s in self.sessions]
        # Per shard: the agreed push codec, and error feedback when it is biased.
        self.push_codecs: list[Codec] = [make_codec(s.push_codec) for s in self.sessions]
        self._error_feedback, self._ef_momentum = error_feedback, ef_momentum
        self._feedback = [self._feedback_for(c) for c in self.push_codecs]
        self.rejoins = 0  # shards re-entered after SessionExpired
        self.aborted_pushes = 0  # pushes dropped: their step closed, or too stale
        self._targets = list(self.versions)  # per shard: the version to pull after a push
        self._stop_heartbeats = threading.Event()
        self._heartbeats = self._start_heartbeats()
        self.dense_bytes_pushed = 0  # what the pushed gradients would take uncompressed
        self.plan: PartitionPlan | None = None
        self._routes: ShardRoutes | None = None
        self._params: dict[str, nn.Parameter] = {}
        self._specs: dict[str, TensorSpec] = {}
        self._mirrors: dict[str, HostMirror] = {}

    def _feedback_for(self, codec: Codec) -> ErrorFeedback | None:
        if codec.biased and self._error_feedback:
            return ErrorFeedback(codec, self._ef_momentum)
        return None

    def _start_heartbeats(self) -> threading.Thread | None:
        intervals = [s.heartbeat_interval_s for s in self.sessions if s.heartbeat_interval_s]
        if self.role is not Role.WORKER or not intervals:
            return None
        thread = threading.Thread(target=self._heartbeat_loop, args=(min(intervals),),
                                  name="ps-heartbeat", daemon=True)
        thread.start()
        return thread

    def _heartbeat_loop(self, interval_s: float) -> None:
        while not self._stop_heartbeats.wait(interval_s):
            for connection in self.connections:
                try:
                    connection.heartbeat()
                except ParamServerError as error:  # the next push or pull deals with it
                    log.debug("heartbeat to %s failed: %s", connection.address, error.message)

    @property
    def _stepwise(self) -> bool:
        """Modes where a push joins a step (round) that closes for everyone at once."""
        return self.session.mode in (Mode.SYNC, Mode.FEDERATED)

    def join_round(self, round_: int, timeout_s: float | None = None) -> tuple[int, bool, int]:
        """Federated: wait for round >= round_ (asks shard 0, which samples the clients)."""
        return self.connections[0].join_round(round_, timeout_s)

    @property
    def session(self) -> Session:
        return self.sessions[0]

    @property
    def version(self) -> int:
        return min(self.versions)

    def _fan_out(self, call: Callable[[ServerConnection], T]) -> list[T]:
        """Run `call` on every connection concurrently; results in shard order."""
        if len(self.connections) == 1:
            return [call(self.connections[0])]
        return list(self._pool.map(call, self.connections))

    # ---- setup -----------------------------------------------------------------------

    def attach(self, model: nn.Module) -> bool:
        """Register the model's parameters (or join the registered model), then pull them.

        Returns True when this call created the model on some shard. Every worker starts
        from the same parameters: the servers', not its own initialisation.
        """
        params = dict(model.named_parameters())
        if not params:
            raise InvalidArgument("the model has no parameters to train")
        layout = ModelLayout(tuple(TensorSpec.of(n, p) for n, p in params.items()))
        plan = self._recorded_plan(layout) or plan_partition(layout, len(self.connections))
        self.plan, self._routes = plan, ShardRoutes.from_plan(plan)
        self._params = params
        self._specs = {s.name: s for s in layout.tensors}
        self._mirrors = {n: HostMirror(p) for n, p in params.items()}
        if self.role is Role.OBSERVER:  # observers read; they never register
            if self.sessions[0].plan is None:
                raise FailedPrecondition("no model is registered on the servers yet")
            self.pull(0)
            return False
        results = self._fan_out_indexed(self._register_or_rejoin)
        self.pull([version for _, version in results])
        return any(created for created, _ in results)

    def _register(self, shard: int) -> tuple[bool, int]:
        """Create this shard's part of the model from our values, or join it."""
        assert self._routes is not None and self.plan is not None
        values = None
        if self.sessions[shard].plan is None:  # nobody registered it (or the shard lost it)
            routes = self._routes.routes[shard]
            values = [self._mirrors[r.param].bytes_of(self._params[r.param])[
                r.byte_start:r.byte_start + r.nbytes] for r in routes]
        result = self.connections[shard].register(self.plan.shard_layout(shard), values,
                                                  self.plan, shard)
        return result.created, result.version

    def _register_or_rejoin(self, shard: int) -> tuple[bool, int]:
        try:
            return self._register(shard)
        except SessionExpired as error:  # evicted while starting up (a starved process)
            self._rejoin(shard, error.message)
            return False, self.versions[shard]

    def _rejoin(self, shard: int, why: str) -> None:
        """New session on a shard that forgot ours (we were evicted, or it restarted)."""
        connection = self.connections[shard]
        log.warning("%s: %s; rejoining", connection.address, why)
        session = connection.handshake(self.worker_id, self.role, *self._offers)
        self.sessions[shard] = session
        if session.push_codec != self.push_codecs[shard].spec:
            self.push_codecs[shard] = make_codec(session.push_codec)
            self._feedback[shard] = self._feedback_for(self.push_codecs[shard])
        if self.role is Role.WORKER and self._routes is not None:
            _, version = self._register(shard)
        else:
            version = session.version
        self.versions[shard] = self._targets[shard] = version
        self.rejoins += 1

    def _recorded_plan(self, layout: ModelLayout) -> PartitionPlan | None:
        """The plan the servers recorded, checked against this model and server list."""
        plans = [s.plan for s in self.sessions]
        recorded = next((p for p in plans if p is not None), None)
        if recorded is None:
            return None
        for shard, (plan, session) in enumerate(zip(plans, self.sessions)):
            if plan is not None and plan != recorded:
                raise FailedPrecondition(f"{self.connections[shard].address} recorded a "
                                         "different partition plan from its peers")
            if plan is not None and session.shard_index != shard:
                raise FailedPrecondition(
                    f"{self.connections[shard].address} holds shard {session.shard_index}, but "
                    f"is listed at position {shard}: list servers in the job's shard order")
        if recorded.num_shards != len(self.connections):
            raise FailedPrecondition(f"the job's model is split over {recorded.num_shards} "
                                     f"servers, but {len(self.connections)} were given")
        reason = recorded.layout.describe_difference(layout)
        if reason:
            raise FailedPrecondition(f"servers hold a different model: {reason}")
        return recorded

    def _fan_out_indexed(self, call: Callable[[int], T]) -> list[T]:
        return self._fan_out_over(call, range(len(self.connections)))

    def _fan_out_over(self, call: Callable[[int], T], shards: Iterable[int]) -> list[T]:
        """Run `call(shard)` for the given shards concurrently; results in the given order."""
        shards = list(shards)
        if len(shards) <= 1:
            return [call(shard) for shard in shards]
        return list(self._pool.map(call, shards))

    # ---- the step --------------------------------------------------------------------

    def push(self, num_samples: int = 1, names: Collection[str] | None = None,
             more_parts: bool = False) -> list[PushResult]:
        """Push `param.grad` to every shard concurrently.

        `names` limits the push to those parameters (default: every one with a gradient).
        `more_parts=True` sends one part of the step's push, to the shards that hold any of
        `names`; the push with `more_parts=False` closes the step on every shard.
        """
        if self._routes is None:
            raise FailedPrecondition("attach(model) first")
        wanted = self._params.keys() if names is None else names
        unknown = [n for n in wanted if n not in self._params]
        if unknown:
            raise InvalidArgument(f"no parameters named {unknown} in the attached model")
        with_grad = {n: self._params[n] for n in wanted if self._params[n].grad is not None}
        if not with_grad and names is None:
            raise InvalidArgument("no parameter has a gradient: call backward() first")
        raw = None
        if any(c.spec.name == "none" for c in self.push_codecs):
            raw = {n: self._mirrors[n].bytes_of(p.grad) for n, p in with_grad.items()}
        shard_routes = [[r for r in routes if r.param in with_grad]
                        for routes in self._routes.routes]
        shards = [i for i, routes in enumerate(shard_routes) if routes or not more_parts]

        def push_shard(shard: int) -> PushResult:
            routes = shard_routes[shard]
            codec, feedback = self.push_codecs[shard], self._feedback[shard]
            if codec.spec.name == "none":
                payloads = [raw[r.param][r.byte_start:r.byte_start + r.nbytes]  # type: ignore[index]
                            for r in routes]
            else:  # encode on the gradient's device; only the payload is copied to the host
                payloads = []
                for r in routes:
                    flat = with_grad[r.param].grad.detach().reshape(-1)  # type: ignore[union-attr]
                    item = flat.element_size()
                    piece = flat[r.byte_start // item:(r.byte_start + r.nbytes) // item]
                    encoded = (feedback.encode(r.stored.name, piece) if feedback
                               else codec.encode(piece))
                    payloads.append(memoryview(encoded.cpu().numpy()))
            try:
                result = self.connections[shard].push(
                    self.versions[shard], [r.stored for r in routes], payloads, num_samples,
                    more_parts)
            except SessionExpired as error:
                self._rejoin(shard, error.message)
                return PushResult(self.versions[shard], applied=False)
            except Aborted as error:
                log.info("%s: push dropped: %s", self.connections[shard].address, error.message)
                self.aborted_pushes += 1
                closed = self.versions[shard] + (1 if self._stepwise else 0)
                self._targets[shard] = closed
                return PushResult(closed, applied=False)
            self._targets[shard] = (self.versions[shard] + 1 if self._stepwise
                                    else result.version)
            return result

        results = self._fan_out_over(push_shard, shards)
        self.dense_bytes_pushed += sum(r.nbytes for routes in shard_routes for r in routes)
        return results

    def pull(self, min_version: int | Sequence[int] = 0, timeout_s: float | None = None) -> int:
        """Wait until every shard reaches its min version; copy parameters in place."""
        if self._routes is None:
            raise FailedPrecondition("attach(model) first")
        wanted = ([min_version] * len(self.connections) if isinstance(min_version, int)
                  else list(min_version))
        targets = {n: self._mirrors[n].writable_values(p) for n, p in self._params.items()}

        def pull_shard(shard: int) -> int:
            by_key = self._routes.by_key(shard)  # type: ignore[union-attr]
            places: list[tuple[np.ndarray, int, int]] = []
            wire = self.sessions[shard].pull_codec.name

            def on_header(version: int, specs: tuple[TensorSpec, ...]) -> None:
                places.clear()  # a retried pull starts over
                for spec in specs:
                    route = by_key.get(spec.name)
                    if route is None or route.stored != spec:
                        raise FailedPrecondition(f"shard {shard} sent {spec.name!r}, which does "
                                                 "not match the attached model")
                    places.append((targets[route.param], route.byte_start, route.nbytes))

            def sink(index: int, offset: int, data: memoryview) -> None:
                target, base, nbytes = places[index]
                if wire != "none":  # 16-bit values: widen to the parameter's dtype
                    item = target.itemsize
                    values = widen(data, wire, target.dtype)
                    offset, data = offset // 2 * item, memoryview(values).cast("B")
                if offset + data.nbytes > nbytes:
                    raise InvalidArgument(f"shard {shard} sent too many bytes for tensor {index}")
                start = base + offset
                target.view(np.uint8)[start:start + data.nbytes] = np.frombuffer(data, np.uint8)

            try:
                version, _ = self.connections[shard].pull(wanted[shard], sink,
                                                          timeout_s=timeout_s,
                                                          on_header=on_header)
            except SessionExpired as error:
                self._rejoin(shard, error.message)
                version, _ = self.connections[shard].pull(
                    min(wanted[shard], self.versions[shard]), sink, timeout_s=timeout_s,
                    on_header=on_header)
            return version

        with torch.no_grad():
            self.versions = self._fan_out_indexed(pull_shard)
            for name, param in self._params.items():
                self._mirrors[name].commit(param)
        return self.version

    def step(self, num_samples: int = 1,
             names: Collection[str] | None = None) -> list[PushResult]:
        """Push (or close) this step's push and bring back the parameters of the next version.

        `names`: what is left to push after parts sent with `push(more_parts=True)`.
        Sync: waits until every shard closed the step. Async: until our own update is in.
        """
        results = self.push(num_samples=num_samples, names=names)
        self.pull(list(self._targets))
        return results

    # ---- misc ------------------------------------------------------------------------

    @property
    def bytes_pushed(self) -> int:
        return sum(c.bytes_pushed for c in self.connections)

    @property
    def bytes_pulled(self) -> int:
        return sum(c.bytes_pulled for c in self.connections)

    @property
    def gradient_bytes_pushed(self) -> int:
        """Bytes of gradient pushes on the wire (payloads, framing and headers)."""
        return sum(c.gradient_bytes_pushed for c in self.connections)

    @property
    def compression_ratio(self) -> float:
        """Uncompressed gradient bytes / gradient bytes actually sent."""
        sent = self.gradient_bytes_pushed
        return self.dense_bytes_pushed / sent if sent else 1.0

    def close(self) -> None:
        """Stop heartbeating, leave the job (nobody waits for us), close the channels."""
        self._stop_heartbeats.set()
        if self.role is Role.WORKER:
            self._fan_out(lambda c: c.leave())
        for connection in self.connections:
            connection.close()
        self._pool.shutdown(wait=False)

    def __enter__(self) -> ParameterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
