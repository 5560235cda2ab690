"""The HumanML3D loader on a tiny folder in the dataset's layout, written by the test."""

import numpy as np
import pytest
import torch
from genneg_motion import skeleton as sk
from genneg_motion.features import joints_to_features
from genneg_motion.gait import generate
from genneg_motion.humanml3d import HumanML3DDataset, HumanML3DError
from genneg_motion.oracle import GroundPenetrationOracle


@pytest.fixture
def folder(tmp_path, rng):
    root = tmp_path / "HumanML3D"
    (root / "new_joint_vecs").mkdir(parents=True)
    (root / "texts").mkdir()
    lengths = {"000001": 60, "000002": 45, "000003": 20, "M000004": 80, "000005": 50}
    feats = {}
    for mid, n in lengths.items():
        f = joints_to_features(generate("walk", n + 1, rng).positions).numpy()
        feats[mid] = f
        np.save(root / "new_joint_vecs" / f"{mid}.npy", f)
    texts = {
        "000001": "a person walks forward.#a/DET person/NOUN#0.0#0.0\nsomeone strolls.#x#0.0#0.0",
        "000002": "a man walks slowly.#a/DET#0.0#0.0",
        "000003": "too short to keep.#x#0.0#0.0",
        # a caption for seconds 1.0-3.5 only: frames 20..70, a 50-frame sub-motion
        "M000004": "a person walks then stops.#x#1.0#3.5",
        "000005": "a person walks.#x#nan#nan",
    }
    for mid, t in texts.items():
        (root / "texts" / f"{mid}.txt").write_text(t + "\n")
    all_f = np.concatenate(list(feats.values()))
    mean, std = all_f.mean(0), all_f.std(0) + 0.1
    np.save(root / "Mean.npy", mean)
    np.save(root / "Std.npy", std)
    (root / "train.txt").write_text("000001\n000002\n000003\nM000004\n")
    (root / "val.txt").write_text("000005\n")
    (root / "test.txt").write_text("000002\nmissing_id\n")
    return root, feats, mean, std


def test_loader_reads_splits_normalises_and_pads(folder, tmp_path):
    root, feats, mean, std = folder
    ds = HumanML3DDataset(path=str(root), text_encoder="bow", max_frames=64, cache=False)
    splits = ds.load(str(tmp_path / "cache"), torch.Generator())
    train = splits.train
    # 000003 (20 frames) is dropped; M000004's span becomes a 50-frame motion
    assert train.x.shape == (3, 64, sk.FEATURE_DIM)
    assert train.cond["mask"].sum(1).tolist() == [60, 45, 50]
    assert train.cond["text"].shape == (3, 512)
    # denormalised real frames give back the files' features (cut to max_frames)
    x0 = train.x[0, :60] * torch.from_numpy(std).float() + torch.from_numpy(mean).float()
    assert torch.allclose(x0, torch.from_numpy(feats["000001"][:60]), atol=1e-5)
    span = train.x[2, :50] * torch.from_numpy(std).float() + torch.from_numpy(mean).float()
    assert torch.allclose(span, torch.from_numpy(feats["M000004"][20:70]), atol=1e-5)
    assert (train.x[1, 45:] == 0).all()
    assert len(splits.val) == 1 and len(splits.test) == 1  # a missing id is skipped
    # real motions are above the floor
    assert GroundPenetrationOracle().label(train.x, train.cond).valid.all()


def test_loader_caches_and_names_missing_files(folder, tmp_path):
    root, *_ = folder
    ds = HumanML3DDataset(path=str(root), text_encoder="none", max_frames=64)
    a = ds.load(str(tmp_path / "cache"), torch.Generator())
    assert "text" not in a.train.cond
    b = ds.load(str(tmp_path / "cache"), torch.Generator())  # from the cache
    assert torch.equal(a.train.x, b.train.x)
    with pytest.raises(HumanML3DError, match="no usable motion"):
        HumanML3DDataset(path=str(root), text_encoder="none", cache=False, min_frames=190).build()
    (root / "Std.npy").unlink()
    with pytest.raises(HumanML3DError, match="Std.npy"):
        HumanML3DDataset(path=str(root), text_encoder="none", cache=False).build()
