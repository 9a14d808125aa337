"""Fused basis conv for the GPU backend: a basis conv and its 1×1 scaling conv in ONE Triton launch.

Math (DESIGN §1–2). For a basis pair with basis filters `B` (r, C_in, kh, kw) and scaling
matrix `A` (C_out, r), and a tile of BLOCK_P output pixels (NHWC, pixels flattened over
(n, oh, ow)):

    T      = im2col(x)_tile · Bᵀ          (BLOCK_P × r, fp32, registers; never written to memory)
    y_tile = T · Aᵀ + bias (+ residual)   then activation (None / relu / relu6), stored NHWC

`T` is built by an implicit GEMM: the im2col tile is gathered straight from `x` (zero padding by
masking) in chunks of BLOCK_K along K = kh·kw·C_in (tap order ky, kx, ci — NHWC order), and
multiplied into the fp32 accumulator. When r > BLOCK_R the kernel loops over chunks of r:
for each chunk it builds that slice of `T` and accumulates `T_chunk · A_chunkᵀ` into `y`. The
grid is (pixel tiles, C_out tiles of BLOCK_N); each C_out tile recomputes its `T` (autotuning
favours a BLOCK_N that covers C_out, so usually there is one C_out tile).

Dense conv (no scaling matrix, `A_packed=None`): the same kernel with `B` = the conv weight and
a single GEMM, y = im2col(x) · Wᵀ.

Linear / BasisLinear: a fused low-rank Linear is the same kernel with a 1×1 kernel over rows —
`x` (M, C_in) is viewed as an NHWC tensor (M, 1, 1, C_in) and `B_packed` as (1, 1, C_in, r);
`fused_basis_linear` does exactly that.

Precision: fp32 accumulation always. Inputs fp32 or fp16 (bf16 only on a real GPU: the
interpreter's bf16 `tl.dot` is wrong). For fp16/bf16 inputs `T` is rounded to the input dtype
before the second GEMM (as a GPU tensor-core kernel must; the accumulation stays fp32). The dot
precision for fp32 inputs is explicit: "ieee" (default; full fp32, what the interpreter always
computes) or "tf32" / "tf32x3" (GPU tensor cores; ~1e-3 relative error for "tf32").

Tuning: on a real GPU the launch is `triton.autotune`d over tile sizes, num_warps and
num_stages, keyed on the problem shape. Under `TRITON_INTERPRET=1` (or without CUDA) autotune's
benchmarking cannot run, so a fixed small config is used. A caller may also pin a config with
`config=` (e.g. before CUDA-graph capture, or to exercise specific tilings in tests).

Triton is imported lazily-guarded: this module imports without triton installed; the wrappers
then raise a clear RuntimeError.
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ..compiler.geometry import ConvGeometry

try:  # keep `import basisrt.kernels.fused_basis_conv` working without triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised in a subprocess test
    triton = None
    tl = None

TRITON_MISSING = "the Triton kernels need triton: pip install triton"
ACTIVATIONS = {None: 0, "relu": 1, "relu6": 2}
PRECISIONS = ("ieee", "tf32", "tf32x3")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK_KEYS = ("BLOCK_P", "BLOCK_N", "BLOCK_K", "BLOCK_R")

# Fixed config for the interpreter / no-CUDA path: small tiles keep the numpy-backed interpreter
# fast, and BLOCK_R = 16 makes every rank > 16 go through the r-chunk loop.
INTERPRETER_CONFIG = dict(BLOCK_P=32, BLOCK_N=32, BLOCK_K=32, BLOCK_R=16, num_warps=4, num_stages=1)
# BASISRT_TRITON_AUTOTUNE=0: every GPU launch without a pinned config uses this one instead of tuning
# (tuning compiles each of the configs below for each new layer kind: seconds per kind). The test
# suite sets it on GPU machines; its pinned-config tests check every tuning config's answers.
GPU_DEFAULT_CONFIG = dict(BLOCK_P=64, BLOCK_N=64, BLOCK_K=32, BLOCK_R=32, num_warps=4, num_stages=3)


if triton is not None:

    @triton.jit
    def _im2col_tile(x_ptr, img64, ih0, iw0, p_mask, offs_k, k_mask, H, W, C_IN, sxn, sxh, sxw, sxc,
                     KW: tl.constexpr, DIL_H, DIL_W):
        """The implicit-GEMM gather: im2col rows of a pixel tile for columns offs_k (NHWC tap
        order: k = (ky·KW + kx)·C_IN + ci), zeros outside the image (the padding)."""
        ci = offs_k % C_IN
        tap = offs_k // C_IN
        ih = ih0[:, None] + (tap // KW)[None, :] * DIL_H
        iw = iw0[:, None] + (tap % KW)[None, :] * DIL_W
        mask = p_mask[:, None] & k_mask[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        return tl.load(x_ptr + img64[:, None] * sxn + ih * sxh + iw * sxw + ci[None, :] * sxc, mask=mask, other=0.0)

    @triton.jit
    def _fused_basis_conv_kernel(
        x_ptr, b_ptr, a_ptr, bias_ptr, res_ptr, y_ptr,
        H, W, C_IN, OH, OW, C_OUT, R, K_TOTAL, P,
        sxn, sxh, sxw, sxc,
        sbk, sbn,
        sar, san,
        srn, srh, srw, src,
        syn, syh, syw, syc,
        STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,  # run-time: one compile serves every geometry
        KW: tl.constexpr,
        HAS_A: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
        ACTIVATION: tl.constexpr, INPUT_PRECISION: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    ):
        pid_p = tl.program_id(0)
        pid_n = tl.program_id(1)
        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        p_mask = offs_p < P
        n_mask = offs_n < C_OUT

        # output pixel -> (image, oh, ow) -> top-left input coordinate of its receptive field
        ohw = OH * OW
        img = offs_p // ohw
        rem = offs_p % ohw
        oh = rem // OW
        ow = rem % OW
        ih0 = oh * STRIDE_H - PAD_H
        iw0 = ow * STRIDE_W - PAD_W
        img64 = img.to(tl.int64)

        acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
        if HAS_A:
            # back-to-back GEMM: per chunk of r, T_chunk = im2col · B_chunk, y += T_chunk · A_chunk
            for r0 in range(0, R, BLOCK_R):
                offs_r = r0 + tl.arange(0, BLOCK_R)
                r_mask = offs_r < R
                t = tl.zeros((BLOCK_P, BLOCK_R), dtype=tl.float32)
                for k0 in range(0, K_TOTAL, BLOCK_K):
                    offs_k = k0 + tl.arange(0, BLOCK_K)
                    k_mask = offs_k < K_TOTAL
                    xt = _im2col_tile(x_ptr, img64, ih0, iw0, p_mask, offs_k, k_mask, H, W, C_IN,
                                      sxn, sxh, sxw, sxc, KW, DIL_H, DIL_W)
                    bt = tl.load(b_ptr + offs_k[:, None] * sbk + offs_r[None, :] * sbn,
                                 mask=k_mask[:, None] & r_mask[None, :], other=0.0)
                    t = tl.dot(xt, bt, t, input_precision=INPUT_PRECISION)
                # Ranks past R (B loaded as 0) hold 0 · x: NaN where x is ±Inf, which the zero rows
                # of A would turn into a NaN output where PyTorch gives ±Inf.
                t = tl.where(r_mask[None, :], t, 0.0)
                at = tl.load(a_ptr + offs_r[:, None] * sar + offs_n[None, :] * san,
                             mask=r_mask[:, None] & n_mask[None, :], other=0.0)
                acc = tl.dot(t.to(at.dtype), at, acc, input_precision=INPUT_PRECISION)
        else:
            # dense conv: one implicit GEMM, B is the conv weight (K, C_out)
            for k0 in range(0, K_TOTAL, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                k_mask = offs_k < K_TOTAL
                xt = _im2col_tile(x_ptr, img64, ih0, iw0, p_mask, offs_k, k_mask, H, W, C_IN,
                                  sxn, sxh, sxw, sxc, KW, DIL_H, DIL_W)
                bt = tl.load(b_ptr + offs_k[:, None] * sbk + offs_n[None, :] * sbn,
                             mask=k_mask[:, None] & n_mask[None, :], other=0.0)
                acc = tl.dot(xt, bt, acc, input_precision=INPUT_PRECISION)

        # epilogue: bias, residual, activation; NHWC store
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
            acc = acc + bias[None, :]
        oh64 = oh.to(tl.int64)
        ow64 = ow.to(tl.int64)
        out_mask = p_mask[:, None] & n_mask[None, :]
        if HAS_RES:
            r_off = (img64 * srn + oh64 * srh + ow64 * srw)[:, None] + offs_n[None, :] * src
            acc = acc + tl.load(res_ptr + r_off, mask=out_mask, other=0.0).to(tl.float32)
        # Selects that keep NaN as torch.relu / F.relu6 do (NaN compares false); tl.maximum /
        # tl.minimum return the other operand for a NaN by default, which turned NaN into 0.
        if ACTIVATION == 1:
            acc = tl.where(acc < 0.0, 0.0, acc)
        elif ACTIVATION == 2:
            acc = tl.where(acc < 0.0, 0.0, acc)
            acc = tl.where(acc > 6.0, 6.0, acc)
        y_off = (img64 * syn + oh64 * syh + ow64 * syw)[:, None] + offs_n[None, :] * syc
        tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=out_mask)

    try:
        from triton.runtime.interpreter import InterpretedFunction as _Interpreted
        INTERPRETED = isinstance(_fused_basis_conv_kernel, _Interpreted)
    except ImportError:  # pragma: no cover
        INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

    def _prune_configs(configs, named_args, **kwargs):
        """Drop configs whose tiles are far larger than the problem (keeps at least one)."""
        c_out, r, k, p = named_args["C_OUT"], named_args["R"], named_args["K_TOTAL"], named_args["P"]
        cap = lambda v: max(16, triton.next_power_of_2(v))  # noqa: E731
        # many pixels: only the large pixel tiles; few: only the small ones (each config tried is a compile)
        p_ok = (lambda bp: bp >= 64) if p >= 4096 else (lambda bp: bp <= min(64, max(32, cap(p))))
        kept = [c for c in configs if c.kwargs["BLOCK_N"] <= max(32, cap(c_out))
                and c.kwargs["BLOCK_R"] <= max(32, cap(r)) and c.kwargs["BLOCK_K"] <= max(32, cap(k))
                and p_ok(c.kwargs["BLOCK_P"])]
        return kept or configs[:1]

    _GPU_CONFIGS = [
        triton.Config(dict(BLOCK_P=bp, BLOCK_N=bn, BLOCK_K=bk, BLOCK_R=br), num_warps=nw, num_stages=ns)
        for bp, bn, bk, br, nw, ns in [
            (64, 32, 32, 32, 4, 3), (64, 64, 32, 32, 4, 3), (128, 64, 32, 32, 4, 3), (128, 64, 64, 32, 8, 3),
            (64, 128, 32, 32, 4, 2), (128, 128, 32, 32, 8, 2), (64, 64, 64, 64, 4, 2), (128, 128, 64, 64, 8, 2),
            (32, 256, 32, 32, 8, 2), (64, 256, 32, 64, 8, 2),
            # small pixel tiles: late layers of a small map have few pixels, and more programs fill the SMs
            (32, 64, 64, 32, 4, 3), (32, 128, 32, 32, 4, 3), (16, 64, 64, 32, 2, 3), (16, 128, 64, 32, 4, 2),
        ]
    ]
    # Short timings per config (ms): a compile autotunes every layer shape, and the defaults
    # (25 + 100 ms per config) made that a minute for one model. Results persist in Triton's cache.
    _TUNE_WARMUP_MS, _TUNE_REP_MS = 5, 20
    # Built lazily: creating the Autotuner does not benchmark, but keep it off the interpreter path.
    _autotuned = None

    def _get_autotuned():
        global _autotuned
        if _autotuned is None:
            _autotuned = triton.autotune(
                configs=_GPU_CONFIGS,
                # (the autotuner also keys on the tensor dtypes by itself)
                key=["P", "C_OUT", "R", "K_TOTAL", "C_IN", "KW", "STRIDE_H", "STRIDE_W", "DIL_H", "DIL_W",
                     "HAS_A", "HAS_RES", "INPUT_PRECISION"],
                prune_configs_by={"early_config_prune": _prune_configs},
                restore_value=["y_ptr"],  # benchmarking re-runs the kernel: out may alias the residual
                do_bench=lambda fn, quantiles: triton.testing.do_bench(
                    fn, warmup=_TUNE_WARMUP_MS, rep=_TUNE_REP_MS, quantiles=quantiles),
                cache_results=True,
            )(_fused_basis_conv_kernel)
        return _autotuned
else:
    INTERPRETED = False


def _pair(v: Union[int, Sequence[int]], name: str) -> tuple[int, int]:
    if isinstance(v, int):
        v = (v, v)
    v = tuple(int(i) for i in v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v}")
    return v


def _span(t: Tensor) -> tuple[int, int]:
    if t.numel() == 0:
        return (0, 0)
    last = sum((s - 1) * st for s, st in zip(t.shape, t.stride()) if s > 0)
    start = t.data_ptr()
    return start, start + (last + 1) * t.element_size()


def _overlaps(a: Tensor, b: Tensor) -> bool:
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1


def _check_config(config: dict) -> dict:
    cfg = {**INTERPRETER_CONFIG, **config}
    for k in BLOCK_KEYS:
        v = cfg[k]
        if not isinstance(v, int) or v < 16 or v & (v - 1):
            raise ValueError(f"config {k} must be a power of two >= 16 (tl.dot minimum), got {v!r}")
    unknown = set(cfg) - set(BLOCK_KEYS) - {"num_warps", "num_stages"}
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}")
    return cfg


def fused_basis_conv2d(
    x_nhwc: Tensor,
    B_packed: Tensor,
    A_packed: Optional[Tensor],
    bias: Optional[Tensor] = None,
    residual: Optional[Tensor] = None,
    stride: Union[int, Sequence[int]] = 1,
    padding: Union[int, Sequence[int]] = 0,
    dilation: Union[int, Sequence[int]] = 1,
    activation: Optional[str] = None,
    precision: str = "ieee",
    *,
    out: Optional[Tensor] = None,
    config: Optional[dict] = None,
) -> Tensor:
    """One launch of the fused basis conv (or dense conv when `A_packed is None`), groups = 1.

    x_nhwc:   (N, H, W, C_in), float32 / float16 (bfloat16 on a real GPU only); any strides
              (a channels_last NCHW tensor `.permute(0, 2, 3, 1)` is a free view).
    B_packed: (kh, kw, C_in, r) basis filters in NHWC tap order, i.e. `basis.permute(2, 3, 1, 0)`
              of a (r, C_in, kh, kw) weight; for dense, (kh, kw, C_in, C_out). Same dtype as x.
    A_packed: (r, C_out) = scaleᵀ of the (C_out, r) scaling matrix, same dtype as x; None: dense.
    bias:     (C_out,) any float dtype (read as fp32), or None.
    residual: (N, OH, OW, C_out) in x's dtype or float32, any strides, or None. May be the very
              tensor passed as `out` (in-place add); any other overlap with `out` is refused.
    activation: None | "relu" | "relu6".  precision: "ieee" | "tf32" | "tf32x3" (fp32 dots).
    out:      optional (N, OH, OW, C_out) buffer of x's dtype (any strides) to write into.
    config:   optional pinned tiles {BLOCK_P, BLOCK_N, BLOCK_K, BLOCK_R, num_warps, num_stages};
              default: autotuned on a GPU, INTERPRETER_CONFIG under the interpreter.
    Returns the (N, OH, OW, C_out) output (`out` if given). Groups > 1 are not fused on this path:
    the caller must pass groups = 1 data (grouped layers fall back; see `check_groups`).
    """
    if triton is None:
        raise RuntimeError(TRITON_MISSING)
    # ---- argument checks (everything the kernel assumes, so nothing fails inside it) ----------
    if not isinstance(x_nhwc, Tensor) or x_nhwc.dim() != 4:
        raise ValueError(f"x_nhwc must be a 4-d (N, H, W, C_in) tensor, got "
                         f"{tuple(x_nhwc.shape) if isinstance(x_nhwc, Tensor) else type(x_nhwc).__name__}")
    dtype, device = x_nhwc.dtype, x_nhwc.device
    if dtype not in DTYPES:
        raise ValueError(f"x_nhwc dtype must be float32, float16 or bfloat16, got {dtype}")
    if dtype == torch.bfloat16 and INTERPRETED:
        raise ValueError("bfloat16 needs a real GPU: tl.dot in bfloat16 is wrong under TRITON_INTERPRET=1")
    if INTERPRETED and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the kernel was decorated under TRITON_INTERPRET=1 and triton reads it at run time "
                           "too: keep TRITON_INTERPRET=1 set while launching (or re-import without it on a GPU)")
    if not INTERPRETED and device.type != "cuda":
        raise ValueError(f"the Triton kernel needs CUDA tensors, got {device} "
                         "(set TRITON_INTERPRET=1 before importing to run the CPU interpreter)")
    n, h, w, c_in = x_nhwc.shape
    if not isinstance(B_packed, Tensor) or B_packed.dim() != 4:
        raise ValueError("B_packed must be a 4-d (kh, kw, C_in, r) tensor (basis.permute(2, 3, 1, 0))")
    kh, kw, b_cin, r = B_packed.shape
    if b_cin != c_in:
        raise ValueError(f"B_packed has C_in={b_cin} but x_nhwc has C_in={c_in} (groups>1 is not "
                         "supported by the fused Triton path)")
    if A_packed is not None:
        if A_packed.dim() != 2 or A_packed.shape[0] != r:
            raise ValueError(f"A_packed must be (r, C_out) = ({r}, C_out) (scale.T), got {tuple(A_packed.shape)}")
        c_out = A_packed.shape[1]
    else:
        c_out = r
    if min(kh, kw, c_in, r, c_out) < 1:
        raise ValueError(f"empty weights: kernel {kh}x{kw}, C_in={c_in}, r={r}, C_out={c_out}")
    for name, t in (("B_packed", B_packed), ("A_packed", A_packed)):
        if t is not None and (t.dtype != dtype or t.device != device):
            raise ValueError(f"{name} is {t.dtype} on {t.device}; x_nhwc is {dtype} on {device}: they must match")
    if bias is not None:
        if bias.shape != (c_out,) or not bias.is_floating_point() or bias.device != device:
            raise ValueError(f"bias must be a float ({c_out},) tensor on {device}, got "
                             f"{bias.dtype} {tuple(bias.shape)} on {bias.device}")
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"need stride >= 1, dilation >= 1, padding >= 0; got {(sh, sw)}, {(dh, dw)}, {(ph, pw)}")
    oh, ow = ConvGeometry((kh, kw), (sh, sw), (ph, pw), (dh, dw)).output_hw(h, w)
    if oh < 1 or ow < 1:
        raise ValueError(f"input {h}x{w} with padding {(ph, pw)} is smaller than the dilated {kh}x{kw} kernel")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    shape_out = (n, oh, ow, c_out)
    if residual is not None:
        if tuple(residual.shape) != shape_out or residual.dtype not in (dtype, torch.float32) \
                or residual.device != device:
            raise ValueError(f"residual must be {shape_out} NHWC in {dtype} or float32 on {device}, got "
                             f"{tuple(residual.shape)} {residual.dtype} on {residual.device}")
    if out is None:
        out = torch.empty(shape_out, dtype=dtype, device=device)
    else:
        if tuple(out.shape) != shape_out or out.dtype != dtype or out.device != device:
            raise ValueError(f"out must be {shape_out} NHWC of {dtype} on {device}, got "
                             f"{tuple(out.shape)} {out.dtype} on {out.device}")
        for name, t in (("x_nhwc", x_nhwc), ("B_packed", B_packed), ("A_packed", A_packed), ("bias", bias)):
            if t is not None and _overlaps(out, t):
                raise ValueError(f"out overlaps {name}")
        if residual is not None and _overlaps(out, residual) and not (
                out.data_ptr() == residual.data_ptr() and out.stride() == residual.stride()
                and out.dtype == residual.dtype):
            raise ValueError("out partially overlaps residual (only the exact same tensor is allowed)")
    p_total = n * oh * ow
    k_total = kh * kw * c_in
    if p_total >= 2 ** 31 or k_total >= 2 ** 31:
        raise ValueError("too many output pixels or too large K for 32-bit tile indices")
    for name, t in (("x_nhwc", x_nhwc), ("residual", residual), ("out", out)):
        # the batch offset is int64 in the kernel; offsets inside one image are int32
        if t is not None and sum((d - 1) * abs(st) for d, st in zip(t.shape[1:], t.stride()[1:])) >= 2 ** 31:
            raise ValueError(f"{name}: one image spans >= 2**31 elements, beyond the kernel's 32-bit offsets")
    if p_total == 0:
        return out

    b2 = B_packed.reshape(k_total, r)  # view when contiguous-ish; a copy otherwise
    dummy = b2  # never dereferenced when the matching HAS_* flag is off
    a = A_packed if A_packed is not None else dummy
    res = residual if residual is not None else out
    args = (
        x_nhwc, b2, a, bias if bias is not None else dummy, res, out,
        h, w, c_in, oh, ow, c_out, r if A_packed is not None else 0, k_total, p_total,
        *x_nhwc.stride(), *b2.stride(),
        *(A_packed.stride() if A_packed is not None else (0, 0)),
        *res.stride(), *out.stride(),
        sh, sw, ph, pw, dh, dw,
    )
    meta = dict(KW=kw, HAS_A=A_packed is not None, HAS_BIAS=bias is not None, HAS_RES=residual is not None,
                ACTIVATION=ACTIVATIONS[activation], INPUT_PRECISION=precision)

    if config is None and not INTERPRETED and os.environ.get("BASISRT_TRITON_AUTOTUNE") == "0":
        config = GPU_DEFAULT_CONFIG
    if config is not None or INTERPRETED or not torch.cuda.is_available():
        cfg = _check_config(config or {})
        grid = (triton.cdiv(p_total, cfg["BLOCK_P"]), triton.cdiv(c_out, cfg["BLOCK_N"]))
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            _fused_basis_conv_kernel[grid](*args, **meta, **cfg)
    else:
        grid = lambda m: (triton.cdiv(p_total, m["BLOCK_P"]), triton.cdiv(c_out, m["BLOCK_N"]))  # noqa: E731
        with torch.cuda.device(device):
            _get_autotuned()[grid](*args, **meta)
    return out


def fused_basis_linear(
    x: Tensor,
    B_packed: Tensor,
    A_packed: Optional[Tensor],
    bias: Optional[Tensor] = None,
    residual: Optional[Tensor] = None,
    activation: Optional[str] = None,
    precision: str = "ieee",
    *,
    out: Optional[Tensor] = None,
    config: Optional[dict] = None,
) -> Tensor:
    """Fused low-rank Linear, y = (x · Bᵀ) · Aᵀ + bias (+ residual, activation), on the conv kernel.

    x: (..., C_in) with a stride-1-or-any last dim; B_packed: (C_in, r) = basisᵀ (dense: weightᵀ,
    (C_in, C_out)); A_packed: (r, C_out) or None. Rows become pixels of a (M, 1, 1, C_in) NHWC view
    with a 1×1 kernel, so nothing is copied when x's leading dims flatten to a view.
    """
    if B_packed.dim() != 2:
        raise ValueError(f"B_packed must be (C_in, r) for a linear layer, got {tuple(B_packed.shape)}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    c_out = A_packed.shape[-1] if A_packed is not None else B_packed.shape[1]
    res4 = None if residual is None else residual.reshape(-1, c_out)[:, None, None, :]
    out4 = None
    if out is not None:
        if out.shape[-1:] != (c_out,) or out.numel() != x2.shape[0] * c_out:
            raise ValueError(f"out must be (..., {c_out}) with {x2.shape[0]} rows, got {tuple(out.shape)}")
        try:
            out4 = out.view(-1, c_out)[:, None, None, :]
        except RuntimeError as e:
            raise ValueError("out must flatten to (rows, C_out) as a view (no copy)") from e
    y = fused_basis_conv2d(x2[:, None, None, :], B_packed[None, None], A_packed, bias, res4, 1, 0, 1,
                           activation, precision, out=out4, config=config)
    return (out if out is not None else y.reshape(*lead, c_out))


__all__ = ["fused_basis_conv2d", "fused_basis_linear", "INTERPRETED", "INTERPRETER_CONFIG", "PRECISIONS"]
