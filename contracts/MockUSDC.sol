// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

/**
 * @title MockUSDC
 * @notice Development/test stand-in for USDC: 6 decimals, EIP-2612 permit, and an
 * unrestricted `mint`. NEVER deploy to a public network.
 * @dev The EIP-2612 domain is name "USD Coin", version "1" (OpenZeppelin ERC20Permit);
 * real USDC (FiatTokenV2) uses version "2". Read the domain from the token rather than
 * hard-coding it.
 */
contract MockUSDC is ERC20, ERC20Permit {
    constructor() ERC20("USD Coin", "USDC") ERC20Permit("USD Coin") {}

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /// @notice Anyone may mint: this is a test token.
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }
}
