"""Scale-out on Ray Serve: the same app (basisrt.serve.app) as a Ray Serve deployment, one copy
per replica, with Ray's `@serve.batch` (counting rows, not requests) doing the batching and Ray's
proxy, queue limit (`max_queued_requests`) and health checks (a one-row inference) around it.

    basisrt serve --ray --replicas 2 resnet18=plan.basisrt      # local Ray, or RAY_ADDRESS's cluster

On a cluster: `ray start --head` on one machine, `ray start --address HEAD:6379` on the others,
the plan file at the same path on every machine (a shared file system), then `basisrt serve --ray`
(or `serve run basisrt.serve.ray:app_builder ...`) on the head."""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from ray import serve

from .app import Metrics, ServeConfig, _Model, create_app, run_plan, run_rows
from .batcher import DeadlineExceeded, ModelFailed

_REPLICA: dict[str, _Model] = {}  # this replica's loaded models, for the health check


class RayRunner:
    """Runs a model's requests through a `@serve.batch` function (rows counted by batch_size_fn)."""

    def __init__(self, m: _Model, config: ServeConfig, metrics: Metrics) -> None:
        self.max_batch = config.max_batch_size
        self.depth = 0
        self.full = False  # Ray's proxy keeps the queue (max_queued_requests) and answers 503 itself
        executor = ThreadPoolExecutor(1, thread_name_prefix="basisrt-model")
        self._executor = executor

        @serve.batch(max_batch_size=config.max_batch_size, batch_wait_timeout_s=config.max_delay_ms / 1000,
                     batch_size_fn=lambda parts: sum(p.shape[0] for p in parts))
        async def batched(parts: list[np.ndarray]) -> list[np.ndarray]:
            x = np.concatenate(parts, dtype=np.float32)  # a copy: a binary request's rows are read-only
            start = time.monotonic()
            y = await asyncio.get_running_loop().run_in_executor(executor, run_rows, m.plan, x)
            metrics.batches.labels(m.name).inc()
            metrics.batch_size.labels(m.name).observe(x.shape[0])
            metrics.compute_s.labels(m.name).observe(time.monotonic() - start)
            metrics.rows.labels(m.name).inc(x.shape[0])
            return np.split(y, np.cumsum([len(p) for p in parts[:-1]]))
        self._batched = batched
        _REPLICA[m.name] = m

    def submit(self, x: np.ndarray, deadline: float) -> asyncio.Future:
        return asyncio.ensure_future(self._infer(x, deadline))

    async def _infer(self, x: np.ndarray, deadline: float) -> np.ndarray:
        if time.monotonic() > deadline:
            raise DeadlineExceeded("the request did not start before its deadline")
        self.depth += 1
        try:
            step = self.max_batch
            outs = await asyncio.gather(*(self._batched(x[i:i + step]) for i in range(0, len(x), step)))
        except Exception as e:  # noqa: BLE001 - this batch failed; the replica goes on
            raise ModelFailed(f"{type(e).__name__}: {e}") from e
        finally:
            self.depth -= 1
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    async def drain(self, timeout_s: float) -> bool:
        return True  # Ray's proxy drains replicas

    async def close(self) -> None:
        self._executor.shutdown(wait=True)


def deployment(config: ServeConfig, replicas: int = 1) -> serve.Application:
    """The Ray Serve application serving `config.models` on `replicas` replicas."""

    @serve.deployment(num_replicas=replicas, max_queued_requests=config.max_queue, health_check_period_s=5,
                      max_ongoing_requests=max(config.max_batch_size * 2, 8))
    @serve.ingress(lambda: create_app(config, runner=RayRunner))
    class BasisrtServe:
        def check_health(self) -> None:
            """A one-row inference per loaded model: a replica whose plans cannot run is replaced."""
            for m in _REPLICA.values():
                y = run_plan(m.plan, torch.rand(1, *m.input_shape))
                if not torch.isfinite(y).all():
                    raise RuntimeError(f"model {m.name}: the health check's output is not finite")

    return BasisrtServe.bind()


def app_builder(args: dict) -> serve.Application:
    """For `serve run basisrt.serve.ray:app_builder models=name=path,... replicas=2`."""
    from .app import model_names
    models = model_names([m for m in str(args.get("models", "")).split(",") if m])
    types = dict(max_batch_size=int, max_delay_ms=float, max_queue=int, timeout_ms=float, max_body_mb=float,
                 threads=int, grace_s=float, precision=str)
    kwargs = {k: kind(args[k]) for k, kind in types.items() if k in args}
    return deployment(ServeConfig(models, **kwargs), int(args.get("replicas", 1)))


def run(config: ServeConfig, host: str, port: int, replicas: int) -> int:
    """`basisrt serve --ray`: start (or join) Ray, deploy, serve until SIGTERM / SIGINT, then delete
    the app (its replicas finish what they hold) and leave Ray."""
    import signal
    import threading

    import ray
    ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which installs handlers of its own
        signal.signal(sig, lambda signum, frame: stop.set())
    serve.start(http_options={"host": host, "port": port})
    serve.run(deployment(config, replicas), name="basisrt", route_prefix="/")
    print(f"basisrt serve --ray: {', '.join(config.models)} on http://{host}:{port} "
          f"({replicas} replica{'s' if replicas > 1 else ''})", flush=True)
    while not stop.wait(0.5):
        pass
    serve.delete("basisrt")
    ray.shutdown()  # a local Ray started by ray.init ends with the driver; a cluster keeps running
    return 0
