// x402-fetch 1.2.0: the x402 v1 client (exact only), with a viem wallet on the test chain.
// v1 knows networks by name only, so the chain must be one that has a v1 name (84532 is
// base-sepolia); its transport is the local RPC URL.
import { wrapFetchWithPayment } from "x402-fetch";
import { createWalletClient, http } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { baseSepolia } from "viem/chains";
import { request, run } from "./harness.mjs";

await run(async (job, cell) => {
  if (job.chainId !== baseSepolia.id) throw new Error(`x402-fetch needs chain ${baseSepolia.id}`);
  const wallet = createWalletClient({
    account: privateKeyToAccount(cell.privateKey),
    chain: baseSepolia,
    transport: http(job.rpcUrl),
  });
  return wrapFetchWithPayment(globalThis.fetch, wallet)(...request(job, cell));
});
