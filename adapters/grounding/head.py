"""F-LMM's mask head: a small UNet over a phrase's attention maps.

    maps [P, layers*heads, h, w] (attention probabilities to the image tokens, each map summing
    to at most 1) x (h*w), so uniform attention reads 1 -> bilinear x upsample
    -> enc1 (2 x conv3x3-GN-ReLU, c) -> maxpool -> enc2 (2 x conv3x3-GN-ReLU, 2c)
    -> transposed conv x2 -> concat enc1 -> dec1 (2 x conv3x3-GN-ReLU, c) -> conv1x1
    -> logits [P, h*upsample, w*upsample]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    groups = 8 if c_out % 8 == 0 else 1
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.ReLU(inplace=True)]


class MaskHead(nn.Module):
    def __init__(self, in_channels: int, grid: tuple[int, int], upsample: int = 4, channels: int = 32) -> None:
        super().__init__()
        if (grid[0] * upsample) % 2 or (grid[1] * upsample) % 2:
            raise ValueError("grid * upsample must be even on both sides (one pooling level)")
        self.grid, self.upsample, self.scale = tuple(grid), upsample, float(grid[0] * grid[1])
        c = channels
        self.enc1 = nn.Sequential(*_block(in_channels, c))
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), *_block(c, 2 * c))
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.dec1 = nn.Sequential(*_block(2 * c, c))
        self.out = nn.Conv2d(c, 1, 1)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """[P, C, h, w] attention maps -> [P, h*upsample, w*upsample] mask logits."""
        x = F.interpolate(maps * self.scale, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        e1 = self.enc1(x)
        d1 = self.dec1(torch.cat([self.up(self.enc2(e1)), e1], dim=1))
        return self.out(d1)[:, 0]
