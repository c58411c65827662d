from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT64: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]
    BFLOAT16: _ClassVar[DType]
    INT32: _ClassVar[DType]
    INT64: _ClassVar[DType]

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    SYNC: _ClassVar[Mode]
    ASYNC: _ClassVar[Mode]
    SSP: _ClassVar[Mode]
    FEDERATED: _ClassVar[Mode]
    FEDBUFF: _ClassVar[Mode]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    WORKER: _ClassVar[Role]
    OBSERVER: _ClassVar[Role]

class SecAggStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SECAGG_STAGE_UNSPECIFIED: _ClassVar[SecAggStage]
    ADVERTISE_KEYS: _ClassVar[SecAggStage]
    SHARE_KEYS: _ClassVar[SecAggStage]
    MASKED_INPUT: _ClassVar[SecAggStage]
    UNMASK: _ClassVar[SecAggStage]
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT64: DType
FLOAT16: DType
BFLOAT16: DType
INT32: DType
INT64: DType
MODE_UNSPECIFIED: Mode
SYNC: Mode
ASYNC: Mode
SSP: Mode
FEDERATED: Mode
FEDBUFF: Mode
ROLE_UNSPECIFIED: Role
WORKER: Role
OBSERVER: Role
SECAGG_STAGE_UNSPECIFIED: SecAggStage
ADVERTISE_KEYS: SecAggStage
SHARE_KEYS: SecAggStage
MASKED_INPUT: SecAggStage
UNMASK: SecAggStage

class CodecSpec(_message.Message):
    __slots__ = ("name", "params")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    params: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "shape", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ...) -> None: ...

class ModelLayout(_message.Message):
    __slots__ = ("tensors",)
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    def __init__(self, tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ...) -> None: ...

class TensorSlice(_message.Message):
    __slots__ = ("tensor", "start", "length", "shard")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    tensor: str
    start: int
    length: int
    shard: int
    def __init__(self, tensor: _Optional[str] = ..., start: _Optional[int] = ..., length: _Optional[int] = ..., shard: _Optional[int] = ...) -> None: ...

class PartitionPlan(_message.Message):
    __slots__ = ("num_shards", "layout", "slices")
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    SLICES_FIELD_NUMBER: _ClassVar[int]
    num_shards: int
    layout: ModelLayout
    slices: _containers.RepeatedCompositeFieldContainer[TensorSlice]
    def __init__(self, num_shards: _Optional[int] = ..., layout: _Optional[_Union[ModelLayout, _Mapping]] = ..., slices: _Optional[_Iterable[_Union[TensorSlice, _Mapping]]] = ...) -> None: ...

class TensorChunk(_message.Message):
    __slots__ = ("tensor", "offset", "data")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    tensor: int
    offset: int
    data: bytes
    def __init__(self, tensor: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ShmOffer(_message.Message):
    __slots__ = ("push_segment", "pull_segment", "token")
    PUSH_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    PULL_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    push_segment: str
    pull_segment: str
    token: bytes
    def __init__(self, push_segment: _Optional[str] = ..., pull_segment: _Optional[str] = ..., token: _Optional[bytes] = ...) -> None: ...

class ShmRanges(_message.Message):
    __slots__ = ("segment", "offsets", "lengths")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    segment: str
    offsets: _containers.RepeatedScalarFieldContainer[int]
    lengths: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, segment: _Optional[str] = ..., offsets: _Optional[_Iterable[int]] = ..., lengths: _Optional[_Iterable[int]] = ...) -> None: ...

class HandshakeRequest(_message.Message):
    __slots__ = ("worker_id", "role", "push_codecs", "pull_codecs", "client_version", "held_version", "world_size", "secure_aggregation", "shm")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PUSH_CODECS_FIELD_NUMBER: _ClassVar[int]
    PULL_CODECS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    HELD_VERSION_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    SECURE_AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    SHM_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    role: Role
    push_codecs: _containers.RepeatedCompositeFieldContainer[CodecSpec]
    pull_codecs: _containers.RepeatedCompositeFieldContainer[CodecSpec]
    client_version: str
    held_version: int
    world_size: int
    secure_aggregation: bool
    shm: ShmOffer
    def __init__(self, worker_id: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., push_codecs: _Optional[_Iterable[_Union[CodecSpec, _Mapping]]] = ..., pull_codecs: _Optional[_Iterable[_Union[CodecSpec, _Mapping]]] = ..., client_version: _Optional[str] = ..., held_version: _Optional[int] = ..., world_size: _Optional[int] = ..., secure_aggregation: _Optional[bool] = ..., shm: _Optional[_Union[ShmOffer, _Mapping]] = ...) -> None: ...

class HandshakeResponse(_message.Message):
    __slots__ = ("session_id", "push_codec", "pull_codec", "layout", "version", "mode", "expected_workers", "chunk_bytes", "server_version", "plan", "shard_index", "incarnation", "heartbeat_interval_s", "lease_s", "staleness", "momentum_correction", "step_call_bytes", "shm_data_plane")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PUSH_CODEC_FIELD_NUMBER: _ClassVar[int]
    PULL_CODEC_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_WORKERS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    LEASE_S_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_CORRECTION_FIELD_NUMBER: _ClassVar[int]
    STEP_CALL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHM_DATA_PLANE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    push_codec: CodecSpec
    pull_codec: CodecSpec
    layout: ModelLayout
    version: int
    mode: Mode
    expected_workers: int
    chunk_bytes: int
    server_version: str
    plan: PartitionPlan
    shard_index: int
    incarnation: int
    heartbeat_interval_s: float
    lease_s: float
    staleness: int
    momentum_correction: float
    step_call_bytes: int
    shm_data_plane: bool
    def __init__(self, session_id: _Optional[str] = ..., push_codec: _Optional[_Union[CodecSpec, _Mapping]] = ..., pull_codec: _Optional[_Union[CodecSpec, _Mapping]] = ..., layout: _Optional[_Union[ModelLayout, _Mapping]] = ..., version: _Optional[int] = ..., mode: _Optional[_Union[Mode, str]] = ..., expected_workers: _Optional[int] = ..., chunk_bytes: _Optional[int] = ..., server_version: _Optional[str] = ..., plan: _Optional[_Union[PartitionPlan, _Mapping]] = ..., shard_index: _Optional[int] = ..., incarnation: _Optional[int] = ..., heartbeat_interval_s: _Optional[float] = ..., lease_s: _Optional[float] = ..., staleness: _Optional[int] = ..., momentum_correction: _Optional[float] = ..., step_call_bytes: _Optional[int] = ..., shm_data_plane: _Optional[bool] = ...) -> None: ...

class RegisterHeader(_message.Message):
    __slots__ = ("session_id", "layout", "values_follow", "plan", "shard_index")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    VALUES_FOLLOW_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    layout: ModelLayout
    values_follow: bool
    plan: PartitionPlan
    shard_index: int
    def __init__(self, session_id: _Optional[str] = ..., layout: _Optional[_Union[ModelLayout, _Mapping]] = ..., values_follow: _Optional[bool] = ..., plan: _Optional[_Union[PartitionPlan, _Mapping]] = ..., shard_index: _Optional[int] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: RegisterHeader
    chunk: TensorChunk
    def __init__(self, header: _Optional[_Union[RegisterHeader, _Mapping]] = ..., chunk: _Optional[_Union[TensorChunk, _Mapping]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("created", "version", "layout")
    CREATED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    created: bool
    version: int
    layout: ModelLayout
    def __init__(self, created: _Optional[bool] = ..., version: _Optional[int] = ..., layout: _Optional[_Union[ModelLayout, _Mapping]] = ...) -> None: ...

class PushHeader(_message.Message):
    __slots__ = ("session_id", "step", "num_samples", "tensors", "more_parts", "incarnation", "sequence", "lr", "max_grad_norm", "grad_scale", "found_inf", "momentum_applied", "shm")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    MORE_PARTS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    GRAD_SCALE_FIELD_NUMBER: _ClassVar[int]
    FOUND_INF_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_APPLIED_FIELD_NUMBER: _ClassVar[int]
    SHM_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    step: int
    num_samples: int
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    more_parts: bool
    incarnation: int
    sequence: int
    lr: float
    max_grad_norm: float
    grad_scale: float
    found_inf: bool
    momentum_applied: bool
    shm: ShmRanges
    def __init__(self, session_id: _Optional[str] = ..., step: _Optional[int] = ..., num_samples: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., more_parts: _Optional[bool] = ..., incarnation: _Optional[int] = ..., sequence: _Optional[int] = ..., lr: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., grad_scale: _Optional[float] = ..., found_inf: _Optional[bool] = ..., momentum_applied: _Optional[bool] = ..., shm: _Optional[_Union[ShmRanges, _Mapping]] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: PushHeader
    chunk: TensorChunk
    def __init__(self, header: _Optional[_Union[PushHeader, _Mapping]] = ..., chunk: _Optional[_Union[TensorChunk, _Mapping]] = ...) -> None: ...

class PushResponse(_message.Message):
    __slots__ = ("version", "applied", "staleness", "duplicate")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    version: int
    applied: bool
    staleness: int
    duplicate: bool
    def __init__(self, version: _Optional[int] = ..., applied: _Optional[bool] = ..., staleness: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("session_id", "min_version", "tensors", "held_version", "shm_segment")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    HELD_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHM_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    min_version: int
    tensors: _containers.RepeatedScalarFieldContainer[str]
    held_version: int
    shm_segment: str
    def __init__(self, session_id: _Optional[str] = ..., min_version: _Optional[int] = ..., tensors: _Optional[_Iterable[str]] = ..., held_version: _Optional[int] = ..., shm_segment: _Optional[str] = ...) -> None: ...

class PullHeader(_message.Message):
    __slots__ = ("version", "tensors", "delta_from", "shm")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    DELTA_FROM_FIELD_NUMBER: _ClassVar[int]
    SHM_FIELD_NUMBER: _ClassVar[int]
    version: int
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    delta_from: int
    shm: ShmRanges
    def __init__(self, version: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., delta_from: _Optional[int] = ..., shm: _Optional[_Union[ShmRanges, _Mapping]] = ...) -> None: ...

class PullResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: PullHeader
    chunk: TensorChunk
    def __init__(self, header: _Optional[_Union[PullHeader, _Mapping]] = ..., chunk: _Optional[_Union[TensorChunk, _Mapping]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("include_state_hash",)
    INCLUDE_STATE_HASH_FIELD_NUMBER: _ClassVar[int]
    include_state_hash: bool
    def __init__(self, include_state_hash: _Optional[bool] = ...) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("worker_id", "role", "session_id", "pushes", "seconds_since_seen", "push_codec", "incarnation", "clock")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PUSHES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_SINCE_SEEN_FIELD_NUMBER: _ClassVar[int]
    PUSH_CODEC_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    role: Role
    session_id: str
    pushes: int
    seconds_since_seen: float
    push_codec: CodecSpec
    incarnation: int
    clock: int
    def __init__(self, worker_id: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., session_id: _Optional[str] = ..., pushes: _Optional[int] = ..., seconds_since_seen: _Optional[float] = ..., push_codec: _Optional[_Union[CodecSpec, _Mapping]] = ..., incarnation: _Optional[int] = ..., clock: _Optional[int] = ...) -> None: ...

class TensorStatus(_message.Message):
    __slots__ = ("spec", "bytes")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    spec: TensorSpec
    bytes: int
    def __init__(self, spec: _Optional[_Union[TensorSpec, _Mapping]] = ..., bytes: _Optional[int] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("layout", "version", "mode", "expected_workers", "workers", "tensors", "optimizer", "pending_pushes", "server_version", "plan", "shard_index", "max_lead", "evicted", "state_hash", "restored_version", "dropouts", "skipped_rounds", "rejoins", "advertise_address", "tables", "privacy", "rounds")
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_WORKERS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    PENDING_PUSHES_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    MAX_LEAD_FIELD_NUMBER: _ClassVar[int]
    EVICTED_FIELD_NUMBER: _ClassVar[int]
    STATE_HASH_FIELD_NUMBER: _ClassVar[int]
    RESTORED_VERSION_FIELD_NUMBER: _ClassVar[int]
    DROPOUTS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    REJOINS_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    layout: ModelLayout
    version: int
    mode: Mode
    expected_workers: int
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    tensors: _containers.RepeatedCompositeFieldContainer[TensorStatus]
    optimizer: str
    pending_pushes: int
    server_version: str
    plan: PartitionPlan
    shard_index: int
    max_lead: int
    evicted: _containers.RepeatedScalarFieldContainer[str]
    state_hash: str
    restored_version: int
    dropouts: _containers.RepeatedScalarFieldContainer[str]
    skipped_rounds: _containers.RepeatedScalarFieldContainer[int]
    rejoins: _containers.RepeatedScalarFieldContainer[str]
    advertise_address: str
    tables: _containers.RepeatedCompositeFieldContainer[TableStatus]
    privacy: PrivacyStatus
    rounds: _containers.RepeatedCompositeFieldContainer[RoundClose]
    def __init__(self, layout: _Optional[_Union[ModelLayout, _Mapping]] = ..., version: _Optional[int] = ..., mode: _Optional[_Union[Mode, str]] = ..., expected_workers: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ..., tensors: _Optional[_Iterable[_Union[TensorStatus, _Mapping]]] = ..., optimizer: _Optional[str] = ..., pending_pushes: _Optional[int] = ..., server_version: _Optional[str] = ..., plan: _Optional[_Union[PartitionPlan, _Mapping]] = ..., shard_index: _Optional[int] = ..., max_lead: _Optional[int] = ..., evicted: _Optional[_Iterable[str]] = ..., state_hash: _Optional[str] = ..., restored_version: _Optional[int] = ..., dropouts: _Optional[_Iterable[str]] = ..., skipped_rounds: _Optional[_Iterable[int]] = ..., rejoins: _Optional[_Iterable[str]] = ..., advertise_address: _Optional[str] = ..., tables: _Optional[_Iterable[_Union[TableStatus, _Mapping]]] = ..., privacy: _Optional[_Union[PrivacyStatus, _Mapping]] = ..., rounds: _Optional[_Iterable[_Union[RoundClose, _Mapping]]] = ...) -> None: ...

class PrivacyStatus(_message.Message):
    __slots__ = ("mode", "noise_multiplier", "clip_norm", "delta", "epsilon", "rounds", "target_epsilon", "budget_spent", "sampling_rate")
    MODE_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    TARGET_EPSILON_FIELD_NUMBER: _ClassVar[int]
    BUDGET_SPENT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_RATE_FIELD_NUMBER: _ClassVar[int]
    mode: str
    noise_multiplier: float
    clip_norm: float
    delta: float
    epsilon: float
    rounds: int
    target_epsilon: float
    budget_spent: bool
    sampling_rate: float
    def __init__(self, mode: _Optional[str] = ..., noise_multiplier: _Optional[float] = ..., clip_norm: _Optional[float] = ..., delta: _Optional[float] = ..., epsilon: _Optional[float] = ..., rounds: _Optional[int] = ..., target_epsilon: _Optional[float] = ..., budget_spent: _Optional[bool] = ..., sampling_rate: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class LeaveResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JoinRoundRequest(_message.Message):
    __slots__ = ("session_id", "round", "close")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    round: int
    close: RoundClose
    def __init__(self, session_id: _Optional[str] = ..., round: _Optional[int] = ..., close: _Optional[_Union[RoundClose, _Mapping]] = ...) -> None: ...

class RoundClose(_message.Message):
    __slots__ = ("round", "sampled", "counted", "skipped")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_FIELD_NUMBER: _ClassVar[int]
    COUNTED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    round: int
    sampled: _containers.RepeatedScalarFieldContainer[str]
    counted: _containers.RepeatedScalarFieldContainer[str]
    skipped: bool
    def __init__(self, round: _Optional[int] = ..., sampled: _Optional[_Iterable[str]] = ..., counted: _Optional[_Iterable[str]] = ..., skipped: _Optional[bool] = ...) -> None: ...

class JoinRoundResponse(_message.Message):
    __slots__ = ("round", "sampled", "sampled_count", "dp_clip_norm", "dp_noise_std", "finished", "last_close")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_COUNT_FIELD_NUMBER: _ClassVar[int]
    DP_CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    DP_NOISE_STD_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    LAST_CLOSE_FIELD_NUMBER: _ClassVar[int]
    round: int
    sampled: bool
    sampled_count: int
    dp_clip_norm: float
    dp_noise_std: float
    finished: bool
    last_close: RoundClose
    def __init__(self, round: _Optional[int] = ..., sampled: _Optional[bool] = ..., sampled_count: _Optional[int] = ..., dp_clip_norm: _Optional[float] = ..., dp_noise_std: _Optional[float] = ..., finished: _Optional[bool] = ..., last_close: _Optional[_Union[RoundClose, _Mapping]] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("header", "chunks", "min_version", "tensors", "held_version")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    HELD_VERSION_FIELD_NUMBER: _ClassVar[int]
    header: PushHeader
    chunks: _containers.RepeatedCompositeFieldContainer[TensorChunk]
    min_version: int
    tensors: _containers.RepeatedScalarFieldContainer[str]
    held_version: int
    def __init__(self, header: _Optional[_Union[PushHeader, _Mapping]] = ..., chunks: _Optional[_Iterable[_Union[TensorChunk, _Mapping]]] = ..., min_version: _Optional[int] = ..., tensors: _Optional[_Iterable[str]] = ..., held_version: _Optional[int] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("header", "chunks", "push")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    PUSH_FIELD_NUMBER: _ClassVar[int]
    header: PullHeader
    chunks: _containers.RepeatedCompositeFieldContainer[TensorChunk]
    push: PushResponse
    def __init__(self, header: _Optional[_Union[PullHeader, _Mapping]] = ..., chunks: _Optional[_Iterable[_Union[TensorChunk, _Mapping]]] = ..., push: _Optional[_Union[PushResponse, _Mapping]] = ...) -> None: ...

class StateRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class StateResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: bytes
    def __init__(self, state: _Optional[bytes] = ...) -> None: ...

class SetStateRequest(_message.Message):
    __slots__ = ("session_id", "state")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    state: bytes
    def __init__(self, session_id: _Optional[str] = ..., state: _Optional[bytes] = ...) -> None: ...

class SetStateResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class TableOptimizer(_message.Message):
    __slots__ = ("name", "lr", "eps", "beta1", "beta2", "initial_accumulator")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    EPS_FIELD_NUMBER: _ClassVar[int]
    BETA1_FIELD_NUMBER: _ClassVar[int]
    BETA2_FIELD_NUMBER: _ClassVar[int]
    INITIAL_ACCUMULATOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    lr: float
    eps: float
    beta1: float
    beta2: float
    initial_accumulator: float
    def __init__(self, name: _Optional[str] = ..., lr: _Optional[float] = ..., eps: _Optional[float] = ..., beta1: _Optional[float] = ..., beta2: _Optional[float] = ..., initial_accumulator: _Optional[float] = ...) -> None: ...

class TableSpec(_message.Message):
    __slots__ = ("name", "rows", "dim", "dtype", "optimizer", "init_seed", "init_scale")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    INIT_SEED_FIELD_NUMBER: _ClassVar[int]
    INIT_SCALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    rows: int
    dim: int
    dtype: DType
    optimizer: TableOptimizer
    init_seed: int
    init_scale: float
    def __init__(self, name: _Optional[str] = ..., rows: _Optional[int] = ..., dim: _Optional[int] = ..., dtype: _Optional[_Union[DType, str]] = ..., optimizer: _Optional[_Union[TableOptimizer, _Mapping]] = ..., init_seed: _Optional[int] = ..., init_scale: _Optional[float] = ...) -> None: ...

class TablePlan(_message.Message):
    __slots__ = ("num_shards", "tables", "sharding")
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    SHARDING_FIELD_NUMBER: _ClassVar[int]
    num_shards: int
    tables: _containers.RepeatedCompositeFieldContainer[TableSpec]
    sharding: str
    def __init__(self, num_shards: _Optional[int] = ..., tables: _Optional[_Iterable[_Union[TableSpec, _Mapping]]] = ..., sharding: _Optional[str] = ...) -> None: ...

class DeclareTablesRequest(_message.Message):
    __slots__ = ("session_id", "plan", "shard_index")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    plan: TablePlan
    shard_index: int
    def __init__(self, session_id: _Optional[str] = ..., plan: _Optional[_Union[TablePlan, _Mapping]] = ..., shard_index: _Optional[int] = ...) -> None: ...

class DeclareTablesResponse(_message.Message):
    __slots__ = ("created", "plan")
    CREATED_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    created: bool
    plan: TablePlan
    def __init__(self, created: _Optional[bool] = ..., plan: _Optional[_Union[TablePlan, _Mapping]] = ...) -> None: ...

class RowPullRequest(_message.Message):
    __slots__ = ("session_id", "table", "row_ids", "min_version")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    ROW_IDS_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    table: str
    row_ids: bytes
    min_version: int
    def __init__(self, session_id: _Optional[str] = ..., table: _Optional[str] = ..., row_ids: _Optional[bytes] = ..., min_version: _Optional[int] = ...) -> None: ...

class RowPullHeader(_message.Message):
    __slots__ = ("version", "table", "rows", "dim", "dtype", "encoding")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    version: int
    table: str
    rows: int
    dim: int
    dtype: DType
    encoding: CodecSpec
    def __init__(self, version: _Optional[int] = ..., table: _Optional[str] = ..., rows: _Optional[int] = ..., dim: _Optional[int] = ..., dtype: _Optional[_Union[DType, str]] = ..., encoding: _Optional[_Union[CodecSpec, _Mapping]] = ...) -> None: ...

class RowPullResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: RowPullHeader
    chunk: TensorChunk
    def __init__(self, header: _Optional[_Union[RowPullHeader, _Mapping]] = ..., chunk: _Optional[_Union[TensorChunk, _Mapping]] = ...) -> None: ...

class RowPushHeader(_message.Message):
    __slots__ = ("session_id", "table", "step", "rows", "incarnation", "sequence", "num_samples", "encoded")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    table: str
    step: int
    rows: int
    incarnation: int
    sequence: int
    num_samples: int
    encoded: bool
    def __init__(self, session_id: _Optional[str] = ..., table: _Optional[str] = ..., step: _Optional[int] = ..., rows: _Optional[int] = ..., incarnation: _Optional[int] = ..., sequence: _Optional[int] = ..., num_samples: _Optional[int] = ..., encoded: _Optional[bool] = ...) -> None: ...

class RowPushRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: RowPushHeader
    chunk: TensorChunk
    def __init__(self, header: _Optional[_Union[RowPushHeader, _Mapping]] = ..., chunk: _Optional[_Union[TensorChunk, _Mapping]] = ...) -> None: ...

class TableStatus(_message.Message):
    __slots__ = ("name", "declared_rows", "dim", "materialized_rows", "bytes", "version", "optimizer")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DECLARED_ROWS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    MATERIALIZED_ROWS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    name: str
    declared_rows: int
    dim: int
    materialized_rows: int
    bytes: int
    version: int
    optimizer: str
    def __init__(self, name: _Optional[str] = ..., declared_rows: _Optional[int] = ..., dim: _Optional[int] = ..., materialized_rows: _Optional[int] = ..., bytes: _Optional[int] = ..., version: _Optional[int] = ..., optimizer: _Optional[str] = ...) -> None: ...

class SecAggKeys(_message.Message):
    __slots__ = ("client_id", "cipher_public_key", "mask_public_key", "weight")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CIPHER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MASK_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    cipher_public_key: bytes
    mask_public_key: bytes
    weight: int
    def __init__(self, client_id: _Optional[str] = ..., cipher_public_key: _Optional[bytes] = ..., mask_public_key: _Optional[bytes] = ..., weight: _Optional[int] = ...) -> None: ...

class SecAggSealedShare(_message.Message):
    __slots__ = ("client_id", "sealed")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    sealed: bytes
    def __init__(self, client_id: _Optional[str] = ..., sealed: _Optional[bytes] = ...) -> None: ...

class SecAggRevealedShare(_message.Message):
    __slots__ = ("owner", "mask_key", "share")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    owner: str
    mask_key: bool
    share: bytes
    def __init__(self, owner: _Optional[str] = ..., mask_key: _Optional[bool] = ..., share: _Optional[bytes] = ...) -> None: ...

class SecAggRequest(_message.Message):
    __slots__ = ("session_id", "round", "stage", "keys", "sealed", "masked_input", "revealed")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    MASKED_INPUT_FIELD_NUMBER: _ClassVar[int]
    REVEALED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    round: int
    stage: SecAggStage
    keys: SecAggKeys
    sealed: _containers.RepeatedCompositeFieldContainer[SecAggSealedShare]
    masked_input: bytes
    revealed: _containers.RepeatedCompositeFieldContainer[SecAggRevealedShare]
    def __init__(self, session_id: _Optional[str] = ..., round: _Optional[int] = ..., stage: _Optional[_Union[SecAggStage, str]] = ..., keys: _Optional[_Union[SecAggKeys, _Mapping]] = ..., sealed: _Optional[_Iterable[_Union[SecAggSealedShare, _Mapping]]] = ..., masked_input: _Optional[bytes] = ..., revealed: _Optional[_Iterable[_Union[SecAggRevealedShare, _Mapping]]] = ...) -> None: ...

class SecAggResponse(_message.Message):
    __slots__ = ("participants", "threshold", "clip", "levels", "graph_seed", "inbox", "survivors", "version", "applied", "round")
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    GRAPH_SEED_FIELD_NUMBER: _ClassVar[int]
    INBOX_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    participants: _containers.RepeatedCompositeFieldContainer[SecAggKeys]
    threshold: int
    clip: float
    levels: int
    graph_seed: int
    inbox: _containers.RepeatedCompositeFieldContainer[SecAggSealedShare]
    survivors: _containers.RepeatedScalarFieldContainer[str]
    version: int
    applied: bool
    round: int
    def __init__(self, participants: _Optional[_Iterable[_Union[SecAggKeys, _Mapping]]] = ..., threshold: _Optional[int] = ..., clip: _Optional[float] = ..., levels: _Optional[int] = ..., graph_seed: _Optional[int] = ..., inbox: _Optional[_Iterable[_Union[SecAggSealedShare, _Mapping]]] = ..., survivors: _Optional[_Iterable[str]] = ..., version: _Optional[int] = ..., applied: _Optional[bool] = ..., round: _Optional[int] = ...) -> None: ...
