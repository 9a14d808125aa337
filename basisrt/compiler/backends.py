"""Which step kernels a plan on a device uses."""
from __future__ import annotations

import os

import torch


def resolve_backend(backend: str, device: torch.device) -> str:
    """Which step kernels a plan on `device` uses; clear errors for what cannot work."""
    if backend == "auto":
        backend = "triton" if device.type == "cuda" else "cpu"
    if backend not in ("cpu", "triton"):
        raise ValueError(f"backend must be 'auto', 'cpu' or 'triton', got {backend!r}")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"the CPU backend needs a CPU model and input, got {device}")
    if backend == "triton":
        if device.type not in ("cuda", "cpu"):
            raise ValueError(f"the Triton backend runs on CUDA devices, got {device}")
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("backend='triton' on CPU tensors runs only under TRITON_INTERPRET=1 (for testing)")
        from .gpu_steps import _kernel_module
        _kernel_module()  # a clear RuntimeError now if triton is missing, not deep in a step
    return backend
