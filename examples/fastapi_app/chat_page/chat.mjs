// The chat page's script: it pays the API from the browser with the official x402 client.
//
// Bundled from npm by `npm run build:chat` (esbuild) into build/x402-chat.js. The page
// signs every payment itself: with an injected wallet (EIP-1193, `window.ethereum`) when
// there is one, or, on the local chain only, with one of anvil's dev accounts, whose keys
// are public (derived from anvil's well-known mnemonic). The server never holds a key.
//
// `?api=https://api.example.com` names the API when the page is served from elsewhere
// (the API must then allow this page's origin with CORS: see docs/deployment.md).
//
// Where the API offers sessions (x402 `batch-settlement`), the page pays by session: the
// first answer deposits into a payment channel, later ones are paid by signed vouchers with
// no transaction each; the session bar shows what was deposited in all, spent, refunded and
// what remains, tops it up and refunds the rest (session.mjs).
import { wrapFetchWithPayment, x402Client } from "@x402/fetch";
import { ExactEvmScheme } from "@x402/evm/exact/client";
import { UptoEvmScheme } from "@x402/evm/upto/client";
import {
  createPublicClient,
  createWalletClient,
  custom,
  erc20Abi,
  formatUnits,
  getAddress,
  http,
  parseUnits,
} from "viem";
import { mnemonicToAccount } from "viem/accounts";
import { Session, SESSION_SCHEME } from "./session.mjs";

// Anvil's development mnemonic: every dev account's key is derived from it and is public.
const ANVIL_MNEMONIC = "test test test test test test test test test test test junk";
const LOCAL_NETWORK = "eip155:31337";
const DEV_ACCOUNTS = 10;

const $ = (id) => document.getElementById(id);
const api = new URL(new URLSearchParams(location.search).get("api") || location.origin);

const state = {
  config: null,
  wallet: null, // {address, signer, label, provider?}
  pay: null, // fetch that pays, for the chosen wallet
  conversation: [],
  spent: 0n,
  answers: 0,
  busy: null, // the AbortController of the answer streaming now
  session: null, // the wallet's Session, where the API offers sessions
};

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function short(hex) {
  return hex && hex.length > 14 ? hex.slice(0, 8) + "…" + hex.slice(-6) : hex || "—";
}

function usdc(atomic) {
  return formatUnits(BigInt(atomic), state.config.asset.decimals) + " USDC";
}

function showSpend() {
  const answers = state.answers === 1 ? "1 answer" : state.answers + " answers";
  $("spent").replaceChildren("Spent ", el("b", "", usdc(state.spent)), " · " + answers);
}

function chainReader(wallet, config) {
  const transport = config.rpc_url ? http(config.rpc_url) : wallet.provider && custom(wallet.provider);
  return transport ? createPublicClient({ transport }) : null;
}

async function showBalance() {
  const { wallet, config } = state;
  const chain = chainReader(wallet, config);
  if (!chain) {
    $("balance").textContent = "";
    return;
  }
  try {
    const balance = await chain.readContract({
      address: config.asset.address,
      abi: erc20Abi,
      functionName: "balanceOf",
      args: [wallet.address],
    });
    $("balance").replaceChildren("Balance ", el("b", "", usdc(balance)));
    $("balance").dataset.atomic = String(balance);
  } catch (error) {
    $("balance").textContent = "Balance unavailable: " + (error.shortMessage || error.message);
  }
}

// ---- wallets -------------------------------------------------------------------------

function devWallet(index) {
  const account = mnemonicToAccount(ANVIL_MNEMONIC, { addressIndex: index });
  return {
    address: account.address,
    signer: account,
    label: `anvil dev account #${index}: a well-known PUBLIC key, test funds on the local chain only`,
  };
}

async function injectedWallet(provider, chainId) {
  const [first] = await provider.request({ method: "eth_requestAccounts" });
  const address = getAddress(first);
  const current = Number(await provider.request({ method: "eth_chainId" }));
  if (current !== chainId) {
    await provider.request({
      method: "wallet_switchEthereumChain",
      params: [{ chainId: "0x" + chainId.toString(16) }],
    });
  }
  const client = createWalletClient({ account: address, transport: custom(provider) });
  return {
    address,
    provider,
    label: "your browser wallet: it asks you to sign each payment",
    signer: { address, signTypedData: (typed) => client.signTypedData({ account: address, ...typed }) },
  };
}

function payingFetch(wallet, config, session, onSign) {
  const options = config.rpc_url ? { rpcUrl: config.rpc_url } : undefined;
  const cap = parseUnits(config.max_per_request, config.asset.decimals);
  const client = new x402Client()
    .register(config.network, new UptoEvmScheme(wallet.signer, options))
    .register(config.network, new ExactEvmScheme(wallet.signer, options));
  if (session) {
    // A session where one is offered: one deposit, then a voucher per answer.
    client
      .register(config.network, session.scheme)
      .registerPolicy((version, offers) => {
        const sessions = offers.filter((offer) => offer.scheme === SESSION_SCHEME);
        return sessions.length ? sessions : offers;
      });
  }
  client
    // The client's own spend control: this token, and no more than the cap per answer.
    .setSpendControls({
      allowedAssets: [
        { network: config.network, asset: config.asset.address, maxAmountPerPayment: String(cap) },
      ],
    })
    .onBeforePaymentCreation(async ({ selectedRequirements }) => {
      if (selectedRequirements.scheme === SESSION_SCHEME) session.paying(selectedRequirements);
      onSign(selectedRequirements);
    });
  return wrapFetchWithPayment(fetch, client);
}

async function chooseWallet() {
  const choice = $("wallet").value;
  $("send").disabled = true;
  $("address").textContent = "…";
  try {
    state.wallet = choice === "injected"
      ? await injectedWallet(window.ethereum, state.config.chain_id)
      : devWallet(Number(choice.slice("dev:".length)));
  } catch (error) {
    $("wallet-label").textContent = error.shortMessage || error.message;
    return;
  }
  $("address").textContent = state.wallet.address;
  $("wallet-label").textContent = state.wallet.label;
  state.session = state.config.sessions ? newSession(state.wallet, state.config) : null;
  $("session").hidden = !state.session;
  await showBalance();
  await showSession();
  $("send").disabled = false;
}

// ---- the session ---------------------------------------------------------------------

function newSession(wallet, config) {
  const chain = chainReader(wallet, config);
  if (!chain) return null; // a session reads its channel on chain
  return new Session({
    address: wallet.address,
    signTypedData: (typed) => wallet.signer.signTypedData(typed),
    readContract: (args) => chain.readContract(args),
  });
}

function sessionCell(id, label, atomic) {
  const cell = $(id);
  cell.replaceChildren(label + " ", el("b", "", usdc(atomic)));
  cell.dataset.atomic = String(atomic);
}

async function showSession(note) {
  const session = state.session;
  if (!session) return;
  let balance = null;
  try {
    balance = await session.balance();
  } catch (error) {
    $("session-note").textContent = "Session unavailable: " + (error.shortMessage || error.message);
    return;
  }
  const open = balance !== null;
  $("session-figures").hidden = !open;
  $("refund").disabled = !open || balance.remaining === 0n || Boolean(state.busy);
  $("top-up").disabled = Boolean(state.busy);
  if (open) {
    sessionCell("session-deposited", "Deposited in all", balance.deposited);
    sessionCell("session-spent", "Spent", balance.spent);
    sessionCell("session-refunded", "Refunded", balance.refunded);
    $("session-refunded").hidden = balance.refunded === 0n;
    sessionCell("session-remaining", "Remaining", balance.remaining);
    $("session").dataset.channel = balance.channelId;
  }
  $("session-note").textContent = note
    || (session.topUpPending ? TOP_UP_NOTE
      : open ? "Answers are paid by voucher from this deposit: no transaction each."
        : "Your first answer deposits into a session; later ones are paid by voucher.");
}

const TOP_UP_NOTE = "Your next answer's payment carries a top-up deposit.";

function topUp() {
  state.session?.topUp();
  $("session-note").textContent = TOP_UP_NOTE;
}

async function refund() {
  const session = state.session;
  const plan = state.config.plans.find((p) => p.id === $("plan").value && p.sessions)
    || state.config.plans.find((p) => p.sessions);
  $("refund").disabled = $("top-up").disabled = $("send").disabled = true;
  $("session-note").textContent = "Asking for the rest back…";
  try {
    const { settled, refunded } = await session.refund(new URL(plan.path, api));
    $("session").dataset.refunded = String(refunded);
    $("session").dataset.refundTransaction = settled.transaction || "";
    await showSession(`Refunded ${usdc(refunded)}: the rest of the deposit is back in your wallet.`);
  } catch (error) {
    await showSession("Refund refused: " + (error.shortMessage || error.message));
  }
  $("send").disabled = false;
  await showBalance();
}

// ---- answers -------------------------------------------------------------------------

function costCard(receipt, stopped) {
  const card = el("div", "cost-card" + (receipt.status === "settled" ? "" : " failed"));
  const cells = [
    ["Tokens in / out", (receipt.input_tokens ?? "?") + " / " + (receipt.output_tokens ?? "?")],
    ["Charged", usdc(receipt.amount ?? 0)],
    ["Authorized", usdc(receipt.max_amount) + " (" + receipt.scheme + ")"],
    !receipt.channel
      ? ["Transaction", short(receipt.transaction)]
      : receipt.transaction // a session's answer that deposited names the deposit
        ? ["Transaction", "deposit " + short(receipt.transaction)]
        : ["Transaction", "none: by voucher"],
  ];
  for (const [label] of cells) card.append(el("div", "label", label));
  for (const [label, value] of cells) {
    const cell = el("div", "value" + (label === "Transaction" ? " tx" : ""), value);
    if (label === "Transaction" && receipt.transaction) cell.title = receipt.transaction;
    card.append(cell);
  }
  Object.assign(card.dataset, {
    status: receipt.status,
    amount: receipt.amount ?? "0",
    maxAmount: receipt.max_amount,
    tokens: String((receipt.input_tokens ?? 0) + (receipt.output_tokens ?? 0)),
    outputTokens: String(receipt.output_tokens ?? 0),
    transaction: receipt.transaction || "",
    scheme: receipt.scheme,
    stopped: String(stopped),
  });
  return card;
}

function deltas(buffered, onText) {
  // Server-sent events of OpenAI chat chunks: returns what is left of an incomplete line.
  let newline;
  while ((newline = buffered.indexOf("\n")) >= 0) {
    const line = buffered.slice(0, newline).trim();
    buffered = buffered.slice(newline + 1);
    if (!line.startsWith("data:")) continue;
    const data = line.slice(5).trim();
    if (data === "[DONE]") continue;
    try {
      for (const choice of JSON.parse(data).choices || []) {
        if (choice.delta && choice.delta.content) onText(choice.delta.content);
      }
    } catch {
      // not a chunk of text (a comment, a usage report): nothing to show
    }
  }
  return buffered;
}

async function send() {
  const text = $("prompt").value.trim();
  if (!text || state.busy) return;
  const controller = new AbortController();
  state.busy = controller;
  $("send").disabled = true;
  $("stop").disabled = false;
  $("top-up").disabled = $("refund").disabled = true;
  $("prompt").value = "";
  $("empty")?.remove();

  const user = el("div", "message user");
  user.append(el("div", "bubble", text));
  $("messages").append(user);
  state.conversation.push({ role: "user", content: text });

  const plan = state.config.plans.find((p) => p.id === $("plan").value);
  const reply = el("div", "message assistant");
  const bubble = el("div", "bubble", "");
  const status = el("div", "status", "Asking…");
  reply.append(el("div", "meta", $("plan").selectedOptions[0].textContent), bubble, status);
  $("messages").append(reply);
  window.scrollTo(0, document.body.scrollHeight);

  let answer = "";
  let stopped = false;
  let receiptPath = null;
  try {
    const pay = payingFetch(state.wallet, state.config, state.session, (requirements) => {
      status.textContent = requirements.scheme === SESSION_SCHEME
        ? `402 Payment Required: signing a voucher for up to ${usdc(requirements.amount)}…`
        : `402 Payment Required: signing up to ${usdc(requirements.amount)}`
          + ` (${requirements.scheme})…`;
    });
    const response = await pay(new URL(plan.path, api), {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: plan.model, messages: state.conversation, stream: true }),
      signal: controller.signal,
    });
    if (!response.ok) {
      const body = await response.text();
      throw new Error(`HTTP ${response.status}: ${body.slice(0, 300)}`);
    }
    receiptPath = response.headers.get("X-Payment-Receipt");
    status.textContent = "Paid; streaming…";
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered = deltas(buffered + decoder.decode(value, { stream: true }), (piece) => {
        answer += piece;
        bubble.textContent = answer;
        reply.dataset.streaming = "true";
      });
    }
  } catch (error) {
    if (controller.signal.aborted) {
      stopped = true;
    } else {
      status.textContent = String(error.message || error);
      status.classList.add("error");
    }
  }
  $("stop").disabled = true;
  if (answer) state.conversation.push({ role: "assistant", content: answer });
  if (receiptPath) {
    status.textContent = stopped ? "Stopped: settling what was served…" : "Settling…";
    try {
      const url = new URL(receiptPath, api);
      url.searchParams.set("wait", "30");
      const receipt = await (await fetch(url)).json();
      const settled = receipt.channel ? "Charged to your session." : "Settled on chain.";
      status.textContent = (stopped ? "Stopped: charged for what was served. " : "")
        + (receipt.status === "settled" ? settled : "Settlement: " + receipt.status);
      if (receipt.channel) await state.session?.charged(receipt);
      if (stopped) status.classList.add("stopped");
      reply.append(costCard(receipt, stopped));
      state.spent += BigInt(receipt.amount ?? 0);
      state.answers += 1;
      showSpend();
      await showBalance();
      await showSession();
    } catch (error) {
      status.textContent = "Receipt unavailable: " + (error.message || error);
      status.classList.add("error");
    }
  } else if (stopped) {
    status.textContent = "Stopped before the answer began: nothing paid.";
  }
  state.busy = null;
  await showSession();
  $("send").disabled = false;
  window.scrollTo(0, document.body.scrollHeight);
}

// ---- start ---------------------------------------------------------------------------

async function start() {
  const config = await (await fetch(new URL("/chat/config", api))).json();
  state.config = config;
  if (window.ethereum) $("wallet").append(new Option("Browser wallet", "injected"));
  if (config.network === LOCAL_NETWORK) {
    for (let index = 0; index < DEV_ACCOUNTS; index += 1) {
      $("wallet").append(new Option(`anvil dev account #${index} (public key)`, `dev:${index}`));
    }
    if (!window.ethereum) $("wallet").value = "dev:3"; // the demo's funded payer
  }
  if (!$("wallet").options.length) {
    $("wallet-label").textContent = "No wallet: install a browser wallet (EIP-1193) to pay.";
    return;
  }
  for (const plan of config.plans) $("plan").append(new Option(plan.model + " — " + plan.label, plan.id));
  $("price-note").textContent = (config.sessions
    ? "Per-token plans are paid from a session: one deposit, then a voucher per answer for "
      + "only the tokens used; the rest can be refunded. "
    : "Per-token plans authorize a maximum and settle only the tokens used. ")
    + "Flat plans pay a fixed price per answer. This page signs at most "
    + config.max_per_request + " USDC per answer. API: " + api.origin;
  showSpend();
  $("wallet").addEventListener("change", chooseWallet);
  $("send").addEventListener("click", send);
  $("stop").addEventListener("click", () => state.busy?.abort());
  $("top-up").addEventListener("click", topUp);
  $("refund").addEventListener("click", refund);
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      send();
    }
  });
  await chooseWallet();
}

start().catch((error) => {
  $("wallet-label").textContent = "Cannot reach the API at " + api.origin + ": " + (error.message || error);
});
