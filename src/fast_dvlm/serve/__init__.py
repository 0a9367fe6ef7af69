"""An OpenAI-compatible HTTP server for one DiffusionVLM: `fast-dvlm serve`.

Importing this package costs nothing: FastAPI and uvicorn (the `serve` extra) are imported by the
modules that use them, so `fast-dvlm --help` works without them.
"""
