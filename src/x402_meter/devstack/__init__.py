"""A fully offline x402 stack for development and tests.

anvil (a real EVM dev chain), a USDC-like token, Permit2, the x402 upto proxy and the
batch-settlement contracts at their canonical addresses, funded dev payers, and a
facilitator served over HTTP::

    from x402_meter.devstack import local_stack

    with local_stack() as stack:
        print(stack.facilitator_url, stack.asset, stack.payer_private_keys[0])

The payer keys are anvil's public, well-known dev keys: never use them on a real network.
"""

from x402_meter.devstack.deploy import token_balance
from x402_meter.devstack.stack import LocalStack, local_stack

__all__ = ["LocalStack", "local_stack", "token_balance"]
