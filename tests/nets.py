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
