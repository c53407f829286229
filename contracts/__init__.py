"""BookMe chain tooling: compiled contract artifacts, a local anvil runner and deploy helpers.

Submodules:
    contracts.artifacts  -- ABIs/bytecode from contracts/build, event topics, EIP-712 type strings
    contracts.anvil      -- AnvilProcess (local dev chain) and anvil's default dev accounts/roles
    contracts.deploy     -- deploy MockUSDC + BookingEscrow, mint test USDC, send signed txs
    contracts.testing    -- EscrowChain test client (EIP-712 signing, revert/log decoding); dev/test only

Nothing here imports Django.
"""
