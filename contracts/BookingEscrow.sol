// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";

/**
 * @title BookingEscrow
 * @notice USDC escrow for BookMe service bookings.
 *
 * A customer pays a booking with an EIP-712 `BookingAuthorization` signed by the backend
 * signer; the USDC stays in this contract until the customer (or, after the service
 * window, the operator) completes the service, or until a backend-signed
 * `CancellationAuthorization` (submitted by the customer or the provider) or an operator
 * emergency cancel splits/refunds it.
 *
 * Roles:
 *  - owner (Ownable2Step): rotates signer/operator/fee recipient, sets the operator
 *    completion delay, pauses and is the only one who can unpause.
 *  - signer: backend key whose EIP-712 signatures authorize payments and cancellations.
 *  - operator: backend hot key; completes bookings after the service window, emergency
 *    cancels (full refund), pays out a disputed booking with the split staff decided, and can
 *    pause in an incident.
 *  - feeRecipient: receives platform fees.
 *
 * Pause semantics: while paused, `createAndPayBooking`, `createAndPayBookingWithPermit`,
 * `completeService`, `completeServiceByOperator` and `resolveDispute` revert with
 * `EnforcedPause()`. `cancelBooking` and `emergencyCancelBooking` keep working while paused,
 * so refunds are always possible. Both the owner and the operator can pause (fast incident response);
 * only the owner can unpause (a compromised operator key cannot undo an owner's pause).
 *
 * Fees are basis points and round down; the provider receives the remainder, so the
 * payout parts always sum to the booking amount exactly.
 */
contract BookingEscrow is EIP712, ReentrancyGuard, Pausable, Ownable2Step {
    using SafeERC20 for IERC20;

    // ---------------------------------------------------------------------------------
    // Types
    // ---------------------------------------------------------------------------------

    enum Status {
        None,
        Paid,
        Completed,
        Cancelled
    }

    /// @dev Field order matches the EIP-712 type string exactly.
    struct BookingAuthorization {
        bytes32 bookingId;
        address customer;
        address provider;
        address inviter;
        uint256 amount;
        uint256 platformFeeRate;
        uint256 inviterFeeRate;
        uint256 expiry;
        uint256 nonce;
    }

    /// @dev Field order matches the EIP-712 type string exactly.
    struct CancellationAuthorization {
        bytes32 bookingId;
        uint256 customerAmount;
        uint256 providerAmount;
        uint256 platformAmount;
        uint256 inviterAmount;
        string reason;
        uint256 expiry;
        uint256 nonce;
    }

    /// @dev Packed storage layout (4 slots).
    struct Booking {
        address customer; // slot 0
        uint64 paidAt; // slot 0
        Status status; // slot 0
        address provider; // slot 1
        uint16 platformFeeRate; // slot 1
        uint16 inviterFeeRate; // slot 1
        address inviter; // slot 2
        uint256 amount; // slot 3
    }

    /// @notice Read model returned by `getBooking` / `getBookings`.
    struct BookingView {
        address customer;
        address provider;
        address inviter;
        uint256 amount;
        uint256 platformFeeRate;
        uint256 inviterFeeRate;
        uint256 paidAt;
        Status status;
    }

    // ---------------------------------------------------------------------------------
    // Constants
    // ---------------------------------------------------------------------------------

    bytes32 public constant BOOKING_AUTHORIZATION_TYPEHASH = keccak256(
        "BookingAuthorization(bytes32 bookingId,address customer,address provider,address inviter,uint256 amount,uint256 platformFeeRate,uint256 inviterFeeRate,uint256 expiry,uint256 nonce)"
    );

    bytes32 public constant CANCELLATION_AUTHORIZATION_TYPEHASH = keccak256(
        "CancellationAuthorization(bytes32 bookingId,uint256 customerAmount,uint256 providerAmount,uint256 platformAmount,uint256 inviterAmount,string reason,uint256 expiry,uint256 nonce)"
    );

    uint256 public constant BPS_DENOMINATOR = 10_000;
    uint256 public constant MAX_PLATFORM_FEE_RATE = 2_000;
    uint256 public constant MAX_INVITER_FEE_RATE = 1_000;
    uint256 public constant DEFAULT_OPERATOR_COMPLETION_DELAY = 1 hours;
    uint256 public constant MAX_OPERATOR_COMPLETION_DELAY = 30 days;

    // ---------------------------------------------------------------------------------
    // State
    // ---------------------------------------------------------------------------------

    IERC20 public immutable usdc;

    address public signer;
    address public operator;
    address public feeRecipient;
    uint256 public operatorCompletionDelay;

    /// @notice One nonce space shared by booking and cancellation authorizations.
    mapping(uint256 => bool) public usedNonces;

    mapping(bytes32 => Booking) private _bookings;

    // ---------------------------------------------------------------------------------
    // Events
    // ---------------------------------------------------------------------------------

    event BookingCreatedAndPaid(
        bytes32 indexed bookingId,
        address customer,
        address provider,
        address inviter,
        uint256 amount,
        uint256 platformFeeRate,
        uint256 inviterFeeRate
    );

    event ServiceCompleted(
        bytes32 indexed bookingId, address provider, uint256 providerAmount, uint256 platformFee, uint256 inviterFee
    );

    event BookingCancelled(
        bytes32 indexed bookingId,
        address cancelledBy,
        uint256 customerAmount,
        uint256 providerAmount,
        uint256 platformAmount,
        uint256 inviterAmount,
        string reason
    );

    event SignerUpdated(address indexed previousSigner, address indexed newSigner);
    event OperatorUpdated(address indexed previousOperator, address indexed newOperator);
    event FeeRecipientUpdated(address indexed previousFeeRecipient, address indexed newFeeRecipient);
    event OperatorCompletionDelayUpdated(uint256 previousDelay, uint256 newDelay);

    // ---------------------------------------------------------------------------------
    // Errors
    // ---------------------------------------------------------------------------------

    error InvalidSignature();
    error AuthorizationExpired(uint256 expiry);
    error NonceAlreadyUsed(uint256 nonce);
    error CallerNotCustomer();
    error CallerNotParty();
    error CallerNotOperator();
    error CallerNotOperatorOrOwner();
    error BookingAlreadyExists(bytes32 bookingId);
    error BookingNotPaid(bytes32 bookingId, uint8 status);
    error ZeroBookingId();
    error ZeroAmount();
    error ZeroAddress();
    error CustomerIsProvider();
    error PlatformFeeRateTooHigh(uint256 rate);
    error InviterFeeRateTooHigh(uint256 rate);
    error InviterFeeWithoutInviter();
    error InviterAmountWithoutInviter();
    error SplitMismatch(uint256 sum, uint256 amount);
    error ServiceWindowNotPassed(uint256 readyAt);
    error CompletionDelayTooLong(uint256 delay);
    error OwnershipRenouncementDisabled();

    // ---------------------------------------------------------------------------------
    // Modifiers
    // ---------------------------------------------------------------------------------

    modifier onlyOperator() {
        if (msg.sender != operator) revert CallerNotOperator();
        _;
    }

    modifier onlyOperatorOrOwner() {
        if (msg.sender != operator && msg.sender != owner()) revert CallerNotOperatorOrOwner();
        _;
    }

    // ---------------------------------------------------------------------------------
    // Constructor
    // ---------------------------------------------------------------------------------

    constructor(
        address usdc_,
        address initialOwner,
        address signer_,
        address operator_,
        address feeRecipient_
    ) EIP712("BookingEscrow", "1") Ownable(initialOwner) {
        if (usdc_ == address(0) || signer_ == address(0) || operator_ == address(0) || feeRecipient_ == address(0)) {
            revert ZeroAddress();
        }
        usdc = IERC20(usdc_);
        signer = signer_;
        operator = operator_;
        feeRecipient = feeRecipient_;
        operatorCompletionDelay = DEFAULT_OPERATOR_COMPLETION_DELAY;
        emit SignerUpdated(address(0), signer_);
        emit OperatorUpdated(address(0), operator_);
        emit FeeRecipientUpdated(address(0), feeRecipient_);
        emit OperatorCompletionDelayUpdated(0, DEFAULT_OPERATOR_COMPLETION_DELAY);
    }

    // ---------------------------------------------------------------------------------
    // Payment
    // ---------------------------------------------------------------------------------

    /**
     * @notice Create a booking and pay it: pulls `auth.amount` USDC from the caller.
     * @dev The caller must be `auth.customer` and must have approved this contract.
     * Checks, in order: caller, expiry, parameters, nonce, booking id, signature.
     * Blocked while paused.
     */
    function createAndPayBooking(BookingAuthorization calldata auth, bytes calldata signature)
        external
        nonReentrant
        whenNotPaused
    {
        _createAndPay(auth, signature);
    }

    /**
     * @notice Same as `createAndPayBooking`, but first applies the customer's EIP-2612
     * permit (owner = caller, spender = this contract, value = auth.amount).
     * @dev The permit call is wrapped in try/catch: if someone front-ran the permit, the
     * allowance is already in place and the payment still goes through; if the allowance
     * is missing, the USDC transfer reverts with the token's error.
     */
    function createAndPayBookingWithPermit(
        BookingAuthorization calldata auth,
        bytes calldata signature,
        uint256 permitDeadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external nonReentrant whenNotPaused {
        if (msg.sender != auth.customer) revert CallerNotCustomer();
        try IERC20Permit(address(usdc)).permit(msg.sender, address(this), auth.amount, permitDeadline, v, r, s) {}
            catch {}
        _createAndPay(auth, signature);
    }

    function _createAndPay(BookingAuthorization calldata auth, bytes calldata signature) private {
        if (msg.sender != auth.customer) revert CallerNotCustomer();
        if (block.timestamp > auth.expiry) revert AuthorizationExpired(auth.expiry);
        if (auth.bookingId == bytes32(0)) revert ZeroBookingId();
        if (auth.customer == address(0) || auth.provider == address(0)) revert ZeroAddress();
        if (auth.customer == auth.provider) revert CustomerIsProvider();
        if (auth.amount == 0) revert ZeroAmount();
        if (auth.platformFeeRate > MAX_PLATFORM_FEE_RATE) revert PlatformFeeRateTooHigh(auth.platformFeeRate);
        if (auth.inviterFeeRate > MAX_INVITER_FEE_RATE) revert InviterFeeRateTooHigh(auth.inviterFeeRate);
        if (auth.inviter == address(0) && auth.inviterFeeRate != 0) revert InviterFeeWithoutInviter();
        if (usedNonces[auth.nonce]) revert NonceAlreadyUsed(auth.nonce);
        if (_bookings[auth.bookingId].status != Status.None) revert BookingAlreadyExists(auth.bookingId);
        _requireSignerSignature(_hashBookingAuthorization(auth), signature);

        usedNonces[auth.nonce] = true;
        _bookings[auth.bookingId] = Booking({
            customer: auth.customer,
            paidAt: uint64(block.timestamp),
            status: Status.Paid,
            provider: auth.provider,
            platformFeeRate: uint16(auth.platformFeeRate),
            inviterFeeRate: uint16(auth.inviterFeeRate),
            inviter: auth.inviter,
            amount: auth.amount
        });

        usdc.safeTransferFrom(msg.sender, address(this), auth.amount);

        emit BookingCreatedAndPaid(
            auth.bookingId,
            auth.customer,
            auth.provider,
            auth.inviter,
            auth.amount,
            auth.platformFeeRate,
            auth.inviterFeeRate
        );
    }

    // ---------------------------------------------------------------------------------
    // Completion
    // ---------------------------------------------------------------------------------

    /// @notice The booking's customer confirms the service: pays provider, platform, inviter.
    function completeService(bytes32 bookingId) external nonReentrant whenNotPaused {
        Booking storage b = _requirePaid(bookingId);
        if (msg.sender != b.customer) revert CallerNotCustomer();
        _complete(bookingId, b);
    }

    /**
     * @notice Operator auto-completion once the service window has passed, i.e. when
     * `block.timestamp >= paidAt + operatorCompletionDelay`. Same payout and event as
     * `completeService`.
     */
    function completeServiceByOperator(bytes32 bookingId) external nonReentrant whenNotPaused onlyOperator {
        Booking storage b = _requirePaid(bookingId);
        uint256 readyAt = uint256(b.paidAt) + operatorCompletionDelay;
        if (block.timestamp < readyAt) revert ServiceWindowNotPassed(readyAt);
        _complete(bookingId, b);
    }

    function _complete(bytes32 bookingId, Booking storage b) private {
        uint256 amount = b.amount;
        uint256 platformFee = (amount * b.platformFeeRate) / BPS_DENOMINATOR;
        uint256 inviterFee = (amount * b.inviterFeeRate) / BPS_DENOMINATOR;
        uint256 providerAmount = amount - platformFee - inviterFee;
        address provider = b.provider;
        address inviter = b.inviter;

        b.status = Status.Completed;

        _pay(provider, providerAmount);
        _pay(feeRecipient, platformFee);
        _pay(inviter, inviterFee);

        emit ServiceCompleted(bookingId, provider, providerAmount, platformFee, inviterFee);
    }

    // ---------------------------------------------------------------------------------
    // Cancellation (works while paused)
    // ---------------------------------------------------------------------------------

    /**
     * @notice Cancel a paid booking with a backend-signed split. Callable by the booking's
     * customer or provider. The four parts must sum to the booking amount exactly.
     * @dev Not blocked by pause: refunds must always be possible.
     */
    function cancelBooking(CancellationAuthorization calldata auth, bytes calldata signature) external nonReentrant {
        Booking storage b = _requirePaid(auth.bookingId);
        if (msg.sender != b.customer && msg.sender != b.provider) revert CallerNotParty();
        if (block.timestamp > auth.expiry) revert AuthorizationExpired(auth.expiry);
        if (usedNonces[auth.nonce]) revert NonceAlreadyUsed(auth.nonce);
        uint256 sum = auth.customerAmount + auth.providerAmount + auth.platformAmount + auth.inviterAmount;
        if (sum != b.amount) revert SplitMismatch(sum, b.amount);
        address inviter = b.inviter;
        if (auth.inviterAmount != 0 && inviter == address(0)) revert InviterAmountWithoutInviter();
        _requireSignerSignature(_hashCancellationAuthorization(auth), signature);

        usedNonces[auth.nonce] = true;
        b.status = Status.Cancelled;

        _pay(b.customer, auth.customerAmount);
        _pay(b.provider, auth.providerAmount);
        _pay(feeRecipient, auth.platformAmount);
        _pay(inviter, auth.inviterAmount);

        emit BookingCancelled(
            auth.bookingId,
            msg.sender,
            auth.customerAmount,
            auth.providerAmount,
            auth.platformAmount,
            auth.inviterAmount,
            auth.reason
        );
    }

    /**
     * @notice Full refund of a paid booking to its customer (orphans, incidents).
     * Callable by the operator or the owner. Not blocked by pause.
     */
    function emergencyCancelBooking(bytes32 bookingId, string calldata reason)
        external
        nonReentrant
        onlyOperatorOrOwner
    {
        Booking storage b = _requirePaid(bookingId);
        uint256 amount = b.amount;
        b.status = Status.Cancelled;
        _pay(b.customer, amount);
        emit BookingCancelled(bookingId, msg.sender, amount, 0, 0, 0, reason);
    }

    // ---------------------------------------------------------------------------------
    // Disputes (operator; blocked while paused)
    // ---------------------------------------------------------------------------------

    /**
     * @notice Pay out a disputed booking with the split staff decided: any four parts that sum
     * to the amount (the inviter part only if the booking has an inviter). Operator only.
     * Emits `BookingCancelled` (cancelledBy = the operator), so indexers apply it like any
     * cancellation with that split.
     * @dev Blocked while paused, unlike the other cancellations: the operator chooses who gets
     * the money, so this is a payout on the operator's word like `completeServiceByOperator`,
     * and a pause (the answer to a suspected operator key leak) must stop it. A full refund
     * stays possible while paused through `emergencyCancelBooking`.
     */
    function resolveDispute(
        bytes32 bookingId,
        uint256 customerAmount,
        uint256 providerAmount,
        uint256 platformAmount,
        uint256 inviterAmount,
        string calldata reason
    ) external nonReentrant whenNotPaused onlyOperator {
        Booking storage b = _requirePaid(bookingId);
        uint256 sum = customerAmount + providerAmount + platformAmount + inviterAmount;
        if (sum != b.amount) revert SplitMismatch(sum, b.amount);
        address inviter = b.inviter;
        if (inviterAmount != 0 && inviter == address(0)) revert InviterAmountWithoutInviter();

        b.status = Status.Cancelled;

        _pay(b.customer, customerAmount);
        _pay(b.provider, providerAmount);
        _pay(feeRecipient, platformAmount);
        _pay(inviter, inviterAmount);

        emit BookingCancelled(
            bookingId, msg.sender, customerAmount, providerAmount, platformAmount, inviterAmount, reason
        );
    }

    // ---------------------------------------------------------------------------------
    // Pause
    // ---------------------------------------------------------------------------------

    /// @notice Owner or operator. Blocks payments and completions, never refunds.
    function pause() external onlyOperatorOrOwner {
        _pause();
    }

    /// @notice Owner only.
    function unpause() external onlyOwner {
        _unpause();
    }

    // ---------------------------------------------------------------------------------
    // Admin (owner only)
    // ---------------------------------------------------------------------------------

    /// @notice Rotate the backend signer. Signatures by the previous signer stop working.
    function setSigner(address newSigner) external onlyOwner {
        if (newSigner == address(0)) revert ZeroAddress();
        emit SignerUpdated(signer, newSigner);
        signer = newSigner;
    }

    function setOperator(address newOperator) external onlyOwner {
        if (newOperator == address(0)) revert ZeroAddress();
        emit OperatorUpdated(operator, newOperator);
        operator = newOperator;
    }

    function setFeeRecipient(address newFeeRecipient) external onlyOwner {
        if (newFeeRecipient == address(0)) revert ZeroAddress();
        emit FeeRecipientUpdated(feeRecipient, newFeeRecipient);
        feeRecipient = newFeeRecipient;
    }

    /// @notice Seconds after payment before the operator may complete; at most 30 days.
    function setOperatorCompletionDelay(uint256 newDelay) external onlyOwner {
        if (newDelay > MAX_OPERATOR_COMPLETION_DELAY) revert CompletionDelayTooLong(newDelay);
        emit OperatorCompletionDelayUpdated(operatorCompletionDelay, newDelay);
        operatorCompletionDelay = newDelay;
    }

    /// @notice Disabled: without an owner the contract could never be unpaused or rotated.
    function renounceOwnership() public pure override {
        revert OwnershipRenouncementDisabled();
    }

    // ---------------------------------------------------------------------------------
    // Views
    // ---------------------------------------------------------------------------------

    function getBooking(bytes32 bookingId) external view returns (BookingView memory) {
        return _view(_bookings[bookingId]);
    }

    /// @notice Batch read for reconciliation; unknown ids come back with status None.
    function getBookings(bytes32[] calldata ids) external view returns (BookingView[] memory views) {
        views = new BookingView[](ids.length);
        for (uint256 i = 0; i < ids.length; ++i) {
            views[i] = _view(_bookings[ids[i]]);
        }
    }

    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice EIP-712 digest (what the signer signs) of a booking authorization.
    function hashBookingAuthorization(BookingAuthorization calldata auth) external view returns (bytes32) {
        return _hashBookingAuthorization(auth);
    }

    /// @notice EIP-712 digest (what the signer signs) of a cancellation authorization.
    function hashCancellationAuthorization(CancellationAuthorization calldata auth) external view returns (bytes32) {
        return _hashCancellationAuthorization(auth);
    }

    // ---------------------------------------------------------------------------------
    // Internals
    // ---------------------------------------------------------------------------------

    function _hashBookingAuthorization(BookingAuthorization calldata auth) private view returns (bytes32) {
        // Two abi.encode halves concatenated == abi.encode of all ten static words
        // (keeps the legacy code generator clear of "stack too deep").
        bytes32 structHash = keccak256(
            bytes.concat(
                abi.encode(BOOKING_AUTHORIZATION_TYPEHASH, auth.bookingId, auth.customer, auth.provider, auth.inviter),
                abi.encode(auth.amount, auth.platformFeeRate, auth.inviterFeeRate, auth.expiry, auth.nonce)
            )
        );
        return _hashTypedDataV4(structHash);
    }

    function _hashCancellationAuthorization(CancellationAuthorization calldata auth) private view returns (bytes32) {
        bytes32 structHash = keccak256(
            bytes.concat(
                abi.encode(
                    CANCELLATION_AUTHORIZATION_TYPEHASH,
                    auth.bookingId,
                    auth.customerAmount,
                    auth.providerAmount,
                    auth.platformAmount
                ),
                abi.encode(auth.inviterAmount, keccak256(bytes(auth.reason)), auth.expiry, auth.nonce)
            )
        );
        return _hashTypedDataV4(structHash);
    }

    function _requireSignerSignature(bytes32 digest, bytes calldata signature) private view {
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, signature);
        if (err != ECDSA.RecoverError.NoError || recovered != signer) revert InvalidSignature();
    }

    function _requirePaid(bytes32 bookingId) private view returns (Booking storage b) {
        b = _bookings[bookingId];
        if (b.status != Status.Paid) revert BookingNotPaid(bookingId, uint8(b.status));
    }

    function _pay(address to, uint256 amount) private {
        if (amount != 0) usdc.safeTransfer(to, amount);
    }

    function _view(Booking storage b) private view returns (BookingView memory) {
        return BookingView({
            customer: b.customer,
            provider: b.provider,
            inviter: b.inviter,
            amount: b.amount,
            platformFeeRate: b.platformFeeRate,
            inviterFeeRate: b.inviterFeeRate,
            paidAt: b.paidAt,
            status: b.status
        });
    }
}
