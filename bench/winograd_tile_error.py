"""bf16 error of a 3×3 conv by Winograd F(m×m, 3×3) for m = 2, 3, 4, against the direct bf16 conv.

Why the bf16 Winograd conv uses F(2×2, 3×3) only: larger tiles do fewer MACs (36/16 and 25/9
products per output pixel against 16/4), but their transforms scale the values that bf16 rounds
(`V = Bᵀ d B` and `U = G g Gᵀ`, each rounded once, as `amx_conv.cpp` rounds them) by up to 5-25,
and the output transform sums them back. Each layer: a post-ReLU map, orthonormal basis filters
(as `basisrt.decompose` makes them), float64 reference; prints each way's relative error.

    python bench/winograd_tile_error.py
"""
import numpy as np
import torch


def bf16(a: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).bfloat16().double().numpy()


def cook_toom(m: int, points: list[float], r: int = 3) -> dict:
    """Bᵀ, G, Aᵀ of F(m, r) at `points` and ∞ (Lavin & Gray 2016), Bᵀ solved from the identity
    Σ_j Aᵀ[i, j] G[j, k] Bᵀ[j, l] = [l = i + k] (a correlation's output i, tap k, input l)."""
    n = m + r - 1
    at, g = np.zeros((m, n)), np.zeros((n, r))
    for j, p in enumerate(points):
        at[:, j] = [p ** i for i in range(m)]
        g[j] = [p ** k / np.prod([p - q for q in points if q != p]) for k in range(r)]
    at[m - 1, n - 1] = g[n - 1, r - 1] = 1
    rows, rhs = [], []
    for i in range(m):
        for k in range(r):
            for col in range(n):
                row = np.zeros((n, n))
                row[:, col] = at[i] * g[:, k]
                rows.append(row.ravel())
                rhs.append(float(col == i + k))
    bt, *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    assert np.allclose(np.array(rows) @ bt, rhs), "no exact Bᵀ at these points"
    return {"bt": bt.reshape(n, n), "g": g, "at": at, "m": m}


def direct(x: np.ndarray, w: np.ndarray, h: int) -> np.ndarray:
    return sum(np.einsum("rc,chw->rhw", w[:, :, i, j], x[:, i:i + h, j:j + h]) for i in range(3) for j in range(3))


def winograd(x: np.ndarray, w: np.ndarray, h: int, f: dict, rnd) -> np.ndarray:
    m, bt, g, at = f["m"], f["bt"], f["g"], f["at"]
    a = m + 2
    u = rnd(np.einsum("ai,rcij,bj->rcab", g, w, g))
    out = np.zeros((w.shape[0], h, h))
    for ty in range(0, h, m):
        for tx in range(0, h, m):
            d = x[:, ty:ty + a, tx:tx + a]
            d = np.pad(d, ((0, 0), (0, a - d.shape[1]), (0, a - d.shape[2])))
            v = rnd(np.einsum("ai,cij,bj->cab", bt, d, bt))
            y = np.einsum("ia,rab,jb->rij", at, np.einsum("rcab,cab->rab", u, v), at)
            out[:, ty:ty + m, tx:tx + m] = y[:, :min(m, h - ty), :min(m, h - tx)]
    return out


def main() -> None:
    rng = np.random.default_rng(0)
    tiles = {"F(2x2)": cook_toom(2, [0, 1, -1]), "F(3x3)": cook_toom(3, [0, 1, -1, 0.5]),
             "F(4x4)": cook_toom(4, [0, 1, -1, 2, -2])}
    print("| channels | rank | map | direct bf16 | " + " | ".join(f"{k} bf16" for k in tiles) + " |")
    print("|---:|---:|---:|---:|" + "---:|" * len(tiles))
    for c, r, h in [(64, 16, 12), (128, 32, 12), (256, 64, 6), (512, 128, 6)]:
        x = np.pad(np.maximum(rng.standard_normal((c, h, h)), 0), ((0, 0), (1, 1), (1, 1)))  # post-ReLU, padded
        w = np.linalg.qr(rng.standard_normal((9 * c, r)))[0].T.reshape(r, c, 3, 3)  # orthonormal filters
        ref = direct(x, w, h)
        err = lambda y: np.linalg.norm(y - ref) / np.linalg.norm(ref)  # noqa: E731
        cells = [err(direct(bf16(x), bf16(w), h))] + [err(winograd(bf16(x), w, h, f, bf16)) for f in tiles.values()]
        for f in tiles.values():  # the transforms are exact: the error is bf16's
            assert err(winograd(x, w, h, f, lambda v: v)) < 1e-12
        print(f"| {c} | {r} | {h}×{h} | " + " | ".join(f"{e:.1e}" for e in cells) + " |")


if __name__ == "__main__":
    main()
