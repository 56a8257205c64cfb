// The chat page's session: an x402 `batch-settlement` payment channel with the API.
//
// The official client scheme (`@x402/evm`'s BatchSettlementEvmScheme) signs the deposit and
// the vouchers; this module keeps what the page shows and asks for beside it:
//
// - the channel's record in the browser's localStorage (the SDK's ClientChannelStorage), so
//   that a reload keeps the session;
// - each streamed answer's charge, from its receipt (`channel.charged_cumulative`): the
//   answer's headers leave before its cost is known, so without it the next voucher would be
//   corrected by a 402 round trip. The receipt is adopted only within what the payer signed
//   (the last voucher's cumulative), so a server can never make the page sign for more;
// - the balance: deposited in all (the channel's balance on chain, which a refund lowers,
//   plus what was refunded), spent (the charged cumulative), refunded, and what remains;
// - a top-up: the next answer's payment carries a deposit (the SDK deposits only when a
//   voucher would exceed the balance, so the page tells its scheme the channel is full);
// - the cooperative refund of what remains (the SDK's `refund(url)`).
import {
  BatchSettlementEvmScheme,
  computeChannelId,
  readChannelBalanceAndTotalClaimed,
} from "@x402/evm/batch-settlement/client";

export const SESSION_SCHEME = "batch-settlement";
const STORAGE_PREFIX = "x402-chat:channel:";
const REFUNDED_PREFIX = "x402-chat:refunded:";

/** The SDK's ClientChannelStorage on localStorage, one key per payer and channel. */
class BrowserChannelStorage {
  constructor(payer) {
    this.prefix = STORAGE_PREFIX + payer.toLowerCase() + ":";
    this.fullOnce = false; // set by a top-up: the next read says the channel is full
  }

  async get(key) {
    const text = localStorage.getItem(this.prefix + key);
    const context = text ? JSON.parse(text) : undefined;
    if (this.fullOnce && context) {
      this.fullOnce = false;
      // Nothing left in the channel: the scheme's next payment deposits (its usual size).
      return { ...context, balance: context.chargedCumulativeAmount || "0" };
    }
    return context;
  }

  async set(key, context) {
    localStorage.setItem(this.prefix + key, JSON.stringify(context));
  }

  async delete(key) {
    localStorage.removeItem(this.prefix + key);
  }

  /** The record as stored (never the top-up's view of it). */
  read(key) {
    const text = localStorage.getItem(this.prefix + key);
    return text ? JSON.parse(text) : undefined;
  }
}

export class Session {
  /**
   * @param signer - {address, signTypedData, readContract}: the wallet, reading the chain.
   */
  constructor(signer) {
    this.signer = signer;
    this.storage = new BrowserChannelStorage(signer.address);
    this.scheme = new BatchSettlementEvmScheme(signer, { storage: this.storage });
    this.requirements = null; // the last batch-settlement terms paid: they name the channel
    this.signedUpTo = 0n; // the cumulative of the last voucher signed: no charge goes past it
    this.topUpPending = false;
  }

  get channelId() {
    if (!this.requirements) return null;
    const config = this.scheme.buildChannelConfig(this.requirements);
    return computeChannelId(config, this.requirements.network).toLowerCase();
  }

  /**
   * The terms of a payment about to be signed on this channel: its voucher is for what the
   * record says was charged plus the answer's maximum (the scheme reads the same record).
   */
  paying(requirements) {
    this.requirements = requirements;
    const record = this.storage.read(this.channelId) || {};
    this.signedUpTo = BigInt(record.chargedCumulativeAmount || "0") + BigInt(requirements.amount);
    if (this.topUpPending) {
      this.storage.fullOnce = true;
      this.topUpPending = false;
    }
  }

  topUp() {
    this.topUpPending = true;
  }

  /**
   * Adopt a streamed answer's charge from its receipt, within what the payer signed: the
   * charged cumulative may only grow, and never past the last voucher's cumulative (what was
   * charged before it plus the answer's maximum), however many receipts come.
   */
  async charged(receipt) {
    const id = this.channelId;
    const channel = receipt.channel;
    if (!id || !channel || String(channel.id).toLowerCase() !== id) return false;
    const record = this.storage.read(id) || {};
    const before = BigInt(record.chargedCumulativeAmount || "0");
    const after = BigInt(channel.charged_cumulative);
    if (after < before || after > this.signedUpTo) return false;
    await this.storage.set(id, { ...record, chargedCumulativeAmount: after.toString() });
    return true;
  }

  /** What refunds gave back from this channel so far (the SDK forgets a refunded channel). */
  refunded(id) {
    return BigInt(localStorage.getItem(this.refundedKey(id)) || "0");
  }

  refundedKey(id) {
    return REFUNDED_PREFIX + this.signer.address.toLowerCase() + ":" + id;
  }

  /**
   * The session's balance from the chain and the local record: deposited in all (the
   * channel's balance on chain, which a refund lowers, plus what refunds gave back), spent
   * (charged so far), refunded, remaining; null before the first deposit.
   */
  async balance() {
    const id = this.channelId;
    if (!id) return null;
    const [onChain, claimed] = await readChannelBalanceAndTotalClaimed(this.signer, id);
    const record = this.storage.read(id);
    if (record) {
      // The chain says what was deposited: a deposit answer's balance is not in its headers.
      await this.storage.set(id, { ...record, balance: onChain.toString(), totalClaimed: claimed.toString() });
    }
    if (onChain === 0n && !record) return null;
    const spent = record ? BigInt(record.chargedCumulativeAmount || "0") : claimed;
    const remaining = onChain > spent ? onChain - spent : 0n;
    const refunded = this.refunded(id);
    return { channelId: id, deposited: onChain + refunded, spent, refunded, claimed, remaining };
  }

  /**
   * Ask the API for what remains (a cooperative refund, with the SDK's refund flow). What
   * came back is what its PAYMENT-RESPONSE says, never more than remained.
   */
  async refund(url) {
    const before = await this.balance();
    const settled = await this.scheme.refund(String(url));
    const said = /^[0-9]+$/.test(String(settled.amount ?? "")) ? BigInt(settled.amount) : 0n;
    const back = before && said > before.remaining ? before.remaining : said;
    if (before) {
      localStorage.setItem(this.refundedKey(before.channelId), String(this.refunded(before.channelId) + back));
    }
    return { settled, refunded: back };
  }
}
