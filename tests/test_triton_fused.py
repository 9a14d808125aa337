"""The fused Triton basis conv (kernels/fused_basis_conv.py) against a float64 PyTorch reference.

Without a GPU the kernel runs under the Triton interpreter: TRITON_INTERPRET=1 is set while the
kernel module is imported (triton decides interpreter vs compiler when `@triton.jit` decorates)
and again, by an autouse fixture, while this module's tests run (triton also reads it at run
time); it is restored in between, so other test modules (collected in the same process) never
see it. With a
GPU the same grid runs compiled on CUDA, and the GPU-only tests (bf16, tf32, autotune, CUDA
graphs) run too; without one they skip. Every case poisons its output with NaN first, so an
element the kernel does not write fails. Shapes are tiny: the interpreter is slow.
"""
import importlib
import itertools
import os
import random
import subprocess
import sys
import zlib

import pytest
import torch
import torch.nn.functional as F

INTERPRET = not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
_prev_env = os.environ.get("TRITON_INTERPRET")
if INTERPRET:
    os.environ["TRITON_INTERPRET"] = "1"
try:
    try:
        import triton  # noqa: F401
        HAVE_TRITON = True
    except ImportError:
        HAVE_TRITON = False
    from basisrt.kernels import fused_basis_conv as fbc
    if HAVE_TRITON and (fbc.triton is None or fbc.INTERPRETED != INTERPRET):
        fbc = importlib.reload(fbc)  # imported earlier in another mode: re-decorate the kernel
finally:
    if _prev_env is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _prev_env

from basisrt.compiler.gpu_steps import TRITON_NEEDED, GPUFusedConv2d, GPUFusedLinear  # noqa: E402

DEV = "cpu" if INTERPRET else "cuda"


@pytest.fixture(autouse=True, scope="module")
def _interpreter_env():
    if not INTERPRET:
        yield
        return
    prev = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    yield
    if prev is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = prev
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
needs_gpu = pytest.mark.skipif(INTERPRET or not torch.cuda.is_available(),
                               reason="needs a real CUDA GPU (this run uses the Triton interpreter on the CPU)")
ACTS = {None: lambda t: t, "relu": torch.relu, "relu6": lambda t: t.clamp(0, 6)}
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor | None = None) -> float:
    """‖out − ref‖ / ‖scale‖ with scale = ref by default (the pre-activation reference where an
    activation may zero a tiny ref entirely)."""
    denom = (ref if scale is None else scale).cpu().norm()
    assert denom > 0, "reference is all zero"
    return ((out.double().cpu() - ref.cpu()).norm() / denom).item()


def _geometry(rng: random.Random, k: tuple[int, int]) -> dict:
    """Random stride / dilation / padding and an odd-or-even input size the dilated kernel fits."""
    stride, dilation = (rng.choice([1, 2]), rng.choice([1, 2])), (rng.choice([1, 2]), rng.choice([1, 2]))
    padding = (rng.choice([0, 1, 2]), rng.choice([0, 1, 2]))
    need = [d * (kk - 1) + 1 - 2 * p for d, kk, p in zip(dilation, k, padding)]
    h, w = rng.randint(max(need[0], 1), max(need[0], 1) + 6), rng.randint(max(need[1], 1), max(need[1], 1) + 6)
    return dict(k=k, stride=stride, padding=padding, dilation=dilation, hw=(h, w))


def cases(n: int = 64, seed: int = 5):
    """Random shapes with the CPU grid's variety, scaled down for the interpreter."""
    rng = random.Random(seed)
    kernels = [(1, 1), (3, 3), (5, 5), (1, 3), (3, 1), (3, 5), (5, 3), (7, 7)]
    out = []
    for i in range(n):
        geometry = _geometry(rng, kernels[i % len(kernels)])
        # rank 0: dense; 2..15: one r chunk (BLOCK_R=16 in the interpreter); 17..40: the r-chunk loop
        rank = [0, 1, rng.randint(2, 15), rng.randint(17, 40)][i % 4]
        out.append(dict(n=rng.randint(1, 3), c_in=rng.randint(1, 8), c_out=rng.randint(1, 40), **geometry, rank=rank,
                        bias=rng.random() < 0.7, act=[None, "relu", "relu6"][i % 3], residual=rng.random() < 0.4,
                        dtype=torch.float16 if i % 6 == 5 else torch.float32))
    return out


def epilogue_cases(seed: int = 11):
    """Every epilogue (bias × residual × activation) on the dense and the low-rank path, with
    batches 4..8 and fp16 dense convs: what the random grid above happens to leave out."""
    rng = random.Random(seed)
    kernels = [(3, 3), (1, 1), (5, 3), (7, 7)]
    out = []
    combos = itertools.product((False, True), (False, True), (False, True), (None, "relu", "relu6"))
    for i, (low_rank, bias, residual, act) in enumerate(combos):
        geometry = _geometry(rng, kernels[i % len(kernels)])
        rank = rng.choice([rng.randint(2, 15), rng.randint(17, 40)]) if low_rank else 0
        out.append(dict(n=4 + i % 5, c_in=rng.randint(1, 8), c_out=rng.randint(1, 40), **geometry, rank=rank,
                        bias=bias, act=act, residual=residual, dtype=torch.float16 if i % 3 == 2 else torch.float32))
    return out


def case_id(c):
    return ("n{n}c{c_in}-{c_out}h{hw[0]}w{hw[1]}k{k[0]}{k[1]}s{stride[0]}{stride[1]}p{padding[0]}{padding[1]}"
            "d{dilation[0]}{dilation[1]}r{rank}{act}{res}{dt}").format(
        **c, res="res" if c["residual"] else "", dt="f16" if c["dtype"] == torch.float16 else "")


def make_case(c):
    gen = torch.Generator().manual_seed(zlib.crc32(case_id(c).encode()))
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    x = rnd(c["n"], c["c_in"], *c["hw"])
    bias = rnd(c["c_out"]) if c["bias"] else None
    conv = dict(stride=c["stride"], padding=c["padding"], dilation=c["dilation"])
    if c["rank"]:
        weight, scale = rnd(c["rank"], c["c_in"], *c["k"]), rnd(c["c_out"], c["rank"])
        ref = F.conv2d(F.conv2d(x, weight, **conv), scale[:, :, None, None], bias)
    else:
        weight, scale = rnd(c["c_out"], c["c_in"], *c["k"]), None
        ref = F.conv2d(x, weight, bias, **conv)
    res = rnd(*ref.shape) if c["residual"] else None
    if res is not None:
        ref = ref + res
    return x, weight, scale, bias, res, ACTS[c["act"]](ref), ref, conv


def gpu_config(c) -> dict | None:
    """On a GPU, one of the autotuner's own tilings per case, in turn: every tiling the autotuner
    may pick is checked across the grid, and each case compiles one config instead of tuning ten.
    Under the interpreter: None (its fixed small config)."""
    if INTERPRET:
        return None
    configs = fbc._GPU_CONFIGS
    cfg = configs[zlib.crc32(case_id(c).encode()) % len(configs)]
    return dict(**cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


@needs_triton
@pytest.mark.parametrize("c", cases() + epilogue_cases(), ids=case_id)
def test_fused_conv_matches_float64(c):
    x, weight, scale, bias, res, ref, pre_act, conv = make_case(c)
    dt = c["dtype"]
    step = GPUFusedConv2d(weight, bias, scale=scale, activation=c["act"], residual=c["residual"], groups=1,
                          config=gpu_config(c), **conv).to(device=DEV, dtype=dt)
    out = torch.full((ref.shape[0], *ref.shape[2:], ref.shape[1]), float("nan"), dtype=dt, device=DEV)  # NHWC
    y = step(x.to(DEV, dt), None if res is None else res.to(DEV, dt), out=out)
    assert y.shape == ref.shape and y.dtype == dt and y.data_ptr() == out.data_ptr()
    assert torch.isfinite(y).all()
    assert rel_err(y, ref, pre_act) < TOL[dt]


@needs_triton
@pytest.mark.parametrize("cfg", [dict(BLOCK_P=16, BLOCK_N=16, BLOCK_K=16, BLOCK_R=16),
                                 dict(BLOCK_P=64, BLOCK_N=64, BLOCK_K=64, BLOCK_R=32)])
def test_pinned_configs_and_strided_buffers(cfg):
    """Several tile shapes (many C_out tiles, r chunks, K chunks); x, residual and out in odd layouts."""
    torch.manual_seed(3)
    x = torch.randn(2, 6, 7, 9, dtype=torch.float64)
    basis, scale, bias = torch.randn(35, 6, 3, 3, dtype=torch.float64), torch.randn(37, 35, dtype=torch.float64), \
        torch.randn(37, dtype=torch.float64)
    ref = F.conv2d(F.conv2d(x, basis, stride=(2, 1), padding=(1, 2)), scale[:, :, None, None], bias)
    res = torch.randn_like(ref)
    ref = (ref + res).clamp(0, 6)
    f = lambda t: t.float().to(DEV)  # noqa: E731
    out = torch.full(ref.shape, float("nan"), device=DEV).permute(0, 2, 3, 1)  # NHWC view of NCHW memory
    y = fbc.fused_basis_conv2d(f(x).transpose(2, 3).contiguous().transpose(2, 3).permute(0, 2, 3, 1),
                               f(basis).permute(2, 3, 1, 0).contiguous(), f(scale).T.contiguous(), f(bias),
                               f(res).permute(0, 2, 3, 1), (2, 1), (1, 2), 1, "relu6", "ieee", out=out, config=cfg)
    assert y is out and torch.isfinite(out).all()
    assert rel_err(out.permute(0, 3, 1, 2), ref) < 1e-5


@needs_triton
def test_residual_in_place():
    """out may be the residual tensor itself (the add happens element by element in the epilogue)."""
    torch.manual_seed(4)
    x, w = torch.randn(1, 4, 6, 5, dtype=torch.float64), torch.randn(10, 4, 3, 3, dtype=torch.float64)
    res = torch.randn(1, 10, 6, 5, dtype=torch.float64)
    ref = torch.relu(F.conv2d(x, w, padding=1) + res)
    buf = res.float().to(DEV).permute(0, 2, 3, 1).contiguous()
    fbc.fused_basis_conv2d(x.float().to(DEV).permute(0, 2, 3, 1), w.float().to(DEV).permute(2, 3, 1, 0), None,
                           None, buf, 1, 1, 1, "relu", "ieee", out=buf)
    assert rel_err(buf.permute(0, 3, 1, 2), ref) < 1e-5


@needs_triton
def test_input_layouts_accepted():
    torch.manual_seed(1)
    w, scale = torch.randn(5, 4, 3, 3), torch.randn(8, 5)
    step = GPUFusedConv2d(w, None, scale=scale, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1).to(DEV)
    x = torch.randn(2, 4, 9, 7)
    ref = F.conv2d(F.conv2d(x.double(), w.double(), padding=1), scale.double()[:, :, None, None])
    for variant in (x, x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3).contiguous().transpose(2, 3)):
        y = step(variant.to(DEV))
        assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
        assert rel_err(y, ref) < 1e-5


@needs_triton
@pytest.mark.parametrize("rank", [0, 5, 19])
def test_fused_linear_on_tokens(rank):
    from nets import linear_on_tokens_case

    x, res, args, ref = linear_on_tokens_case(rank)
    step = GPUFusedLinear(*args, activation="relu", residual=True)
    out = torch.full((3, 7, 20), float("nan"), device=DEV)
    y = step.to(DEV)(x.float().to(DEV), res.float().to(DEV), out=out)
    assert y is out and y.shape == ref.shape
    assert rel_err(y, ref) < 1e-5


@needs_triton
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy (interpreter) on NaN
@pytest.mark.parametrize("act", [None, "relu", "relu6"])
@pytest.mark.parametrize("rank", [0, 1])
def test_nan_and_inf_propagate_like_torch(rank, act):
    """NaN and ±Inf in x and the residual give what PyTorch gives: relu(NaN) = relu6(NaN) = NaN
    (tl.maximum returned 0), relu6(inf) = 6. Rank 1 makes every output of an Inf pixel ±Inf in
    PyTorch, where the padded ranks of T (0 · Inf = NaN) made them NaN. (The C++ kernels'
    counterpart is tests/test_nan_inf.py.)"""
    nan, inf = float("nan"), float("inf")
    gen = torch.Generator().manual_seed(7 + rank)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    x, bias = rnd(2, 3, 6, 5), rnd(9)
    x[0, 1, 1, 1], x[1, 2, 4, 3], x[1, 0, 0, 0] = nan, inf, -inf
    if rank:
        basis, scale = rnd(rank, 3, 3, 3), rnd(9, rank)
        ref = F.conv2d(F.conv2d(x, basis, padding=1), scale[:, :, None, None], bias)
    else:
        basis, scale = rnd(9, 3, 3, 3), None
        ref = F.conv2d(x, basis, bias, padding=1)
    res = rnd(*ref.shape)
    res[0, 3, 5, 4], res[1, 8, 2, 1], res[0, 0, 3, 0] = nan, inf, -inf
    ref = ACTS[act](ref + res)
    assert ref.isnan().any() and torch.isfinite(ref).any() and (ref.isinf().any() or act == "relu6")
    step = GPUFusedConv2d(basis, bias, scale=scale, activation=act, residual=True, stride=(1, 1), padding=(1, 1),
                          dilation=(1, 1), groups=1).to(DEV)
    y = step(x.float().to(DEV), res.float().to(DEV)).double().cpu()
    for f in (torch.isnan, torch.isposinf, torch.isneginf):
        assert torch.equal(f(y), f(ref))
    finite = torch.isfinite(ref)
    assert rel_err(y[finite], ref[finite]) < 1e-5


@needs_triton
def test_clear_errors():
    x = torch.randn(1, 5, 5, 4, device=DEV)
    b = torch.randn(3, 3, 4, 6, device=DEV)
    a = torch.randn(6, 8, device=DEV)
    call = lambda **kw: fbc.fused_basis_conv2d(**{**dict(  # noqa: E731
        x_nhwc=x, B_packed=b, A_packed=a, bias=None, residual=None, stride=1, padding=1, dilation=1,
        activation=None, precision="ieee"), **kw})
    assert call().shape == (1, 5, 5, 8)
    with pytest.raises(ValueError, match="4-d"):
        call(x_nhwc=x[0])
    with pytest.raises(ValueError, match="dtype must be"):
        call(x_nhwc=x.double())
    with pytest.raises(ValueError, match="must match"):
        call(B_packed=b.half())
    with pytest.raises(ValueError, match="C_in=2"):
        call(B_packed=b[:, :, :2])  # what a groups=2 weight would look like
    with pytest.raises(ValueError, match="A_packed must be"):
        call(A_packed=a[:5])
    with pytest.raises(ValueError, match="smaller than"):
        call(padding=0, dilation=3)
    with pytest.raises(ValueError, match="activation"):
        call(activation="gelu")
    with pytest.raises(ValueError, match="precision"):
        call(precision="fp8")
    with pytest.raises(ValueError, match="bias"):
        call(bias=torch.zeros(7, device=DEV))
    with pytest.raises(ValueError, match="residual"):
        call(residual=torch.zeros(1, 5, 5, 7, device=DEV))
    with pytest.raises(ValueError, match="out must be"):
        call(out=torch.zeros(1, 5, 5, 8, dtype=torch.float16, device=DEV))
    with pytest.raises(ValueError, match="out overlaps x_nhwc"):
        big = torch.zeros(1, 5, 5, 8, device=DEV)
        call(x_nhwc=big[..., :4], out=big)
    with pytest.raises(ValueError, match="power of two"):
        call(config=dict(BLOCK_P=8))
    if INTERPRET:
        with pytest.raises(ValueError, match="bfloat16 needs a real GPU"):
            call(x_nhwc=x.bfloat16(), B_packed=b.bfloat16(), A_packed=a.bfloat16())
    with pytest.raises(ValueError, match="groups=1 only"):
        GPUFusedConv2d(torch.randn(6, 2, 3, 3), None, scale=torch.randn(8, 3), stride=1, padding=1, dilation=1,
                       groups=2)
    step = GPUFusedConv2d(torch.randn(6, 4, 3, 3), None, scale=torch.randn(8, 6), stride=1, padding=1, dilation=1,
                          groups=1).to(DEV)
    with pytest.raises(ValueError, match="weights are torch.float32"):
        step(torch.randn(1, 4, 5, 5, device=DEV).half())
    with pytest.raises(ValueError, match=r"expected input \(N, 4"):
        step(torch.randn(1, 3, 5, 5, device=DEV))


def test_missing_triton_gives_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    monkeypatch.setitem(sys.modules, "triton.language", None)
    with pytest.raises(RuntimeError, match="compiling a CUDA model needs triton: pip install triton"):
        GPUFusedConv2d(torch.randn(4, 3, 3, 3), None, scale=torch.randn(6, 4), stride=1, padding=1, dilation=1,
                       groups=1)
    assert "pip install triton" in TRITON_NEEDED


def test_import_without_triton():
    """`import basisrt` and the kernel module import with triton absent; the wrapper then says why it fails."""
    code = (
        "import sys; sys.modules['triton'] = None; sys.modules['triton.language'] = None\n"
        "import basisrt, basisrt.kernels, basisrt.compiler.gpu_steps\n"
        "from basisrt.kernels import fused_basis_conv as f\n"
        "assert f.triton is None\n"
        "try:\n    f.fused_basis_conv2d(None, None, None)\nexcept RuntimeError as e:\n    print('OK', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "OK" in run.stdout and "pip install triton" in run.stdout


AOT_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from basisrt.kernels import fused_basis_conv as f
k = f._fused_basis_conv_kernel
assert not f.INTERPRETED
for dt, prec, has_a, cap in [("fp32", "ieee", True, 80), ("fp32", "tf32", True, 80), ("fp16", "ieee", False, 80),
                             ("bf16", "ieee", True, 90)]:
    const = dict(KW=3, HAS_A=has_a, HAS_BIAS=True, HAS_RES=True, ACTIVATION=2, INPUT_PRECISION=prec,
                 BLOCK_P=64, BLOCK_N=64, BLOCK_K=32, BLOCK_R=32)  # stride, padding, dilation: i32 at run time
    sig = {n: "constexpr" if n in const else ("*" + dt) if n.endswith("_ptr") else "i32" for n in k.arg_names}
    ck = triton.compile(ASTSource(k, sig, constexprs={(k.arg_names.index(n),): v for n, v in const.items()}),
                        target=GPUTarget("cuda", cap, 32), options=dict(num_warps=4, num_stages=3))
    assert ck.asm["cubin"], (dt, prec)
    print(dt, prec, "mma" if "mma" in ck.asm["ptx"] else "fma")
"""


@needs_triton
def test_kernel_compiles_for_nvidia_without_a_gpu(tmp_path):
    """The interpreter is lenient; this lowers the real kernel (not interpreted) to a cubin for sm_80 /
    sm_90 with no GPU present, and checks tf32 / fp16 / bf16 dots become tensor-core MMAs."""
    from triton.backends import backends
    if "nvidia" not in backends:
        pytest.skip("triton's nvidia backend is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, don't reuse or fill the user's cache
    run = subprocess.run([sys.executable, "-c", AOT_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split("\n")[:4] == ["fp32 ieee fma", "fp32 tf32 mma", "fp16 ieee mma", "bf16 ieee mma"]


# ---- real GPU only -------------------------------------------------------------------------------

@needs_gpu
@pytest.mark.parametrize("dtype,precision,tol", [(torch.bfloat16, "ieee", 2e-2), (torch.float32, "tf32", 3e-3),
                                                 (torch.float16, "ieee", 1e-2)])
def test_gpu_low_precision_paths(dtype, precision, tol):
    torch.manual_seed(7)
    x = torch.randn(4, 32, 17, 15, dtype=torch.float64)
    basis, scale, bias = torch.randn(24, 32, 3, 3, dtype=torch.float64), torch.randn(64, 24, dtype=torch.float64), \
        torch.randn(64, dtype=torch.float64)
    ref = torch.relu(F.conv2d(F.conv2d(x, basis, stride=2, padding=1), scale[:, :, None, None], bias))
    step = GPUFusedConv2d(basis, bias, scale=scale, stride=2, padding=1, dilation=1, groups=1, activation="relu",
                          precision=precision).to("cuda", dtype)
    out = torch.full((4, *ref.shape[2:], 64), float("nan"), dtype=dtype, device="cuda")
    y = step(x.to("cuda", dtype).contiguous(memory_format=torch.channels_last), out=out)
    torch.cuda.synchronize()
    assert torch.isfinite(y).all() and rel_err(y, ref) < tol


@needs_gpu
def test_gpu_autotune_then_cuda_graph(monkeypatch):
    """Autotuned launch (no pinned config), then capture into a CUDA graph and replay on new data."""
    monkeypatch.setenv("BASISRT_TRITON_AUTOTUNE", "1")
    torch.manual_seed(8)
    basis, scale = torch.randn(40, 16, 3, 3), torch.randn(48, 40)
    step = GPUFusedConv2d(basis, None, scale=scale, stride=1, padding=1, dilation=1, groups=1).to("cuda")
    x = torch.randn(2, 16, 21, 19, device="cuda").contiguous(memory_format=torch.channels_last)
    ref = lambda t: F.conv2d(F.conv2d(t.double(), basis.double().cuda(), padding=1),  # noqa: E731
                             scale.double().cuda()[:, :, None, None])
    assert rel_err(step(x), ref(x)) < 1e-5  # first call autotunes
    out = torch.full((2, 21, 19, 48), float("nan"), device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step(x, out=out)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step(x, out=out)
    x.copy_(torch.randn_like(x))
    out.fill_(float("nan"))
    g.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(out).all() and rel_err(out.permute(0, 3, 1, 2), ref(x)) < 1e-5


# ------------------------------------------------------------------ the plan on the Triton backend

@needs_triton
def test_plan_dispatches_fused_pairs_to_triton():
    """compile(backend="triton"): basis pairs (groups=1) become Triton steps, grouped pairs and
    everything else run through PyTorch, and the whole plan matches eager."""
    from nets import pruned_net
    from torch import nn

    import basisrt

    model = pruned_net(tail=nn.Conv2d(16, 16, 3, padding=1, groups=2))
    x = torch.randn(2, 3, 7, 9, device=DEV)
    model = model.to(DEV)
    compiled = basisrt.compile(model, x, backend="triton")
    kinds = {s.name: type(compiled.module.get_submodule(s.name)).__name__
             for s in compiled.plan.steps if s.strategy != "torch"}
    assert kinds == {"stem_step": "GPUFusedConv2d", "conv_step": "GPUFusedConv2d",
                     "tail_step": "TorchConvStep", "head_step": "GPUFusedLinear"}
    assert compiled.module.get_submodule("conv_step").residual  # add + relu fused into the Triton epilogue
    with torch.no_grad():
        ref = model(x)
    assert rel_err(compiled(x), ref) < 1e-5


@needs_triton
def test_triton_backend_errors(monkeypatch):
    from torch import nn

    import basisrt

    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            basisrt.compile(model, torch.randn(1, 3, 5, 5), backend="triton")
    with pytest.raises(ValueError, match="backend must be"):
        basisrt.compile(model, torch.randn(1, 3, 5, 5), backend="tpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(sys.modules, "triton", None)  # as if triton were not installed
    with pytest.raises(RuntimeError, match="needs triton"):
        basisrt.compile(model, torch.randn(1, 3, 5, 5), backend="triton")
