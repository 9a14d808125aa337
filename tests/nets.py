"""Small models shared by the tests."""
import torch
from torch import nn

import basisrt


def pruned_net(tail: nn.Conv2d | None = None) -> nn.Module:
    """Basis pairs with BN, a residual add, a last conv `tail` (default: 16 -> 24, stride 2) and a
    linear head, decomposed and basis-pruned to a quarter of their rank."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.bn = nn.BatchNorm2d(16)
            self.conv = nn.Conv2d(16, 16, 3, padding=1)
            self.tail = tail if tail is not None else nn.Conv2d(16, 24, 3, stride=2, padding=1)
            self.head = nn.Linear(self.tail.out_channels, 5)

        def forward(self, x):
            y = torch.relu(self.bn(self.stem(x)))
            y = torch.relu(self.conv(y) + y)
            return self.head(self.tail(y).mean((2, 3)))

    torch.manual_seed(0)
    model = basisrt.decompose(Net().eval()).model
    basisrt.prune_basis(model, "ratio", 0.25)
    return model.eval()


def linear_on_tokens_case(rank: int):
    """(x, residual, step args, float64 reference of relu(linear(x) + residual)) for a (3, 7, 33)
    token batch: a basis pair of `rank` (no bias) or, with rank 0, a dense linear with bias."""
    torch.manual_seed(0)
    x = torch.randn(3, 7, 33, dtype=torch.float64)
    res = torch.randn(3, 7, 20, dtype=torch.float64)
    if rank:
        basis, scale = torch.randn(rank, 33, dtype=torch.float64), torch.randn(20, rank, dtype=torch.float64)
        args, ref = (basis, None, scale), x @ basis.T @ scale.T
    else:
        weight, bias = torch.randn(20, 33, dtype=torch.float64), torch.randn(20, dtype=torch.float64)
        args, ref = (weight, bias), x @ weight.T + bias
    return x, res, args, torch.relu(ref + res)


def matches_eager_and_round_trips(compiled, model: nn.Module, x: torch.Tensor, tmp_path,
                                  batches: tuple[int, ...] = (1, 3)) -> None:
    """`compiled` within 1e-5 of eager `model` at each batch size (x's image size; one tensor or a
    tuple / list of them), and its saved plan, loaded, gives the same bits on x."""
    for batch in batches:
        xb = torch.randn(batch, *x.shape[1:])
        with torch.no_grad():
            torch.testing.assert_close(compiled(xb), model(xb), rtol=1e-5, atol=1e-5)
    compiled.save(tmp_path / "plan.basisrt")
    torch.testing.assert_close(basisrt.load(tmp_path / "plan.basisrt")(x), compiled(x), rtol=0, atol=0)
