"""The shared-memory data plane for workers on the server's host (issue #14).

gRPC stays the control plane (handshake, headers, answers, every check); only the payload
bytes of pushes and pulls move through files in /dev/shm that the worker created. See
docs/wire.md section 5g and `segments.py`.
"""
