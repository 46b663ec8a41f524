"""A small ResNet for 28x28 medical images (MedMNIST size), written out in plain PyTorch.

Layout (spatial size for a 28x28 input):

- ``stem``: 3x3 convolution, batch norm, ReLU (28x28, ``widths[0]`` channels)
- ``layer1``: a basic residual block at ``widths[0]`` (28x28)
- ``layer2``: a basic block with stride 2 to ``widths[1]`` (14x14)
- ``layer3``: a basic block with stride 2 to ``widths[2]`` (7x7)
- ``pool``: global average pooling; ``fc``: linear layer to the class logits.

With the default widths (32, 64, 128) it has about 0.31 M parameters. Torch is imported at module level because
this module *is* the model; the package's ``__init__`` does not import it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["BasicBlock", "MedResNet"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm; a 1x1 convolution + batch norm shortcut when the shape changes.

    ``out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class MedResNet(nn.Module):
    """A three-stage ResNet for ``(B, in_channels, 28, 28)`` images; :meth:`forward` returns ``(B, n_classes)`` logits.

    Other input sizes work too (the pooling is adaptive) but the network is sized for 28x28.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 2, widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"MedResNet needs three positive widths, not {widths!r}")
        if in_channels < 1 or n_classes < 1:
            raise ValueError(f"MedResNet needs in_channels >= 1 and n_classes >= 1, not {in_channels}, {n_classes}")
        self.in_channels = int(in_channels)
        self.n_classes = int(n_classes)
        self.widths = widths
        w1, w2, w3 = widths
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, w1, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(w1),
            nn.ReLU(inplace=True),
        )
        self.layer1 = BasicBlock(w1, w1, stride=1)
        self.layer2 = BasicBlock(w1, w2, stride=2)
        self.layer3 = BasicBlock(w2, w3, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled ``(B, widths[2])`` representation before ``fc``."""
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
