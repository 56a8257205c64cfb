// thirdweb's x402 client (exact) with a private-key wallet on the test chain.
// The chain's RPC is the local one; the client id is a placeholder: thirdweb's services are
// never reached (the harness refuses any remote call, and the 402's extra.primaryType tells
// the client how to sign without looking the token's ABI up online).
import { createThirdwebClient, defineChain } from "thirdweb";
import { createWalletAdapter, privateKeyToAccount } from "thirdweb/wallets";
import { wrapFetchWithPayment } from "thirdweb/x402";
import { request, run } from "./harness.mjs";

await run(async (job, cell) => {
  const client = createThirdwebClient({ clientId: "x402-meter-interop" });
  const chain = defineChain({ id: job.chainId, rpc: job.rpcUrl });
  const wallet = createWalletAdapter({
    client,
    adaptedAccount: privateKeyToAccount({ client, privateKey: cell.privateKey }),
    chain,
    onDisconnect: () => {},
    switchChain: () => {},
  });
  return wrapFetchWithPayment(globalThis.fetch, client, wallet)(...request(job, cell));
});
