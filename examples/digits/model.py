"""Handwritten digits: a small PyTorch CNN on scikit-learn's bundled 8x8 digit images.

``load`` is the data function (nothing is downloaded); ``train`` returns the ``nn.Module`` in
eval mode. modelyard saves it with ``torch.export``, so serving never unpickles Python objects.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn


def load() -> tuple[np.ndarray, np.ndarray]:
    """1,797 images as float32 ``(n, 1, 8, 8)`` scaled to [0, 1], and their digits ``0``-``9``."""
    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32)[:, np.newaxis, :, :]
    return X, digits.target.astype(np.int64)


class DigitNet(nn.Module):
    """Two small convolutions and a classifier head; outputs one logit per digit."""

    def __init__(self, channels: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * channels * 4 * 4, hidden),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train(X: Any, y: Any, params: dict[str, Any]) -> nn.Module:
    """Train the CNN for a few epochs with Adam; deterministic for a given ``seed``."""
    seed = int(params.get("seed", 0))
    epochs = int(params.get("epochs", 12))
    batch_size = int(params.get("batch_size", 64))
    torch.manual_seed(seed)
    np.random.seed(seed)
    # Tiny convolutions: more than a couple of threads only adds scheduling overhead.
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    inputs = torch.as_tensor(np.asarray(X, dtype=np.float32))
    targets = torch.as_tensor(np.asarray(y, dtype=np.int64))
    model = DigitNet(int(params.get("channels", 16)), int(params.get("hidden", 64)))
    optimizer = torch.optim.Adam(model.parameters(), lr=float(params.get("lr", 3e-3)))
    loss_fn = nn.CrossEntropyLoss()
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(inputs), generator=order).split(batch_size):
            optimizer.zero_grad()
            loss = loss_fn(model(inputs[batch]), targets[batch])
            loss.backward()
            optimizer.step()
    return model.eval()
