// Drives the FastAPI example's chat page in headless Chromium and reports what it showed.
//
//   node tests/examples/chat_page.cjs '<json plan>'
//
// The plan: {url, screenshot, profile, wallet, turns, injected?}; each turn is a question
// {plan, question, stopAfter?} or a click on the session bar {action: "topUp" | "refund"}.
// `wallet` is the page's wallet choice ("dev:9", "injected"). With `injected` =
// {privateKey, rpcUrl}, the page gets a `window.ethereum` (EIP-1193) like a wallet
// extension's: the key stays here, outside the page, which asks for each signature
// (eth_signTypedData_v4); everything else goes to the chain's RPC.
// `stopAfter`: click Stop once the answer shows this text. After each turn the session bar
// is read (`steps`); every answer to a chat-completions path is noted (`exchanges`).
//
// The browser is Debian's /usr/bin/chromium (or $CHROMIUM), driven by the npm package
// playwright-core: nothing is downloaded. Prints one JSON object on stdout.
"use strict";

const { chromium } = require("playwright-core");
const { privateKeyToAccount } = require("viem/accounts");

const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const BOUND_MS = 60_000; // a guard against a hang, not a timing assertion

function walletExtension({ privateKey, rpcUrl }, signatures) {
  const account = privateKeyToAccount(privateKey);
  return async (method, params) => {
    if (method === "eth_requestAccounts" || method === "eth_accounts") return [account.address];
    if (method === "eth_signTypedData_v4") {
      const [address, json] = params;
      if (address.toLowerCase() !== account.address.toLowerCase()) throw new Error("unknown account");
      const typed = JSON.parse(json);
      delete typed.types.EIP712Domain;
      signatures.push(typed.primaryType);
      return account.signTypedData(typed);
    }
    const answer = await fetch(rpcUrl, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params }),
    });
    const { result, error } = await answer.json();
    if (error) throw new Error(error.message);
    return result;
  };
}

function sessionBar() {
  const figure = (id) => document.getElementById(id).dataset.atomic ?? null;
  const bar = document.getElementById("session");
  return {
    shown: !bar.hidden,
    deposited: figure("session-deposited"),
    spent: figure("session-spent"),
    refundedShown: figure("session-refunded"),
    remaining: figure("session-remaining"),
    note: document.getElementById("session-note").textContent,
    channel: bar.dataset.channel ?? null,
    refunded: bar.dataset.refunded ?? null,
    cards: document.querySelectorAll(".cost-card").length,
  };
}

async function main() {
  const plan = JSON.parse(process.argv[2]);
  const context = await chromium.launchPersistentContext(plan.profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: FLAGS,
    viewport: { width: 1100, height: 820 },
  });
  const signatures = [];
  let page = null;
  try {
    if (plan.injected) {
      await context.exposeFunction("__testWallet", walletExtension(plan.injected, signatures));
      await context.addInitScript(() => {
        window.ethereum = { request: ({ method, params }) => window.__testWallet(method, params || []) };
      });
    }
    page = context.pages()[0] || (await context.newPage());
    const errors = [];
    const origins = new Set();
    page.on("pageerror", (error) => errors.push(String(error)));
    page.on("request", (request) => origins.add(new URL(request.url()).origin));
    const exchanges = [];
    page.on("response", (response) => {
      const url = new URL(response.url());
      if (url.pathname.endsWith("/chat/completions")) {
        exchanges.push({ method: response.request().method(), path: url.pathname, status: response.status() });
      }
    });
    await page.goto(plan.url);
    await page.waitForSelector("#send:not([disabled])", { timeout: BOUND_MS });
    if ((await page.inputValue("#wallet")) !== plan.wallet) {
      await page.selectOption("#wallet", plan.wallet);
      await page.waitForSelector("#send:not([disabled])", { timeout: BOUND_MS });
    }
    await page.waitForSelector("#balance b", { timeout: BOUND_MS });
    const start = await page.evaluate(() => ({
      wallets: [...document.querySelectorAll("#wallet option")].map((o) => o.value),
      address: document.getElementById("address").textContent,
      walletLabel: document.getElementById("wallet-label").textContent,
      balance: document.getElementById("balance").dataset.atomic,
      options: [...document.querySelectorAll("#plan option")].map((o) => o.textContent),
    }));
    const steps = [];
    let asked = 0;
    for (const turn of plan.turns) {
      if (turn.action === "topUp") {
        await page.click("#top-up");
        steps.push(await page.evaluate(sessionBar));
        continue;
      }
      if (turn.action === "refund") {
        await page.click("#refund");
        await page.waitForFunction(
          () => document.getElementById("session-note").textContent.startsWith("Refund"),
          null,
          { timeout: BOUND_MS },
        );
        await page.waitForSelector("#send:not([disabled])", { timeout: BOUND_MS });
        steps.push(await page.evaluate(sessionBar));
        continue;
      }
      asked += 1;
      await page.selectOption("#plan", turn.plan);
      await page.fill("#prompt", turn.question);
      await page.click("#send");
      if (turn.stopAfter !== undefined) {
        await page.waitForFunction(
          (text) => document.querySelector(".message.assistant:last-child .bubble").textContent === text,
          turn.stopAfter,
          { timeout: BOUND_MS },
        );
        await page.click("#stop");
      }
      await page.waitForFunction(
        (count) => document.querySelectorAll(".cost-card").length === count,
        asked,
        { timeout: BOUND_MS },
      );
      await page.waitForSelector("#send:not([disabled])", { timeout: BOUND_MS });
      steps.push(await page.evaluate(sessionBar));
    }
    await page.waitForFunction(
      (before) => document.getElementById("balance").dataset.atomic !== before,
      start.balance,
      { timeout: BOUND_MS },
    );
    const result = await page.evaluate(() => ({
      spent: document.getElementById("spent").textContent,
      balanceAfter: document.getElementById("balance").dataset.atomic,
      answers: [...document.querySelectorAll(".message.assistant .bubble")].map((b) => b.textContent),
      statuses: [...document.querySelectorAll(".message.assistant .status")].map((s) => s.textContent),
      cards: [...document.querySelectorAll(".cost-card")].map((card) => ({ ...card.dataset, text: card.textContent })),
    }));
    await page.screenshot({ path: plan.screenshot, fullPage: true });
    const report = {
      ...start, ...result, errors, signatures, origins: [...origins], steps, exchanges,
    };
    process.stdout.write(JSON.stringify(report) + "\n");
  } catch (error) {
    // What the page said, for whoever reads the failure.
    const said = page && (await page.evaluate(() => document.body.innerText).catch(() => ""));
    throw new Error(`${error.message}\n--- the page said:\n${said}`);
  } finally {
    await context.close();
  }
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error) + "\n");
  process.exit(1);
});
