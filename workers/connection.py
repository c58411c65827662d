"""One worker's connection to one parameter server: the six RPCs with deadlines.

Payloads go out and come back as raw bytes through the chunk fast path; callers provide
byte views to send and a sink to receive into, so no full-model copy is made here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import grpc

from paramserver import __version__, serde, wire
from paramserver.errors import InvalidArgument, ParamServerError, from_rpc_error
from paramserver.sharding import PartitionPlan
from paramserver.transport import (
    DEFAULT_CHUNK_BYTES,
    TokenBucket,
    chunk_ranges,
    insecure_channel,
)
from paramserver.types import (
    CodecSpec,
    ModelLayout,
    PushHeader,
    PushResult,
    RegisterHeader,
    Role,
    ServerStatus,
    Session,
    TensorSpec,
)

# (index into the pull header's tensors, byte offset, payload view)
ChunkSink = Callable[[int, int, memoryview], None]


@dataclass(frozen=True)
class RegisterResult:
    created: bool
    version: int
    layout: ModelLayout


class ServerConnection:
    """A channel to one server plus the session opened on it.

    Not thread-safe for concurrent pushes of the same step; byte counters are per connection.
    """

    def __init__(self, address: str, timeout_s: float = 60.0,
                 bandwidth_bytes_per_s: float | None = None) -> None:
        self.address = address
        # Emulated link speed (benchmarks): each direction has its own bucket.
        self._uplink = TokenBucket(bandwidth_bytes_per_s) if bandwidth_bytes_per_s else None
        self._downlink = TokenBucket(bandwidth_bytes_per_s) if bandwidth_bytes_per_s else None
        self.timeout_s = timeout_s
        self.channel = insecure_channel(address)
        self.session: Session | None = None
        self.chunk_bytes = DEFAULT_CHUNK_BYTES
        self.bytes_pushed = 0
        self.bytes_pulled = 0
        self.gradient_bytes_pushed = 0  # the part of bytes_pushed that carried gradients
        self._handshake = self._unary("Handshake")
        self._status = self._unary("Status")
        self._heartbeat = self._unary("Heartbeat")
        self._register = self.channel.stream_unary(
            serde.method_path("Register"), request_serializer=serde.identity,
            response_deserializer=serde.RegisterResponse.FromString)
        self._push = self.channel.stream_unary(
            serde.method_path("Push"), request_serializer=serde.identity,
            response_deserializer=serde.PushResponse.FromString)
        self._pull = self.channel.unary_stream(
            serde.method_path("Pull"), request_serializer=serde.PullRequest.SerializeToString,
            response_deserializer=_counting(self, serde.decode_pull_response))

    def _unary(self, method: str) -> grpc.UnaryUnaryMultiCallable:
        request_type, response_type = serde.UNARY_TYPES[method]
        return self.channel.unary_unary(serde.method_path(method),
                                        request_serializer=request_type.SerializeToString,
                                        response_deserializer=response_type.FromString)

    def _call(self, fn: Callable[..., object], *args: object, **kwargs: object) -> object:
        kwargs.setdefault("timeout", self.timeout_s)
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    @property
    def session_id(self) -> str:
        if self.session is None:
            raise ParamServerError("no session: call handshake() first")
        return self.session.session_id

    # ---- RPCs ------------------------------------------------------------------------

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the channel connects (the server may still be starting)."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise ParamServerError(f"server {self.address} not reachable within {timeout_s}s",
                                   grpc.StatusCode.UNAVAILABLE) from None

    def handshake(self, worker_id: str, role: Role = Role.WORKER,
                  push_codecs: Sequence[CodecSpec] = (), pull_codecs: Sequence[CodecSpec] = ()
                  ) -> Session:
        request = serde.handshake_request_to_proto(worker_id, role, list(push_codecs),
                                                   list(pull_codecs), __version__)
        response = self._call(self._handshake, request)
        self.session = serde.session_from_proto(response)
        self.chunk_bytes = self.session.chunk_bytes or DEFAULT_CHUNK_BYTES
        return self.session

    def register(self, layout: ModelLayout, values: Sequence[memoryview] | None,
                 plan: PartitionPlan | None = None, shard_index: int = 0) -> RegisterResult:
        """Create the model with `values` (raw bytes per tensor), or join it when None.

        `layout` is what this server stores (shard `shard_index` of `plan`); without a plan
        the server holds the whole model.
        """
        header = serde.encode_register_header(RegisterHeader(
            self.session_id, layout, values is not None, plan, shard_index))
        messages = self._messages(header, values or ())
        response = self._call(self._register, messages)
        return RegisterResult(response.created, response.version,
                              serde.layout_from_proto(response.layout) or layout)

    def push(self, step: int, tensors: Sequence[TensorSpec], payloads: Sequence[memoryview],
             num_samples: int = 1, more_parts: bool = False) -> PushResult:
        """Push one gradient per spec; payloads are the encoded little-endian bytes.

        `more_parts=True` sends one part of the step's push; the server holds it until a
        part with `more_parts=False` closes the push.
        """
        if len(tensors) != len(payloads):
            raise InvalidArgument(f"{len(tensors)} specs but {len(payloads)} payloads")
        header = serde.encode_push_header(
            PushHeader(self.session_id, step, num_samples, tuple(tensors), more_parts))
        before = self.bytes_pushed
        try:
            response = self._call(self._push, self._messages(header, payloads))
        finally:
            self.gradient_bytes_pushed += self.bytes_pushed - before
        return serde.push_result_from_proto(response)

    def pull(self, min_version: int, sink: ChunkSink, names: Sequence[str] = (),
             timeout_s: float | None = None,
             on_header: Callable[[int, tuple[TensorSpec, ...]], None] | None = None,
             ) -> tuple[int, tuple[TensorSpec, ...]]:
        """Stream parameters at version >= min_version into `sink`; returns (version, specs).

        `on_header(version, specs)` runs before the first chunk reaches the sink.
        """
        request = serde.PullRequest(session_id=self.session_id, min_version=min_version,
                                    tensors=list(names))
        header: tuple[int, tuple[TensorSpec, ...]] | None = None
        try:
            for message in self._pull(request, timeout=timeout_s or self.timeout_s):
                if isinstance(message, wire.Chunk):
                    if header is None:
                        raise InvalidArgument("pull stream sent a chunk before its header")
                    sink(message.tensor, message.offset, message.data)
                elif isinstance(message, serde.MalformedMessage):
                    raise InvalidArgument(message.reason)
                else:
                    header = message
                    if on_header is not None:
                        on_header(*header)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        if header is None:
            raise InvalidArgument("pull stream ended without a header")
        return header

    def status(self) -> ServerStatus:
        return serde.status_from_proto(self._call(self._status, serde.StatusRequest()))

    def heartbeat(self) -> int:
        request = serde.HeartbeatRequest(session_id=self.session_id)
        return int(self._call(self._heartbeat, request).version)

    def close(self) -> None:
        self.channel.close()

    # ---- streaming -------------------------------------------------------------------

    def _messages(self, header: bytes, payloads: Sequence[memoryview]) -> Iterator[bytes]:
        """The header, then each payload cut into chunks; counts the bytes it sends."""
        self.bytes_pushed += len(header)
        yield header
        for index, payload in enumerate(payloads):
            for start, end in chunk_ranges(payload.nbytes, self.chunk_bytes):
                message = wire.encode_chunk(index, start, payload[start:end])
                self.bytes_pushed += len(message)
                if self._uplink is not None:
                    self._uplink.charge(len(message))
                yield message


def _counting(connection: ServerConnection,
              decode: Callable[[bytes], object]) -> Callable[[bytes], object]:
    def decode_and_count(message: bytes) -> object:
        connection.bytes_pulled += len(message)
        if connection._downlink is not None:
            connection._downlink.charge(len(message))
        return decode(message)
    return decode_and_count
