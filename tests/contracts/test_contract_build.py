"""Artifacts, the compile script, type hashes and event topics (the fixed client interface)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from eth_account import Account
from eth_utils import keccak

from contracts import artifacts
from contracts.anvil import (
    ANVIL_ACCOUNTS,
    DEFAULT_MNEMONIC,
    DEPLOYER,
    FEE_RECIPIENT,
    OPERATOR,
    SIGNER,
    USER_ACCOUNTS,
    AnvilProcess,
    find_free_port,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE = shutil.which("node") or "node"  # bin/setup needs node (npm ci): a missing one fails here loudly

# Type strings and topic0 values exactly as DESIGN.md gives them.
DESIGN_BOOKING_TYPE = (
    "BookingAuthorization(bytes32 bookingId,address customer,address provider,address inviter,"
    "uint256 amount,uint256 platformFeeRate,uint256 inviterFeeRate,uint256 expiry,uint256 nonce)"
)
DESIGN_CANCELLATION_TYPE = (
    "CancellationAuthorization(bytes32 bookingId,uint256 customerAmount,uint256 providerAmount,"
    "uint256 platformAmount,uint256 inviterAmount,string reason,uint256 expiry,uint256 nonce)"
)
DESIGN_TOPICS = {
    "BookingCreatedAndPaid": "0xf84f3e7a3f966752b4367f1e193649e6c1294adf8cd4db667f252158dd291684",
    "ServiceCompleted": "0xda9c8301a17536ae73232dcfbf09f6c3380f78a679244f500d725557a101f657",
    "BookingCancelled": "0x0c42a6337d705a780417c44f0395120e0896a63c6cffcff7e0ba57994959f0cd",
}

EXPECTED_ESCROW_ERRORS = {
    "AuthorizationExpired(uint256)",
    "BookingAlreadyExists(bytes32)",
    "BookingNotPaid(bytes32,uint8)",
    "CallerNotCustomer()",
    "CallerNotOperator()",
    "CallerNotOperatorOrOwner()",
    "CallerNotParty()",
    "CompletionDelayTooLong(uint256)",
    "CustomerIsProvider()",
    "InvalidSignature()",
    "InviterAmountWithoutInviter()",
    "InviterFeeRateTooHigh(uint256)",
    "InviterFeeWithoutInviter()",
    "NonceAlreadyUsed(uint256)",
    "OwnershipRenouncementDisabled()",
    "PlatformFeeRateTooHigh(uint256)",
    "ServiceWindowNotPassed(uint256)",
    "SplitMismatch(uint256,uint256)",
    "ZeroAddress()",
    "ZeroAmount()",
    "ZeroBookingId()",
    # inherited from OpenZeppelin
    "EnforcedPause()",
    "ExpectedPause()",
    "OwnableInvalidOwner(address)",
    "OwnableUnauthorizedAccount(address)",
    "ReentrancyGuardReentrantCall()",
    "SafeERC20FailedOperation(address)",
    "InvalidShortString()",
    "StringTooLong(string)",
}

EXPECTED_ESCROW_FUNCTIONS = {
    "BOOKING_AUTHORIZATION_TYPEHASH()",
    "CANCELLATION_AUTHORIZATION_TYPEHASH()",
    "BPS_DENOMINATOR()",
    "DEFAULT_OPERATOR_COMPLETION_DELAY()",
    "MAX_INVITER_FEE_RATE()",
    "MAX_OPERATOR_COMPLETION_DELAY()",
    "MAX_PLATFORM_FEE_RATE()",
    "acceptOwnership()",
    "cancelBooking((bytes32,uint256,uint256,uint256,uint256,string,uint256,uint256),bytes)",
    "completeService(bytes32)",
    "completeServiceByOperator(bytes32)",
    "createAndPayBooking((bytes32,address,address,address,uint256,uint256,uint256,uint256,uint256),bytes)",
    "createAndPayBookingWithPermit((bytes32,address,address,address,uint256,uint256,uint256,uint256,uint256),"
    "bytes,uint256,uint8,bytes32,bytes32)",
    "domainSeparator()",
    "eip712Domain()",
    "emergencyCancelBooking(bytes32,string)",
    "feeRecipient()",
    "getBooking(bytes32)",
    "getBookings(bytes32[])",
    "hashBookingAuthorization((bytes32,address,address,address,uint256,uint256,uint256,uint256,uint256))",
    "hashCancellationAuthorization((bytes32,uint256,uint256,uint256,uint256,string,uint256,uint256))",
    "operator()",
    "operatorCompletionDelay()",
    "owner()",
    "pause()",
    "paused()",
    "pendingOwner()",
    "renounceOwnership()",
    "resolveDispute(bytes32,uint256,uint256,uint256,uint256,string)",
    "setFeeRecipient(address)",
    "setOperator(address)",
    "setOperatorCompletionDelay(uint256)",
    "setSigner(address)",
    "signer()",
    "transferOwnership(address)",
    "unpause()",
    "usdc()",
    "usedNonces(uint256)",
}


def _sigs(abi, kind):
    return {artifacts.signature(e) for e in abi if e["type"] == kind}


def test_type_strings_match_design():
    assert artifacts.BOOKING_AUTHORIZATION_TYPE == DESIGN_BOOKING_TYPE
    assert artifacts.CANCELLATION_AUTHORIZATION_TYPE == DESIGN_CANCELLATION_TYPE


def test_type_hashes_on_chain_equal_keccak_of_design_type_strings(contract_chain):
    (booking_th,) = contract_chain.escrow_call("BOOKING_AUTHORIZATION_TYPEHASH", [], ["bytes32"])
    (cancel_th,) = contract_chain.escrow_call("CANCELLATION_AUTHORIZATION_TYPEHASH", [], ["bytes32"])
    assert booking_th == keccak(text=DESIGN_BOOKING_TYPE)
    assert cancel_th == keccak(text=DESIGN_CANCELLATION_TYPE)


def test_event_topic0_equal_design_values():
    for name, topic in DESIGN_TOPICS.items():
        assert artifacts.EVENT_TOPICS[name] == topic
    # and the ABI really has bookingId as the first, indexed parameter, nothing else indexed
    for name in DESIGN_TOPICS:
        inputs = artifacts.EVENT_ABIS[name]["inputs"]
        assert inputs[0]["name"] == "bookingId" and inputs[0]["type"] == "bytes32" and inputs[0]["indexed"]
        assert not any(i["indexed"] for i in inputs[1:])


def test_abi_surface():
    abi = artifacts.escrow_abi()
    assert _sigs(abi, "function") == EXPECTED_ESCROW_FUNCTIONS
    assert _sigs(abi, "error") == EXPECTED_ESCROW_ERRORS
    ctor = next(e for e in abi if e["type"] == "constructor")
    assert [i["type"] for i in ctor["inputs"]] == ["address"] * 5
    getter = next(e for e in abi if e.get("name") == "getBooking")
    assert [c["name"] for c in getter["outputs"][0]["components"]] == [
        "customer", "provider", "inviter", "amount", "platformFeeRate", "inviterFeeRate", "paidAt", "status",
    ]
    assert getter["outputs"][0]["components"][-1]["type"] == "uint8"


def test_artifact_shape_and_cache():
    for name in ("BookingEscrow", "MockUSDC", "MockERC1271Wallet"):
        art = artifacts.load_artifact(name)
        assert set(art) == {"contractName", "abi", "bytecode", "deployedBytecode", "sourceHash", "compiler"}
        assert art["contractName"] == name
        assert art["bytecode"].startswith("0x") and len(art["bytecode"]) > 1000
        assert art["deployedBytecode"].startswith("0x")
        assert len(art["sourceHash"]) == 64
        assert art["compiler"]["version"].startswith("0.8.28+")
        assert art["compiler"]["settings"]["optimizer"] == {"enabled": True, "runs": 200}
        assert art["compiler"]["settings"]["evmVersion"] == "cancun"
        raw = (artifacts.BUILD_DIR / f"{name}.json").read_text()
        assert raw == json.dumps(json.loads(raw), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        assert raw.endswith("}\n")
    # load_artifact returns copies; mutating one does not poison the cache
    art = artifacts.load_artifact("BookingEscrow")
    art["abi"].clear()
    assert artifacts.escrow_abi()
    assert any(e.get("name") == "mint" for e in artifacts.usdc_abi())


def test_decode_revert_helper():
    data = bytes.fromhex("91cab504") + (7).to_bytes(32, "big")
    assert artifacts.decode_revert(data) == ("NonceAlreadyUsed", (7,))
    assert artifacts.decode_revert("0x" + data.hex()) == ("NonceAlreadyUsed", (7,))
    assert artifacts.decode_revert(b"\xde\xad\xbe\xef") is None
    assert artifacts.decode_revert(None) is None


def test_anvil_default_accounts_are_derived_from_the_mnemonic():
    Account.enable_unaudited_hdwallet_features()
    for acct in ANVIL_ACCOUNTS:
        derived = Account.from_mnemonic(DEFAULT_MNEMONIC, account_path=f"m/44'/60'/0'/0/{acct.index}")
        assert derived.address == acct.address
        assert derived.key.to_0x_hex() == acct.private_key
    assert [DEPLOYER.index, SIGNER.index, OPERATOR.index, FEE_RECIPIENT.index] == [0, 1, 2, 3]
    assert [a.index for a in USER_ACCOUNTS] == [4, 5, 6, 7, 8, 9]


def test_anvil_process_lifecycle():
    port = find_free_port()
    with AnvilProcess(port, chain_id=1337, block_time=1) as node:
        assert node.url == f"http://127.0.0.1:{port}"
        assert node.running
        assert int(node.rpc("eth_chainId"), 16) == 1337
        assert node.rpc("eth_accounts")[0].lower() == DEPLOYER.address.lower()
        proc = node.process
    assert proc.poll() is not None  # stopped and reaped
    assert not node.running
    node.stop()  # idempotent


def test_committed_build_is_fresh():
    """The stale-build test: contracts/build/*.json must equal a fresh compile."""
    proc = subprocess.run(
        [NODE, "contracts/compile.js", "--check"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "up to date" in proc.stdout


def test_check_detects_stale_build_and_compile_errors_fail_loudly(tmp_path):
    work = tmp_path / "repo"
    (work / "contracts").mkdir(parents=True)
    (work / "node_modules").symlink_to(REPO_ROOT / "node_modules")
    for source in [*(REPO_ROOT / "contracts").glob("*.sol"), REPO_ROOT / "contracts" / "compile.js"]:
        shutil.copy(source, work / "contracts" / source.name)
    shutil.copytree(REPO_ROOT / "contracts" / "build", work / "contracts" / "build")

    # A source change that is not rebuilt is caught.
    sol = work / "contracts" / "MockUSDC.sol"
    sol.write_text(sol.read_text() + "\n// changed\n")
    stale = subprocess.run(["node", "contracts/compile.js", "--check"], cwd=work, capture_output=True, text=True,
                           timeout=300)
    assert stale.returncode != 0
    assert "stale build" in stale.stderr and "MockUSDC.json" in stale.stderr
    assert "BookingEscrow.json" not in stale.stderr  # BookingEscrow's sources did not change

    # A syntax error fails with solc's own message.
    sol.write_text(sol.read_text().replace("function mint(", "function mint(((("))
    broken = subprocess.run(["node", "contracts/compile.js"], cwd=work, capture_output=True, text=True, timeout=300)
    assert broken.returncode != 0
    assert "solc error" in broken.stderr and "ParserError" in broken.stderr
    assert "compilation failed" in broken.stderr
