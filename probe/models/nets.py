"""Small network architectures of probe's own, used by the bundled encoders."""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class FashionCNN(nn.Module):
    """A VGG-style classifier for 1×32×32 images.

    ``features`` maps the image to a 256-d penultimate vector (the default feature probe analyses);
    ``head`` maps that vector to the 10 Fashion-MNIST logits.
    """

    def __init__(self, num_classes: int = 10, width: int = 32, embed_dim: int = 256, in_chans: int = 1):
        super().__init__()
        self.stem = nn.Sequential(_block(in_chans, width), _block(width, 2 * width), _block(2 * width, 4 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(4 * width, embed_dim), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(embed_dim, num_classes)
        self.num_features = embed_dim
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.pool(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.forward_features(x)))


class FashionMLP(nn.Module):
    """A plain MLP classifier for 1×32×32 images: no convolutions, no weight sharing.

    Shipped as ``bundled:fashion-mlp``, the *independent* classifier ``probe compare`` reads the class of
    decodes made with ``bundled:fashion-cnn`` with: a network of another kind does not share the CNN's
    adversarial directions, so a texture that fools the CNN rarely fools it the same way. ``features``
    (Flatten → Linear-ReLU-Dropout per hidden width → Linear-ReLU to ``embed_dim``) gives the embedding,
    ``head`` the logits. Inputs are normalised by the encoder's preprocessing (mean 0.5, std 0.5); the
    module names match ``benchmarks/naturalness.py``'s ``JudgeMLP`` so its weights load unchanged.
    """

    def __init__(self, hidden: tuple[int, ...] | list[int] = (512, 256), embed_dim: int = 64, num_classes: int = 10,
                 dropout: float = 0.3, in_pixels: int = 32 * 32):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_pixels
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers += [nn.Linear(width, embed_dim), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(embed_dim, num_classes)
        self.num_features = embed_dim
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
