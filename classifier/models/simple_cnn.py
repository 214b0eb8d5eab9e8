"""The tutorial baseline: three conv/max-pool blocks, a dense-128 layer and the class head, trained from scratch.

It exposes the small part of timm's model interface the rest of the package uses (`get_classifier`,
`reset_classifier`, `forward_features`, `forward_head`, `num_features`, `pretrained_cfg`), so training,
prediction and attribution need no special cases for it.
"""

from __future__ import annotations

import torch
from torch import nn


class SimpleCNN(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0, **_: object):
        super().__init__()
        layers: list[nn.Module] = []
        chans = [in_chans, 32, 64, 64]
        for c_in, c_out in zip(chans, chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        # Pooling to a fixed 4x4 grid keeps the dense layer's size independent of the input size.
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc1 = nn.Linear(64 * 16, 128)
        self.num_features = 128
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(128, num_classes) if num_classes else nn.Identity()
        self.num_classes = num_classes
        self.pretrained_cfg = {
            "input_size": (in_chans, 128, 128),
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
            "num_classes": num_classes,
            "first_conv": "features.0",
            "classifier": "fc",
        }
        self.default_cfg = self.pretrained_cfg

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.relu(self.fc1(torch.flatten(self.pool(x), 1)))
        return x if pre_logits else self.fc(self.drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, *_: object, **__: object) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
