"""The C++ reference fused basis conv (csrc/basis_conv_ref.*, basisrt._C.basis_conv2d_ref)
against PyTorch float64: basis conv, then grouped 1x1 scaling conv, plus bias (DESIGN §1, §4).

Needs the extension built: `python setup.py build_ext --inplace` (or `pip install -e .`).
"""
import glob
import importlib.util
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F


def _load_C():
    try:
        from basisrt import _C
        return _C
    except ImportError as err:
        # The package __init__ may fail for reasons unrelated to the extension: load the
        # built .so directly in that case.
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "basisrt")
        libs = sorted(glob.glob(os.path.join(root, "_C*.so")) + glob.glob(os.path.join(root, "_C*.pyd")))
        if not libs:
            raise ImportError(
                "basisrt._C is not built: run `python setup.py build_ext --inplace` "
                "or `pip install -e .`") from err
        spec = importlib.util.spec_from_file_location("basisrt._C", libs[0])
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


_C = _load_C()

TOL = 1e-5  # DESIGN §4: float32 CPU paths


def rel_err(out, ref):
    out = torch.as_tensor(np.asarray(out), dtype=torch.float64)
    return ((out - ref).norm() / ref.norm()).item()


def torch_ref(x, B, A, bias, stride, padding, dilation, groups):
    """float64 two-step reference: T = conv(x, B); y = grouped 1x1 conv(T, A) + bias."""
    x, B, A = (torch.from_numpy(np.asarray(t)).double() for t in (x, B, A))
    T = F.conv2d(x, B, None, stride, padding, dilation, groups)
    b = None if bias is None else torch.from_numpy(bias).double()
    return F.conv2d(T, A.reshape(A.shape[0], A.shape[1], 1, 1), b, 1, 0, 1, groups)


# ------------------------------------------------------------------------------------------
# Random shapes
# ------------------------------------------------------------------------------------------

N_CASES = 32
OPTIONS = {
    "kernel": [(1, 1), (3, 3), (5, 5), (7, 7), (1, 3)],
    "stride": [1, 2],
    "padding": [0, 1, 2],
    "dilation": [1, 2],
    "groups": [1, 2, 4],
    "batch": [1, 3],
    "bias": [True, False],
}


def _make_cases(seed=20240611):
    rng = np.random.default_rng(seed)
    # Each option is spread evenly over the cases (a random permutation per feature), so every
    # value appears and combinations are random.
    picks = {k: rng.permutation(N_CASES) % len(v) for k, v in OPTIONS.items()}
    cases = []
    for i in range(N_CASES):
        c = {k: OPTIONS[k][picks[k][i]] for k in OPTIONS}
        g = c["groups"]
        kh, kw = c["kernel"]
        d, p = c["dilation"], c["padding"]
        c["C_in"] = g * int(rng.integers(1, 4))
        c["C_out"] = g * int(rng.integers(1, 5))
        r = int(rng.integers(1, 12))
        while r % 8 == 0:
            r = int(rng.integers(1, 12))
        c["r"] = r
        # Odd, non-square spatial sizes with room for the dilated kernel (output >= 1).
        min_h = max(1, d * (kh - 1) + 1 - 2 * p)
        min_w = max(1, d * (kw - 1) + 1 - 2 * p)
        H = min_h + int(rng.integers(0, 9))
        W = min_w + int(rng.integers(0, 9))
        H += (H % 2 == 0)
        W += (W % 2 == 0)
        if H == W:
            W += 2
        c["H"], c["W"] = H, W
        cases.append(c)
    return cases


CASES = _make_cases()


def _case_id(c):
    return (f"n{c['batch']}_c{c['C_in']}x{c['H']}x{c['W']}_o{c['C_out']}_g{c['groups']}_r{c['r']}"
            f"_k{c['kernel'][0]}x{c['kernel'][1]}_s{c['stride']}_p{c['padding']}_d{c['dilation']}"
            f"_{'bias' if c['bias'] else 'nobias'}")


def _random_inputs(c, seed):
    rng = np.random.default_rng(seed)
    g, r = c["groups"], c["r"]
    kh, kw = c["kernel"]
    x = rng.standard_normal((c["batch"], c["C_in"], c["H"], c["W"])).astype(np.float32)
    B = rng.standard_normal((g * r, c["C_in"] // g, kh, kw)).astype(np.float32)
    A = rng.standard_normal((c["C_out"], r)).astype(np.float32)
    bias = rng.standard_normal(c["C_out"]).astype(np.float32) if c["bias"] else None
    return x, B, A, bias


def test_cases_cover_the_design_checklist():
    for key, values in OPTIONS.items():
        seen = {tuple(c[key]) if isinstance(c[key], tuple) else c[key] for c in CASES}
        assert seen == {tuple(v) if isinstance(v, tuple) else v for v in values}, key
    assert any(c["r"] % 8 != 0 for c in CASES) and all(c["r"] % 8 != 0 for c in CASES)
    assert all(c["H"] % 2 == 1 and c["W"] % 2 == 1 and c["H"] != c["W"] for c in CASES)


@pytest.mark.parametrize("i", range(N_CASES), ids=[_case_id(c) for c in CASES])
def test_matches_torch_float64(i):
    c = CASES[i]
    x, B, A, bias = _random_inputs(c, seed=1000 + i)
    s, p, d, g = c["stride"], c["padding"], c["dilation"], c["groups"]
    out = _C.basis_conv2d_ref(x, B, A, bias, (s, s), (p, p), (d, d), g)
    ref = torch_ref(x, B, A, bias, s, p, d, g)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert out.shape == tuple(ref.shape)
    assert np.isfinite(out).all()  # the output buffer is NaN-poisoned before the kernel runs
    assert ref.norm() > 0
    assert rel_err(out, ref) < TOL


# ------------------------------------------------------------------------------------------
# Other features of the binding
# ------------------------------------------------------------------------------------------

def test_version():
    assert isinstance(_C.__version__, str) and _C.__version__


def test_anisotropic_stride_padding_dilation():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 11, 13)).astype(np.float32)
    B = rng.standard_normal((2 * 3, 2, 3, 5)).astype(np.float32)
    A = rng.standard_normal((6, 3)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    out = _C.basis_conv2d_ref(x, B, A, bias, stride=(2, 1), padding=(1, 2), dilation=(1, 2),
                              groups=2)
    ref = torch_ref(x, B, A, bias, (2, 1), (1, 2), (1, 2), 2)
    assert out.shape == tuple(ref.shape)
    assert rel_err(out, ref) < TOL


def test_defaults_and_4d_scale():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 3, 7, 9)).astype(np.float32)
    B = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    A = rng.standard_normal((4, 5)).astype(np.float32)
    out2d = _C.basis_conv2d_ref(x, B, A)
    out4d = _C.basis_conv2d_ref(x, B, A.reshape(4, 5, 1, 1))
    np.testing.assert_array_equal(out2d, out4d)
    assert rel_err(out2d, torch_ref(x, B, A, None, 1, 0, 1, 1)) < TOL


def test_converts_float64_and_non_contiguous_inputs():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 9, 7))  # float64
    xt = np.ascontiguousarray(np.swapaxes(x, 2, 3)).swapaxes(2, 3)  # same values, not C-contiguous
    assert not xt.flags.c_contiguous
    B = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    A = rng.standard_normal((5, 3)).astype(np.float32)
    ref = torch_ref(x.astype(np.float32), B, A, None, 1, 1, 1, 1)
    for xi in (x, xt):
        out = _C.basis_conv2d_ref(xi, B, A, None, (1, 1), (1, 1), (1, 1), 1)
        assert out.dtype == np.float32
        assert rel_err(out, ref) < TOL


def test_accepts_torch_tensors():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 5, 7)
    B = torch.randn(3, 2, 3, 3)
    A = torch.randn(4, 3)
    out = _C.basis_conv2d_ref(x, B, A, None, (1, 1), (1, 1), (1, 1), 1)
    assert rel_err(out, torch_ref(x.numpy(), B.numpy(), A.numpy(), None, 1, 1, 1, 1)) < TOL


@pytest.mark.parametrize("pads,stride", [((0, 2, 1, 0), 1), ((1, 0, 2, 1), 2), ((2, 1, 0, 2), 2)])
def test_asymmetric_padding(pads, stride):
    top, bottom, left, right = pads
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    B = rng.standard_normal((2 * 5, 2, 3, 3)).astype(np.float32)
    A = rng.standard_normal((6, 5)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    out = _C.basis_conv2d_ref(x, B, A, bias, (stride, stride), (top, left), (1, 1), 2,
                              padding_bottom_right=(bottom, right))
    xp = np.asarray(F.pad(torch.from_numpy(x), (left, right, top, bottom)))
    ref = torch_ref(xp, B, A, bias, stride, 0, 1, 2)
    assert out.shape == tuple(ref.shape)
    assert rel_err(out, ref) < TOL


def test_output_size_crops():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 3, 9, 11)).astype(np.float32)
    B = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    A = rng.standard_normal((5, 4)).astype(np.float32)
    full = _C.basis_conv2d_ref(x, B, A, None, (2, 2), (1, 1), (1, 1), 1)
    assert full.shape == (1, 5, 5, 6)
    crop = _C.basis_conv2d_ref(x, B, A, None, (2, 2), (1, 1), (1, 1), 1, output_size=(4, 5))
    np.testing.assert_array_equal(crop, full[:, :, :4, :5])


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_full_rank_svd_reproduces_dense_conv(groups):
    """With the per-group SVD at full rank (DESIGN §1), the fused pair is the original conv."""
    rng = np.random.default_rng(6 + groups)
    C_in, C_out, kh, kw = 8, 12, 3, 3
    W = torch.from_numpy(rng.standard_normal((C_out, C_in // groups, kh, kw)))
    bias = rng.standard_normal(C_out).astype(np.float32)
    co_g, K = C_out // groups, (C_in // groups) * kh * kw
    r = min(co_g, K)
    Bs, As = [], []
    for j in range(groups):
        U, S, Vh = torch.linalg.svd(W[j * co_g:(j + 1) * co_g].reshape(co_g, K), full_matrices=False)
        Bs.append(Vh[:r].reshape(r, C_in // groups, kh, kw))
        As.append(U[:, :r] * S[:r])
    B = torch.cat(Bs).float().numpy()
    A = torch.cat(As).float().numpy()
    x = rng.standard_normal((2, C_in, 7, 9)).astype(np.float32)
    out = _C.basis_conv2d_ref(x, B, A, bias, (1, 1), (1, 1), (1, 1), groups)
    ref = F.conv2d(torch.from_numpy(x).double(), W, torch.from_numpy(bias).double(), 1, 1, 1, groups)
    assert rel_err(out, ref) < TOL


# ------------------------------------------------------------------------------------------
# Clear errors
# ------------------------------------------------------------------------------------------

def _good():
    rng = np.random.default_rng(7)
    return dict(
        x=rng.standard_normal((1, 4, 6, 7)).astype(np.float32),
        basis=rng.standard_normal((2 * 3, 2, 3, 3)).astype(np.float32),
        scale=rng.standard_normal((6, 3)).astype(np.float32),
        bias=rng.standard_normal(6).astype(np.float32),
        stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=2,
    )


def test_good_baseline_runs():
    assert _C.basis_conv2d_ref(**_good()).shape == (1, 6, 4, 5)


@pytest.mark.parametrize("change,match", [
    (dict(x=np.ones((4, 6, 7), np.float32)), r"x must be 4-D \(N, C_in, H, W\)"),
    (dict(basis=np.ones((6, 2, 3), np.float32)), r"basis must be 4-D"),
    (dict(scale=np.ones(6, np.float32)), r"scale must be 2-D \(C_out, r\)"),
    (dict(scale=np.ones((6, 3, 2, 1), np.float32)), r"1x1 conv weight"),
    (dict(basis=np.ones((6, 4, 3, 3), np.float32)), r"basis.shape\[1\] \(4\) must equal C_in/groups"),
    (dict(scale=np.ones((6, 4), np.float32)), r"scale.shape\[1\] \(4\) must equal r"),
    (dict(bias=np.ones(5, np.float32)), r"bias must be 1-D of length C_out \(6\)"),
    (dict(bias=np.ones((6, 1), np.float32)), r"bias must be 1-D"),
    (dict(groups=3), r"groups \(3\) must divide C_in \(4\)"),
    (dict(groups=0), r"groups must be >= 1"),
    (dict(scale=np.ones((5, 3), np.float32), bias=None), r"groups \(2\) must divide C_out \(5\)"),
    (dict(basis=np.ones((5, 2, 3, 3), np.float32)), r"basis.shape\[0\] \(5\) must be groups\*r"),
    (dict(x=np.ones((1, 4, 2, 7), np.float32)), r"output height would be < 1"),
    (dict(x=np.ones((1, 4, 6, 4), np.float32), dilation=(1, 2)), r"output width would be < 1"),
    (dict(x=np.ones((0, 4, 6, 7), np.float32)), r"N \(batch\) must be >= 1"),
    (dict(stride=(0, 1)), r"stride_h must be >= 1"),
    (dict(dilation=(1, 0)), r"dil_w \(dilation\) must be >= 1"),
    (dict(padding=(-1, 0)), r"pad_top must be >= 0"),
])
def test_clear_errors(change, match):
    kw = _good()
    kw.update(change)
    with pytest.raises(ValueError, match=match):
        _C.basis_conv2d_ref(**kw)


def test_output_size_errors():
    kw = _good()
    with pytest.raises(ValueError, match=r"given H_out=5 exceeds the 4 rows"):
        _C.basis_conv2d_ref(**kw, output_size=(5, 5))
    with pytest.raises(ValueError, match=r"output_size must be >= 1"):
        _C.basis_conv2d_ref(**kw, output_size=(0, 5))
    with pytest.raises(ValueError, match=r"padding_bottom_right must be >= 0"):
        _C.basis_conv2d_ref(**kw, padding_bottom_right=(0, -1))
