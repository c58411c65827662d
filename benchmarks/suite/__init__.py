"""The suite: this framework side by side with what users would pick instead (issue #7).

Run it from the checkout's root: `python -m benchmarks.suite [--quick]` (`paramserver bench`
and `make bench` run the same thing there).

    __main__     the command line: plan, report and plot paths
    plan         what a full or a quick run measures
    runner       runs a plan (in a private network namespace when it can), then reports
    pool         long-lived worker processes shared by every job of a run
    servers      `paramserver serve` processes per job, and their memory figures
    floor        raw TCP and a bare gRPC stream moving the same bytes
    ours         our sync steps per codec and shard count, and async push rates
    peers        gloo all-reduce, and the torch.distributed.rpc parameter server
    netcap       tc link caps on the namespace's loopback
    capped       the codec comparison under those caps, every system alike
    convergence  sync vs async vs SSP with a 2x straggler: time to a target accuracy
    memory       the async soak: server memory against the push count
    targets      the issue's targets, checked on one run's figures
    report, plot the terminal tables and the PNG

Timings, CPU and memory probes come from `benchmarks.measure`, the model from
`benchmarks.blob`, the bare gRPC server from `benchmarks.bare_grpc`.
"""
