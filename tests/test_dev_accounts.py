from eth_account import Account

from x402_meter.devstack.accounts import ANVIL_DEV_PRIVATE_KEYS, DEV_MNEMONIC, PAYERS, SELLER


def test_dev_keys_are_anvils_well_known_keys_derived_from_its_mnemonic() -> None:
    Account.enable_unaudited_hdwallet_features()
    for index, key in enumerate(ANVIL_DEV_PRIVATE_KEYS):
        derived = Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
        assert derived.key.hex() == key.removeprefix("0x")


def test_roles_use_distinct_accounts() -> None:
    addresses = [SELLER.address, *(payer.address for payer in PAYERS)]
    assert len(set(addresses)) == len(addresses)
