"""Shared pytest settings: slow tests run only with ERASEDIFF_SLOW=1; tiny models and data for fast tests."""
import os

import pytest
import torch

from erasediff.core import UNetConfig, make_unet
from erasediff.measures import INCEPTION_FILE, write_inception_weights


def pytest_collection_modifyitems(config, items):
    if os.environ.get("ERASEDIFF_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set ERASEDIFF_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


TINY = UNetConfig(sample_size=16, block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "UpBlock2D"), num_classes=10, norm_num_groups=4)


@pytest.fixture
def tiny_cfg():
    return TINY


@pytest.fixture
def tiny_unet():
    torch.manual_seed(0)
    return make_unet(TINY).eval()


@pytest.fixture
def tiny_uncond_unet():
    torch.manual_seed(0)
    from dataclasses import replace
    return make_unet(replace(TINY, num_classes=None)).eval()


@pytest.fixture(scope="module")
def inception_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("inception")
    p = write_inception_weights(d)
    assert p == d / INCEPTION_FILE and p.stat().st_size > 80e6
    return d


@pytest.fixture(scope="module")
def shipped():
    train = pytest.importorskip("erasediff.train")
    try:
        return {w: train.load_reference("digits", w) for w in ("classifier", "unscrubbed", "retrain")}
    except FileNotFoundError as e:
        pytest.skip(f"shipped digits models missing: {e}")
