"""The project's toy models: one definition for the checks, the model-server
repository (``modelrepo``), the latency benchmark and the size floor.

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


class SmallConv(nn.Module):
    """The model server's conv net: two 3x3 convolutions, pooling, a linear head (10 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.relu(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


class UsesCustomOp(nn.Module):
    """Calls ``ptserve_test::scale2``, an operator only ``modelrepo.make_broken`` defines."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.ptserve_test.scale2(x)


class Spin(nn.Module):
    """Busy for ``n`` small matrix products: a request that stays in flight a while."""

    def forward(self, n: torch.Tensor) -> torch.Tensor:
        y = torch.full((64, 64), 1.0 / 64, device=n.device)
        for _ in range(int(n.item())):
            y = torch.tanh(y @ y)
        return y.sum().reshape(1)


class Fill(nn.Module):
    """``n`` values of 0.5: an answer as large as the client asks for."""

    def forward(self, n: torch.Tensor) -> torch.Tensor:
        return torch.full([int(n.item())], 0.5, device=n.device)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention and MLP block (width 128, 4 heads, MLP 512)."""

    def __init__(self, dim: int = 128, heads: int = 4, hidden: int = 512) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        q = q.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
        k = k.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
        v = v.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
        attended = nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


def seeded(cls: type[nn.Module], **kwargs: object) -> nn.Module:
    """Instantiate ``cls`` with freshly seeded, reproducible weights."""
    torch.manual_seed(SEED)
    return cls(**kwargs)


def twins(cls: type[nn.Module], **kwargs: object) -> tuple[nn.Module, nn.Module]:
    """Two independently built ``cls`` modules with the same seeded weights, in eval mode.

    The first is the eager reference, the second the copy to script, move or cast:
    ``torch.jit.script(m)`` shares ``m``'s parameters, so ``.to("cuda")`` or
    ``.double()`` on a scripted ``m`` would change the reference too.
    """
    return seeded(cls, **kwargs).eval(), seeded(cls, **kwargs).eval()


def sample(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """Reproducible standard-normal input scaled by ``scale`` (independent of the global RNG)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator) * scale


def positive(*shape: int, seed: int) -> torch.Tensor:
    """Reproducible input whose every element (hence the sum) is positive."""
    return sample(*shape, seed=seed).abs() + 0.1
