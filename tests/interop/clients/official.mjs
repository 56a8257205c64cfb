// The official TypeScript client: @x402/fetch + @x402/evm (x402 v2; upto and exact).
// The upto scheme reads the chain (Permit2 allowance, the token's EIP-2612 nonce for gas
// sponsoring) through the local RPC URL it is given: no default RPC is ever used.
import { wrapFetchWithPayment, x402Client } from "@x402/fetch";
import { toClientEvmSigner } from "@x402/evm";
import { ExactEvmScheme } from "@x402/evm/exact/client";
import { UptoEvmScheme } from "@x402/evm/upto/client";
import { createPublicClient, defineChain, http } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { request, run } from "./harness.mjs";

await run(async (job, cell) => {
  const chain = defineChain({
    id: job.chainId,
    name: "interop",
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [job.rpcUrl] } },
  });
  const publicClient = createPublicClient({ chain, transport: http(job.rpcUrl) });
  const signer = toClientEvmSigner(privateKeyToAccount(cell.privateKey), publicClient);
  const network = `eip155:${job.chainId}`;
  const client = x402Client.fromConfig({
    schemes: [
      { network, client: new UptoEvmScheme(signer, { rpcUrl: job.rpcUrl }) },
      { network, client: new ExactEvmScheme(signer, { rpcUrl: job.rpcUrl }) },
    ],
    // The test token is no default asset: allow it by name, as a user would their token.
    spendControls: { allowedAssets: [{ network, asset: job.asset.address }] },
  });
  return wrapFetchWithPayment(globalThis.fetch, client)(...request(job, cell));
});
