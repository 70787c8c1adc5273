"""The REST API: Litestar on uvicorn, msgspec models, problem+json errors."""
