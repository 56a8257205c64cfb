"""The Litestar example: ``uvicorn examples.litestar_app.app:app``."""
