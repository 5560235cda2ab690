import attrs
import pytest
import torch
from torch import nn

from genneg.engine.runner import run
from genneg.engine.warm_start import copy_matching
from genneg.errors import ConfigError
from genneg.plugins import build_registry
from tests import toy_plugin
from tests.toy_plugin import toy_config


def test_copy_matching_copies_same_name_and_shape_only():
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(3, 8), nn.SiLU(), nn.Linear(8, 3))
    dst = nn.Sequential(nn.Linear(3, 8), nn.SiLU(), nn.Linear(8, 1))
    head_before = dst[2].weight.clone()
    copied = copy_matching(dst, src)
    assert copied == ["0.weight", "0.bias"]
    assert torch.equal(dst[0].weight, src[0].weight) and torch.equal(dst[0].bias, src[0].bias)
    assert torch.equal(dst[2].weight, head_before)  # [1, 8] against [3, 8]: left alone
    assert dst[0].weight.requires_grad  # still a trainable parameter, not the source's tensor
    dst[0].weight.data.add_(1.0)
    assert not torch.equal(dst[0].weight, src[0].weight)


def test_copy_matching_with_nothing_in_common_names_the_fix():
    with pytest.raises(ConfigError, match="classifier.init = 'scratch'"):
        copy_matching(nn.Linear(2, 1), nn.Sequential(nn.Linear(2, 2)))


def test_run_with_classifier_init_baseline(tmp_path):
    registry = build_registry({"toy": toy_plugin}, autoload=False)
    cfg = toy_config(iterations=1)
    cfg = attrs.evolve(
        cfg,
        classifier=attrs.evolve(cfg.classifier, init="baseline"),
        distill=attrs.evolve(cfg.distill, enabled=False),
    )
    rows = run(cfg, tmp_path / "r", registry=registry, progress=False, quiet=True)
    assert [r["stage"] for r in rows] == ["baseline", "iter1"]
    log = (tmp_path / "r" / "log.txt").read_text()
    assert "iter1: classifier starts from the baseline (" in log


def test_classifier_init_is_checked():
    cfg = toy_config()
    with pytest.raises(ValueError, match="init"):
        attrs.evolve(cfg.classifier, init="pretrained")
