"""PyTorch twin of the triage CNN (`tinytriage.models.cnn`): the same ``feature_layers``
list built from ``torch.nn``, so parameter names match the NumPy model's name for name."""

from __future__ import annotations

import torch
from torch import nn

from tinytriage.models.cnn import CNNConfig, feature_layers


class TorchGlobalAvgMaxPool2d(nn.Module):
    """Twin of ``tinytriage.nn.GlobalAvgMaxPool2d``: (N, C, H, W) -> (N, 2C, 1, 1), means then maxima."""

    def __init__(self) -> None:
        super().__init__()
        self.avg, self.max = nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.avg(x), self.max(x)], dim=1)


class TorchTriageCNN(nn.Module):
    """PyTorch twin of ``tinytriage.models.cnn.TriageCNN``."""

    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        for kind, _role, args in feature_layers(cfg):
            if kind == "conv":
                layers.append(nn.Conv2d(**args))
            elif kind == "bn":
                layers.append(nn.BatchNorm2d(**args))
            elif kind == "relu":
                layers.append(nn.ReLU())
            elif kind == "maxpool":
                layers.append(nn.MaxPool2d(**args))
        self.features = nn.Sequential(*layers)
        pool = nn.AdaptiveAvgPool2d(1) if cfg.pool == "avg" else TorchGlobalAvgMaxPool2d()
        self.head = nn.Sequential(
            pool, nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(cfg.head_features, cfg.num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
