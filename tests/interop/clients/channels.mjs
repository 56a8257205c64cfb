// The official TypeScript client paying over payment channels: @x402/fetch + @x402/evm's
// batch-settlement client. Every cell is a GET of a paid route; the cells of one payer share
// one client, so its first request deposits and the next ones pay by voucher. The scheme
// reads the chain (channel recovery) through the local RPC URL it is given, nothing else.
import { wrapFetchWithPayment, x402Client } from "@x402/fetch";
import { BatchSettlementEvmScheme } from "@x402/evm/batch-settlement/client";
import { run } from "./harness.mjs";
import { localNetwork, localSigner } from "./official_signer.mjs";

const payers = new Map();

function payingFetch(job, privateKey) {
  if (!payers.has(privateKey)) {
    const network = localNetwork(job);
    const scheme = new BatchSettlementEvmScheme(localSigner(job, privateKey), { rpcUrl: job.rpcUrl });
    const client = x402Client.fromConfig({
      schemes: [{ network, client: scheme }],
      spendControls: { allowedAssets: [{ network, asset: job.asset.address }] },
    });
    payers.set(privateKey, wrapFetchWithPayment(globalThis.fetch, client));
  }
  return payers.get(privateKey);
}

await run(async (job, cell) => payingFetch(job, cell.privateKey)(`${job.base}${cell.path}`));
