// The official TypeScript client paying over payment channels: @x402/fetch + @x402/evm's
// batch-settlement client. Every cell is a GET of a paid route; the cells of one payer share
// one client, so its first request deposits and the next ones pay by voucher. The scheme
// reads the chain (channel recovery) through the local RPC URL it is given, nothing else.
import { wrapFetchWithPayment, x402Client } from "@x402/fetch";
import { toClientEvmSigner } from "@x402/evm";
import { BatchSettlementEvmScheme } from "@x402/evm/batch-settlement/client";
import { createPublicClient, defineChain, http } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { run } from "./harness.mjs";

const payers = new Map();

function payingFetch(job, privateKey) {
  if (!payers.has(privateKey)) {
    const chain = defineChain({
      id: job.chainId,
      name: "channels",
      nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
      rpcUrls: { default: { http: [job.rpcUrl] } },
    });
    const publicClient = createPublicClient({ chain, transport: http(job.rpcUrl) });
    const signer = toClientEvmSigner(privateKeyToAccount(privateKey), publicClient);
    const network = `eip155:${job.chainId}`;
    const client = x402Client.fromConfig({
      schemes: [{ network, client: new BatchSettlementEvmScheme(signer, { rpcUrl: job.rpcUrl }) }],
      spendControls: { allowedAssets: [{ network, asset: job.asset.address }] },
    });
    payers.set(privateKey, wrapFetchWithPayment(globalThis.fetch, client));
  }
  return payers.get(privateKey);
}

await run(async (job, cell) => payingFetch(job, cell.privateKey)(`${job.base}${cell.path}`));
