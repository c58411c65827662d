"""Command line: one module per command (`serve`, `worker`, `launch`, `status`, `federated`,
`client`, `bench`), which parses arguments, calls a library function and prints the result.

The CLI is the composition root: the one place in `paramserver` that may import the
client-side `workers` package. The library behind the commands that start local processes
lives here for that reason: `local_cluster` (start, watch and stop processes by pid),
`local_training` (`launch`) and `local_federation` (`federated`). `server_options` is the one
table of the server's flags, derived from `ServerConfig`; `options` holds the other shared
options.
"""
