"""Serving saved plans: `basisrt serve` (an Open Inference Protocol v2 server with dynamic
batching and Prometheus metrics, Starlette under uvicorn) and its Python client. Needs the
`serve` extra (pip install 'basisrt[serve]')."""
from .client import Client, InferenceError

__all__ = ["Client", "InferenceError", "ServeConfig", "create_app"]


def __getattr__(name: str):  # the app needs starlette / prometheus_client, the client does not
    if name in ("ServeConfig", "create_app"):
        from . import app
        return getattr(app, name)
    raise AttributeError(name)
