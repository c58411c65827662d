"""Benchmarks: flat scripts per topic, and the suite against the peers. Not installed with the
package: run them from a source checkout's root, e.g. `python -m benchmarks.throughput`.

Scripts (each: constants, warm-up, timed stage, one summary line; `--quick` for a smoke
test; the report goes to runs/ unless `--report FILE`):

    throughput    push+pull rounds against a bare-gRPC ceiling (issue #2)
    shards        a 100 MB model over 1, 2 and 4 shards (#3)
    codecs        codec speed, step time per codec, bandwidth caps (#4)
    codec_digits  the digits job per codec: accuracy and bytes (#4)
    overlap       pushes overlapped with backward (#6)
    faults        eviction and shard-restart timings, hangs (#5)
    federated     federated strategies on skewed clients (#8)
    fed_codecs    compressed client updates per federated strategy (#17)
    fed_dp        DP-FedAvg's accuracy at epsilon <= 8 through the server (#17)
    fed_dp_scale  DP-FedAvg at 10-1000 clients, simulated in process (#17)
    tables        sparse embedding tables vs dense tables and all-reduce, CTR data (#16)
    suite/        `paramserver bench`: ours against the floor and the peers (#7)

Shared by them:

    harness       CLI command, link caps, report paths, a server started and stopped by pid
    measure       timings (median, min, max, n), CPU, memory and wire-byte probes
    blob          the synthetic model of N MB float32 with fixed gradients
    rounds        client processes timing rounds in lockstep
    bare_grpc     the bare gRPC server and client: the floor our messages are measured against

RESULTS.md quotes curated runs kept in results/, each dated in its file name.
"""
