"""Tests of erasediff.methods: the registry and the calibrated defaults per preset."""
import pytest
import torch
from erasediff.objectives import (FinetuneConfig)
from erasediff.methods import METHODS, default_config, get_method, make_objective
torch.set_num_threads(1)
from _unlearn_helpers import SCHED


def test_registry():
    get_method("erasediff")                                  # registers the baselines too
    assert {"erasediff", "finetune", "neggrad", "salun"} <= set(METHODS)
    for name, m in list(METHODS.items()):
        obj = make_objective(name, SCHED)
        assert hasattr(obj, "grads")
        assert isinstance(default_config("digits", name), m.config_cls)
    assert default_config("digits", "finetune").steps == default_config("digits").steps
    with pytest.raises(ValueError, match="method must be one of"):
        make_objective("no_such_method", SCHED)
    with pytest.raises(ValueError, match="takes a EraseDiffConfig"):
        make_objective("erasediff", SCHED, FinetuneConfig())


def test_default_config_per_loss():
    "Each forget loss comes with its own calibrated step size on digits; a dict naming the loss starts from it."
    dev, uni = default_config("digits"), default_config("digits", forget_loss="uniform")
    assert (dev.forget_loss, uni.forget_loss) == ("deviate", "uniform") and uni.lr != dev.lr
    assert default_config("digits", forget_loss="deviate") == dev
    assert default_config("cifar10").forget_loss == "deviate" and default_config("cifar10").ema_decay == 0.99
