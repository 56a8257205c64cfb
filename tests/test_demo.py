import subprocess
import sys


def test_demo_pays_streams_and_settles_on_the_local_stack() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "x402_meter", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout
    assert "402 Payment Required: 'upto' up to 0.008192 USDC" in lines
    assert "only the tokens actually used are charged." in lines  # the streamed answer
    assert "charged 0.000124 USDC for 62 tokens (8 in, 54 out, reported)" in lines
    assert "settled on chain: transaction 0x" in lines
    assert "seller 0.000000 USDC -> 0.000124 USDC" in lines
