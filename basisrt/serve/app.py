"""`basisrt serve`'s ASGI app: saved plans behind the Open Inference Protocol v2, with dynamic
batching (basisrt.serve.batcher), Prometheus metrics and a draining state for graceful shutdown.
Inference requests take a plain ASGI path; the other endpoints are a Starlette app. Run it under
uvicorn (basisrt.serve.server)."""
from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .batcher import Batcher, BatchStats, DeadlineExceeded, ModelFailed, QueueFull
from .protocol import (
    HEADER_LENGTH,
    OUTPUT_NAME,
    Output,
    ProtocolError,
    encode_infer,
    model_metadata,
    parse_infer,
)

RETRY_AFTER_S = "1"
DRAIN_BYTES = 16 * 1024 * 1024  # how far past --max-body-mb a refused body is still read (see read_body)
# Parsing or encoding at most this much JSON text (or 64x as many raw binary bytes) runs on the event
# loop: a 12 KB binary body parses in ~15 us, where a hop to a worker thread and back costs more
# than that and, on 2 cores, takes CPU from the model. Larger ones go to a thread (json holds the
# GIL, but the loop still gets its turns every switch interval).
INLINE_JSON_BYTES = 16 * 1024


@dataclass
class ServeConfig:
    """Settings of `basisrt serve` (the command's flags)."""

    models: dict[str, str]  # model name -> plan path
    max_batch_size: int = 32
    max_delay_ms: float = 2.0
    max_queue: int = 256
    timeout_ms: float = 10000.0
    max_body_mb: float = 64.0
    threads: int | None = None
    grace_s: float = 20.0
    keep_alive_s: float = 5.0  # an idle client connection is closed after this (uvicorn's default)
    precision: str | None = None  # "fp32" / "bf16" overrides what each plan was saved with


def model_names(paths: list[str]) -> dict[str, str]:
    """`NAME=PATH` or `PATH` (name = the file's stem) -> {name: path}; a ValueError for a repeated name."""
    out: dict[str, str] = {}
    for item in paths:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).stem, item
        if not name or name in out:
            raise ValueError(f"model name {name!r} is empty or given twice")
        out[name] = path
    return out


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("basisrt_requests", "Inference requests by final HTTP status", ["model", "status"],
                                registry=r)
        self.failures = Counter("basisrt_failures", "Failed inference requests by reason", ["model", "reason"],
                                registry=r)
        self.rows = Counter("basisrt_rows", "Rows (images) inferred", ["model"], registry=r)
        self.batches = Counter("basisrt_batches", "Batches executed", ["model"], registry=r)
        buckets = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
        # by status: under overload the fast 503s must not hide what accepted requests wait
        self.request_s = Histogram("basisrt_request_seconds", "Request time in the server by final HTTP status",
                                   ["model", "status"], buckets=buckets, registry=r)
        self.queue_s = Histogram("basisrt_queue_seconds", "Time from arrival to the start of its batch", ["model"],
                                 buckets=buckets, registry=r)
        self.compute_s = Histogram("basisrt_compute_seconds", "Time to run one batch", ["model"], buckets=buckets,
                                   registry=r)
        self.batch_size = Histogram("basisrt_batch_size", "Rows per executed batch", ["model"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.queue_depth = Gauge("basisrt_queue_depth", "Request parts waiting to run", ["model"], registry=r)
        self.in_flight = Gauge("basisrt_in_flight", "Inference requests being handled", registry=r)
        self._answered: dict[tuple[str, int], tuple] = {}

    def answered(self, model: str, status: int, seconds: float) -> None:
        """One inference request answered. The labelled children are looked up once per (model,
        status): `labels()` takes a lock and formats its labels, on every request otherwise."""
        children = self._answered.get((model, status))
        if children is None:
            children = self._answered[model, status] = (self.requests.labels(model, str(status)),
                                                        self.request_s.labels(model, str(status)))
        children[0].inc()
        children[1].observe(seconds)

    def batch(self, model: str, s: BatchStats) -> None:
        self.batches.labels(model).inc()
        self.batch_size.labels(model).observe(s.rows)
        self.compute_s.labels(model).observe(s.compute_s)
        queue_s = self.queue_s.labels(model)  # once per batch, not per request
        for q in s.queue_s:
            queue_s.observe(q)
        if not s.failed:
            self.rows.labels(model).inc(s.rows)


@dataclass
class _Model:
    name: str
    plan: object
    input_shape: tuple[int, ...]
    outputs: tuple[Output, ...] = ()
    output_names: tuple[str, ...] = ()
    batcher: Batcher | None = None
    ready: bool = False


@dataclass
class ServerState:
    config: ServeConfig
    metrics: Metrics = field(default_factory=Metrics)
    models: dict[str, _Model] = field(default_factory=dict)
    ready: bool = False
    draining: bool = False
    in_flight: int = 0  # inference requests being handled (until their response is built)

    async def drain(self) -> None:
        """Readiness off at once; wait (up to grace_s) until queued and running work is done."""
        self.draining = True
        deadline = time.monotonic() + self.config.grace_s
        for m in self.models.values():
            if m.batcher is not None:
                await m.batcher.drain(max(deadline - time.monotonic(), 0.0))
        while self.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # responses being encoded and sent


_Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]  # status, body, raw ASGI headers
HEADER_LENGTH_BYTES = HEADER_LENGTH.encode()


def _raw_headers(body: bytes, headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(b"content-length", str(len(body)).encode()),
            *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> _Answer:
    body = json.dumps({"error": message}).encode()
    return status, body, _raw_headers(body, {"content-type": "application/json", **(headers or {})})


def _unavailable(why: str) -> _Answer:
    return _error(503, why, {"Retry-After": RETRY_AFTER_S})


def _response(answer: _Answer) -> Response:
    """An answer of the inference path (status, body, raw headers) as a Starlette Response."""
    status, body, headers = answer
    response = Response(body, status_code=status)
    response.raw_headers = headers
    return response


def _load(name: str, path: str, precision: str | None = None) -> _Model:
    import basisrt
    plan = basisrt.load(path, precision=precision)
    if plan.dtype != torch.float32:
        raise ValueError(f"model {name}: the plan runs {plan.dtype}; the server takes FP32 inputs")
    return _Model(name, plan, tuple(plan.input_shape))


def run_plan(plan, x: torch.Tensor) -> torch.Tensor:
    """The plan on a batch of request rows (CPU tensors): moved to the plan's device (a CUDA plan
    runs on its GPU) and the output brought back to the CPU for the response. A plan of several
    outputs (a dict, a ModelOutput, a tuple) gives one (N, total) tensor: each row's outputs
    flattened and laid end to end, so rows batch and split as for one output (protocol._unpacked
    takes them apart)."""
    with torch.no_grad():
        y = plan(x.to(plan.device))
        if isinstance(y, torch.Tensor):
            return y.cpu()
        return torch.cat([t.reshape(t.shape[0], -1) for _, t in _named_outputs(y)], dim=1).cpu()


def _describe(y: object) -> str:
    return f"a tensor of shape {tuple(y.shape)}" if isinstance(y, torch.Tensor) else f"a {type(y).__name__}"


def _named_outputs(y: object) -> list[tuple[str, object]]:
    """A plan's outputs by the names the protocol gives them: a dict's keys, else output__i."""
    if isinstance(y, dict):
        return list(y.items())
    if isinstance(y, (tuple, list)):
        return [(f"output__{i}", t) for i, t in enumerate(y)]
    return [(OUTPUT_NAME, y)]


def run_rows(plan, x: np.ndarray) -> np.ndarray:
    """run_plan on numpy rows (how the runners call it: the event loop handles numpy only)."""
    return run_plan(plan, torch.from_numpy(x)).numpy()


def _warm_up(m: _Model) -> None:
    """One batch through the plan: its output shape for the metadata, and first-call costs paid."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, *m.input_shape), generator=g)
    with torch.no_grad():
        outputs = _named_outputs(m.plan(x.to(m.plan.device)))
    for name, y in outputs:
        if not isinstance(y, torch.Tensor) or y.dim() < 1 or y.shape[0] != 2:
            raise ValueError(f"model {m.name}: the plan's output {name!r} is {_describe(y)}; the server serves "
                             "plans whose outputs are tensors of one row per input row")
    m.outputs = tuple(Output(name, tuple(y.shape[1:])) for name, y in outputs)
    m.output_names = tuple(o.name for o in m.outputs)
    run_plan(m.plan, x)  # the serving path's first-call costs


def batcher_runner(m: "_Model", config: ServeConfig, metrics: Metrics) -> Batcher:
    """The default way a model's requests run: basisrt.serve.batcher's dynamic batching."""
    return Batcher(lambda x: run_rows(m.plan, x), config.max_batch_size, config.max_delay_ms / 1000,
                   config.max_queue, on_batch=lambda s: metrics.batch(m.name, s),
                   on_drop=lambda reason: metrics.failures.labels(m.name, reason).inc())


def create_app(config: ServeConfig, runner=batcher_runner) -> "ServeApp":
    """The ASGI app serving `config.models`. Models load and warm up in the app's startup; readiness
    is 200 once all of them have. `runner(model, config, metrics)` makes what runs a model's
    requests: an object with `submit(x, deadline)` (x: numpy rows; QueueFull now, or a future of the
    output rows, numpy),
    `depth`, `full`, `drain(timeout_s)` and `close()`
    (basisrt.serve.ray passes Ray Serve's batching)."""
    state = ServerState(config)
    metrics = state.metrics
    metrics.in_flight.set_function(lambda: state.in_flight)
    max_body = int(config.max_body_mb * 1024 * 1024)

    async def startup() -> None:
        if config.threads:
            torch.set_num_threads(config.threads)
        for name, path in config.models.items():
            m = await run_in_threadpool(_load, name, path, config.precision)
            await run_in_threadpool(_warm_up, m)
            m.batcher = runner(m, config, metrics)
            metrics.queue_depth.labels(name).set_function(lambda b=m.batcher: b.depth)
            m.ready = True
            state.models[name] = m
        # The loaded plans, torch and the libraries are long-lived: frozen, the cyclic GC stops
        # walking them on every full collection (which took ~20 % of the event loop under load).
        gc.collect()
        gc.freeze()
        state.ready = True

    async def shutdown() -> None:
        for m in state.models.values():
            if m.batcher is not None:
                await m.batcher.close()

    async def server_metadata(request: Request) -> Response:
        from .. import __version__
        return JSONResponse({"name": "basisrt", "version": __version__, "extensions": ["binary_tensor_data"]})

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        if state.draining:
            return _response(_unavailable("the server is shutting down"))
        if not state.ready:
            return _response(_unavailable("models are loading"))
        return JSONResponse({"ready": True})

    def missing(name: str) -> _Answer:
        if not state.ready and name in config.models:
            return _unavailable(f"model {name!r} is loading")
        return _error(404, f"unknown model {name!r}; served: {', '.join(sorted(config.models))}")

    def find(request: Request) -> _Model | Response:
        name = request.path_params["name"]
        m = state.models.get(name)
        return m if m is not None else _response(missing(name))

    async def metadata(request: Request) -> Response:
        m = find(request)
        if isinstance(m, Response):
            return m
        return JSONResponse(model_metadata(m.name, m.input_shape, m.outputs))

    async def model_ready(request: Request) -> Response:
        m = find(request)
        if isinstance(m, Response):
            return m
        if state.draining:
            return _response(_unavailable("the server is shutting down"))
        return JSONResponse({"name": m.name, "ready": m.ready})

    async def read_body(receive, declared: int) -> bytes:
        """The body, or a 413 past --max-body-mb. A refused body is still read and dropped up to
        DRAIN_BYTES past the limit before the answer: a client still sending when the answer and
        the close come gets a reset (EPIPE) instead of the 413. A larger one is refused at once."""
        chunks, size, more = [], 0, declared <= max_body + DRAIN_BYTES
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk, more = message.get("body", b""), message.get("more_body", False)
            size += len(chunk)
            if size > max_body + DRAIN_BYTES:
                break
            if size <= max_body:
                chunks.append(chunk)
        if max(declared, size) > max_body:
            raise ProtocolError(413, f"the body ({max(declared, size)} bytes or more) is over the limit "
                                     f"({max_body} bytes, --max-body-mb)")
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def infer(scope, receive, send, name: str) -> None:
        """POST /v2/models/{name}/infer, as a plain ASGI handler (see ServeApp)."""
        start = time.monotonic()
        status = 500
        state.in_flight += 1
        try:
            status, body, headers = await _infer(scope, receive, name, start)
        finally:
            state.in_flight -= 1
            if name in state.models:  # no label per unknown name a client makes up
                metrics.answered(name, status, time.monotonic() - start)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _infer(scope, receive, name: str, start: float) -> _Answer:
        if state.draining:
            return _unavailable("the server is shutting down")
        m = state.models.get(name)
        if m is None:
            return missing(name)
        if m.batcher.full:  # before reading and parsing the body: under overload a 503 must cost little
            metrics.failures.labels(name, "queue_full").inc()
            return _unavailable(f"the queue is full ({m.batcher.depth} requests queued, --max-queue "
                                f"{config.max_queue})")
        declared, head = 0, None
        for key, value in scope["headers"]:
            if key == b"content-length":
                declared = int(value) if value.isdigit() else 0
            elif key == HEADER_LENGTH_BYTES:
                head = value.decode("latin-1")
        try:
            body = await read_body(receive, declared)
            req = await _cheap_or_threaded(_parse_cost(body, head), parse_infer, body, head, m.input_shape,
                                           m.output_names)
        except ProtocolError as e:
            metrics.failures.labels(name, "bad_request" if e.status == 400 else "too_large").inc()
            return _error(e.status, e.message, e.headers)
        except ClientDisconnect:
            metrics.failures.labels(name, "disconnected").inc()
            return _error(499, "the client disconnected")
        timeout_s = config.timeout_ms / 1000
        if req.timeout_s is not None:
            timeout_s = min(timeout_s, req.timeout_s)
        try:
            work = m.batcher.submit(req.array, start + timeout_s)
        except QueueFull as e:
            metrics.failures.labels(name, "queue_full").inc()
            return _unavailable(f"the queue is full: {e}")
        # the client going away cancels its rows before they run
        gone = asyncio.ensure_future(_disconnected(receive))
        gone.add_done_callback(lambda g: g.cancelled() or work.cancel())
        try:
            out = await work
        except asyncio.CancelledError:
            if not gone.done() or gone.cancelled():
                raise  # this handler itself was cancelled
            metrics.failures.labels(name, "disconnected").inc()
            return _error(499, "the client disconnected")
        except DeadlineExceeded as e:
            return _error(504, f"{e} ({timeout_s * 1000:.0f} ms)")
        except ModelFailed as e:
            metrics.failures.labels(name, "model_error").inc()
            return _error(500, f"the model failed on this batch: {e}")
        finally:
            gone.cancel()
        cost = out.size * (4 if req.binary_output else 20)  # ~20 characters per JSON number
        body, headers = await _cheap_or_threaded(cost, encode_infer, name, req, out, m.outputs)
        return 200, body, _raw_headers(body, headers)

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/v2", server_metadata),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2/models/{name}", metadata),
        Route("/v2/models/{name}/ready", model_ready),
        Route("/v2/models/{name}/infer", _PathNameEndpoint(infer), methods=["POST"]),
        Route("/metrics", prometheus),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await startup()
        try:
            yield
        finally:
            await shutdown()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.basisrt = state
    return ServeApp(app, infer)


class ServeApp:
    """The server's ASGI app. `POST /v2/models/{name}/infer` goes straight to the inference handler:
    on that hot path Starlette's routing, middleware and Request / Response objects cost more per
    request than uvicorn itself. Everything else, lifespan included, goes to the Starlette app
    (which also routes inference requests under a root path, and answers 405 to other methods)."""

    def __init__(self, app: Starlette, infer) -> None:
        self.starlette, self._infer = app, infer
        self.state = app.state  # .basisrt: the ServerState

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            if path.startswith("/v2/models/") and path.endswith("/infer"):
                name = path[len("/v2/models/"):-len("/infer")]
                if name and "/" not in name:
                    return await self._infer(scope, receive, send, name)
        await self.starlette(scope, receive, send)


class _PathNameEndpoint:
    """An ASGI endpoint for a Starlette Route: `fn(scope, receive, send, name)`, name from the path."""

    def __init__(self, fn) -> None:
        self.fn = fn

    async def __call__(self, scope, receive, send) -> None:
        await self.fn(scope, receive, send, scope["path_params"]["name"])


def _parse_cost(body: bytes, header_length: str | None) -> int:
    """JSON-text-equivalent bytes of parsing `body` (its binary part counts 1/64: a copy)."""
    if header_length is not None and header_length.isdigit():
        n = min(int(header_length), len(body))
        return n + (len(body) - n) // 64
    return len(body)


async def _cheap_or_threaded(cost: int, fn, *args):
    """fn(*args) on the event loop when its cost (JSON bytes) is small, else on a worker thread."""
    if cost <= INLINE_JSON_BYTES:
        return fn(*args)
    return await run_in_threadpool(fn, *args)


async def _disconnected(receive) -> None:
    """Returns when the client closes the connection (the body has been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass
