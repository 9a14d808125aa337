"""Child process of test_c_fuzz.py: calls every basisrt._C entry point with seeded random mutations
of valid arguments. Each call must return or raise an ordinary Python error; a crash (SIGSEGV,
SIGFPE, abort) ends this process, which the parent reports. Prints one JSON summary line.

Usage: python fuzz_c_entry_points.py SEED CALLS
"""
import json
import random
import resource
import sys

import numpy as np
import torch

from basisrt import _C
from basisrt.compiler.bf16 import packed_bf16
from basisrt.compiler.cpu_steps import FusedConv2d

ALLOWED = (ValueError, TypeError, MemoryError, OverflowError)
INTS = [-2 ** 63, -2 ** 31, -7, -1, 0, 1, 2, 3, 5, 16, 17, 2 ** 24, 2 ** 24 + 1, 2 ** 31, 2 ** 62]
ENUMS = (_C.Activation, _C.PoolKind, _C.BinaryOp, _C.SoftmaxAxis)


def nasty_int(rng):
    return rng.choice(INTS)


def nasty_enum(rng, e):
    """A value of enum type(e) made from any int (pybind11 enums take one), or a plain int."""
    v = nasty_int(rng)
    return type(e)(v) if -2 ** 31 <= v < 2 ** 31 and rng.random() < 0.7 else v


def nasty_pair(rng, v):
    v = v if isinstance(v, tuple) and len(v) == 2 else (1, 1)
    r = rng.random()
    if r < 0.4:
        return (nasty_int(rng), v[1])
    if r < 0.7:
        return (nasty_int(rng), nasty_int(rng))
    return rng.choice([(1,), (1, 2, 3), (), "ab", None, (1.5, 2)])


def nasty_array(rng, a):
    """A variant of array `a` that a kernel must refuse or handle."""
    if not isinstance(a, np.ndarray):
        values = np.random.default_rng(rng.randrange(1 << 30)).standard_normal(rng.choice([1, 7, 4096]))
        return values.astype(np.float32)
    choices = [
        lambda: a.astype(np.float64),
        lambda: a.astype(np.int32),
        lambda: a.reshape(-1),
        lambda: a[..., :max(a.shape[-1] - 1, 0)] if a.ndim else a,
        lambda: a[..., ::2] if a.ndim else a,
        lambda: np.ascontiguousarray(a.reshape(-1)[: max(a.size // 2, 1)]),
        lambda: np.zeros((0,) * max(a.ndim, 1), np.float32),
        lambda: np.broadcast_to(np.float32(1), a.shape),  # read-only, zero strides
        lambda: np.zeros(a.shape + (2,), np.float32),
        lambda: np.asfortranarray(a) if a.ndim > 1 else a,
        lambda: None,
        lambda: "not an array",
        lambda: np.full(a.shape, np.nan, np.float32),
    ]
    return rng.choice(choices)()


def conv_case(rng):
    """Valid arguments of fused_conv_nhwc for a random small conv (dense, low-rank or depthwise)."""
    c_in = rng.choice([3, 16, 8])
    groups = rng.choice([1, c_in]) if c_in in (8, 16) else 1
    c_out = c_in if groups > 1 else rng.choice([4, 16])
    rank = 0 if groups > 1 else rng.choice([0, 3])
    k, s, p = rng.choice([(1, 1, 0), (3, 1, 1), (3, 2, 1)])
    torch.manual_seed(rng.randrange(1000))
    w = torch.randn(rank or c_out, c_in // groups, k, k)
    step = FusedConv2d(w, torch.randn(c_out), stride=(s, s), padding=(p, p), dilation=(1, 1), groups=groups,
                       scale=torch.randn(c_out, rank) if rank else None)
    n, h = rng.choice([0, 1, 2]), rng.choice([4, 5])
    oh, ow = step.output_hw(h, h)
    return dict(x=np.random.default_rng(1).standard_normal((n, h, h, c_in)).astype(np.float32),
                B=step.B.numpy(), A=None if step.A is None else step.A.numpy(), bias=step.bias.numpy(),
                residual=None, out=np.zeros((n, oh, ow, c_out), np.float32), kernel=(k, k), stride=(s, s),
                padding=(p, p), dilation=(1, 1), groups=groups, rank=step.rank,
                activation=rng.choice([_C.Activation.none, _C.Activation.relu, _C.Activation.relu6]),
                num_threads=rng.choice([1, 2]), pool=1)


def mutate(rng, args, pairs, arrays, ints):
    args = dict(args)
    if rng.random() < 0.08:  # some valid calls, so each entry point is seen to run as well as to refuse
        return args
    for _ in range(rng.choice([1, 1, 2, 3])):
        key = rng.choice(list(args))
        if isinstance(args[key], ENUMS):
            args[key] = nasty_enum(rng, args[key])
        elif key in pairs:
            args[key] = nasty_pair(rng, args[key])
        elif key in arrays:
            args[key] = nasty_array(rng, args[key])
        elif key in ints:
            args[key] = nasty_int(rng)
        else:
            args[key] = rng.choice([None, -1, "x"])
    return args


def fuzz_conv(rng):
    a = conv_case(rng)
    a["winograd"] = None
    if a["groups"] == 1 and _C.winograd_path(*a["kernel"], *a["stride"], *a["dilation"], 1, a["x"].shape[3], a["rank"]):
        a["winograd"] = _C.winograd_weights(a["B"], a["x"].shape[3], a["rank"], a["out"].shape[3])
    arrays = {"x", "B", "A", "bias", "residual", "out", "winograd"}
    m = mutate(rng, a, {"kernel", "stride", "padding", "dilation"}, arrays,
               {"groups", "rank", "activation", "num_threads", "pool"})
    _C.fused_conv_nhwc(**m)


def fuzz_conv_bf16(rng):
    """The bf16 conv (direct, or by Winograd where the CPU runs it), x and out fp32 or bf16 bits."""
    c_in, rank = rng.choice([3, 32]), rng.choice([0, 3, 16])
    c_out = rng.choice([4, 16])
    k, s, p = rng.choice([(1, 1, 0), (3, 1, 1), (3, 2, 1)])
    torch.manual_seed(rng.randrange(1000))
    step = FusedConv2d(torch.randn(rank or c_out, c_in, k, k), torch.randn(c_out), stride=(s, s), padding=(p, p),
                       dilation=(1, 1), groups=1, scale=torch.randn(c_out, rank) if rank else None)
    w = packed_bf16(step)
    n, h = rng.choice([0, 1, 2]), rng.choice([4, 5])
    oh, ow = step.output_hw(h, h)
    x = np.random.default_rng(1).standard_normal((n, h, h, c_in)).astype(np.float32)
    out = np.zeros((n, oh, ow, c_out), np.float32)
    if rng.random() < 0.3:
        x, out = x.view(np.int16)[..., ::2].copy(), out.view(np.int16)[..., ::2].copy()  # bf16 bits
    a = dict(x=x, B=w.B, A=w.A, bias=w.bias, residual=None, out=out, kernel=(k, k), stride=(s, s), padding=(p, p),
             dilation=(1, 1), rank=rank, activation=rng.choice([_C.Activation.none, _C.Activation.relu]),
             num_threads=rng.choice([1, 2]), winograd=w.winograd, hilo=rng.random() < 0.5)
    m = mutate(rng, a, {"kernel", "stride", "padding", "dilation"},
               {"x", "B", "A", "bias", "residual", "out", "winograd"}, {"rank", "activation", "num_threads"})
    _C.fused_conv_bf16_nhwc(**m)


def fuzz_pool(rng):
    c, h = rng.choice([1, 5, 16]), rng.choice([4, 7])
    k, s, p = rng.choice([(2, 2, 0), (3, 2, 1), (3, 1, 1)])
    oh = (h + 2 * p - k) // s + 1
    a = dict(x=np.random.default_rng(2).standard_normal((2, h, h, c)).astype(np.float32),
             out=np.zeros((2, oh, oh, c), np.float32), kernel=(k, k), stride=(s, s), padding=(p, p),
             kind=rng.choice([_C.PoolKind.max, _C.PoolKind.avg]), count_include_pad=True, num_threads=2)
    _C.pool_nhwc(**mutate(rng, a, {"kernel", "stride", "padding"}, {"x", "out"}, {"kind", "num_threads"}))


def fuzz_affine(rng):
    c = rng.choice([1, 5, 16])
    a = dict(x=np.random.default_rng(3).standard_normal((2, 3, 3, c)).astype(np.float32),
             scale=np.ones(c, np.float32), shift=np.zeros(c, np.float32), out=np.zeros((2, 3, 3, c), np.float32),
             activation=_C.Activation.relu, num_threads=2)
    _C.channel_affine_nhwc(**mutate(rng, a, set(), {"x", "scale", "shift", "out"}, {"activation", "num_threads"}))


def fuzz_norm(rng):
    c = rng.choice([1, 5, 16])
    a = dict(x=np.random.default_rng(9).standard_normal((2, 3, 3, c)).astype(np.float32),
             scale=np.ones(c, np.float32), shift=np.zeros(c, np.float32), out=np.zeros((2, 3, 3, c), np.float32),
             eps=rng.choice([1e-6, 0.0, -1.0, float("nan"), float("inf")]), activation=_C.Activation.gelu,
             num_threads=2)
    _C.channel_norm_nhwc(**mutate(rng, a, set(), {"x", "scale", "shift", "out"}, {"activation", "num_threads"}))


def fuzz_group_norm(rng):
    c = rng.choice([1, 6, 16])
    a = dict(x=np.random.default_rng(9).standard_normal((2, 3, 3, c)).astype(np.float32),
             scale=np.ones(c, np.float32), shift=np.zeros(c, np.float32), out=np.zeros((2, 3, 3, c), np.float32),
             groups=1, eps=1e-6, activation=_C.Activation.relu, num_threads=2)
    if rng.random() < 0.3:  # groups that do not divide c, eps that is no epsilon
        a.update(groups=rng.choice([0, -1, 7, 2 ** 40]), eps=rng.choice([-1.0, float("nan"), 1e-6]))
    _C.group_norm_nhwc(**mutate(rng, a, set(), {"x", "scale", "shift", "out"}, {"groups", "activation", "num_threads"}))


def fuzz_eltwise(rng):
    c, hw = rng.choice([1, 5, 16]), rng.choice([1, 3])
    g = np.random.default_rng(6)
    a = dict(a=g.standard_normal((2, 3, 3, c)).astype(np.float32),
             b=g.standard_normal((2, hw, hw, c)).astype(np.float32),
             out=np.zeros((2, 3, 3, c), np.float32), op=rng.choice([_C.BinaryOp.add, _C.BinaryOp.mul]),
             activation=_C.Activation(rng.randrange(10)),
             num_threads=2, alpha=0.1)
    _C.eltwise_nhwc(**mutate(rng, a, set(), {"a", "b", "out"}, {"op", "activation", "num_threads"}))


def fuzz_gather(rng):
    c = rng.choice([1, 5, 16])
    a = dict(x=np.random.default_rng(7).standard_normal((2, 3, 3, c)).astype(np.float32),
             index=np.arange(c, dtype=np.int64)[::-1].copy(), out=np.zeros((2, 3, 3, c), np.float32), num_threads=2)
    if rng.random() < 0.3:  # an index array of another kind: wrong dtype, out of range, wrong length
        a["index"] = rng.choice([a["index"].astype(np.int32), a["index"] + c, -a["index"] - 1, a["index"][:-1],
                                 np.full(c, 2 ** 62, np.int64)])
    _C.channel_gather_nhwc(**mutate(rng, a, set(), {"x", "out"}, {"num_threads"}))


def fuzz_pixel_gather(rng):
    c = rng.choice([1, 5, 16])
    index = np.arange(16, dtype=np.int64).reshape(4, 4)[::-1].copy().reshape(-1)  # 4x4 out of a 4x4 map
    index[::5] = -1
    a = dict(x=np.random.default_rng(8).standard_normal((2, 4, 4, c)).astype(np.float32), index=index,
             out=np.zeros((2, 4, 4, c), np.float32), num_threads=2)
    if rng.random() < 0.3:  # wrong dtype, out of range (16, -2), wrong length, huge
        a["index"] = rng.choice([index.astype(np.int32), index + 17, index - 2, index[:-1],
                                 np.full(16, 2 ** 62, np.int64)])
    if rng.random() < 0.4:  # channel blocks: out takes c - 1 of x's channels, from offsets 0 or 1
        a["out"] = np.zeros((2, 4, 4, max(c - 1, 1)), np.float32)
        a["offset"] = rng.choice([np.arange(16, dtype=np.int64) % 2, np.full(16, 1, np.int64), np.full(16, c, np.int64),
                                  np.full(16, -1, np.int64), np.full(16, 2 ** 62, np.int64), np.zeros(3, np.int64)])
    _C.pixel_gather_nhwc(**mutate(rng, a, set(), {"x", "out", "offset"}, {"num_threads"}))


def fuzz_softmax(rng):
    c = rng.choice([1, 6, 16])
    axis = rng.choice([_C.SoftmaxAxis.channels, _C.SoftmaxAxis.width, _C.SoftmaxAxis.pixels])
    a = dict(x=np.random.default_rng(10).standard_normal((2, 3, 4, c)).astype(np.float32),
             out=np.zeros((2, 3, 4, c), np.float32), axis=axis,
             groups=rng.choice([1, 2, 3, c, 0, -1, 2 ** 62]) if axis == _C.SoftmaxAxis.channels else 1, num_threads=2)
    _C.softmax_nhwc(**mutate(rng, a, set(), {"x", "out"}, {"axis", "groups", "num_threads"}))


def linear_taps(n_in, n_out):
    from basisrt.compiler.patterns import _linear_taps
    return _linear_taps(n_in, n_out, False, None)


def fuzz_resample(rng):
    c = rng.choice([1, 5, 16])
    (iy, wy), (ix, wx) = linear_taps(4, 7), linear_taps(3, 6)
    a = dict(x=np.random.default_rng(9).standard_normal((2, 4, 3, c)).astype(np.float32), row_index=iy,
             row_weight=wy, col_index=ix, col_weight=wx, out=np.zeros((2, 7, 6, c), np.float32), num_threads=2)
    if rng.random() < 0.3:  # wrong dtype, out of range, wrong length, huge, non-finite weights
        key = rng.choice(["row_index", "col_index"])
        a[key] = rng.choice([a[key].astype(np.int32), a[key] + 9, a[key] - 5, a[key][:-1], a[key][:, :1],
                             np.full_like(a[key], 2 ** 62)])
    if rng.random() < 0.2:
        a["row_weight"] = np.full_like(wy, rng.choice([np.nan, np.inf, 1e30]))
    _C.resample_nhwc(**mutate(rng, a, set(), {"x", "out", "row_weight", "col_weight", "row_index", "col_index"},
                              {"num_threads"}))


def expand_depthwise_case(rng, c_in):
    """Packed weights and geometry of an expand (c_in -> 16, dense or rank 3) + depthwise 3×3 op."""
    rank = rng.choice([0, 3])
    expand = FusedConv2d(torch.randn(rank or 16, c_in, 1, 1), torch.randn(16), stride=(1, 1), padding=(0, 0),
                         dilation=(1, 1), groups=1, scale=torch.randn(16, rank) if rank else None)
    dw = FusedConv2d(torch.randn(16, 1, 3, 3), torch.randn(16), stride=(1, 1), padding=(1, 1), dilation=(1, 1),
                     groups=16)
    return dict(B=expand.B.numpy(), A=None if expand.A is None else expand.A.numpy(), bias=expand.bias.numpy(),
                rank=rank, activation=_C.Activation.silu, alpha=0.0, dw_B=dw.B.numpy(), dw_bias=dw.bias.numpy(),
                dw_activation=_C.Activation.relu6, dw_alpha=0.0, kernel=(3, 3), stride=(1, 1), padding=(1, 1),
                dilation=(1, 1))


def fuzz_program(rng):
    """A small valid program (conv, affine, eltwise, gather, norm), one of its construction calls or its run
    mutated."""
    p = _C.Program()
    conv = conv_case(rng)
    n, h, _, c_in = conv["x"].shape
    _, oh, ow, c_out = conv["out"].shape
    calls = [("add_buffer", dict(H=h, W=h, C=c_in)), ("add_buffer", dict(H=oh, W=ow, C=c_out)),
             ("add_conv", {"input": 0, "residual": -1, "out": 1, **{k: conv[k] for k in (
                 "B", "A", "bias", "rank", "activation", "kernel", "stride", "padding", "dilation", "groups")}}),
             ("add_buffer", dict(H=oh, W=ow, C=c_out)),
             ("add_affine", {"input": 1, "out": 2, "scale": np.ones(c_out, np.float32),
                             "shift": np.zeros(c_out, np.float32), "activation": _C.Activation.relu6}),
             ("add_buffer", dict(H=oh, W=ow, C=2 * c_out)),
             ("alias", dict(buffer=2, parent=3, offset=0)),
             ("add_buffer", dict(H=oh, W=ow, C=c_out)),
             ("add_eltwise", dict(a=1, b=2, out=4, op=_C.BinaryOp.mul, activation=_C.Activation.silu)),
             ("add_buffer", dict(H=oh, W=ow, C=c_out)),
             ("add_gather", dict(input=4, out=5, index=np.arange(c_out, dtype=np.int64))),
             ("alias", dict(buffer=5, parent=3, offset=c_out)),
             ("add_buffer", dict(H=oh, W=ow, C=c_out)),
             ("add_norm", {"input": 4, "out": 6, "scale": np.ones(c_out, np.float32),
                           "shift": np.zeros(c_out, np.float32), "eps": 1e-5, "activation": _C.Activation.none}),
             ("add_buffer", dict(H=oh, W=ow, C=16)),
             ("add_expand_depthwise", {"input": 1, "out": 7, **expand_depthwise_case(rng, c_out)}),
             ("add_buffer", dict(H=oh, W=ow, C=c_out)),
             ("add_group_norm", {"input": 6, "out": 8, "scale": np.ones(c_out, np.float32),
                                 "shift": np.zeros(c_out, np.float32), "groups": 1, "eps": 1e-5,
                                 "activation": _C.Activation.relu}),
             ("add_buffer", dict(H=2 * oh, W=ow + 1, C=c_out)),
             ("add_resample", dict(zip(("input", "out", "row_index", "row_weight", "col_index", "col_weight"),
                                       (8, 9, *linear_taps(oh, 2 * oh), *linear_taps(ow, ow + 1))))),
             ("add_buffer", dict(H=oh, W=ow, C=c_out)),
             ("add_softmax", {"input": 8, "out": 10, "axis": _C.SoftmaxAxis.channels, "groups": c_out})]
    bad = rng.randrange(len(calls) + 4)
    pairs = {"kernel", "stride", "padding", "dilation"}
    arrays = {"B", "A", "bias", "scale", "shift", "index", "dw_B", "dw_bias", "row_index", "row_weight", "col_index",
              "col_weight"}
    ints = {"H", "W", "C", "input", "residual", "out", "rank", "activation", "groups", "buffer", "parent", "offset",
            "a", "b", "op", "dw_activation", "axis"}
    for i, (name, kw) in enumerate(calls):
        getattr(p, name)(**(mutate(rng, kw, pairs, arrays, ints) if i == bad else kw))
    run = dict(x=np.random.default_rng(4).standard_normal((n, c_in, h, h)).astype(np.float32),
               out=np.zeros((n, oh, ow, 2 * c_out), np.float32), output=3, num_threads=2, op_seconds=None,
               nchw=bool(rng.random() < 0.5))  # NCHW: the program's own transpose of the output
    if bad == len(calls):
        run = mutate(rng, run, set(), {"x", "out", "op_seconds"}, {"output", "num_threads"})
    elif bad == len(calls) + 1:
        p.segments(nasty_int(rng), nasty_int(rng))
    elif bad == len(calls) + 2:
        p.arena_floats(nasty_int(rng), [nasty_int(rng)], nasty_int(rng))
    elif bad == len(calls) + 3:  # several outputs
        outs = [run["out"], np.zeros((n, 2 * oh, ow + 1, c_out), np.float32)]
        ids = rng.choice([[3, 9], [9, 9], [3], [0, 9], [3, nasty_int(rng)], []])
        nchw = rng.choice([[], [True], [True, False], [False, True, True]])  # a wrong length too
        p.run_many(run["x"], outs if rng.random() < 0.8 else outs[:1], ids, 2, None, nchw)
        return
    p.run(**run)


def fuzz_paths(rng):
    _C.lowrank_dot_path(nasty_int(rng), nasty_int(rng))
    _C.depthwise_path(nasty_int(rng), nasty_int(rng), nasty_int(rng), nasty_int(rng))
    _C.winograd_path(*(nasty_int(rng) for _ in range(9)))
    _C.winograd_bf16_path(*(nasty_int(rng) for _ in range(9)))
    _C.simd_path()


def main(seed: int, calls: int) -> None:
    limit = 6 << 30  # an absurd allocation fails here instead of swapping the machine
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    entries = [fuzz_conv, fuzz_pool, fuzz_affine, fuzz_norm, fuzz_group_norm, fuzz_eltwise, fuzz_gather,
               fuzz_pixel_gather, fuzz_resample, fuzz_softmax, fuzz_program, fuzz_paths]
    if _C.bf16_path() != "none":  # elsewhere every bf16 call is the one refusal test_bf16.py checks
        entries.append(fuzz_conv_bf16)
    outcomes = {e.__name__: {"ok": 0, "refused": 0} for e in entries}
    # a stream per entry point: adding one does not change the calls the others get
    rngs = {e: random.Random(f"{seed}:{e.__name__}") for e in entries}
    unexpected = []
    for i in range(calls):
        entry = entries[i % len(entries)]
        try:
            entry(rngs[entry])
            outcomes[entry.__name__]["ok"] += 1
        except ALLOWED:
            outcomes[entry.__name__]["refused"] += 1
        except Exception as e:  # noqa: BLE001 — reported: an odd exception type is a finding too
            unexpected.append(f"{entry.__name__}: {type(e).__name__}: {e}")
    print(json.dumps({"outcomes": outcomes, "unexpected": unexpected[:20]}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
