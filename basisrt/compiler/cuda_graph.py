"""CUDA-graph capture of a fixed-shape plan: one `torch.cuda.CUDAGraph` per input shape.

A plan of many small steps spends much of its batch-1 time launching kernels; a CUDA graph
replays every launch of the plan with one call. Capture follows PyTorch's recipe: warm-up runs
on a side stream first (they also finish Triton's autotuning for the shape, so no benchmarking
happens inside the capture and the captured launches use the tuned config), then capture into
a graph whose input is a static buffer. A call copies its input into that buffer, replays, and
returns a clone of the static output, so callers never alias memory the next replay overwrites.

The static buffers are shared state, so calls are serialised by a lock and run on the runner's
own stream (the caller's stream waits for it): two threads can never interleave a copy into the
input buffer with another's replay. Memory grows with the number of distinct input shapes (one
graph and its private pool each), not with the number of calls.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

WARMUP_RUNS = 3  # PyTorch's recipe uses a few; the first also autotunes and JIT-compiles Triton kernels


def require_cuda_device(device: torch.device) -> None:
    """ValueError unless `device` is a CUDA device: CUDA graphs capture GPU work only."""
    if device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a plan on a CUDA device, but this plan runs on {device}: "
                         "move the model and example input to CUDA, or compile with cuda_graph=False")


def _map_tensors(out: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """`fn` applied to every tensor of a plan output (a tensor, or tuples / lists / dicts of them)."""
    if isinstance(out, Tensor):
        return fn(out)
    if isinstance(out, (tuple, list)):
        return type(out)(_map_tensors(o, fn) for o in out)
    if isinstance(out, dict):
        return {k: _map_tensors(v, fn) for k, v in out.items()}
    return out


@dataclass
class _Captured:
    graph: "torch.cuda.CUDAGraph"
    static_input: Tensor
    static_output: Any


class CUDAGraphRunner:
    """Runs `module(x)` through a CUDA graph captured on the first call with each input shape."""

    def __init__(self, module: Callable[[Tensor], Any], device: torch.device) -> None:
        require_cuda_device(device)
        self.module = module
        self.device = device
        self._graphs: dict[tuple[int, ...], _Captured] = {}
        self._lock = threading.Lock()
        self._stream: torch.cuda.Stream | None = None  # created on first use, on the plan's device

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """Input shapes captured so far."""
        return list(self._graphs)

    def __call__(self, x: Tensor) -> Any:
        if x.device != self.device:
            raise ValueError(f"this plan's CUDA graphs run on {self.device}; the input is on {x.device}")
        with self._lock, torch.inference_mode():
            if self._stream is None:
                self._stream = torch.cuda.Stream(self.device)
            caller = torch.cuda.current_stream(self.device)
            self._stream.wait_stream(caller)  # x is ready before we read it
            with torch.cuda.stream(self._stream):
                captured = self._graphs.get(tuple(x.shape))
                if captured is None:
                    captured = self._graphs[tuple(x.shape)] = self._capture(x)
                captured.static_input.copy_(x)
                captured.graph.replay()
                y = _map_tensors(captured.static_output, lambda t: t.clone(memory_format=torch.contiguous_format))
            caller.wait_stream(self._stream)
            # y was allocated on our stream but is used on the caller's: keep the allocator from
            # handing its memory out again before the caller's stream is done with it
            _map_tensors(y, lambda t: t.record_stream(caller))
        return y

    def _capture(self, x: Tensor) -> _Captured:
        """Warm up and capture on the current (the runner's) stream; x's shape becomes fixed."""
        static_input = x.clone()
        for _ in range(WARMUP_RUNS):
            self.module(static_input)
        torch.cuda.current_stream(self.device).synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: CUDA calls other threads make meanwhile (e.g. other models being served)
            # do not invalidate this capture
            with torch.cuda.graph(graph, stream=self._stream, capture_error_mode="thread_local"):
                static_output = self.module(static_input)
        except Exception as e:  # what fails here is an op of the plan that cannot be captured
            raise RuntimeError(f"could not capture the plan as a CUDA graph for input shape {tuple(x.shape)}: {e}. "
                               "Compile with cuda_graph=False to run it without capture") from e
        return _Captured(graph, static_input, static_output)


__all__ = ["CUDAGraphRunner", "require_cuda_device"]
