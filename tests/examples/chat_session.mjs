// The chat page's Session (examples/fastapi_app/chat_page/session.mjs) on its own, in node:
// which receipts it adopts as a channel's charge. A server's receipt may only move the
// charged cumulative forward, and never past what the page last signed for (the charge
// before the voucher plus the answer's maximum), however many receipts a server sends:
// otherwise the page would sign its next voucher for more than it owes. Prints one JSON
// object: each case's outcome.
//
//   node tests/examples/chat_session.mjs
//
// localStorage is the browser's; here a Map stands in for it (the one fake: the test is of
// Session alone). The signer signs nothing: adopting a receipt signs nothing.
import { Session } from "../../examples/fastapi_app/chat_page/session.mjs";

const stored = new Map();
globalThis.localStorage = {
  getItem: (key) => (stored.has(key) ? stored.get(key) : null),
  setItem: (key, value) => stored.set(key, String(value)),
  removeItem: (key) => stored.delete(key),
};

const signer = {
  address: "0x1111111111111111111111111111111111111111",
  signTypedData: async () => {
    throw new Error("adopting a receipt signs nothing");
  },
};
const requirements = {
  scheme: "batch-settlement",
  network: "eip155:31337",
  asset: "0x5FbDB2315678afecb367f032d93F642f64180aa3",
  amount: "1000",
  payTo: "0x2222222222222222222222222222222222222222",
  maxTimeoutSeconds: 300,
  extra: { receiverAuthorizer: "0x3333333333333333333333333333333333333333", withdrawDelay: 900 },
};

const session = new Session(signer);
session.paying(requirements);
const channel = session.channelId;
const charged = () => session.storage.read(channel)?.chargedCumulativeAmount ?? null;
const receipt = (id, cumulative) => ({ channel: { id, charged_cumulative: String(cumulative) } });

const cases = {};
async function attempt(name, value) {
  const adopted = await session.charged(value);
  cases[name] = { adopted, charged: charged() };
}

await attempt("within the voucher", receipt(channel, 400)); // 0 -> 400: signed up to 0 + 1000
await attempt("past the voucher", receipt(channel, 1001));
await attempt("past it from the new charge", receipt(channel, 1400)); // 400 + 1000: not signed
await attempt("backwards", receipt(channel, 399));
await attempt("another channel", receipt("0x" + "ab".repeat(32), 500));
await attempt("no channel", { amount: "7" });
await attempt("up to the voucher", receipt(channel, 1000)); // exactly what was signed
session.paying(requirements); // the next voucher: signed up to 1000 + 1000
await attempt("the next answer", receipt(channel.toUpperCase().replace("0X", "0x"), 1900));
process.stdout.write(JSON.stringify({ channel, cases }) + "\n");
