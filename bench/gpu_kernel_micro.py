"""Per-layer GPU timings of the fused Triton basis conv against cuDNN, on the layers of a real plan.

For each model and level: prune as `basisrt bench` does, compile on CUDA, record the input of every
Triton step during one call, then time each step alone (CUDA events, median of
`triton.testing.do_bench`) against the same pair as two cuDNN convs and against the dense fold as
one cuDNN conv. It runs once in full fp32 ("ieee", cuDNN without TF32) and once on tensor cores
("tf32" for both), and records which tile config the autotuner picked. Needs a CUDA GPU:
`python bench/gpu_kernel_micro.py --out DIR` (bench/gpu_check.sh runs it).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


def _pruned(model_name: str, level: str, seed: int = 0):
    from torch import nn

    from basisrt import decompose
    from basisrt import models as zoo
    from basisrt.bench.runner import make_pruned
    torch.manual_seed(seed)
    dense = zoo.create(model_name).eval()
    first = next(n for n, m in dense.named_modules() if isinstance(m, nn.Conv2d))
    decomposed = decompose(dense, exclude=[first]).model.eval()
    return make_pruned(dense, decomposed, level, zoo.input_shape(model_name), seed)[0], zoo.input_shape(model_name)


def _step_inputs(compiled, x):
    """{step name: (module, its positional args)} for every Triton step, from one call."""
    from basisrt.compiler.gpu_steps import GPUFusedConv2d
    seen = {}
    hooks = []
    for name, mod in compiled.module.named_modules():
        if type(mod) is GPUFusedConv2d:  # the linear head is left out: a few µs
            hooks.append(mod.register_forward_pre_hook(
                lambda m, args, name=name: seen.setdefault(name, (m, tuple(a.clone() if torch.is_tensor(a) else a
                                                                             for a in args)))))
    compiled(x)
    for h in hooks:
        h.remove()
    return seen


def _time(fn) -> float:
    import triton
    return triton.testing.do_bench(fn, warmup=5, rep=25, return_mode="median")


def _layer(mod, args, tf32: bool) -> dict:
    from basisrt.kernels import fused_basis_conv as fk
    x = args[0]
    res = args[1] if len(args) > 1 else None
    B = mod.B.permute(3, 2, 0, 1).contiguous()  # (r | C_out, C_in, kh, kw)
    conv = dict(stride=mod.stride, padding=mod.padding, dilation=mod.dilation)
    act = {None: lambda t: t, "relu": F.relu, "relu6": lambda t: F.hardtanh(t, 0, 6)}[mod.activation]
    x_nchw = x.contiguous()  # what eager PyTorch is given
    if mod.A is not None:
        A = mod.A.t().contiguous()[:, :, None, None]
        two = lambda: act(F.conv2d(F.conv2d(x_nchw, B, None, **conv), A, mod.bias)  # noqa: E731
                          + (0 if res is None else res))
        W = torch.einsum("or,rchw->ochw", A[:, :, 0, 0], B)
    else:
        two = None
        W = B
    one = lambda: act(F.conv2d(x_nchw, W, mod.bias, **conv) + (0 if res is None else res))  # noqa: E731
    prev = mod.precision
    mod.precision = "tf32" if tf32 else "ieee"
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        ours = lambda: mod(x, res)  # noqa: E731
        ours()
        torch.cuda.synchronize()
        row = dict(shape=list(x.shape), c_out=mod.out_channels, rank=mod.rank, kernel=list(mod.kernel),
                   stride=list(mod.stride), residual=res is not None,
                   fused_ms=_time(ours), cudnn_dense_ms=_time(one), cudnn_two_ms=_time(two) if two else None)
        tuner = fk._autotuned
        row["config"] = str(getattr(tuner, "best_config", None)) if tuner is not None else None
    finally:
        mod.precision = prev
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["vgg16", "resnet18"])
    p.add_argument("--levels", nargs="+", default=["r25", "r10"])
    p.add_argument("--batches", nargs="+", type=int, default=[32, 1])
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    import basisrt
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model_name in a.models:
        for level in a.levels:
            pruned, shape = _pruned(model_name, level)
            pruned = pruned.cuda()
            for batch in a.batches:
                x = torch.randn(batch, *shape, device="cuda")
                compiled = basisrt.compile(pruned, x, autotune=False)
                for tf32 in (False, True):
                    for name, (mod, args) in _step_inputs(compiled, x).items():
                        row = dict(model=model_name, level=level, batch=batch, tf32=tf32, step=name,
                                   **_layer(mod, args, tf32))
                        rows.append(row)
                        us = {k: row[k] * 1e3 if row[k] else float("nan")
                              for k in ("fused_ms", "cudnn_two_ms", "cudnn_dense_ms")}
                        print(f"{model_name:8s} {level} b{batch:<3d} {'tf32' if tf32 else 'fp32'} {name:24s} "
                              f"{tuple(row['shape'])}->{row['c_out']} r{row['rank']:<4d} "
                              f"fused {us['fused_ms']:7.1f} us  two {us['cudnn_two_ms']:7.1f}  "
                              f"dense {us['cudnn_dense_ms']:7.1f}  {row['config']}", flush=True)
                (a.out / "gpu_kernel_micro.json").write_text(json.dumps(rows, indent=1))
    print("\nsum over layers (us): model level batch precision | fused | cuDNN two-conv | cuDNN dense")
    keys = sorted({(r["model"], r["level"], r["batch"], r["tf32"]) for r in rows})
    for k in keys:
        sel = [r for r in rows if (r["model"], r["level"], r["batch"], r["tf32"]) == k]
        f = sum(r["fused_ms"] for r in sel) * 1e3
        t = sum(r["cudnn_two_ms"] or r["cudnn_dense_ms"] for r in sel) * 1e3
        d = sum(r["cudnn_dense_ms"] for r in sel) * 1e3
        print(f"{k[0]:8s} {k[1]} b{k[2]:<3d} {'tf32' if k[3] else 'fp32'} | {f:8.1f} | {t:8.1f} ({t / f:4.2f}x) "
              f"| {d:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
