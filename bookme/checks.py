"""The chain this deployment talks to is the one it is configured for.

- the node's `eth_chainId` is CHAIN_ID;
- the escrow contract's `signer()` is the address of SIGNER_PRIVATE_KEY;
- its `operator()` is the address of OPERATOR_PRIVATE_KEY, where that key is loaded (the
  worker and commands; the web process never holds it).

Otherwise every authorization the web process signs is refused by the contract, every operator
transaction reverts, or the backend reads another chain than the wallets pay on. Each mismatch
is one line naming both values.

Where it runs:
- at start-up of the web and worker processes (bookme.apps): a mismatch stops the process. An
  unreachable node does not: the check is logged as skipped and health reports it, because an
  RPC outage must not turn into an outage of everything the backend does without the chain.
- in health (bookme.health): a mismatch makes the `identity` component unhealthy. The worker
  asks, with the rest of health's chain part, and the web process reads its answer.
"""
from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from eth_utils import keccak, to_checksum_address

from chain_events.rpc import RpcClient, RpcError, RpcInconsistentAnswer, get_rpc_client
from escrow.signing import signer_address
from reconciliation.transactions import operator_account

log = logging.getLogger(__name__)


class ChainIdentityMismatch(ImproperlyConfigured):
    """The node or the contract is not the one the settings describe (the message names both values).

    An exception, not SystemExit: gunicorn stops (rather than respawns) a worker that fails to boot with one.
    """

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("chain identity mismatch: " + "; ".join(problems))


def _view_call(name: str) -> tuple[str, list]:
    data = "0x" + keccak(text=f"{name}()")[:4].hex()
    return "eth_call", [{"to": settings.ESCROW_CONTRACT_ADDRESS, "data": data}, "latest"]


def _address_of(answer) -> str | None:
    """The address an `address` view returned (one ABI word), None for no answer (no contract there)."""
    if not isinstance(answer, str) or len(answer) != 66:
        return None
    return to_checksum_address("0x" + answer[-40:])


def _well_formed_identity(answers: list) -> None:
    """A node answering nonsense (a broken load balancer: "0xdeadbeef" to everything) is a faulty
    endpoint to fail over from, not a node of another chain: a view call answers one ABI word, or
    "0x" where no contract is (that one a real misconfiguration, reported by identity_problems).
    The chain id's shape is checked with every answer (chain_events.answers)."""
    for answer in answers[1:]:
        if not (answer == "0x" or (isinstance(answer, str) and len(answer) == 66 and int(answer, 16) >= 0)):
            raise RpcInconsistentAnswer(f"a view call answered {str(answer)[:80]!r}")


def identity_problems(client: RpcClient | None = None) -> list[str]:
    """What differs between the settings and the chain (empty: nothing). One batched RPC round
    trip; chain_events.rpc.RpcError when the node cannot be asked."""
    roles = [("signer", "SIGNER_PRIVATE_KEY", signer_address())]
    if settings.OPERATOR_PRIVATE_KEY is not None:
        roles.append(("operator", "OPERATOR_PRIVATE_KEY", operator_account().address))
    answers = (client or get_rpc_client()).batch(
        [("eth_chainId", []), *(_view_call(role) for role, _, _ in roles)], validate=_well_formed_identity
    )
    node_chain_id = int(answers[0], 16)
    if node_chain_id != settings.CHAIN_ID:
        # The contract's answers would come from another chain: nothing else to compare.
        return [f"CHAIN_ID is {settings.CHAIN_ID} but the node's eth_chainId is {node_chain_id}"]
    problems = []
    for (role, key_name, ours), answer in zip(roles, answers[1:], strict=True):
        on_chain = _address_of(answer)
        if on_chain is None:
            return [f"ESCROW_CONTRACT_ADDRESS {settings.ESCROW_CONTRACT_ADDRESS} has no BookingEscrow on chain "
                    f"{node_chain_id} ({role}() answered {answer!r})"]
        if on_chain != ours:
            problems.append(f"{key_name} is the key of {ours} but the contract's {role}() is {on_chain}")
    return problems


def check_identity_at_start() -> None:
    """Stop a web or worker process configured for another chain or other keys (ChainIdentityMismatch)."""
    try:
        problems = identity_problems()
    except RpcError as exc:
        log.warning("chain identity not checked at start-up, the node is unreachable (%s): /api/health/ "
                    "reports it once the node answers", exc)
        return
    if problems:
        raise ChainIdentityMismatch(problems)
    log.info("chain identity checked: chain %s, contract %s", settings.CHAIN_ID, settings.ESCROW_CONTRACT_ADDRESS)
