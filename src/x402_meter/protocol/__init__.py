"""The x402 wire protocol as x402-meter speaks it: offers, headers, and local payment checks."""
