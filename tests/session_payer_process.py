"""A paying client in a process of its own: ``python -m tests.session_payer_process '<json>'``.

Asks a seller's chat route ``asks`` times through ``PayingClient`` with a ``session_store``
(JSON answers, then streamed ones), then optionally ``close_sessions()``, and prints what it
did as one JSON line: its payments (channel, deposit, cumulative), each answer's cost (from
the stub's usage), its balances and its refunds. Tests run it twice over one store to see a
second process resume the first one's channel.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import httpx

from x402_meter import Asset
from x402_meter.client import PayingClient

MESSAGES = [{"role": "user", "content": "what is x402?"}]


def streamed_usage(http: PayingClient, url: str) -> dict[str, Any]:
    body = {
        "model": "stub",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    usage: dict[str, Any] = {}
    with http.stream("POST", url, json=body) as answer:
        answer.raise_for_status()
        for line in answer.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line.removeprefix("data: "))
                usage = chunk.get("usage") or usage
    return usage


def main(options: dict[str, Any]) -> dict[str, Any]:
    asset = Asset(**options["asset"])
    url = f"{options['base']}/v1/chat/completions"
    with PayingClient(
        options["key"],
        network=options["network"],
        asset=asset,
        schemes=("batch-settlement", "upto"),
        session_store=options["store"],
        rpc_url=options.get("rpc_url"),
        max_total=options.get("max_total"),
    ) as http:
        usages = []
        for index in range(options["asks"]):
            if index % 2 == 0:
                answer = http.post(url, json={"model": "stub", "messages": MESSAGES})
                answer.raise_for_status()
                usages.append(answer.json()["usage"])
            else:
                usages.append(streamed_usage(http, url))
        balances = http.balance()
        refunds = http.close_sessions() if options.get("close") else ()
        return {
            "payments": [
                {
                    "channel": p.channel_id,
                    "deposit": p.deposit,
                    "cumulative": p.cumulative,
                    "max": p.max_amount,
                    "status": p.status_code,
                }
                for p in http.payments
            ],
            "usages": usages,
            "balances": [
                {"channel": b.channel_id, "deposited": b.deposited, "charged": b.charged}
                for b in balances
            ],
            "refunds": [{"channel": r.channel_id, "amount": r.amount} for r in refunds],
            "spent": http.wallet.spent,
            "refunded": http.wallet.refunded,
        }


if __name__ == "__main__":
    try:
        print(json.dumps(main(json.loads(sys.argv[1]))))
    except httpx.HTTPError as error:
        print(json.dumps({"error": str(error)}))
        raise
