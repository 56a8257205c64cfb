import re
import subprocess
import sys


def test_demo_holds_a_paid_streamed_conversation_and_settles_each_answer() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "x402_meter", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout
    each = "USDC (the prompt and 4096 tokens at 0.000002 USDC)"  # a 9- and an 81-token prompt
    assert f"402 Payment Required: 'upto' up to 0.008210 {each}" in lines
    assert f"402 Payment Required: 'upto' up to 0.008354 {each}" in lines
    assert lines.count("payer 0x90F7...b906 signs a Permit2 authorization (EIP-712)") == 2
    assert "only the tokens actually used are charged." in lines  # the first streamed answer
    assert "charged 0.000124 USDC for 62 tokens (8 in, 54 out, reported)" in lines
    assert "charged 0.000280 USDC for 140 tokens (92 in, 48 out, reported)" in lines
    assert len(set(re.findall(r"settled on chain: transaction (0x[0-9a-f]{64})", lines))) == 2
    assert "payer  0x90F7...b906 10000.000000 USDC -> 9999.999596 USDC" in lines
    assert "seller 0x3C44...93BC 0.000000 USDC -> 0.000404 USDC" in lines
    assert "the seller received exactly the sum of the receipts: 0.000404 USDC" in lines
    assert lines.rstrip().endswith("demo complete")
