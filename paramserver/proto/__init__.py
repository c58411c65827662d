"""Generated protobuf and gRPC code (make protos). Do not edit by hand."""
