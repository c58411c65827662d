"""ShmOffer and ShmRanges <-> protobuf (the shared-memory data plane, issue #14)."""

from __future__ import annotations

from paramserver.proto import paramserver_pb2 as pb
from paramserver.shm.records import ShmOffer, ShmRanges


def offer_to_proto(offer: ShmOffer | None) -> pb.ShmOffer | None:
    if offer is None:
        return None
    return pb.ShmOffer(push_segment=offer.push_segment, pull_segment=offer.pull_segment,
                       token=offer.token)


def offer_from_proto(msg: pb.ShmOffer) -> ShmOffer:
    return ShmOffer(msg.push_segment, msg.pull_segment, bytes(msg.token))


def ranges_to_proto(ranges: ShmRanges | None) -> pb.ShmRanges | None:
    if ranges is None:
        return None
    return pb.ShmRanges(segment=ranges.segment, offsets=list(ranges.offsets),
                        lengths=list(ranges.lengths))


def ranges_from_proto(msg: pb.ShmRanges) -> ShmRanges:
    return ShmRanges(msg.segment, tuple(msg.offsets), tuple(msg.lengths))
