"""Records of the table RPCs (issue #16) <-> protobuf, and their four (de)serializers each.

Row ids travel as raw little-endian int64 bytes (in a pull request's `row_ids`, and as the
chunks of tensor 0 of a push); row values as TensorChunks through the `wire` fast path.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from paramserver.errors import InvalidArgument
from paramserver.proto import paramserver_pb2 as pb
from paramserver.serde.records import (
    codec_from_proto,
    codec_to_proto,
    push_result_from_proto,
)
from paramserver.serde.records import push_result_to_proto as _push_result_to_proto
from paramserver.serde.specs import dtype_from_proto, dtype_to_proto
from paramserver.serde.streams import _wrapper_decoder
from paramserver.tables.records import (
    DeclareTables,
    RowPullHeader,
    RowPullRequest,
    RowPushHeader,
    TableOptimizer,
    TablePlan,
    TableSpec,
)

# A row pull names at most this many ids (8 bytes each) in its one request message; the
# client splits larger pulls (docs/wire.md section 11).
MAX_ROWS_PER_CALL = 1 << 18
MAX_ROW_PULL_REQUEST_BYTES = MAX_ROWS_PER_CALL * 8 + (64 << 10)


def table_plan_to_proto(plan: TablePlan | None) -> pb.TablePlan:
    if plan is None:
        return pb.TablePlan()
    return pb.TablePlan(num_shards=plan.num_shards, sharding=plan.sharding, tables=[
        pb.TableSpec(name=t.name, rows=t.rows, dim=t.dim, dtype=dtype_to_proto(t.dtype),
                     init_seed=t.init_seed, init_scale=t.init_scale,
                     optimizer=pb.TableOptimizer(
                         name=t.optimizer.name, lr=t.optimizer.lr, eps=t.optimizer.eps,
                         beta1=t.optimizer.beta1, beta2=t.optimizer.beta2,
                         initial_accumulator=t.optimizer.initial_accumulator))
        for t in plan.tables])


def table_plan_from_proto(msg: pb.TablePlan) -> TablePlan | None:
    """None for an empty plan (no tables declared). ValueError for an invalid one (the
    deserializers turn it into a MalformedMessage: INVALID_ARGUMENT)."""
    if msg.num_shards == 0 and not msg.tables:
        return None
    try:
        return _table_plan(msg)
    except InvalidArgument as error:
        raise ValueError(error.message) from None


def _table_plan(msg: pb.TablePlan) -> TablePlan:
    return TablePlan(msg.num_shards, tuple(
        TableSpec(t.name, t.rows, t.dim, dtype_from_proto(t.dtype),
                  TableOptimizer(t.optimizer.name, t.optimizer.lr, t.optimizer.eps,
                                 t.optimizer.beta1, t.optimizer.beta2,
                                 t.optimizer.initial_accumulator),
                  t.init_seed, t.init_scale)
        for t in msg.tables), msg.sharding)


def table_plan_to_bytes(plan: TablePlan | None) -> bytes:
    return table_plan_to_proto(plan).SerializeToString()


def table_plan_from_bytes(data: bytes) -> TablePlan | None:
    return table_plan_from_proto(pb.TablePlan.FromString(data))


def _declare_from_proto(msg: pb.DeclareTablesRequest) -> DeclareTables:
    plan = table_plan_from_proto(msg.plan)
    if plan is None:
        raise ValueError("a declaration carries an empty table plan")
    return DeclareTables(msg.session_id, plan, msg.shard_index)


def _row_ids(data: bytes) -> np.ndarray:
    if len(data) % 8:
        raise ValueError(f"row_ids holds {len(data)} bytes, not a whole number of int64")
    return np.frombuffer(data, dtype="<i8").astype(np.int64, copy=False)


def encode_row_pull_header(header: RowPullHeader) -> bytes:
    return pb.RowPullResponse(header=pb.RowPullHeader(
        version=header.version, table=header.table, rows=header.rows, dim=header.dim,
        dtype=dtype_to_proto(header.dtype),
        encoding=None if header.encoding is None else codec_to_proto(header.encoding),
    )).SerializeToString()


def encode_row_push_header(header: RowPushHeader) -> bytes:
    return pb.RowPushRequest(header=pb.RowPushHeader(
        session_id=header.session_id, table=header.table, step=header.step, rows=header.rows,
        incarnation=header.incarnation, sequence=header.sequence,
        num_samples=header.num_samples, encoded=header.encoded)).SerializeToString()


def _pull_header_from_proto(msg: pb.RowPullHeader) -> RowPullHeader:
    return RowPullHeader(msg.version, msg.table, msg.rows, msg.dim, dtype_from_proto(msg.dtype),
                         codec_from_proto(msg.encoding) if msg.HasField("encoding") else None)


def _push_header_from_proto(msg: pb.RowPushHeader) -> RowPushHeader:
    return RowPushHeader(msg.session_id, msg.table, msg.step, msg.rows, msg.incarnation,
                         msg.sequence, msg.num_samples, msg.encoded)


decode_row_pull_response = _wrapper_decoder(pb.RowPullResponse, "header",
                                            _pull_header_from_proto)
decode_row_push_request = _wrapper_decoder(pb.RowPushRequest, "header",
                                           _push_header_from_proto)


def table_rpcs(rpc: Any, parsing: Any, serializing: Any, identity: Any) -> dict[str, Any]:
    """The three table methods' `Rpc`s (built by `rpcs.py` with its helpers)."""
    return {
        "DeclareTables": rpc(
            serializing(lambda r: pb.DeclareTablesRequest(
                session_id=r.session_id, plan=table_plan_to_proto(r.plan),
                shard_index=r.shard_index)),
            parsing(pb.DeclareTablesRequest, _declare_from_proto, 1 << 20),
            serializing(lambda r: pb.DeclareTablesResponse(
                created=r[0], plan=table_plan_to_proto(r[1]))),
            parsing(pb.DeclareTablesResponse,
                    lambda m: (bool(m.created), table_plan_from_proto(m.plan)))),
        "PullRows": rpc(
            serializing(lambda r: pb.RowPullRequest(
                session_id=r.session_id, table=r.table,
                row_ids=np.ascontiguousarray(r.ids, dtype="<i8").tobytes(),
                min_version=r.min_version)),
            parsing(pb.RowPullRequest, lambda m: RowPullRequest(
                m.session_id, m.table, _row_ids(m.row_ids), m.min_version),
                MAX_ROW_PULL_REQUEST_BYTES),
            identity, decode_row_pull_response),
        "PushRows": rpc(identity, decode_row_push_request,
                        serializing(_push_result_to_proto),
                        parsing(pb.PushResponse, push_result_from_proto)),
    }
