// The chat page's script: it pays the API from the browser with the official x402 client.
//
// Bundled from npm by `npm run build:chat` (esbuild) into build/x402-chat.js. The page
// signs every payment itself: with an injected wallet (EIP-1193, `window.ethereum`) when
// there is one, or, on the local chain only, with one of anvil's dev accounts, whose keys
// are public (derived from anvil's well-known mnemonic). The server never holds a key.
//
// `?api=https://api.example.com` names the API when the page is served from elsewhere
// (the API must then allow this page's origin with CORS: see docs/deployment.md).
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

async function showBalance() {
  const { wallet, config } = state;
  const transport = config.rpc_url ? http(config.rpc_url) : wallet.provider && custom(wallet.provider);
  if (!transport) {
    $("balance").textContent = "";
    return;
  }
  try {
    const chain = createPublicClient({ transport });
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

function payingFetch(wallet, config, onSign) {
  const options = config.rpc_url ? { rpcUrl: config.rpc_url } : undefined;
  const cap = parseUnits(config.max_per_request, config.asset.decimals);
  const client = new x402Client()
    .register(config.network, new UptoEvmScheme(wallet.signer, options))
    .register(config.network, new ExactEvmScheme(wallet.signer, options))
    // The client's own spend control: this token, and no more than the cap per answer.
    .setSpendControls({
      allowedAssets: [
        { network: config.network, asset: config.asset.address, maxAmountPerPayment: String(cap) },
      ],
    })
    .onBeforePaymentCreation(async ({ selectedRequirements }) => {
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
  await showBalance();
  $("send").disabled = false;
}

// ---- answers -------------------------------------------------------------------------

function costCard(receipt, stopped) {
  const card = el("div", "cost-card" + (receipt.status === "settled" ? "" : " failed"));
  const cells = [
    ["Tokens in / out", (receipt.input_tokens ?? "?") + " / " + (receipt.output_tokens ?? "?")],
    ["Charged", usdc(receipt.amount ?? 0)],
    ["Authorized", usdc(receipt.max_amount) + " (" + receipt.scheme + ")"],
    ["Transaction", short(receipt.transaction)],
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
    const pay = payingFetch(state.wallet, state.config, (requirements) => {
      status.textContent = `402 Payment Required: signing up to ${usdc(requirements.amount)}`
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
      status.textContent = (stopped ? "Stopped: charged for what was served. " : "")
        + (receipt.status === "settled" ? "Settled on chain." : "Settlement: " + receipt.status);
      if (stopped) status.classList.add("stopped");
      reply.append(costCard(receipt, stopped));
      state.spent += BigInt(receipt.amount ?? 0);
      state.answers += 1;
      showSpend();
      await showBalance();
    } catch (error) {
      status.textContent = "Receipt unavailable: " + (error.message || error);
      status.classList.add("error");
    }
  } else if (stopped) {
    status.textContent = "Stopped before the answer began: nothing paid.";
  }
  state.busy = null;
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
  $("price-note").textContent = "Per-token plans authorize a maximum and settle only the tokens "
    + "used; flat plans pay a fixed price per answer. This page signs at most "
    + config.max_per_request + " USDC per answer. API: " + api.origin;
  showSpend();
  $("wallet").addEventListener("change", chooseWallet);
  $("send").addEventListener("click", send);
  $("stop").addEventListener("click", () => state.busy?.abort());
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
