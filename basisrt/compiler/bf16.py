"""`compile(..., precision="bf16")` on the CPU: the convs (and linears) with one group run with
bf16 weights and fp32 accumulation on AMX tiles, or on AVX512-BF16 vectors where the CPU has no
AMX (csrc/amx_conv.h). The maps between two bf16 convs are bf16 in a native program
(Program.keep_bf16); the other ops (depthwise and grouped convs, pools, norms, element-wise ops)
and the maps they touch stay fp32.
Weights are rounded to bf16 when the plan is built or loaded: the plan file keeps fp32 weights,
so one file runs at either precision."""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import torch
from torch import fx

from .. import _C
from .cpu_steps import FusedConv2d, _round_up

PRECISIONS = ("fp32", "bf16")
AMX_K = 32  # bf16 elements per tile row (csrc/amx_conv.h kAmxK): each tap's channels are padded to it


def check_precision(precision: str, device: torch.device, dtype: torch.dtype) -> None:
    """A ValueError naming the problem when `precision` cannot run on `device` here."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16":
        if device.type != "cpu":
            raise ValueError(f"precision='bf16' runs on the CPU (AMX tiles or AVX512-BF16); plans for {device} "
                             "are fp32")
        if dtype != torch.float32:
            raise ValueError(f"precision='bf16' takes float32 inputs (converted inside), got {dtype}")
        if _C.bf16_path() == "none":
            raise ValueError("precision='bf16' needs a CPU with AVX512-BF16 (Intel Cooper Lake or Sapphire Rapids, "
                             "AMD Zen 4 or newer; AMX tiles where it has them); this machine has neither. Use "
                             "precision='fp32' (for a saved plan: basisrt.load(path, precision='fp32'))")


def takes_bf16(m: torch.nn.Module) -> bool:
    """Whether step `m` runs on the bf16 conv: a FusedConv2d (or FusedLinear) with one group."""
    return isinstance(m, FusedConv2d) and m.groups == 1


def compact_k(in_channels: int) -> bool:
    """Whether the bf16 conv packs K compactly, every tap's channels back to back and padded to
    AMX_K once (fewer than 16 channels: an RGB stem's 3×3×3 = 27 → 32), rather than each tap's
    channels padded to AMX_K; csrc/amx_conv.cpp makes the same choice."""
    return in_channels < AMX_K // 2


def apply_precision(gm: fx.GraphModule, precision: str) -> None:
    """Sets the `_bf16` weights (not saved with the plan) of every bf16-capable step that was not
    measured faster in fp32 nor kept fp32 by the error bound (`prefer_fp32`, saved:
    autotune.faster_in_fp32, entry._bound_bf16_error); None at fp32."""
    for m in gm.modules():
        if isinstance(m, FusedConv2d):
            bf16 = precision == "bf16" and takes_bf16(m) and not getattr(m, "prefer_fp32", False)
            m._bf16 = _packed_once(m) if bf16 else None


def _packed_once(m: FusedConv2d) -> Bf16Weights:
    """packed_bf16(m), kept on the step for the next plan built from it (compile builds one per
    candidate while it times precisions and bounds the error: packing VGG16 took 47 ms a plan).
    Remade when what it depends on changes: B (in place or replaced), the Winograd choice."""
    key = (m.B.data_ptr(), m.B._version, getattr(m, "bf16_direct", False), os.environ.get("BASISRT_NO_WINOGRAD"))
    cached = getattr(m, "_bf16_packed", None)
    if cached is None or cached[0] != key:
        cached = m._bf16_packed = (key, packed_bf16(m))
    return cached[1]


class Bf16Weights(NamedTuple):
    """A step's weights as the bf16 conv reads them (csrc/amx_conv.h)."""
    B: np.ndarray  # the basis (or dense) conv's K × N, packed by pack_bf16_b (or _quad: bf16_quad_path)
    A: np.ndarray | None  # a pair's [A; A], packed
    bias: np.ndarray  # fp32 (zeros for none)
    winograd: np.ndarray | None  # the 16 U[ξ] where the step runs by Winograd in bf16, packed


def packed_bf16(m: FusedConv2d) -> Bf16Weights:
    """The weights of step `m` as the bf16 conv reads them: B, the K × N matrix (K tap by tap,
    each tap's channels zero-padded to AMX_K, or compact: `compact_k`) rounded to bf16 and packed
    by _C.pack_bf16_b from the step's fp32 packing; A; the fp32 bias; and the Winograd weights
    where the CPU runs them in bf16 (`_C.winograd_bf16_path`) and the plan's error bound left them
    (`bf16_direct`: entry.py)."""
    if m.rank == 0:  # B: (1, K, C_out padded)
        w = m.B[0, :, :m.out_channels]
    elif _C.lowrank_dot_path(m.in_channels, m.rank):  # B: (1, rank, K)
        w = m.B[0].t()
    else:  # B: (1, K, rank padded)
        w = m.B[0, :, :m.rank]
    taps = m.kernel[0] * m.kernel[1]
    w = w.reshape(taps, m.in_channels, -1)  # K runs tap by tap
    if not compact_k(m.in_channels):  # each tap's channels padded to a tile row
        w = torch.nn.functional.pad(w, (0, 0, 0, _round_up(m.in_channels, AMX_K) - m.in_channels))
    pack = _C.pack_bf16_quad if _C.bf16_quad_path(m.rank) else _C.pack_bf16_b  # quads: a rank of 1-8 on vectors
    b = pack(w.reshape(-1, w.shape[2]).contiguous().numpy())
    a = None
    if m.rank:  # [A; A]: with bf16_hilo both parts of the basis output (hi + lo) meet A; else A alone
        a1 = m.A[0, :m.rank, :m.out_channels]
        a = _C.pack_bf16_vnni(torch.cat([a1, a1]).contiguous().numpy())
    bias = m.bias.numpy() if m.bias is not None else np.zeros(m.out_channels, dtype=np.float32)
    return Bf16Weights(b, a, bias, _winograd_bf16(m))


def _winograd_bf16(m: FusedConv2d) -> np.ndarray | None:
    """The Winograd weights of `m` (its fp32 ones, 16 × (C × n) or 16 × (rank × C), made again
    where the fp32 plan measured the direct path faster: in bf16 they are 8/9 of the direct fp32
    conv's bytes) as 16 C × n matrices, packed for the bf16 GEMMs (`_C.pack_winograd_bf16`)."""
    if (getattr(m, "bf16_direct", False) or os.environ.get("BASISRT_NO_WINOGRAD") == "1"
            or not _C.winograd_bf16_path(*m.kernel, *m.stride, *m.dilation, m.groups, m.in_channels, m.rank)):
        return None
    u = getattr(m, "winograd", None)
    if u is None:
        u = torch.from_numpy(_C.winograd_weights(m.B.numpy(), m.in_channels, m.rank, m.out_channels))
    if u.shape[1] != m.in_channels:  # (rank × C): the fp32 channel-dot layout
        u = u.transpose(1, 2)
    return _C.pack_winograd_bf16(u[:, :, :m.rank or m.out_channels].contiguous().numpy(), m.rank)
