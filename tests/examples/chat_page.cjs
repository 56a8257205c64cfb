// Drives the FastAPI example's chat page in headless Chromium and reports what it showed.
//
//   node tests/examples/chat_page.cjs <base url> <screenshot.png> <empty user-data-dir>
//
// The browser is Debian's /usr/bin/chromium (or $CHROMIUM), driven by the npm package
// playwright-core: nothing is downloaded. Prints one JSON object on stdout.
"use strict";

const { chromium } = require("playwright-core");

const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const TURNS = [
  { plan: "local-stub:token", question: "What is x402, in two sentences?" },
  { plan: "local-stub-pro:flat", question: "And how is this answer paid for?" },
];
const BOUND_MS = 60_000; // a guard against a hang, not a timing assertion

async function main() {
  const [base, screenshot, userDataDir] = process.argv.slice(2);
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: FLAGS,
    viewport: { width: 1100, height: 820 },
  });
  try {
    const page = context.pages()[0] || (await context.newPage());
    const errors = [];
    page.on("pageerror", (error) => errors.push(String(error)));
    await page.goto(`${base}/chat`);
    await page.waitForSelector("#send:not([disabled])", { timeout: BOUND_MS });
    const options = await page.$$eval("#plan option", (all) =>
      all.map((o) => ({ value: o.value, text: o.textContent })),
    );
    for (const [index, turn] of TURNS.entries()) {
      await page.selectOption("#plan", turn.plan);
      await page.fill("#prompt", turn.question);
      await page.click("#send");
      await page.waitForFunction(
        (count) => document.querySelectorAll(".cost-card").length === count,
        index + 1,
        { timeout: BOUND_MS },
      );
      await page.waitForSelector("#send:not([disabled])", { timeout: BOUND_MS });
    }
    const result = await page.evaluate(() => ({
      wallet: document.getElementById("wallet").textContent,
      walletLabel: document.getElementById("wallet-label").textContent,
      spent: document.getElementById("spent").textContent,
      answers: [...document.querySelectorAll(".message.assistant .bubble")].map((b) => b.textContent),
      plans: [...document.querySelectorAll(".message.assistant .meta")].map((m) => m.textContent),
      cards: [...document.querySelectorAll(".cost-card")].map((card) => ({
        status: card.dataset.status,
        amount: card.dataset.amount,
        tokens: Number(card.dataset.tokens),
        transaction: card.dataset.transaction,
        text: card.textContent,
      })),
    }));
    await page.screenshot({ path: screenshot, fullPage: true });
    process.stdout.write(JSON.stringify({ ...result, options, errors }) + "\n");
  } finally {
    await context.close();
  }
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error) + "\n");
  process.exit(1);
});
