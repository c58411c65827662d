"""What a server reports about itself (`Status`): its model, version, workers and events."""

from __future__ import annotations

from dataclasses import dataclass, field

from paramserver.federated.privacy import PrivacyReport
from paramserver.tables.records import TableStatus
from paramserver.types import CodecSpec, Mode, ModelLayout, PartitionPlan, Role


@dataclass(frozen=True)
class WorkerInfo:
    worker_id: str
    role: Role
    session_id: str
    pushes: int
    seconds_since_seen: float
    push_codec: CodecSpec
    incarnation: int = 0
    clock: int = 0


@dataclass(frozen=True)
class ServerStatus:
    layout: ModelLayout | None
    version: int
    mode: Mode
    expected_workers: int
    optimizer: str
    pending_pushes: int
    server_version: str
    workers: tuple[WorkerInfo, ...] = field(default=())
    plan: PartitionPlan | None = None
    shard_index: int = 0
    max_lead: int = 0
    evicted: tuple[str, ...] = ()
    state_hash: str = ""
    restored_version: int = -1
    dropouts: tuple[str, ...] = ()
    skipped_rounds: tuple[int, ...] = ()
    rejoins: tuple[str, ...] = ()  # "worker@held->version", oldest first
    advertise_address: str = ""  # host:port workers should dial
    tables: tuple[TableStatus, ...] = ()  # row-sparse tables on this shard (issue #16)
    privacy: PrivacyReport | None = None  # federated with --dp (issue #17)
