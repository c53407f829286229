#!/usr/bin/env node
// BookMe reference client: one booking from sign-in to payout, the way a frontend does it.
//
//   node examples/client.mjs [--permit] [--api URL] [--ws URL] [--rpc URL]
//                            [--customer-key 0x..] [--provider-key 0x..] [--timeout SECONDS]
//
// Steps (each printed): SIWE sign-in of customer and provider, create a booking, follow it over
// the WebSocket, get the payment authorization, pay it (approve + createAndPayBooking, or with
// --permit one createAndPayBookingWithPermit transaction), report the transaction, wait for PAID,
// complete the service from the customer's wallet, report it, wait for COMPLETED.
// Exit 0 when the booking was followed to COMPLETED; 1 with a "FAILED at <step>" line otherwise.
//
// Defaults match `bin/run` on this machine; the keys are anvil's PUBLIC test accounts 4
// (customer) and 5 (provider), which `manage.py localchain` funds with test USDC. Never use
// them on a real network. Environment variables BOOKME_API_URL, BOOKME_WS_URL, BOOKME_RPC_URL,
// CUSTOMER_PRIVATE_KEY, PROVIDER_PRIVATE_KEY stand in for the flags.
import { parseArgs } from "node:util";
import { Contract, JsonRpcProvider, Signature, Wallet, verifyTypedData } from "ethers";

const { values: opts } = parseArgs({
  options: {
    api: { type: "string", default: process.env.BOOKME_API_URL ?? "http://127.0.0.1:8000" },
    ws: { type: "string", default: process.env.BOOKME_WS_URL ?? "ws://127.0.0.1:8001/ws/bookings/" },
    rpc: { type: "string", default: process.env.BOOKME_RPC_URL ?? "http://127.0.0.1:8545" },
    "customer-key": {
      type: "string",
      default: process.env.CUSTOMER_PRIVATE_KEY ?? "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    },
    "provider-key": {
      type: "string",
      default: process.env.PROVIDER_PRIVATE_KEY ?? "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    },
    permit: { type: "boolean", default: false },
    timeout: { type: "string", default: "60" },
  },
});
const TIMEOUT_MS = Number(opts.timeout) * 1000;
const API = opts.api.replace(/\/+$/, "");

// The contract functions this client calls (the full ABI is contracts/build/*.json).
const AUTHORIZATION_TUPLE =
  "(bytes32 bookingId,address customer,address provider,address inviter,uint256 amount," +
  "uint256 platformFeeRate,uint256 inviterFeeRate,uint256 expiry,uint256 nonce)";
const ESCROW_ABI = [
  `function createAndPayBooking(${AUTHORIZATION_TUPLE} auth, bytes signature)`,
  `function createAndPayBookingWithPermit(${AUTHORIZATION_TUPLE} auth, bytes signature, uint256 permitDeadline, uint8 v, bytes32 r, bytes32 s)`,
  "function completeService(bytes32 bookingId)",
  "function signer() view returns (address)",
  "function usdc() view returns (address)",
];
const USDC_ABI = [
  "function approve(address spender, uint256 amount) returns (bool)",
  "function balanceOf(address owner) view returns (uint256)",
  "function nonces(address owner) view returns (uint256)",
  "function eip712Domain() view returns (bytes1 fields, string name, string version, uint256 chainId, address verifyingContract, bytes32 salt, uint256[] extensions)",
];

let currentStep = "start";
function step(title) {
  currentStep = title;
  console.log(`\n== ${title}`);
}
const show = (label, value) => console.log(`   ${label}: ${typeof value === "string" ? value : JSON.stringify(value)}`);

// -- HTTP: every error answer is JSON naming the field and why; print it as it is --------------
async function api(method, path, { token, body } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`; // the token never goes in a URL
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const answer = await fetch(`${API}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await answer.text();
  const data = text ? JSON.parse(text) : null;
  if (!answer.ok) throw new Error(`${method} ${path} answered ${answer.status}: ${text}`);
  return { status: answer.status, data };
}

// -- Sign-In with Ethereum (EIP-4361) ------------------------------------------------------
// The message text must follow the EIP-4361 grammar exactly: the signature covers every byte.
// `domain` is the FRONTEND's host (a browser app uses window.location.host); the API accepts
// the domains listed in its SIWE_DOMAIN setting and says which in the nonce answer.
async function signIn(wallet, who) {
  const { data: challenge } = await api("POST", "/api/auth/nonce/");
  const domain = process.env.BOOKME_SIWE_DOMAIN ?? challenge.domains[0];
  const message = [
    `${domain} wants you to sign in with your Ethereum account:`,
    wallet.address, // EIP-55 checksummed, as ethers gives it
    "",
    "Sign in to BookMe.",
    "",
    `URI: http://${domain}`,
    "Version: 1",
    `Chain ID: ${challenge.chain_id}`,
    `Nonce: ${challenge.nonce}`,
    `Issued At: ${new Date().toISOString()}`,
  ].join("\n"); // LF line ends, no trailing newline
  const signature = await wallet.signMessage(message); // personal_sign (EIP-191)
  const { data: session } = await api("POST", "/api/auth/verify/", { body: { message, signature } });
  show(`${who} ${session.address}`, `token valid until ${session.expires_at}`);
  return session.token;
}

// -- The live stream ---------------------------------------------------------------------
// Browsers and Node >= 22 have a standard WebSocket; older Node uses `ws`, installed with ethers.
const WebSocketClass = globalThis.WebSocket ?? (await import("ws")).WebSocket;

// Follows every booking the wallet may see. Keeps the last sequence number it saw: after a
// dropped connection it reconnects and asks for everything after it (the server replays the
// missed events in order, then goes live), and ignores an event it already has.
class BookingStream {
  constructor(url, token) {
    Object.assign(this, { url, token, lastSeq: null, statuses: new Map(), waiters: [], closed: false });
  }

  open() {
    return new Promise((resolve, reject) => {
      const socket = new WebSocketClass(this.url);
      this.socket = socket;
      let ready = false;
      const timer = setTimeout(() => reject(new Error(`no "ready" frame from ${this.url} within 10 s`)), 10_000);
      // Authenticate in the first frame, never in the URL (URLs end up in logs). `since` is the
      // last seq this client saw: the server first replays what came after it, in order, then
      // goes live; null (first connection) means live changes from now on.
      socket.onopen = () => socket.send(JSON.stringify({ type: "auth", token: this.token, since: this.lastSeq }));
      socket.onerror = (event) => reject(new Error(`WebSocket ${this.url}: ${event.message ?? "connection failed"}`));
      socket.onmessage = (event) => {
        const frame = JSON.parse(event.data);
        if (frame.type === "ready") {
          ready = true;
          clearTimeout(timer);
          this.lastSeq ??= frame.latest_seq; // a reconnect asks for everything after it
          show("stream ready", `wallet ${frame.wallet}, latest seq ${frame.latest_seq}`);
          resolve();
        } else if (frame.type === "event") {
          this.onEvent(frame);
        } else if (frame.type === "replayed" || frame.type === "heartbeat") {
          // Both say "you have everything of yours through this seq": resume from there.
          this.lastSeq = Math.max(this.lastSeq ?? 0, frame.through ?? frame.latest_seq);
          if (frame.type === "replayed") show("stream", `replayed through seq ${frame.through}, now live`);
        } else if (frame.type === "error") {
          console.log(`   stream error frame: ${JSON.stringify(frame)}`);
        }
      };
      socket.onclose = (event) => {
        clearTimeout(timer);
        if (this.closed) return;
        if (!ready) {
          reject(new Error(`stream closed before "ready": ${event.code} ${event.reason}`));
        } else if (event.code === 4401 || event.code === 4408) {
          // The token was refused: sign in again rather than retrying it.
          this.fail(new Error(`stream closed ${event.code}: ${event.reason || "token refused"}`));
        } else {
          console.log(`   stream dropped (${event.code}); reconnecting from seq ${this.lastSeq}`);
          setTimeout(() => this.open().catch((error) => this.fail(error)), 500);
        }
      };
    });
  }

  onEvent(frame) {
    if (this.lastSeq !== null && frame.seq <= this.lastSeq) return; // seen already
    this.lastSeq = frame.seq;
    console.log(`   event #${frame.seq} ${frame.kind} ${frame.from_status || "-"} -> ${frame.to_status} (${frame.source}) booking ${frame.booking}`);
    this.statuses.set(frame.booking, [...(this.statuses.get(frame.booking) ?? []), frame.to_status]);
    this.waiters = this.waiters.filter((w) => !w.check());
  }

  // Resolves once the booking reached `status` on the stream (also if it did before the call).
  waitFor(booking, status) {
    return new Promise((resolve, reject) => {
      const waiter = {
        check: () => (this.statuses.get(booking) ?? []).includes(status) && (clearTimeout(timer), resolve(), true),
        reject,
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`no ${status} event for booking ${booking} within ${TIMEOUT_MS / 1000} s`));
      }, TIMEOUT_MS);
      if (!waiter.check()) this.waiters.push(waiter);
    });
  }

  fail(error) {
    this.waiters.forEach((w) => w.reject(error));
    this.waiters = [];
  }

  close() {
    this.closed = true;
    this.socket?.close(1000);
  }
}

// -- Reporting a transaction -----------------------------------------------------------------
// The backend would learn of it from the chain anyway; reporting it makes the change show at
// once. Not mined yet, the answer is "unknown" (the node has not seen it) or "pending" (in the
// mempool, or not confirmed yet), with `retry_after_seconds`: ask again then. A "reverted"
// answer carries the contract's decoded error in `reason`.
async function reportTransaction(token, bookingId, txHash) {
  const deadline = Date.now() + TIMEOUT_MS;
  for (;;) {
    const { data } = await api("POST", `/api/bookings/${bookingId}/submit-transaction/`, { token, body: { tx_hash: txHash } });
    if (data.status === "reverted") throw new Error(`transaction ${txHash} reverted: ${JSON.stringify(data.reason)}`);
    if (data.status === "mined") return show("submit-transaction", `mined in block ${data.block_number}, events ${data.events.join(", ")}, booking ${data.booking_status}`);
    if (Date.now() > deadline) throw new Error(`transaction ${txHash} still ${data.status} after ${TIMEOUT_MS / 1000} s`);
    const wait = data.retry_after_seconds ?? 1;
    show("submit-transaction", `${data.status}: ${data.hint ?? ""} (asking again in ${wait} s)`);
    await new Promise((r) => setTimeout(r, wait * 1000));
  }
}

async function main() {
  // Poll for receipts every 250 ms (ethers' default is 4 s; the local chain mines every second).
  const rpc = new JsonRpcProvider(opts.rpc, undefined, { pollingInterval: 250 });
  const customer = new Wallet(opts["customer-key"], rpc);
  const provider = new Wallet(opts["provider-key"], rpc);
  let stream;
  try {
    step("1. sign in with Ethereum (customer and provider)");
    const customerToken = await signIn(customer, "customer");
    await signIn(provider, "provider"); // the provider can now read the booking and follow it too

    step("2. follow the customer's bookings over the WebSocket");
    stream = new BookingStream(opts.ws, customerToken);
    await stream.open(); // before creating the booking, so not one of its events is missed

    step("3. create a booking");
    const scheduledAt = new Date(Date.now() + 24 * 3600 * 1000).toISOString();
    const { data: booking } = await api("POST", "/api/bookings/", {
      token: customerToken,
      // Amounts: a decimal string of whole USDC or an integer of base units; never a float.
      body: { provider: provider.address, amount: "25.00", scheduled_at: scheduledAt, description: "reference client" },
    });
    show("booking", `${booking.id} ${booking.status}, ${booking.amount_decimal} USDC, chain id ${booking.chain_booking_id}`);

    step("4. get the payment authorization");
    const { data: auth } = await api("POST", `/api/bookings/${booking.id}/authorize-payment/`, { token: customerToken });
    // The top level is the eth_signTypedData_v4 document (MetaMask, viem); `ethers` is the same
    // typed data in the shape ethers v6 takes (no EIP712Domain in `types`). Check who signed it
    // before spending gas: the escrow accepts only its `signer()`.
    const { domain, types, value } = auth.ethers;
    const escrow = new Contract(domain.verifyingContract, ESCROW_ABI, customer);
    const signedBy = verifyTypedData(domain, types, value, auth.signature);
    const backendSigner = await escrow.signer();
    if (signedBy !== backendSigner) throw new Error(`authorization signed by ${signedBy}, the escrow trusts ${backendSigner}`);
    show("authorization", `nonce ${auth.nonce}, expires ${auth.expires_at}, signed by the escrow's signer ${signedBy}`);

    const usdc = new Contract(await escrow.usdc(), USDC_ABI, customer);
    const amount = BigInt(value.amount); // base units: BigInt, never a float
    let payment;
    if (opts.permit) {
      step("5. pay with an EIP-2612 permit (one transaction, no approval)");
      // Read the token's own EIP-712 domain (ERC-5267): real USDC's version is "2", our MockUSDC's "1".
      const [, name, version, chainId, verifyingContract] = await usdc.eip712Domain();
      const deadline = BigInt(value.expiry); // the permit need not outlive the authorization
      const permit = await customer.signTypedData(
        { name, version, chainId, verifyingContract },
        { Permit: [
          { name: "owner", type: "address" }, { name: "spender", type: "address" }, { name: "value", type: "uint256" },
          { name: "nonce", type: "uint256" }, { name: "deadline", type: "uint256" },
        ] },
        { owner: customer.address, spender: domain.verifyingContract, value: amount, nonce: await usdc.nonces(customer.address), deadline },
      );
      const { v, r, s } = Signature.from(permit);
      payment = await escrow.createAndPayBookingWithPermit(value, auth.signature, deadline, v, r, s);
    } else {
      step("5. approve the USDC and pay");
      const approval = await usdc.approve(domain.verifyingContract, amount);
      await approval.wait();
      show("approve", `${approval.hash} (${value.amount} base units)`);
      payment = await escrow.createAndPayBooking(value, auth.signature);
    }
    const paid = await payment.wait();
    show("payment", `${payment.hash} mined in block ${paid.blockNumber}`);

    step("6. report the payment and wait for PAID on the stream");
    await reportTransaction(customerToken, booking.id, payment.hash);
    await stream.waitFor(booking.id, "PAID");
    show("stream", "booking is PAID");

    step("7. complete the service from the customer's wallet");
    // There is no API call for it: the customer confirms on chain, the contract pays out.
    const completion = await escrow.completeService(booking.chain_booking_id);
    const completed = await completion.wait();
    show("completeService", `${completion.hash} mined in block ${completed.blockNumber}`);

    step("8. report the completion and wait for COMPLETED on the stream");
    await reportTransaction(customerToken, booking.id, completion.hash);
    await stream.waitFor(booking.id, "COMPLETED");
    show("stream", "booking is COMPLETED");

    console.log(`\nDONE: booking ${booking.id} paid${opts.permit ? " with permit" : ""} and completed`);
    return 0;
  } catch (error) {
    console.error(`\nFAILED at "${currentStep}": ${error.shortMessage ?? error.message}`);
    return 1;
  } finally {
    stream?.close();
    rpc.destroy();
  }
}

process.exit(await main());
