"""The FastAPI example: ``uvicorn examples.fastapi_app.app:app``."""
