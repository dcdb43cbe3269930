"""Helpers shared by several test files: OracleClassifier, TINY, make_tiny, rand_images."""
from __future__ import annotations
import torch
import torch.nn as nn
from erasediff.core import UNetConfig, make_unet
torch.set_num_threads(1)


def rand_images(n: int, seed: int, shape=(1, 8, 8)) -> torch.Tensor:
    "n images with i.i.d. uniform pixels in [-1, 1]."
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g) * 2 - 1


TINY = UNetConfig(block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)


def make_tiny(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return make_unet(UNetConfig(**{**TINY.__dict__, **kw}))


class OracleClassifier(nn.Module):
    "Reads the class from the image: logits = the first 10 pixels; features = the first 4 pixels."
    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
    def features(self, x): return x.flatten(1)[:, :4] + 0 * self.dummy
    def forward(self, x): return x.flatten(1)[:, :10] + 0 * self.dummy
