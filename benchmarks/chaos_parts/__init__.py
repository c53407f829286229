"""Parts of the chaos run (benchmarks/chaos.py), one job per module: `system` brings the whole
system up on its own ports and database, `rpc_faults` is the faulty primary RPC endpoint,
`flows` drives client flows through the API and the contract, `faults` injects reorgs, RPC
faults and process kills on a schedule, `invariants` checks the end state, `report` prints it."""
