"""Multi-host data-parallel training on MXNet's parameter-server KVStore (ps-lite), one module per job:
`spec` (hosts, ports, the roles' environment), `watchdog` (liveness between hosts), `supervisor` (what
`train` runs on each host; the role processes), `collectives` (the KVStore inside a worker), `packing`
(exact float32 encodings for it), `single_host` (the same interface as a no-op, for one host) and `local`
(N simulated hosts on one machine).

Kept free of imports, so the light supervisor never loads MXNet.
"""
