"""Helpers shared by several test files: SCHED, TINY, tiny_model."""
from dataclasses import replace
import torch
from erasediff.core import NoiseSchedule, UNetConfig, make_unet
torch.set_num_threads(1)


SCHED = NoiseSchedule()


TINY = UNetConfig(sample_size=16, block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "UpBlock2D"), num_classes=10, norm_num_groups=4)


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return make_unet(replace(TINY, **kw))
