import subprocess
import sys


def test_demo_pays_and_settles_on_the_local_stack() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "x402_meter", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "402 Payment Required" in result.stdout
    assert "settled on chain" in result.stdout
    assert "seller 0.000000 USDC -> 0.000346 USDC" in result.stdout
