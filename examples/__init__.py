"""Runnable apps that charge per token with x402-meter: FastAPI and Litestar.

Run them from the repository root, e.g. ``uvicorn examples.fastapi_app.app:app``; each
example's README.md says which environment variables configure it.
"""
