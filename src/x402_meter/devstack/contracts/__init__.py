"""Vyper sources and their committed build artifacts (``<Name>.json``) for the dev stack."""
