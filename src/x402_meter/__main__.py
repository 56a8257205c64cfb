"""``python -m x402_meter`` is the ``x402-meter`` command."""

from x402_meter.cli import main

raise SystemExit(main())
