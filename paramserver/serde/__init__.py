"""The one package that converts between protobuf messages and our records.

- `records`: paired `x_to_proto` / `x_from_proto` functions for every record.
- `streams`: the streaming methods' headers (protobuf) and chunks (the `wire` fast path),
  and records stored as bytes (checkpoints).
- `rpcs`: `RPCS`, per method the four (de)serializers between wire bytes and records that
  the servicer and the client plug into gRPC, so neither ever sees a protobuf class.
"""

from paramserver.serde.records import (
    SERVICE_NAME,
    codec_from_proto,
    codec_to_proto,
    layout_from_proto,
    layout_to_proto,
    method_path,
    plan_from_proto,
    plan_to_proto,
)
from paramserver.serde.rpcs import RPCS, STREAMING, Rpc
from paramserver.serde.specs import spec_from_proto, spec_to_proto
from paramserver.serde.streams import (
    MalformedMessage,
    decode_pull_response,
    decode_push_request,
    decode_register_request,
    encode_pull_header,
    encode_push_header,
    encode_register_header,
    layout_from_bytes,
    layout_to_bytes,
    plan_from_bytes,
    plan_to_bytes,
)
from paramserver.serde.tables import encode_row_push_header

__all__ = [
    "RPCS", "SERVICE_NAME", "STREAMING", "MalformedMessage", "Rpc", "codec_from_proto",
    "codec_to_proto", "decode_pull_response", "decode_push_request",
    "decode_register_request", "encode_pull_header", "encode_push_header",
    "encode_register_header", "encode_row_push_header", "layout_from_bytes", "layout_from_proto", "layout_to_bytes",
    "layout_to_proto", "method_path", "plan_from_bytes", "plan_from_proto", "plan_to_bytes",
    "plan_to_proto", "spec_from_proto", "spec_to_proto",
]
