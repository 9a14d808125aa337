"""basisrt.data.glyphs: the rendered characters-and-symbols source task of the paper experiment."""
import pytest
import torch

from basisrt import data


def test_shapes_range_labels_and_determinism():
    ds = data.glyphs(4, size=16, seed=3)
    x, y = ds.tensors
    n = len(data.GLYPH_CLASSES)
    assert x.shape == (4 * n, 1, 16, 16) and x.dtype == torch.float32
    assert y.shape == (4 * n,) and torch.equal(torch.bincount(y), torch.full((n,), 4))
    assert 0 <= x.min() and x.max() <= 1 and x.mean() > 0.05  # ink on every image, not blank frames
    assert (x.flatten(1).amax(1) > 0.5).all()
    assert torch.equal(data.glyphs(4, size=16, seed=3).tensors[0], x)
    assert not torch.equal(data.glyphs(4, size=16, seed=4).tensors[0], x)


def test_renderings_of_one_class_vary():
    x, y = data.glyphs(12, size=16, seed=0, classes="A").tensors
    assert (x.flatten(1).std(0).mean() > 0.1)  # fonts and distortions differ


def test_a_linear_classifier_learns_it():
    """Ten classes the model has to tell apart by shape: far above chance after a few hundred steps."""
    torch.manual_seed(0)
    train = data.glyphs(60, size=16, seed=0, classes="0123456789")
    test = data.glyphs(20, size=16, seed=1, classes="0123456789")
    model = torch.nn.Linear(256, 10)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = train.tensors
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x.flatten(1)), y).backward()
        opt.step()
    xt, yt = test.tensors
    accuracy = (model(xt.flatten(1)).argmax(1) == yt).float().mean().item()
    assert accuracy > 0.5, accuracy  # chance: 0.1


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="n_per_class"):
        data.glyphs(0)
    with pytest.raises(ValueError, match="unknown data set"):
        data.load("fonts")
    assert "glyphs" in data.DATASETS
