// @faremeter/fetch with @faremeter/payment-evm's exact handler and a local wallet.
// Faremeter knows USDC's addresses; the test token is given as contract info instead.
import { wrap } from "@faremeter/fetch";
import { createPaymentHandler } from "@faremeter/payment-evm/exact";
import { createLocalWallet } from "@faremeter/wallet-evm";
import { request, run } from "./harness.mjs";

await run(async (job, cell) => {
  const chain = { id: job.chainId, name: "interop" };
  const wallet = await createLocalWallet(chain, cell.privateKey);
  const handler = createPaymentHandler(wallet, {
    asset: { address: job.asset.address, contractName: job.asset.name },
  });
  return wrap(globalThis.fetch, { handlers: [handler] })(...request(job, cell));
});
