"""Call the dev chain's batch-settlement contracts directly, with data the x402 SDK signs.

In a deployment the SDK's facilitator makes these calls; the contract tests and the gas
bench make them one at a time, to check each invariant and to measure each call. Payers
sign with the SDK's own client functions (deposit authorizations, vouchers) and the receiver
authorizer with the SDK's own signing helpers (``ClaimBatch``, ``Refund``), so what the
contracts accept here is what they accept from the SDK. Transactions are sent from anvil's
unlocked dev accounts; a call that would revert raises web3's ``ContractLogicError`` (with
the contract's reason) before anything is sent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.types import TxReceipt
from x402.mechanisms.evm.batch_settlement.authorizer_signer import (
    LocalAuthorizerSigner,
    sign_claim_batch,
    sign_refund,
)
from x402.mechanisms.evm.batch_settlement.client.eip3009 import (
    create_batch_settlement_eip3009_deposit_payload,
)
from x402.mechanisms.evm.batch_settlement.client.permit2 import (
    create_batch_settlement_permit2_deposit_payload,
)
from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
from x402.mechanisms.evm.batch_settlement.constants import (
    BATCH_SETTLEMENT_ADDRESS,
    ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
    MIN_WITHDRAW_DELAY,
    PERMIT2_DEPOSIT_COLLECTOR_ADDRESS,
)
from x402.mechanisms.evm.batch_settlement.facilitator.claim import build_voucher_claim_args
from x402.mechanisms.evm.batch_settlement.facilitator.deposit_eip3009 import (
    build_eip3009_deposit_collector_data,
)
from x402.mechanisms.evm.batch_settlement.facilitator.deposit_permit2 import (
    build_permit2_deposit_collector_data,
)
from x402.mechanisms.evm.batch_settlement.facilitator.utils import to_contract_channel_config
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig, VoucherClaim
from x402.mechanisms.evm.batch_settlement.utils import coerce_bytes32, compute_channel_id
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentRequirements

from x402_meter.devstack.contracts_artifacts import load_artifact
from x402_meter.errors import DevStackError

SIGNATURE_LIFETIME: Final = 10 * 365 * 24 * 3600
"""How long deposit authorizations signed here stay valid, in seconds: long enough that
tests which move the chain's clock forward (withdraw delays) can still deposit after."""


@dataclass(frozen=True, slots=True)
class ChannelState:
    """A channel as the contract records it, in atomic units."""

    balance: int
    total_claimed: int

    @property
    def unclaimed(self) -> int:
        """What a refund or a withdrawal could still take."""
        return self.balance - self.total_claimed


class BatchSettlementContracts:
    """The batch-settlement contract and its collectors on a dev chain, and its token.

    ``token_name``/``token_version`` are the token's EIP-712 domain, which EIP-3009
    deposit authorizations are signed under. The chain id is read once, here.
    """

    def __init__(self, w3: Web3, token: str, token_name: str, token_version: str) -> None:
        self.w3 = w3
        self.token = Web3.to_checksum_address(token)
        self.token_name = token_name
        self.token_version = token_version
        self.network = f"eip155:{w3.eth.chain_id}"
        self.settlement: Contract = w3.eth.contract(
            address=Web3.to_checksum_address(BATCH_SETTLEMENT_ADDRESS),
            abi=load_artifact("BatchSettlement")["abi"],
        )
        self._token_contract: Contract = w3.eth.contract(
            address=self.token, abi=load_artifact("Token")["abi"]
        )

    def token_balance(self, owner: str) -> int:
        """``owner``'s balance of the channel token, in atomic units."""
        return int(self._token_contract.functions.balanceOf(Web3.to_checksum_address(owner)).call())

    # -- channels ---------------------------------------------------------------------

    def channel_config(
        self,
        payer: str,
        receiver: str,
        receiver_authorizer: str,
        *,
        payer_authorizer: str | None = None,
        withdraw_delay: int = MIN_WITHDRAW_DELAY,
        salt: bytes | None = None,
    ) -> ChannelConfig:
        """A channel of this token; the payer signs its own vouchers unless told otherwise."""
        return ChannelConfig(
            payer=Web3.to_checksum_address(payer),
            payer_authorizer=Web3.to_checksum_address(payer_authorizer or payer),
            receiver=Web3.to_checksum_address(receiver),
            receiver_authorizer=Web3.to_checksum_address(receiver_authorizer),
            token=Web3.to_checksum_address(self.token),
            withdraw_delay=withdraw_delay,
            salt="0x" + (salt if salt is not None else os.urandom(32)).hex(),
        )

    def channel_id(self, config: ChannelConfig) -> str:
        """The id the SDK computes for ``config`` (0x-prefixed bytes32)."""
        return compute_channel_id(config, self.network)

    def channel(self, config: ChannelConfig) -> ChannelState:
        balance, total_claimed = self.settlement.functions.channels(
            coerce_bytes32(self.channel_id(config))
        ).call()
        return ChannelState(int(balance), int(total_claimed))

    def pending_withdrawal(self, config: ChannelConfig) -> tuple[int, int]:
        """(amount, initiatedAt) of the channel's pending withdrawal; zeros if none."""
        amount, initiated_at = self.settlement.functions.pendingWithdrawals(
            coerce_bytes32(self.channel_id(config))
        ).call()
        return int(amount), int(initiated_at)

    def refund_nonce(self, config: ChannelConfig) -> int:
        return int(
            self.settlement.functions.refundNonce(coerce_bytes32(self.channel_id(config))).call()
        )

    def receiver_totals(self, receiver: str) -> tuple[int, int]:
        """(totalClaimed, totalSettled) of ``receiver`` in this token."""
        claimed, settled = self.settlement.functions.receivers(
            Web3.to_checksum_address(receiver), Web3.to_checksum_address(self.token)
        ).call()
        return int(claimed), int(settled)

    # -- deposits ---------------------------------------------------------------------

    def _requirements(self, config: ChannelConfig, amount: int) -> PaymentRequirements:
        return PaymentRequirements(
            scheme="batch-settlement",
            network=self.network,
            asset=self.token,
            amount=str(amount),
            pay_to=config.receiver,
            max_timeout_seconds=SIGNATURE_LIFETIME,
            extra={
                "name": self.token_name,
                "version": self.token_version,
                "receiverAuthorizer": config.receiver_authorizer,
                "withdrawDelay": config.withdraw_delay,
            },
        )

    def eip3009_deposit_call(
        self, config: ChannelConfig, payer: LocalAccount, amount: int
    ) -> ContractFunction:
        """``deposit`` through the EIP-3009 collector, authorized by the SDK client."""
        payload = create_batch_settlement_eip3009_deposit_payload(
            EthAccountSigner(payer), self._requirements(config, amount), config, amount, 0
        )
        return self._deposit_call(
            config,
            amount,
            ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
            build_eip3009_deposit_collector_data(payload),
        )

    def permit2_deposit_call(
        self, config: ChannelConfig, payer: LocalAccount, amount: int
    ) -> ContractFunction:
        """``deposit`` through the Permit2 collector, authorized by the SDK client."""
        payload = create_batch_settlement_permit2_deposit_payload(
            EthAccountSigner(payer), self._requirements(config, amount), config, amount, 0
        )
        return self._deposit_call(
            config,
            amount,
            PERMIT2_DEPOSIT_COLLECTOR_ADDRESS,
            build_permit2_deposit_collector_data(payload),
        )

    def _deposit_call(
        self, config: ChannelConfig, amount: int, collector: str, data: bytes
    ) -> ContractFunction:
        return self.settlement.functions.deposit(
            to_contract_channel_config(config),
            amount,
            Web3.to_checksum_address(collector),
            data,
        )

    # -- claims, refunds, withdrawals ---------------------------------------------------

    def voucher_claim(
        self,
        config: ChannelConfig,
        voucher_signer: LocalAccount,
        max_claimable: int,
        total_claimed: int,
    ) -> VoucherClaim:
        """A claim row: the payer's voucher for ``max_claimable``, claiming ``total_claimed``."""
        voucher = sign_voucher(
            EthAccountSigner(voucher_signer), self.channel_id(config), max_claimable, self.network
        )
        return VoucherClaim(
            channel=config,
            max_claimable_amount=str(max_claimable),
            signature=voucher.signature,
            total_claimed=str(total_claimed),
        )

    def claim_call(self, claims: Sequence[VoucherClaim]) -> ContractFunction:
        """``claim``: only the receiver or receiver authorizer of each row may send it."""
        return self.settlement.functions.claim(build_voucher_claim_args(list(claims)))

    def claim_with_signature_call(
        self, claims: Sequence[VoucherClaim], authorizer: LocalAccount
    ) -> ContractFunction:
        """``claimWithSignature``, the batch signed by ``authorizer`` with the SDK's helper."""
        signature = sign_claim_batch(LocalAuthorizerSigner(authorizer), list(claims), self.network)
        return self.settlement.functions.claimWithSignature(
            build_voucher_claim_args(list(claims)), _hex_bytes(signature)
        )

    def settle_call(self, receiver: str) -> ContractFunction:
        return self.settlement.functions.settle(
            Web3.to_checksum_address(receiver), Web3.to_checksum_address(self.token)
        )

    def refund_call(self, config: ChannelConfig, amount: int) -> ContractFunction:
        return self.settlement.functions.refund(to_contract_channel_config(config), amount)

    def refund_with_signature_call(
        self, config: ChannelConfig, amount: int, nonce: int, authorizer: LocalAccount
    ) -> ContractFunction:
        """``refundWithSignature``, the refund signed by ``authorizer`` with the SDK's helper."""
        signature = sign_refund(
            LocalAuthorizerSigner(authorizer), self.channel_id(config), amount, nonce, self.network
        )
        return self.settlement.functions.refundWithSignature(
            to_contract_channel_config(config), amount, nonce, _hex_bytes(signature)
        )

    def initiate_withdraw_call(self, config: ChannelConfig, amount: int) -> ContractFunction:
        return self.settlement.functions.initiateWithdraw(
            to_contract_channel_config(config), amount
        )

    def finalize_withdraw_call(self, config: ChannelConfig) -> ContractFunction:
        return self.settlement.functions.finalizeWithdraw(to_contract_channel_config(config))

    def multicall_call(self, calls: Sequence[ContractFunction]) -> ContractFunction:
        """``multicall`` of ``calls`` (all or nothing), as the SDK's cooperative refund
        batches a claim and a refund."""
        encoded = [_hex_bytes(self.settlement.encode_abi(c.fn_name, args=c.args)) for c in calls]
        return self.settlement.functions.multicall(encoded)

    # -- sending ----------------------------------------------------------------------

    def send(self, call: ContractFunction, sender: str) -> TxReceipt:
        """Send ``call`` from the unlocked dev account ``sender``; its receipt, or raise."""
        tx_hash = call.transact({"from": Web3.to_checksum_address(sender)})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
        if receipt["status"] != 1:
            raise DevStackError(f"transaction {tx_hash.hex()} reverted")
        return receipt


def _hex_bytes(value: str) -> bytes:
    return bytes.fromhex(value.removeprefix("0x"))
