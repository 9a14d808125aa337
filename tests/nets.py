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
