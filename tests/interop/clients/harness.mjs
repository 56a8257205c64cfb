// What every interop client script shares: read the job, keep the process on this machine,
// run the cells one after another, print one JSON report.
//
//   node tests/interop/clients/<client>.mjs < job.json
//
// job: {base, rpcUrl, chainId, cells: [{name, path, body, privateKey}]}
// report: {cells: [{name, status, body, headers, error}], blocked: [what was refused]}
//
// Nothing may leave the machine: fetch() to anything but loopback, and DNS look-ups of any
// name but localhost, are refused and recorded in `blocked` (the test asserts it is empty),
// so a client that quietly calls a remote service fails loudly instead.
import dns from "node:dns";

const LOOPBACK_HOSTS = new Set(["127.0.0.1", "localhost", "[::1]", "::1"]);
const blocked = [];

function isLoopback(hostname) {
  return LOOPBACK_HOSTS.has(hostname) || hostname.startsWith("127.");
}

function guardNetwork() {
  const realFetch = globalThis.fetch;
  globalThis.fetch = async (input, init) => {
    const url = new URL(typeof input === "string" || input instanceof URL ? input : input.url);
    if (!isLoopback(url.hostname)) {
      blocked.push(`fetch ${url.origin}${url.pathname}`);
      throw new Error(`interop harness: ${url.origin} is not on this machine`);
    }
    return realFetch(input, init);
  };
  const refuse = (hostname) => {
    blocked.push(`dns ${hostname}`);
    const error = new Error(`interop harness: no DNS for ${hostname}`);
    error.code = "ENOTFOUND";
    return error;
  };
  const realLookup = dns.lookup;
  dns.lookup = (hostname, options, callback) => {
    const done = typeof options === "function" ? options : callback;
    if (!isLoopback(hostname)) return process.nextTick(done, refuse(hostname));
    return realLookup(hostname, options, callback);
  };
  const realPromiseLookup = dns.promises.lookup;
  dns.promises.lookup = async (hostname, options) => {
    if (!isLoopback(hostname)) throw refuse(hostname);
    return realPromiseLookup(hostname, options);
  };
}

async function readJob() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

const HEADERS = ["x-payment-receipt", "payment-response", "x-payment-response", "content-type"];

/** Run `pay(job, cell)` (a fetch that pays, resolving to a Response) for every cell. */
export async function run(pay) {
  guardNetwork();
  const job = await readJob();
  const cells = [];
  for (const cell of job.cells) {
    try {
      const response = await pay(job, cell);
      const headers = {};
      for (const name of HEADERS) {
        const value = response.headers.get(name);
        if (value !== null) headers[name] = value;
      }
      cells.push({ name: cell.name, status: response.status, body: await response.text(), headers });
    } catch (error) {
      cells.push({ name: cell.name, error: String(error?.stack ?? error) });
    }
  }
  process.stdout.write(JSON.stringify({ cells, blocked }) + "\n");
}

/** The POST every cell sends: its JSON body to its path on the example. */
export function request(job, cell) {
  return [
    `${job.base}${cell.path}`,
    { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(cell.body) },
  ];
}
