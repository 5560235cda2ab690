"""The download-free data source and the text encoders."""

import importlib.util

import pytest
import torch
from genneg_motion import skeleton as sk
from genneg_motion.features import joint_heights
from genneg_motion.oracle import GroundPenetrationOracle
from genneg_motion.splits import denormalise
from genneg_motion.synthetic import SyntheticMotionDataset
from genneg_motion.text import BagOfWordsEncoder, make_text_encoder

from genneg.components import OracleResult


def test_synthetic_splits_are_normalised_and_above_the_floor(tmp_path):
    ds = SyntheticMotionDataset(n_train=24, n_val=6, n_test=6, min_frames=20, max_frames=30)
    splits = ds.load(str(tmp_path), torch.Generator())
    train = splits.train
    assert train.x.shape == (24, 30, sk.FEATURE_DIM)
    lengths = train.cond["mask"].sum(1)
    assert lengths.min() >= 20 and lengths.max() <= 30
    real = train.x[train.cond["mask"]]
    assert real.mean(0).abs().max() < 1e-4  # train statistics
    assert (train.x[~train.cond["mask"]] == 0).all()
    for split in (splits.train, splits.val, splits.test):
        heights = joint_heights(denormalise(split.x, split.cond))[split.cond["mask"]]
        assert heights.amin() > -1e-4  # true data never penetrates
        assert GroundPenetrationOracle(threshold=1e-4).label(split.x, split.cond).valid.all()
    # deterministic and cached: a second load is identical
    again = ds.load(str(tmp_path), torch.Generator())
    assert torch.equal(again.test.x, splits.test.x)
    assert list((tmp_path / "motion-synthetic").glob("*.pt"))


def test_plot_samples_writes_a_picture(tmp_path):
    ds = SyntheticMotionDataset(n_train=4, n_val=2, n_test=2, min_frames=10, max_frames=12)
    split = ds.load(str(tmp_path), torch.Generator()).train
    result = OracleResult(valid=torch.tensor([True, False, True, False]))
    ds.plot_samples(split, result, str(tmp_path / "p" / "s.png"), "test")
    assert (tmp_path / "p" / "s.png").stat().st_size > 10_000


def test_bag_of_words_is_deterministic_and_semantic():
    enc = BagOfWordsEncoder()
    e = enc(["a person walks forward", "a person walks forward", "a person jumps high", ""])
    assert e.shape == (4, 512)
    assert torch.equal(e[0], e[1])
    assert float(e[0].norm()) == pytest.approx(1.0, abs=1e-5)
    assert (e[3] == 0).all()
    walk2 = enc(["a person walks forward slowly"])[0]
    assert float(e[0] @ walk2) > float(e[0] @ e[2])  # shared words, closer embedding
    assert make_text_encoder("none") is None
    with pytest.raises(ValueError, match="unknown text encoder"):
        make_text_encoder("bert")


@pytest.mark.skipif(importlib.util.find_spec("clip") is not None, reason="clip is installed")
def test_clip_without_the_package_says_what_to_install():
    with pytest.raises(ImportError, match="CLIP"):
        make_text_encoder("clip")
