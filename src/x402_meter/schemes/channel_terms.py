"""A channel's binding and terms, checked once per channel rather than once per voucher.

``check_channel_terms`` hashes the channel's config (EIP-712, twice: the SDK's binding check
and its config check each compute the id) and compares it with this server's terms: about a
millisecond of Python on every voucher, for an answer that never changes while the config,
the channel id, the network and the server's terms stay the same. ``ChannelTerms`` keeps the
configs that passed, keyed by everything the check reads, in a small LRU: a voucher on a
channel seen recently costs a dictionary look-up. A config that fails is checked again each
time (a payer sending bad configs cannot push good ones out faster than it could with good
ones; the cost is then what it was).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from x402.schemas import PaymentRequirements

from x402_meter.schemes.channel_payload import ChannelPayment, check_channel_terms

KNOWN_CHANNELS: Final = 4096
"""Channels whose terms are remembered (a key is a few hundred bytes)."""

TermsKey = tuple[str | int | None, ...]


def terms_key(payment: ChannelPayment, requirements: PaymentRequirements) -> TermsKey:
    """Everything ``check_channel_terms`` reads: the config, the id, the network and the
    server's terms (receiver, token, receiver authorizer, withdraw delay)."""
    config, extra = payment.config, requirements.extra or {}
    authorizer, delay = extra.get("receiverAuthorizer"), extra.get("withdrawDelay")
    return (
        config.payer,
        config.payer_authorizer,
        config.receiver,
        config.receiver_authorizer,
        config.token,
        config.withdraw_delay,
        config.salt,
        payment.channel_id,
        str(requirements.network),
        requirements.pay_to,
        requirements.asset,
        authorizer if isinstance(authorizer, str | int) else repr(authorizer),
        delay if isinstance(delay, str | int) else repr(delay),
    )


class ChannelTerms:
    """``check_channel_terms``, remembering up to ``size`` configs that passed."""

    def __init__(self, size: int = KNOWN_CHANNELS) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self._passed: OrderedDict[TermsKey, None] = OrderedDict()

    def check(self, payment: ChannelPayment, requirements: PaymentRequirements) -> None:
        """``PaymentError`` unless the channel id binds the config on this network and the
        config is this server's."""
        key = terms_key(payment, requirements)
        if key in self._passed:
            self._passed.move_to_end(key)
            return
        check_channel_terms(payment, requirements)  # raises if it does not pass
        self._passed[key] = None
        if len(self._passed) > self.size:
            self._passed.popitem(last=False)

    def __len__(self) -> int:
        return len(self._passed)


__all__ = ["KNOWN_CHANNELS", "ChannelTerms", "terms_key"]
