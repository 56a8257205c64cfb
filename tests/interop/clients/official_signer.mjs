// What the official TypeScript clients (@x402/evm) share: a signer for a cell's key that
// reads the local chain through the job's RPC URL, and the chain's CAIP-2 network.
import { toClientEvmSigner } from "@x402/evm";
import { createPublicClient, defineChain, http } from "viem";
import { privateKeyToAccount } from "viem/accounts";

/** The `eip155:<chain id>` network of the job's chain. */
export function localNetwork(job) {
  return `eip155:${job.chainId}`;
}

/** An @x402/evm client signer for `privateKey`, reading the chain at `job.rpcUrl` only. */
export function localSigner(job, privateKey) {
  const chain = defineChain({
    id: job.chainId,
    name: "interop",
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [job.rpcUrl] } },
  });
  const publicClient = createPublicClient({ chain, transport: http(job.rpcUrl) });
  return toClientEvmSigner(privateKeyToAccount(privateKey), publicClient);
}
