"""Every JSON-RPC answer is checked for its method's shape where answers arrive (`RpcClient.batch`,
`chain_events.answers`): a node answering well-formed nonsense to one method is failed over from,
whichever caller parses the answer. Found by the chaos run: a string where a receipt belongs
crashed the settle pass (`'str' object has no attribute 'get'`)."""
from __future__ import annotations

import pytest

from chain_events.rpc import RpcClient, RpcUnavailable
from tests.rpc_proxy import RpcProxy

pytestmark = pytest.mark.chain

NONSENSE = ["0xdeadbeef", 7, [], {}, {"number": "0x1"}]


@pytest.fixture
def mined_transfer(chain_settings):
    """A mined plain transfer: (tx hash, block number)."""
    accounts = chain_settings.w3.eth.accounts
    tx_hash = chain_settings.w3.eth.send_transaction({"from": accounts[0], "to": accounts[1], "value": 1})
    receipt = chain_settings.w3.eth.wait_for_transaction_receipt(tx_hash)
    return "0x" + bytes(tx_hash).hex(), receipt["blockNumber"]


def calls_for(chain, tx_hash: str, block: int) -> dict[str, list]:
    return {
        "eth_getTransactionReceipt": [tx_hash],
        "eth_getTransactionByHash": [tx_hash],
        "eth_getBlockByNumber": [hex(block), False],
        "eth_getLogs": [{"fromBlock": hex(chain.start_block), "toBlock": hex(block), "address": chain.escrow}],
        "eth_feeHistory": [hex(4), "latest", [50]],
        "eth_getTransactionCount": [chain.w3.eth.accounts[0], "latest"],
        "eth_blockNumber": [],
    }


METHODS = [
    "eth_getTransactionReceipt", "eth_getTransactionByHash", "eth_getBlockByNumber", "eth_getLogs",
    "eth_feeHistory", "eth_getTransactionCount", "eth_blockNumber",
]
#: Well-formed answers only the caller can tell are wrong (`get_logs_checked` asks the range's
#: header in the same batch for that; a chain id is compared with the settings).
WELL_FORMED = {("eth_getTransactionCount", "0xdeadbeef"), ("eth_blockNumber", "0xdeadbeef"), ("eth_getLogs", "[]")}


@pytest.mark.parametrize(("method", "nonsense"), [
    (method, nonsense) for method in METHODS for nonsense in NONSENSE if (method, str(nonsense)) not in WELL_FORMED
], ids=lambda value: value if isinstance(value, str) else repr(value))
def test_nonsense_to_one_method_is_answered_by_the_next_endpoint(chain_settings, mined_transfer, method, nonsense):
    params = calls_for(chain_settings, *mined_transfer)[method]
    truth = chain_settings.rpc(method, params)
    with RpcProxy(chain_settings.url) as primary:
        primary.nonsense_answers[method] = nonsense
        client = RpcClient([primary.url, chain_settings.url], retries=0, cooldown=60)

        assert client.call(method, params) == truth

        assert primary.seen == [method]  # the primary was asked first and its answer refused
        assert client.health()[0]["consecutive_failures"] == 1


def test_a_missing_receipt_or_block_is_an_answer_not_nonsense(chain_settings):
    """null is what a node answers for a transaction it has not mined and a block above its head."""
    client = RpcClient([chain_settings.url], retries=0)
    assert client.call("eth_getTransactionReceipt", ["0x" + "ab" * 32]) is None
    assert client.call("eth_getBlockByNumber", [hex(chain_settings.block_number() + 50), False]) is None


def test_a_block_or_receipt_for_something_else_than_asked_is_nonsense(chain_settings, mined_transfer):
    tx_hash, block = mined_transfer
    other_block = chain_settings.rpc("eth_getBlockByNumber", [hex(block - 1), False])
    other_receipt = {**chain_settings.rpc("eth_getTransactionReceipt", [tx_hash]), "transactionHash": "0x" + "cd" * 32}
    with RpcProxy(chain_settings.url) as only:
        client = RpcClient([only.url], retries=0)
        only.nonsense_answers = {"eth_getBlockByNumber": other_block, "eth_getTransactionReceipt": other_receipt}
        for method, params in (("eth_getBlockByNumber", [hex(block), False]), ("eth_getTransactionReceipt", [tx_hash])):
            with pytest.raises(RpcUnavailable, match="not the one asked"):
                client.call(method, params)


def test_a_missing_head_is_nonsense(chain_settings):
    """Every node has a latest block: null for it (a proxy's empty answer) is refused, where null for a
    numbered block above the head is the node's real answer."""
    truth = chain_settings.rpc("eth_getBlockByNumber", ["latest", False])
    with RpcProxy(chain_settings.url) as primary:
        primary.nonsense_answers["eth_getBlockByNumber"] = None
        client = RpcClient([primary.url, chain_settings.url], retries=0, cooldown=60)
        assert int(client.call("eth_getBlockByNumber", ["latest", False])["number"], 16) >= int(truth["number"], 16)
        assert client.health()[0]["consecutive_failures"] == 1


def test_answers_some_nodes_give_are_accepted(chain_settings, mined_transfer):
    """A receipt without `status` (pre-Byzantium style, `root` instead) and "0x0" for the code of an
    account without any (escrow.contract_wallets reads it as no code) are answers, not nonsense."""
    tx_hash, _ = mined_transfer
    receipt = chain_settings.rpc("eth_getTransactionReceipt", [tx_hash])
    without_status = {key: value for key, value in receipt.items() if key != "status"} | {"root": "0x" + "11" * 32}
    with RpcProxy(chain_settings.url) as only:
        only.nonsense_answers = {"eth_getTransactionReceipt": without_status, "eth_getCode": "0x0"}
        client = RpcClient([only.url], retries=0)
        assert client.call("eth_getTransactionReceipt", [tx_hash]) == without_status
        assert client.call("eth_getCode", [chain_settings.w3.eth.accounts[3], "latest"]) == "0x0"
