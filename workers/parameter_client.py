"""Model-level client: register a torch model, push its gradients, pull its parameters.

The model may be split over several servers (shards) by a partition plan; pushes and pulls
go to every shard concurrently, and pulled bytes land straight in the model's own tensors
(through a pinned host mirror when the model is on a GPU), so optimizers and hooks holding
references keep seeing current values and no full-model copy is made.

Each push or pull runs one call per shard on the fan-out's threads. A call touches only its
own shard's slots (`sessions[i]`, `versions[i]`, `push_codecs[i]`, ...) and reports
everything else (the version to pull next, whether it rejoined or was dropped) in a small
per-shard record, which the calling thread merges once every shard answered.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Self

import torch
from torch import nn

from paramserver.codecs import Codec, ErrorFeedback, make_codec
from paramserver.codecs.streaming import Payload
from paramserver.errors import Aborted, FailedPrecondition, InvalidArgument, SessionExpired
from paramserver.security.credentials import ClientSecurity
from paramserver.sharding import PartitionPlan, plan_partition
from paramserver.transport import FLOW_CONTROL_WINDOW
from paramserver.types import (
    CodecSpec,
    Mode,
    ModelLayout,
    PushResult,
    Registration,
    Role,
    RoundJoin,
    Session,
    StepOptions,
    TensorSpec,
)
from workers import sharded_rounds
from workers.addresses import parse_servers
from workers.connection import LinkShaper, ServerConnection
from workers.embeddings import dense_parameters
from workers.fan_out import ShardFanOut
from workers.heartbeat import Heartbeat
from workers.payloads import encode_routes, is_raw
from workers.pull_side import ShardPulls
from workers.repush import SentPush, SentPushes
from workers.routes import ShardRoutes, float_buffers, recorded_plan
from workers.shard_calls import (
    ShardJoin,
    ShardPush,
    StepPush,
    gather_step,
    pushed_shards,
)
from workers.step_calls import STEP_CALL_BYTES, OneCallSteps
from workers.tensor_io import HostMirror
from workers.traffic import TrafficCounters

log = logging.getLogger(__name__)
HEARTBEAT_STOP_S = 2.0  # how long close() waits for a heartbeat in flight


class ParameterClient(TrafficCounters, ShardPulls, OneCallSteps):
    """A worker (or observer) attached to the shards of one parameter-server job.

    Typical loop, after `attach(model)`: `loss.backward(); client.step(len(batch))`.

    `version` is the server version of the parameters now in the model: the lowest over the
    shards, which in sync mode move in lockstep (a rank that attached between two shards'
    steps stays one apart; `job_steps` ends it on the job's last version on every shard).

    Faults: a background thread heartbeats every shard so the servers know this worker is
    alive. A shard that answers SessionExpired (this worker was evicted, or the shard
    restarted) is rejoined: new handshake and incarnation, register (join), pull its current
    parameters; that step's push to it is dropped. A push ABORTED because its step closed
    without it (backup workers) or its gradient was too stale is dropped likewise. `close()`
    leaves the job so that nobody waits for this worker.

    `security`: TLS and this worker's credential (None: from the environment, see
    `ServerConnection`). `shaper_factory(address)`, when given, paces each server's connection (benchmarks
    emulate a slower link with it; see `LinkShaper`). `step_call_bytes`: see `step`.
    `recv_window`: each pull stream's HTTP/2 window in bytes (default 8 MiB): a pull moves
    at most one per round trip, so a long fast link wants link rate x round trip.
    """

    def __init__(self, servers: str | Sequence[str], worker_id: str, role: Role = Role.WORKER,
                 push_codecs: Sequence[CodecSpec] = (), pull_codecs: Sequence[CodecSpec] = (),
                 timeout_s: float = 60.0, connect_timeout_s: float | None = None,
                 error_feedback: bool = True, ef_momentum: float = 0.0, retry_s: float = 60.0,
                 shaper_factory: Callable[[str], LinkShaper] | None = None,
                 security: ClientSecurity | None = None,
                 world_size: int | None = None, claim_wait_s: float = 0.0,
                 secure_aggregation: bool = False,
                 step_call_bytes: int = STEP_CALL_BYTES,
                 recv_window: int = FLOW_CONTROL_WINDOW, shm: bool = False) -> None:
        self.worker_id = worker_id
        self.role = role
        self.world_size = world_size  # stated at handshake, checked against --workers
        self.shm = shm  # offer the shared-memory data plane (`workers/shm_plane.py`)
        self._offers = (tuple(push_codecs), tuple(pull_codecs))
        addresses = parse_servers(servers)
        self.connections = [
            ServerConnection(a, timeout_s, retry_s,
                             shaper=shaper_factory(a) if shaper_factory else None,
                             security=security, window=recv_window)
            for a in addresses]
        self._shards = ShardFanOut(len(addresses))
        connect_s = retry_s if connect_timeout_s is None else connect_timeout_s
        self._shards.run(lambda shard: self.connections[shard].wait_ready(connect_s))
        self.sessions: list[Session] = self._shards.run(
            lambda shard: self.connections[shard].handshake(
                worker_id, role, *self._offers, world_size=world_size,
                claim_wait_s=claim_wait_s, secure_aggregation=secure_aggregation, shm=shm))
        self.versions = [s.version for s in self.sessions]
        self._rounds_led = sharded_rounds.leads_rounds(self.sessions[0], len(addresses))
        # Per shard: the agreed push codec, and error feedback when it is biased.
        self.push_codecs: list[Codec] = [make_codec(s.push_codec) for s in self.sessions]
        self._error_feedback, self._ef_momentum = error_feedback, ef_momentum
        self._feedback = [self._feedback_for(c, s) for c, s in zip(self.push_codecs,
                                                                    self.sessions)]
        self.rejoins = 0  # shards re-entered after SessionExpired
        self.aborted_pushes = 0  # pushes dropped: their step closed, or too stale
        self._targets = list(self.versions)  # per shard: the version to pull after a push
        self._sent = SentPushes(len(self.connections))  # the step's pushes, to send again
        # Delta pulls: per shard, the pull-stream version the model holds (-1: pull whole).
        self._stream_versions = [-1] * len(self.connections)
        self._heartbeat = self._start_heartbeat()
        self.dense_bytes_pushed = 0  # what the pushed gradients would take uncompressed
        self.plan: PartitionPlan | None = None
        self._routes: ShardRoutes | None = None
        self._params: dict[str, torch.Tensor] = {}  # parameters, then float buffers
        self.broadcast_buffers = False  # closing pushes carry the buffers' values (rank 0)
        self._mirrors: dict[str, HostMirror] = {}
        self.skip_frozen = False  # set once the first pull brought the frozen parameters
        self.last_version: int | None = None  # sync: the job ends there (see push)
        self.step_call_bytes = step_call_bytes  # see `step` (issue #14); 0: the streams

    def _feedback_for(self, codec: Codec, session: Session) -> ErrorFeedback | None:
        """Error feedback for a biased codec, keeping the momentum the server asks us to
        (`momentum_correction`: its SGD momentum, which it then leaves to us), else ours."""
        if codec.biased and self._error_feedback:
            return ErrorFeedback(codec, session.momentum_correction or self._ef_momentum)
        return None

    def _momentum_applied(self, shard: int) -> bool:
        """Whether this shard's pushes carry the server's momentum (so it applies them with
        plain SGD)."""
        return self._feedback[shard] is not None and self.sessions[shard].momentum_correction > 0

    def _start_heartbeat(self) -> Heartbeat | None:
        intervals = [s.heartbeat_interval_s for s in self.sessions if s.heartbeat_interval_s]
        if self.role is not Role.WORKER or not intervals:
            return None
        return Heartbeat(self.connections, min(intervals))

    @property
    def _stepwise(self) -> bool:
        """Modes where a push joins a step (round) that closes for everyone at once."""
        return self.session.mode in (Mode.SYNC, Mode.FEDERATED)

    def join_round(self, round_: int, timeout_s: float | None = None) -> RoundJoin:
        """Federated: wait for round >= round_ on shard 0, which samples (`sharded_rounds`)."""
        return sharded_rounds.join_round(self.connections, self._shards, round_, timeout_s)

    @property
    def session(self) -> Session:
        return self.sessions[0]

    @property
    def version(self) -> int:
        return min(self.versions)

    def _attached_routes(self) -> ShardRoutes:
        if self._routes is None:
            raise FailedPrecondition("attach(model) first")
        return self._routes

    # ---- setup -----------------------------------------------------------------------

    def attach(self, model: nn.Module, exclude: Collection[str] = ()) -> bool:
        """Register the model's parameters (or join the registered model), then pull them.

        Returns True when this call created the model on some shard. Every worker starts
        from the same parameters: the servers', not its own initialisation.
        """
        params = dense_parameters(model, exclude)
        if not params:
            raise InvalidArgument("the model has no parameters to train")
        params.update(float_buffers(model))
        layout = ModelLayout(tuple(TensorSpec.of(n, p) for n, p in params.items()))
        addresses = [c.address for c in self.connections]
        plan = (recorded_plan(self.sessions, addresses, layout)
                or plan_partition(layout, len(addresses)))
        self.plan, self._routes = plan, ShardRoutes.from_plan(plan)
        self._params = params
        self._mirrors = {n: HostMirror(p) for n, p in params.items()}
        if self.role is Role.OBSERVER:  # observers read; they never register
            if self.sessions[0].plan is None:
                raise FailedPrecondition("no model is registered on the servers yet")
            self.pull(0)
            return False
        joins = self._shards.run(self._register_or_rejoin)
        self.rejoins += sum(j.rejoined for j in joins)
        self.pull([j.version for j in joins])
        self.skip_frozen = True
        return any(j.created for j in joins)

    def _register(self, shard: int) -> Registration:
        """Create this shard's part of the model from our values, or join it."""
        assert self._routes is not None and self.plan is not None
        values = None
        if self.sessions[shard].plan is None:  # nobody registered it (or the shard lost it)
            routes = self._routes.routes[shard]
            values = [self._mirrors[r.param].bytes_of(self._params[r.param])[
                r.byte_start:r.byte_start + r.nbytes] for r in routes]
        return self.connections[shard].register(self.plan.shard_layout(shard), values,
                                                self.plan, shard)

    def _register_or_rejoin(self, shard: int) -> ShardJoin:
        try:
            result = self._register(shard)
        except SessionExpired as error:  # evicted while starting up (a starved process)
            self.rejoin(shard, error.message)
            return ShardJoin(created=False, version=self.versions[shard], rejoined=True)
        return ShardJoin(created=result.created, version=result.version)

    def rejoin(self, shard: int, why: str) -> None:
        """New session on a shard that forgot ours (we were evicted, or it restarted);
        table calls (issue #16) use it too.

        Runs on the shard's fan-out thread: writes only this shard's slots; the caller
        reports the rejoin in its per-shard record.
        """
        connection = self.connections[shard]
        log.warning("%s: %s; rejoining", connection.address, why)
        session = connection.handshake(self.worker_id, self.role, *self._offers,
                                       held_version=self.versions[shard],
                                       world_size=self.world_size, shm=self.shm)
        self.sessions[shard] = session
        self._stream_versions[shard] = -1  # a new session: the next pull comes whole
        if session.push_codec != self.push_codecs[shard].spec:
            self.push_codecs[shard] = make_codec(session.push_codec)
            self._feedback[shard] = self._feedback_for(self.push_codecs[shard], session)
        if self.role is Role.WORKER and self._routes is not None:
            version = self._register(shard).version
        else:
            version = session.version
        self.versions[shard] = self._targets[shard] = version

    # ---- the step --------------------------------------------------------------------

    def push(self, num_samples: int = 1, names: Collection[str] | None = None,
             more_parts: bool = False, options: StepOptions | None = None,
             gradients: Mapping[str, torch.Tensor] | None = None) -> list[PushResult]:
        """Push `param.grad` to every shard concurrently.

        `names` limits the push to those parameters (default: every one with a gradient);
        `gradients` pushes these tensors (by name) instead of `.grad`. `more_parts=True`
        sends one part of the step's push, to the shards that hold any of them; the push
        with `more_parts=False` closes the step on every shard, with the step's `options`
        (lr, clipping, loss scale, inf found) and, with `broadcast_buffers`, the buffers.
        In a sync job with a `last_version`, no push goes to a shard already there
        (`shard_calls.pushed_shards`).
        """
        step = self._step_push(num_samples, names, more_parts, options, gradients)
        shards = step.shards(self._pushed_shards())
        call = functools.partial(self._push_shard, step=step)
        pushes = (self._shards.run(call, shards) if more_parts or not self._rounds_led
                  else sharded_rounds.push_followers_first(self._shards, call, self.versions[0]))
        self._merge(dict(zip(shards, pushes)))
        for shard in set(range(len(self.versions))) - set(shards):
            self._targets[shard] = self.versions[shard]  # pulled as it is: no push of ours
        self.dense_bytes_pushed += sum(r.nbytes for shard in step.routes for r in shard)
        return [p.result for p in pushes]

    def _merge(self, pushes: dict[int, ShardPush]) -> None:
        """Fold the shards' answers into the client's state, on the calling thread."""
        for shard, push in pushes.items():
            self._targets[shard] = push.target
            self.aborted_pushes += push.aborted
            self.rejoins += push.rejoined

    def _step_push(self, num_samples: int, names: Collection[str] | None, more_parts: bool,
                   options: StepOptions | None,
                   gradients: Mapping[str, torch.Tensor] | None) -> StepPush:
        """What a push sends: `gradients`, or the `.grad` of `names` (default: every
        parameter with one), plus the buffers on a closing push with `broadcast_buffers`."""
        return gather_step(self._params, self._mirrors, self._attached_routes(), gradients,
                           names, num_samples=num_samples, more_parts=more_parts,
                           options=options, broadcast_buffers=self.broadcast_buffers,
                           raw_needed=any(is_raw(c) for c in self.push_codecs))

    def _encode(self, shard: int, step: StepPush) -> list[Payload]:
        return encode_routes(step.routes[shard], step.gradients, self.push_codecs[shard],
                             self._feedback[shard], step.raw)

    def _push_shard(self, shard: int, step: StepPush,
                    payloads: list[Payload] | None = None) -> ShardPush:
        """Encode this shard's slices and push them; runs on the shard's fan-out thread."""
        routes, version = step.routes[shard], self.versions[shard]
        if payloads is None:
            payloads = self._encode(shard, step)
        sent = SentPush(version, tuple(r.stored for r in routes), tuple(payloads),
                        step.num_samples, step.more_parts, step.options,
                        self._momentum_applied(shard))
        try:  # sent again if its step is discarded meanwhile
            result = self._sent.send(shard, self.connections[shard], sent)
        except (SessionExpired, Aborted) as error:
            return self._dropped(shard, version, error)
        return ShardPush(result, version + 1 if self._stepwise else result.version)

    def _pushed_shards(self) -> list[bool]:
        return pushed_shards(self.session.mode, self.versions, self.last_version)

    def _dropped(self, shard: int, version: int, error: SessionExpired | Aborted) -> ShardPush:
        """A push the shard did not take: it forgot our session (rejoin), or the step
        closed without it, or it was too stale (drop it)."""
        if isinstance(error, SessionExpired):
            self.rejoin(shard, error.message)
            current = self.versions[shard]  # what the rejoined shard holds now
            return ShardPush(PushResult(current, applied=False), current, rejoined=True)
        log.info("%s: push dropped: %s", self.connections[shard].address, error.message)
        closed = version + (1 if self._stepwise else 0)
        return ShardPush(PushResult(closed, applied=False), closed, aborted=True)

    def step(self, num_samples: int = 1, names: Collection[str] | None = None,
             options: StepOptions | None = None,
             gradients: Mapping[str, torch.Tensor] | None = None) -> list[PushResult]:
        """Push (or close) this step's push and bring back the parameters of the next version.

        `names`: what is left to push after parts sent with `push(more_parts=True)`.
        Sync: waits until every shard closed the step. Async: until our own update is in.
        A shard that offers the Step call, where this step's push and pull each fit
        `step_call_bytes`, takes both in one call (issue #14; the same records, checks and
        answers as the streams, in one message each way).
        """
        if not self._rounds_led and any(map(self._step_call_limit, range(len(self.sessions)))):
            return self._one_call_step(self._step_push(num_samples, names, False, options,
                                                       gradients))
        results = self.push(num_samples=num_samples, names=names, options=options,
                            gradients=gradients)
        if self._rounds_led:
            self.join_round(self._targets[0])  # the followers then close the round too
        self.pull(list(self._targets))
        return results

    def close(self) -> None:
        """Stop heartbeating, leave the job (nobody waits for us), close the channels."""
        if self._heartbeat is not None:
            self._heartbeat.stop(HEARTBEAT_STOP_S)
        if self.role is Role.WORKER:
            self._shards.run(lambda shard: self.connections[shard].leave())
        for connection in self.connections:
            connection.close()
        self._shards.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

