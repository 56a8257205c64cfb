"""Framework-specific conveniences; the middleware itself is plain ASGI."""
