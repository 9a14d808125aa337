"""Run the app under uvicorn, with graceful shutdown: on SIGTERM (or SIGINT) readiness and new
requests get 503 at once, queued and running work finishes (up to --grace-s), then the server stops
and the process exits 0."""
from __future__ import annotations

import asyncio

import uvicorn

from .app import ServeConfig, create_app


class _DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first exit signal drains the app before uvicorn's own shutdown."""

    def __init__(self, config: uvicorn.Config, state) -> None:
        super().__init__(config)
        self.state = state
        self._draining = False

    def handle_exit(self, sig: int, frame) -> None:
        if self._draining:  # a second signal: stop now
            return super().handle_exit(sig, frame)
        self._draining = True
        self.state.draining = True  # readiness 503 from this instant
        asyncio.get_event_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        await self.state.drain()
        self.should_exit = True


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> int:
    """Serve until SIGTERM / SIGINT; returns the exit code (0)."""
    app = create_app(config)
    uv = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                        timeout_graceful_shutdown=max(int(config.grace_s), 1),
                        timeout_keep_alive=max(int(config.keep_alive_s), 1))
    server = _DrainingServer(uv, app.state.basisrt)
    server.run()
    return 0 if server.started else 1  # not started: a model failed to load (uvicorn logged why)
