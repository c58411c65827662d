"""One worker's connection to one parameter server: the RPCs, with deadlines and retries.

Payloads go out and come back as raw bytes through the chunk fast path; callers provide
byte views to send and a sink to receive into, so no full-model copy is made here.

Every call has a deadline. UNAVAILABLE, DEADLINE_EXCEEDED and CANCELLED are retried with exponential
backoff until `retry_s` has passed, then raised with the attempt count. gRPC's own retry
never re-sends a request above 256 KiB, so pushes are retried here, carrying the same
(incarnation, sequence): the server's ledger answers a retry of an applied push without
applying it again.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np
import torch

from paramserver import __version__, serde, wire
from paramserver.codecs import Codec
from paramserver.codecs.streaming import Payload, payload_bytes
from paramserver.errors import InvalidArgument, ParamServerError, from_rpc_error
from paramserver.security.credentials import ClientSecurity
from paramserver.sharding import PartitionPlan
from paramserver.status import ServerStatus
from paramserver.step_call import StepAnswer, StepCall
from paramserver.tables import (
    DeclareTables,
    RowPullHeader,
    RowPullRequest,
    RowPushHeader,
    TablePlan,
)
from paramserver.transport import (
    DEFAULT_CHUNK_BYTES,
    FLOW_CONTROL_WINDOW,
    chunk_ranges,
    open_channel,
    tls_refusal,
    wait_connected,
)
from paramserver.types import (
    CodecSpec,
    HandshakeRequest,
    ModelLayout,
    PullHeader,
    PullRequest,
    PushHeader,
    PushResult,
    RegisterHeader,
    Registration,
    Role,
    RoundClose,
    RoundJoin,
    RoundRequest,
    Session,
    StateUpload,
    StepOptions,
    TensorSpec,
)
from workers.claims import claiming
from workers.retries import parsed_answer, retrying
from workers.shm_plane import ShmSegments, accepted, close_segments, offered, read_pulled
from workers.traffic import LinkShaper

log = logging.getLogger(__name__)
T = TypeVar("T")
# CANCELLED: a draining server (SIGTERM) cancels the calls in flight; it comes back.
RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
           grpc.StatusCode.CANCELLED)
# A long poll that ran out of time is an answer (the version did not come), not a transport
# failure: pulls retry only UNAVAILABLE and CANCELLED (a draining server).
PULL_RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)

# (index into the pull header's tensors, byte offset, payload view)
ChunkSink = Callable[[int, int, memoryview], None]


class ServerConnection:
    """A channel to one server plus the session opened on it.

    Not thread-safe for concurrent pushes of the same step; byte counters are per connection.
    """

    def __init__(self, address: str, timeout_s: float = 60.0, retry_s: float = 60.0,
                 shaper: LinkShaper | None = None, security: ClientSecurity | None = None,
                 window: int = FLOW_CONTROL_WINDOW) -> None:
        """`security`: TLS and the credential to present; None takes them from the
        PARAMSERVER_TLS_* / PARAMSERVER_TOKEN environment (plaintext when none is set).
        `window`: each stream's HTTP/2 receive window (pulls), see `paramserver.transport`."""
        self.address = address
        self.retry_s = retry_s
        self.retries = 0  # calls that were tried again
        self._sequence = 0
        self._shaper = shaper  # paces pushed chunks and pulled messages (None: full speed)
        self.timeout_s = timeout_s
        security = security or ClientSecurity.from_env()
        self.tls = security is not None and security.tls
        self.channel = open_channel(address, security, window)
        self.session: Session | None = None
        self.chunk_bytes = DEFAULT_CHUNK_BYTES
        self.bytes_pushed = 0
        self.bytes_pulled = 0
        self.gradient_bytes_pushed = 0  # the part of bytes_pushed that carried gradients
        self.duplicates = 0  # pushes the server answered as retries of applied ones
        self.shm: ShmSegments | None = None  # the shared-memory data plane (issue #14)
        self._handshake = self._method("Handshake")
        self._status = self._method("Status")
        self._heartbeat = self._method("Heartbeat")
        self._leave = self._method("Leave")
        self._join_round = self._method("JoinRound")
        self._register = self._method("Register")
        self._push = self._method("Push")
        self._get_state = self._method("GetState")
        self._set_state = self._method("SetState")
        self._pull = self._method("Pull", _counting(self, serde.RPCS["Pull"].response_from_bytes))
        self._declare_tables = self._method("DeclareTables")  # row-sparse tables (issue #16)
        self._pull_rows = self._method("PullRows",
                                       _counting(self, serde.RPCS["PullRows"].response_from_bytes))
        self._push_rows = self._method("PushRows")
        self._step = self.channel.unary_unary(serde.method_path("Step"), response_deserializer=(
            _counting(self, serde.RPCS["Step"].response_from_bytes)))  # issue #14

    def _method(self, name: str, response_from_bytes: Callable[[bytes], Any] | None = None,
                ) -> Any:
        """A callable for one RPC that takes and returns records (serde.RPCS converts)."""
        rpc = serde.RPCS[name]
        kind = getattr(self.channel, serde.STREAMING.get(name, "unary_unary"))
        return kind(serde.method_path(name), request_serializer=rpc.request_to_bytes,
                    response_deserializer=response_from_bytes or rpc.response_from_bytes)

    def _call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        kwargs.setdefault("timeout", self.timeout_s)
        return self._retrying(lambda: fn(*args, **kwargs))

    def _retrying(self, attempt: Callable[[], T],
                  retried: tuple[grpc.StatusCode, ...] = RETRIED) -> T:
        """Run `attempt` until it succeeds, fails for good, or `retry_s` has passed."""
        return retrying(attempt, self, retried)

    @property
    def session_id(self) -> str:
        if self.session is None:
            raise ParamServerError("no session: call handshake() first")
        return self.session.session_id

    # ---- RPCs ------------------------------------------------------------------------

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the channel connects (the server may still be starting)."""
        log.info("waiting up to %.0fs for the server at %s to accept connections", timeout_s,
                 self.address)
        wait_connected(self.channel, self.address, timeout_s)

    def handshake(self, worker_id: str, role: Role = Role.WORKER,
                  push_codecs: Sequence[CodecSpec] = (), pull_codecs: Sequence[CodecSpec] = (),
                  held_version: int | None = None, world_size: int | None = None,
                  claim_wait_s: float = 0.0, secure_aggregation: bool = False,
                  shm: bool = False) -> Session:
        """Open a session; a rejoin states `held_version`, the version it holds; a worker
        may state the job size it expects (`world_size`, checked by the server). A first
        handshake refused because a live session holds `worker_id` is tried again for
        `claim_wait_s` (`workers.claims`: a rank torchrun restarted meets its dead
        predecessor's session). `shm`: offer the shared-memory data plane."""
        self.shm = offered(self.shm, shm)
        request = HandshakeRequest(worker_id=worker_id, role=role,
                                   push_codecs=tuple(push_codecs),
                                   pull_codecs=tuple(pull_codecs), client_version=__version__,
                                   held_version=held_version, world_size=world_size,
                                   secure_aggregation=secure_aggregation,
                                   shm=self.shm.offer if self.shm else None)
        self.session = claiming(lambda: parsed_answer(self._call(self._handshake, request)),
                                claim_wait_s, self.address)
        self.shm = accepted(self.shm, self.session, self.address)
        self._sequence = 0  # each incarnation numbers its pushes from 1 (docs/wire.md 5)
        self.chunk_bytes = self.session.chunk_bytes or DEFAULT_CHUNK_BYTES
        return self.session

    def register(self, layout: ModelLayout, values: Sequence[memoryview] | None,
                 plan: PartitionPlan | None = None, shard_index: int = 0) -> Registration:
        """Create the model with `values` (raw bytes per tensor), or join it when None.

        `layout` is what this server stores (shard `shard_index` of `plan`); without a plan
        the server holds the whole model.
        """
        header = serde.encode_register_header(RegisterHeader(
            self.session_id, layout, values is not None, plan, shard_index))
        registration: Registration = parsed_answer(self._retrying(
            lambda: self._register(self._messages(header, values or ()), timeout=self.timeout_s)))
        return registration if registration.layout.tensors else dataclasses.replace(
            registration, layout=layout)

    def push(self, step: int, tensors: Sequence[TensorSpec], payloads: Sequence[Payload],
             num_samples: int = 1, more_parts: bool = False,
             options: StepOptions | None = None,
             momentum_applied: bool = False) -> PushResult:
        """Push one gradient per spec; payloads are the encoded little-endian bytes.

        `more_parts=True` sends one part of the step's push; the server holds it until a
        part with `more_parts=False` closes the push; its `options` (lr, clipping, loss
        scale, inf found) apply to the whole step. `momentum_applied`: the payloads carry
        the server's momentum (Session.momentum_correction), apply them plainly.
        """
        shm = self.shm.write_push(payloads, self._sequence + 1) if self.shm else None
        header = serde.encode_push_header(dataclasses.replace(self._push_header(
            step, tensors, payloads, num_samples, more_parts, options, momentum_applied),
            shm=shm))
        before = self.bytes_pushed
        try:
            response = self._retrying(lambda: self._push(self._messages(
                header, () if shm else payloads), timeout=self.timeout_s))
        finally:
            self.gradient_bytes_pushed += self.bytes_pushed - before
        result: PushResult = parsed_answer(response)
        if result.duplicate:
            self.duplicates += 1
        return result

    def _push_header(self, step: int, tensors: Sequence[TensorSpec],
                     payloads: Sequence[Payload], num_samples: int, more_parts: bool,
                     options: StepOptions | None, momentum_applied: bool) -> PushHeader:
        """The next push's header: this session's incarnation and next sequence."""
        if len(tensors) != len(payloads):
            raise InvalidArgument(f"{len(tensors)} specs but {len(payloads)} payloads")
        assert self.session is not None
        self._sequence += 1
        return PushHeader(self.session_id, step, num_samples, tuple(tensors), more_parts,
                          self.session.incarnation, self._sequence, momentum_applied, options)

    def step(self, step: int, tensors: Sequence[TensorSpec], payloads: Sequence[Payload],
             pull: PullRequest, sink: ChunkSink,
             on_header: Callable[[PullHeader], None] | None = None, num_samples: int = 1,
             options: StepOptions | None = None,
             momentum_applied: bool = False) -> tuple[PushResult, PullHeader]:
        """A whole push (as `push`) and a pull (as `pull`, of version >= max(its
        min_version, the push's answer)) in one Step call (issue #14), for a session that
        offers it (`Session.step_call_bytes`). Retried as a pull is: the ledger answers a
        retry of an applied push without applying it again."""
        header = self._push_header(step, tensors, payloads, num_samples, False, options,
                                   momentum_applied)
        message = serde.RPCS["Step"].request_to_bytes(StepCall(
            (header, *(wire.Chunk(i, 0, payload_bytes(p, 0, p.nbytes))
                       for i, p in enumerate(payloads))),
            pull.min_version, pull.tensors, pull.held_version))
        answers: list[StepAnswer] = []

        def call_once(request: bytes, timeout: float) -> tuple[object, ...]:
            self.bytes_pushed += len(request)  # per attempt, as a push's messages are
            self.gradient_bytes_pushed += len(request)
            if self._shaper is not None:
                self._shaper.send(len(request))
            answers.append(parsed_answer(self._step(request, timeout=timeout)))
            return answers[-1].pull  # the push's answer is kept aside in `answers`

        pulled = self._retrying(lambda: self._pull_once(message, sink, None, on_header,
                                                        call_once), PULL_RETRIED)
        self.duplicates += answers[-1].push.duplicate
        return answers[-1].push, pulled

    def pull(self, min_version: int, sink: ChunkSink, names: Sequence[str] = (),
             timeout_s: float | None = None, held_version: int = -1,
             on_header: Callable[[PullHeader], None] | None = None) -> PullHeader:
        """Stream parameters at version >= min_version into `sink`; returns the header.

        `on_header(header)` runs before the first chunk reaches the sink. `held_version`:
        with a delta pull codec, the version of the pull stream this worker holds.
        """
        request = PullRequest(session_id=self.session_id, min_version=min_version,
                              tensors=tuple(names), held_version=held_version,
                              shm_segment=self.shm.pull_segment if self.shm else "")
        return read_pulled(self.shm, self._retrying(  # the values may wait in shm
            lambda: self._pull_once(request, sink, timeout_s, on_header), PULL_RETRIED), sink)

    def _pull_once(self, request: object, sink: ChunkSink, timeout_s: float | None,
                   on_header: Callable[[PullHeader], None] | None,
                   method: Any = None) -> Any:
        header: Any = None
        try:
            for message in (method or self._pull)(request, timeout=timeout_s or self.timeout_s):
                if isinstance(message, wire.Chunk):
                    if header is None:
                        raise InvalidArgument("pull stream sent a chunk before its header")
                    sink(message.tensor, message.offset, message.data)
                elif isinstance(message, serde.MalformedMessage):
                    raise InvalidArgument(message.reason)
                else:
                    header = message
                    if on_header is not None:
                        on_header(header)
        except grpc.RpcError as error:
            raise tls_refusal(error, self.address) or from_rpc_error(error) from None
        if header is None:
            raise InvalidArgument("pull stream ended without a header")
        return header

    # ---- row-sparse tables (issue #16; docs/wire.md section 11) ---------------------------

    def declare_tables(self, plan: TablePlan, shard_index: int) -> tuple[bool, TablePlan]:
        """Record the job's tables on this shard, or check them; (created, recorded plan)."""
        request = DeclareTables(self.session_id, plan, shard_index)
        answer: tuple[bool, TablePlan] = parsed_answer(self._call(self._declare_tables, request))
        return answer

    def pull_rows(self, table: str, ids: np.ndarray, min_version: int, sink: ChunkSink,
                  timeout_s: float | None = None) -> RowPullHeader:
        """Stream rows `ids` of `table` (once its version reaches `min_version`) into
        `sink`; returns the header (version, dtype of the values)."""
        request = RowPullRequest(self.session_id, table, ids, min_version)
        header = self._retrying(lambda: self._pull_once(request, sink, timeout_s, None,
                                                        self._pull_rows), PULL_RETRIED)
        assert isinstance(header, RowPullHeader)
        return header

    def push_rows(self, table: str, step: int, ids: np.ndarray, grads: torch.Tensor,
                  codec: Codec | None = None) -> PushResult:
        """Push gradient rows `grads` ((len(ids), dim) float32) for unique row `ids`, raw
        or (`codec`, the session's unbiased push codec) encoded."""
        assert self.session is not None
        self._sequence += 1
        header = serde.encode_row_push_header(RowPushHeader(
            self.session_id, table, step, len(ids), self.session.incarnation, self._sequence,
            encoded=codec is not None))
        flat = grads.detach().float().contiguous().view(-1)
        values = codec.encode(flat) if codec is not None else flat.view(torch.uint8)
        payloads = ([np.ascontiguousarray(ids, dtype="<i8").view(np.uint8).data,
                     values.cpu().numpy().data] if len(ids) else [])
        result: PushResult = parsed_answer(self._retrying(
            lambda: self._push_rows(self._messages(header, payloads), timeout=self.timeout_s)))
        return result

    def status(self, include_state_hash: bool = False) -> ServerStatus:
        status: ServerStatus = parsed_answer(self._call(self._status, include_state_hash))
        return status

    def get_state(self) -> bytes:
        """The server's whole state (parameters, optimizer state, version) as bytes."""
        state: bytes = parsed_answer(self._call(self._get_state, self.session_id))
        return state

    def set_state(self, state: bytes) -> int:
        """Install a state from `get_state` on this fresh server; the version it holds."""
        upload = StateUpload(session_id=self.session_id, state=state)
        return int(parsed_answer(self._call(self._set_state, upload)))

    def heartbeat(self) -> int:
        try:  # one attempt: the next heartbeat is the retry
            return int(parsed_answer(self._heartbeat(self.session_id, timeout=self.timeout_s)))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def join_round(self, round_: int, timeout_s: float | None = None,
                   close: RoundClose | None = None) -> RoundJoin:
        """Federated: wait for round >= round_; whether this client is sampled for it. To a
        follower shard, `close` is the leader's close of an earlier round, applied first."""
        request = RoundRequest(session_id=self.session_id, round=round_, close=close)
        joined: RoundJoin = parsed_answer(self._call(self._join_round, request,
                                               timeout=timeout_s or self.timeout_s))
        return joined

    def leave(self, timeout_s: float = 2.0) -> None:
        """Tell the server this worker is done, so no step waits for it (best effort)."""
        if self.session is None:
            return
        try:
            self._leave(self.session.session_id, timeout=timeout_s)
        except grpc.RpcError as error:
            log.debug("%s: leave failed: %s", self.address, error)

    def close(self) -> None:
        self.channel.close()
        close_segments(self.shm)

    # ---- streaming -------------------------------------------------------------------

    def _messages(self, header: bytes, payloads: Sequence[Payload]) -> Iterator[bytes]:
        """The header, then each payload cut into chunks (made as taken); counts bytes."""
        self.bytes_pushed += len(header)
        yield header
        for index, payload in enumerate(payloads):
            for start, end in chunk_ranges(payload.nbytes, self.chunk_bytes):
                message = wire.encode_chunk(index, start, payload_bytes(payload, start, end))
                self.bytes_pushed += len(message)
                if self._shaper is not None:
                    self._shaper.send(len(message))
                yield message


def _counting(connection: ServerConnection,
              decode: Callable[[bytes], object]) -> Callable[[bytes], object]:
    def decode_and_count(message: bytes) -> object:
        connection.bytes_pulled += len(message)
        if connection._shaper is not None:
            connection._shaper.receive(len(message))
        return decode(message)
    return decode_and_count
