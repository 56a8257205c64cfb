// The official TypeScript client in a session, then taking the rest back: @x402/fetch +
// @x402/evm's batch-settlement client. A cell with a body is a paid POST of it; a cell with
// `refund: true` is the scheme's refund(url) (its GET probe, then its refund payload), and
// its report is the settle response it returns. The cells of one payer share one client.
import { wrapFetchWithPayment, x402Client } from "@x402/fetch";
import { BatchSettlementEvmScheme } from "@x402/evm/batch-settlement/client";
import { request, run } from "./harness.mjs";
import { localNetwork, localSigner } from "./official_signer.mjs";

const payers = new Map();

function payer(job, privateKey) {
  if (!payers.has(privateKey)) {
    const network = localNetwork(job);
    const scheme = new BatchSettlementEvmScheme(localSigner(job, privateKey), { rpcUrl: job.rpcUrl });
    const client = x402Client.fromConfig({
      schemes: [{ network, client: scheme }],
      spendControls: { allowedAssets: [{ network, asset: job.asset.address }] },
    });
    payers.set(privateKey, { scheme, fetch: wrapFetchWithPayment(globalThis.fetch, client) });
  }
  return payers.get(privateKey);
}

await run(async (job, cell) => {
  const { scheme, fetch } = payer(job, cell.privateKey);
  if (cell.refund) {
    const settled = await scheme.refund(`${job.base}${cell.path}`);
    return new Response(JSON.stringify(settled), { status: 200 });
  }
  return fetch(...request(job, cell));
});
