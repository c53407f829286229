// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/**
 * @title MockERC1271Wallet
 * @notice The smallest smart-contract wallet that behaves like the ones Base users sign in
 * and pay with, for tests and the local chain only (never deployed to a real network).
 *
 *  - One owner, an externally owned account, fixed at deployment.
 *  - EIP-1271: `isValidSignature(hash, signature)` returns the magic value 0x1626ba7e when
 *    `signature` is the owner's 65-byte ECDSA signature of `hash`, and 0xffffffff otherwise
 *    (it never reverts on a bad signature).
 *  - `execute(target, data)`: the owner makes the wallet call a contract, so the wallet is
 *    `msg.sender` there (approve USDC, then `createAndPayBooking` as the booking's customer).
 *    A failing call reverts with the target's own revert data.
 */
contract MockERC1271Wallet is IERC1271 {
    bytes4 private constant MAGIC_VALUE = IERC1271.isValidSignature.selector; // 0x1626ba7e
    bytes4 private constant INVALID_SIGNATURE = 0xffffffff;

    address public immutable owner;

    error CallerNotOwner();
    error ZeroOwner();

    constructor(address owner_) {
        if (owner_ == address(0)) revert ZeroOwner();
        owner = owner_;
    }

    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        (address recovered, ECDSA.RecoverError error, ) = ECDSA.tryRecover(hash, signature);
        if (error == ECDSA.RecoverError.NoError && recovered == owner) return MAGIC_VALUE;
        return INVALID_SIGNATURE;
    }

    function execute(address target, bytes calldata data) external returns (bytes memory) {
        if (msg.sender != owner) revert CallerNotOwner();
        (bool ok, bytes memory result) = target.call(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(result, 32), mload(result))
            }
        }
        return result;
    }
}
