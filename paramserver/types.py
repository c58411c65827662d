"""Plain records shared by the server and the workers.

Only `paramserver.serde` converts these to and from protobuf; everything else works on these
dataclasses and on torch tensors.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch

from paramserver.shm.records import ShmOffer, ShmRanges


class Mode(enum.Enum):
    """How the server applies pushed gradients."""

    SYNC = "sync"  # one push per worker per step, aggregated and applied once
    ASYNC = "async"  # each push applied as it arrives
    SSP = "ssp"  # applied as they arrive; nobody more than `staleness` pushes ahead
    FEDERATED = "federated"  # rounds of sampled clients' model updates
    FEDBUFF = "fedbuff"  # asynchronous federated, buffered K updates


class Role(enum.Enum):
    """What a session is for: workers count as job members, observers only read."""

    WORKER = "worker"
    OBSERVER = "observer"


class Aggregation(enum.Enum):
    """How the pushes of one synchronous step are combined."""

    MEAN = "mean"  # plain average over the workers that pushed the tensor
    WEIGHTED = "weighted"  # average weighted by each push's num_samples




# Model buffers (BatchNorm running statistics) are stored under this prefix next to the
# parameters (issue #18): no gradient ever reaches them; a push that carries one overwrites
# its value (DDP semantics: rank 0's buffers win), and pulls serve them like parameters.
BUFFER_PREFIX = "buffer:"


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one model tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor) -> TensorSpec:
        return cls(name, tuple(tensor.shape), tensor.dtype)


@dataclass(frozen=True)
class ModelLayout:
    """The model's tensors in registration order."""

    tensors: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        names = [t.name for t in self.tensors]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate tensor names in layout: {names}")

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def by_name(self) -> dict[str, TensorSpec]:
        return {t.name: t for t in self.tensors}

    def describe_difference(self, other: ModelLayout) -> str:
        """A human-readable reason why `other` differs from this layout ('' if equal)."""
        mine, theirs = self.by_name(), other.by_name()
        for name in mine.keys() - theirs.keys():
            return f"tensor {name!r} is registered but missing from the offered layout"
        for name in theirs.keys() - mine.keys():
            return f"tensor {name!r} is not in the registered layout"
        for name, spec in mine.items():
            if theirs[name] != spec:
                return f"tensor {name!r}: registered {_fmt(spec)}, offered {_fmt(theirs[name])}"
        if self.tensors != other.tensors:
            return "same tensors in a different order"
        return ""


def _fmt(spec: TensorSpec) -> str:
    return f"shape {list(spec.shape)} dtype {str(spec.dtype).removeprefix('torch.')}"


@dataclass(frozen=True, order=True)
class TensorSlice:
    """Elements [start, start + length) of the flattened tensor `tensor`, owned by `shard`."""

    tensor: str
    start: int
    length: int
    shard: int

    def key(self, spec: TensorSpec) -> str:
        """The name this slice is stored under on its shard: the tensor's name if whole."""
        if self.start == 0 and self.length == spec.numel:
            return spec.name
        return f"{spec.name}[{self.start}:{self.start + self.length}]"

    def stored_spec(self, spec: TensorSpec) -> TensorSpec:
        """How the shard holds this slice: whole tensors keep their shape, slices are 1-D."""
        if self.start == 0 and self.length == spec.numel:
            return spec
        return TensorSpec(self.key(spec), (self.length,), spec.dtype)


@dataclass(frozen=True)
class PartitionPlan:
    """Where every element of every tensor of `layout` lives among `num_shards` shards."""

    layout: ModelLayout
    num_shards: int
    slices: tuple[TensorSlice, ...]

    def __post_init__(self) -> None:
        validate(self)

    def slices_of(self, name: str) -> tuple[TensorSlice, ...]:
        return tuple(s for s in self.slices if s.tensor == name)

    def shard_slices(self, shard: int) -> tuple[TensorSlice, ...]:
        """Slices stored on `shard`, in layout order."""
        order = {t.name: i for i, t in enumerate(self.layout.tensors)}
        return tuple(sorted((s for s in self.slices if s.shard == shard),
                            key=lambda s: (order[s.tensor], s.start)))

    def shard_layout(self, shard: int) -> ModelLayout:
        """The layout shard `shard` registers: one stored spec per slice it owns."""
        specs = self.layout.by_name()
        return ModelLayout(tuple(s.stored_spec(specs[s.tensor]) for s in self.shard_slices(shard)))

    def shard_bytes(self) -> list[int]:
        specs = self.layout.by_name()
        totals = [0] * self.num_shards
        for s in self.slices:
            totals[s.shard] += s.length * specs[s.tensor].dtype.itemsize
        return totals


def validate(plan: PartitionPlan) -> None:
    """Every element of every tensor is owned by exactly one slice on a valid shard."""
    if plan.num_shards < 1:
        raise ValueError(f"a plan needs at least one shard, got {plan.num_shards}")
    specs = plan.layout.by_name()
    covered: dict[str, list[tuple[int, int]]] = {name: [] for name in specs}
    for s in plan.slices:
        _check_slice(s, specs, plan.num_shards)
        covered[s.tensor].append((s.start, s.length))
    for name, ranges in covered.items():
        _check_cover(name, sorted(ranges), specs[name].numel)


def _check_slice(s: TensorSlice, specs: dict[str, TensorSpec], num_shards: int) -> None:
    if s.tensor not in specs:
        raise ValueError(f"slice of unknown tensor {s.tensor!r}")
    if not 0 <= s.shard < num_shards:
        raise ValueError(f"slice of {s.tensor!r} on shard {s.shard} of {num_shards}")
    if s.start < 0 or s.length < 0:
        raise ValueError(f"slice of {s.tensor!r} has a negative range")


def _check_cover(name: str, ranges: list[tuple[int, int]], numel: int) -> None:
    """Sorted (start, length) ranges must tile [0, numel) without gap or overlap."""
    position = 0
    for start, length in ranges:
        if start != position:
            raise ValueError(f"tensor {name!r}: slices leave a gap or overlap at {position}")
        position += length
    if position != numel or not ranges:
        raise ValueError(f"tensor {name!r}: slices cover {position} of {numel} elements")


@dataclass(frozen=True)
class CodecSpec:
    """A compression codec and its parameters, e.g. CodecSpec('topk', {'ratio': '0.01'})."""

    name: str
    params: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse_list(cls, text: str) -> tuple[CodecSpec, ...]:
        """'topk:ratio=0.01,mode=approx,none' -> (topk:ratio=0.01,mode=approx, none).

        Specs are separated by commas (or ';' or spaces); a comma-separated piece of the form
        key=value continues the parameters of the spec before it.
        """
        specs: list[str] = []
        for piece in (p.strip() for p in text.replace(";", ",").replace(" ", ",").split(",")):
            if not piece:
                continue
            if "=" in piece and ":" not in piece and specs:
                specs[-1] += ("," if ":" in specs[-1] else ":") + piece
            else:
                specs.append(piece)
        return tuple(cls.parse(s) for s in specs)

    @classmethod
    def parse(cls, text: str) -> CodecSpec:
        """Parse 'name' or 'name:key=value,key=value'."""
        name, _, rest = text.strip().partition(":")
        params = []
        for item in filter(None, rest.split(",")):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"codec parameter {item!r} in {text!r} is not key=value")
            params.append((key.strip(), value.strip()))
        return cls(name.strip().lower(), tuple(sorted(params)))

    def __str__(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.params)
        return f"{self.name}:{args}" if args else self.name


@dataclass(frozen=True, kw_only=True)
class Session:
    """What the handshake agreed on for one connection."""

    session_id: str
    push_codec: CodecSpec
    pull_codec: CodecSpec
    layout: ModelLayout | None
    version: int
    mode: Mode
    expected_workers: int
    chunk_bytes: int
    plan: PartitionPlan | None = None  # recorded at registration
    shard_index: int = 0
    incarnation: int = 0  # this worker's session count on the server
    heartbeat_interval_s: float = 0.0  # 0: the server wants no heartbeats
    lease_s: float = 0.0
    staleness: int = 0  # SSP bound
    # > 0: push momentum-corrected updates (the worker keeps this momentum, the server
    # applies them with plain SGD): offered with a biased sparsifier under SGD momentum
    momentum_correction: float = 0.0
    step_call_bytes: int = 0  # > 0: the server answers Step calls up to this size (#14)
    shm_data_plane: bool = False  # payloads may travel in /dev/shm segments (#14)


@dataclass(frozen=True)
class RegisterHeader:
    """Opening message of a register stream."""

    session_id: str
    layout: ModelLayout | None  # this shard's stored tensors
    values_follow: bool
    plan: PartitionPlan | None = None
    shard_index: int = 0


@dataclass(frozen=True)
class PushHeader:
    """Opening message of a push stream."""

    session_id: str
    step: int
    num_samples: int
    tensors: tuple[TensorSpec, ...]
    more_parts: bool = False  # a part of the step's push; a later part closes it
    incarnation: int = 0
    sequence: int = 0  # exactly-once: 0 opts out of deduplication
    momentum_applied: bool = False  # the worker applied the server's momentum (DGC)
    options: StepOptions | None = None  # the closing part's step options (issue #18)
    shm: ShmRanges | None = None  # payloads in the push segment, none on the stream


@dataclass(frozen=True, kw_only=True)
class StepOptions:
    """What a worker's training loop says about one step (the closing push carries it).

    `lr`: the rate its optimizer holds (None: the server's --lr). `max_grad_norm`: clip the
    aggregated gradient to this 2-norm. `grad_scale`: the loss scale its gradients carry
    (divided out by the server). `found_inf`: inf/NaN seen, skip the step.
    """

    lr: float | None = None
    max_grad_norm: float | None = None
    grad_scale: float = 1.0
    found_inf: bool = False


@dataclass(frozen=True, kw_only=True)
class HandshakeRequest:
    """A worker (or observer) opening a session: who it is and the codecs it speaks."""

    worker_id: str
    role: Role
    push_codecs: tuple[CodecSpec, ...] = ()  # offers, most preferred first
    pull_codecs: tuple[CodecSpec, ...] = ()
    client_version: str = ""
    held_version: int | None = None  # a rejoin: the version of the parameters it holds
    world_size: int | None = None  # the job size the worker believes in (WORLD_SIZE)
    secure_aggregation: bool = False  # federated: the client runs secure aggregation
    shm: ShmOffer | None = None  # the shared-memory data plane's segments (#14)


@dataclass(frozen=True, kw_only=True)
class StateUpload:
    """A shard state (a checkpoint payload) to install on a fresh server."""

    session_id: str
    state: bytes


@dataclass(frozen=True, kw_only=True)
class PullRequest:
    """Parameters at version >= min_version (a long poll); all tensors when none named."""

    session_id: str
    min_version: int
    tensors: tuple[str, ...] = ()
    held_version: int = -1  # compressed pulls: the stream version the worker holds
    shm_segment: str = ""  # write the values there, send only the header (#14)


@dataclass(frozen=True, kw_only=True)
class PullHeader:
    """Opening message of a pull stream: what follows, and whether it is a delta."""

    version: int
    tensors: tuple[TensorSpec, ...]
    delta_from: int = -1  # >= 0: the chunks are codec payloads of version - delta_from
    shm: ShmRanges | None = None  # the values are in the pull segment, not chunks

    @property
    def is_delta(self) -> bool:
        return self.delta_from >= 0


@dataclass(frozen=True, kw_only=True)
class RoundClose:
    """How the leader shard closed a round: whom it sampled, whose update counted (sorted),
    and whether it was skipped (docs/wire.md section 5d)."""

    round: int
    sampled: tuple[str, ...] = ()
    counted: tuple[str, ...] = ()
    skipped: bool = False


@dataclass(frozen=True, kw_only=True)
class RoundRequest:
    """Federated: wait for round >= `round`; to a follower shard, with the leader's close of
    an earlier round to apply first."""

    session_id: str
    round: int
    close: RoundClose | None = None


@dataclass(frozen=True, kw_only=True)
class Registration:
    """The answer to Register: whether this call created the model, and what is stored."""

    created: bool
    version: int
    layout: ModelLayout


@dataclass(frozen=True, kw_only=True)
class RoundJoin:
    """The answer to JoinRound: the open round and whether the caller was sampled for it."""

    round: int
    sampled: bool
    sampled_count: int
    dp_clip_norm: float = 0.0  # --dp: the L2 bound of this client's update
    dp_noise_std: float = 0.0  # --dp distributed: the std of this client's noise share
    finished: bool = False  # no round opens again (--target-epsilon spent): leave
    last_close: RoundClose | None = None  # sharded, from the leader: how round - 1 closed


@dataclass(frozen=True)
class PushResult:
    version: int
    applied: bool
    staleness: int = 0
    duplicate: bool = False  # the answer to an earlier identical push (not applied again)
