"""Secure aggregation's records <-> protobuf (the SecureAggregate RPC, issue #17)."""

from __future__ import annotations

from paramserver.federated.secagg.protocol import (
    AdvertisedKeys,
    RevealedShare,
    RoundParams,
    SecAggReply,
    SecAggRequest,
    Stage,
)
from paramserver.proto import paramserver_pb2 as pb


def _keys_to_proto(keys: AdvertisedKeys) -> pb.SecAggKeys:
    return pb.SecAggKeys(client_id=keys.client_id, cipher_public_key=keys.cipher_key,
                         mask_public_key=keys.mask_key, weight=keys.weight)


def _keys_from_proto(msg: pb.SecAggKeys) -> AdvertisedKeys:
    return AdvertisedKeys(msg.client_id, bytes(msg.cipher_public_key),
                          bytes(msg.mask_public_key), int(msg.weight))


def _sealed(shares: dict[str, bytes]) -> list[pb.SecAggSealedShare]:
    return [pb.SecAggSealedShare(client_id=c, sealed=s) for c, s in sorted(shares.items())]


def _unsealed(msgs: list[pb.SecAggSealedShare]) -> dict[str, bytes]:
    out = {m.client_id: bytes(m.sealed) for m in msgs}
    if len(out) != len(msgs):
        raise ValueError("a client id appears twice among the sealed shares")
    return out


def secagg_request_to_proto(request: SecAggRequest) -> pb.SecAggRequest:
    return pb.SecAggRequest(
        session_id=request.session_id, round=request.round,
        stage=pb.SecAggStage.Name(int(request.stage)),
        keys=_keys_to_proto(request.keys) if request.keys is not None else None,
        sealed=_sealed(request.sealed), masked_input=request.masked,
        revealed=[pb.SecAggRevealedShare(owner=r.owner, mask_key=r.mask_key, share=r.share)
                  for r in request.revealed])


def secagg_request_from_proto(msg: pb.SecAggRequest) -> SecAggRequest:
    return SecAggRequest(
        session_id=msg.session_id, round=msg.round, stage=Stage(msg.stage),
        keys=_keys_from_proto(msg.keys) if msg.HasField("keys") else None,
        sealed=_unsealed(list(msg.sealed)), masked=bytes(msg.masked_input),
        revealed=tuple(RevealedShare(r.owner, r.mask_key, bytes(r.share))
                       for r in msg.revealed))


def secagg_reply_to_proto(reply: SecAggReply) -> pb.SecAggResponse:
    msg = pb.SecAggResponse(inbox=_sealed(reply.inbox), survivors=list(reply.survivors),
                            version=reply.version, applied=reply.applied)
    if reply.params is not None:
        p = reply.params
        msg.participants.extend(_keys_to_proto(k) for k in p.participants)
        msg.threshold, msg.clip, msg.levels = p.threshold, p.clip, p.levels
        msg.graph_seed, msg.round = p.graph_seed, p.round
    return msg


def secagg_reply_from_proto(msg: pb.SecAggResponse) -> SecAggReply:
    params = (RoundParams(msg.round, tuple(_keys_from_proto(k) for k in msg.participants),
                          msg.threshold, msg.clip, msg.levels, msg.graph_seed)
              if msg.participants else None)
    return SecAggReply(params=params, inbox=_unsealed(list(msg.inbox)),
                       survivors=tuple(msg.survivors), version=msg.version,
                       applied=msg.applied)
