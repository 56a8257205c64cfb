// The official TypeScript client: @x402/fetch + @x402/evm (x402 v2; upto and exact).
// The upto scheme reads the chain (Permit2 allowance, the token's EIP-2612 nonce for gas
// sponsoring) through the local RPC URL it is given: no default RPC is ever used.
import { wrapFetchWithPayment, x402Client } from "@x402/fetch";
import { ExactEvmScheme } from "@x402/evm/exact/client";
import { UptoEvmScheme } from "@x402/evm/upto/client";
import { request, run } from "./harness.mjs";
import { localNetwork, localSigner } from "./official_signer.mjs";

await run(async (job, cell) => {
  const signer = localSigner(job, cell.privateKey);
  const network = localNetwork(job);
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
