"""`paramserver bench`: this framework side by side with what users would pick instead (#7).

    plan         what a full or a quick run measures
    runner       runs a plan (in a private network namespace when it can), then reports
    pool         long-lived worker processes shared by every job of a run
    servers      `paramserver serve` processes per job, and their memory figures
    measure      timings (median, min, max) and where the CPU went, per process
    floor        raw TCP and a bare gRPC stream moving the same bytes
    ours         our sync steps per codec and shard count, and async push rates
    peers        gloo all-reduce, and the torch.distributed.rpc parameter server
    netcap       tc link caps on the namespace's loopback
    capped       the codec comparison under those caps, every system alike
    convergence  sync vs async vs SSP with a 2x straggler: time to a target accuracy
    memory       the async soak: server memory against the push count
    targets      the issue's targets, checked on one run's figures
    report, plot the terminal tables and the PNG
"""
