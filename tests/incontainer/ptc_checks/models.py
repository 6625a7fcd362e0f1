"""Small models for the TorchScript checks.

They live in a real module file because ``torch.jit.script`` reads the source
of ``forward`` with ``inspect.getsource``.
"""

import torch
from torch import nn

SEED = 0


class ControlFlow(nn.Module):
    """Linear layer whose output goes through ReLU only when the input sum is positive."""

    def __init__(self, features: int = 8) -> None:
        super().__init__()
        self.linear = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        if x.sum() > 0:
            y = torch.relu(y)
        return y


class EvalSensitive(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Dropout -> Linear: output depends on train/eval mode."""

    def __init__(self, features: int = 16, classes: int = 4, p: float = 0.5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, features)
        self.bn = nn.BatchNorm1d(features)
        self.dropout = nn.Dropout(p)
        self.fc2 = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(torch.relu(self.bn(self.fc1(x)))))


class SmallConvNet(nn.Module):
    """Two convolutions, BatchNorm, pooling and a linear head."""

    def __init__(self, channels: int = 3, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, kernel_size=3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


class HalvingLoop(nn.Module):
    """Halve the input until its largest magnitude is at most 1: a data-dependent while loop.

    The number of halvings is added to the output, so a wrong iteration count shows up.
    """

    def __init__(self, features: int = 8, max_steps: int = 64) -> None:
        super().__init__()
        self.cell = nn.Linear(features, features)
        self.max_steps = max_steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = 0
        while bool(x.abs().max() > 1.0) and steps < self.max_steps:
            x = x * 0.5
            steps += 1
        return torch.tanh(self.cell(x)) + steps


class ScaledAdd(nn.Module):
    """Calls the custom operator ``ptc::scaled_add`` (the library must be loaded to script it)."""

    def __init__(self, alpha: float = 0.5) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.ops.ptc.scaled_add(torch.relu(a), b, self.alpha)


def seeded(cls: type[nn.Module], **kwargs: object) -> nn.Module:
    """Instantiate ``cls`` with freshly seeded, reproducible weights."""
    torch.manual_seed(SEED)
    return cls(**kwargs)


def sample(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """Reproducible standard-normal input scaled by ``scale`` (independent of the global RNG)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator) * scale


def positive(*shape: int, seed: int) -> torch.Tensor:
    """Reproducible input whose every element (hence the sum) is positive."""
    return sample(*shape, seed=seed).abs() + 0.1
