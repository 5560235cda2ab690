import math

import pytest
import torch
from genneg_checkerboard import plugin
from genneg_checkerboard.data import CheckerboardDataset, CheckerboardOracle
from genneg_checkerboard.geometry import Board
from genneg_checkerboard.network import ResidualMLP, ResidualMLPClassifier

from genneg.config import resolve
from genneg.testing import ClassifierContract, NetworkContract, OracleContract


def test_board_inside_by_hand():
    b = Board(4, 1.0)  # cells of side 0.5; cell (0, 0) = [-1, -0.5]^2 is filled
    pts = torch.tensor(
        [
            [-0.75, -0.75],  # centre of filled (0, 0)
            [-0.25, -0.75],  # centre of empty (1, 0)
            [-0.25, -0.25],  # centre of filled (1, 1)
            [-0.5, -0.75],  # on the edge between filled (0,0) and empty (1,0): inside
            [1.0, 1.0],  # corner of filled (3, 3)
            [1.01, 0.75],  # outside the board
            [0.0, 0.0],  # a vertex shared by filled and empty cells
        ]
    )
    assert b.inside(pts).tolist() == [True, False, True, True, True, False, True]


def test_samples_are_uniform_on_filled_cells():
    b = Board(4, 1.0)
    x = b.sample(80_000, torch.Generator().manual_seed(0))
    assert b.inside(x).all()
    cells = torch.floor((x + 1) / 0.5).long()
    counts = torch.bincount(cells[:, 0] * 4 + cells[:, 1], minlength=16).float()
    filled = counts[counts > 0]
    assert len(filled) == 8
    assert (filled / 10_000 - 1).abs().max() < 0.05  # 8 cells x 10k points each


def test_log_density_is_normalised():
    b = Board(4, 1.0)
    assert b.filled_area == pytest.approx(2.0)
    x = torch.rand(200_000, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1
    integral = 4.0 * b.log_density(x).exp().mean()  # Monte Carlo over the 2 x 2 box
    assert float(integral) == pytest.approx(1.0, abs=0.01)


def test_dataset_sizes_and_determinism():
    ds = CheckerboardDataset(n_train=1000, n_val=50, n_test=70)
    a = ds.load("", torch.Generator().manual_seed(3))
    b = ds.load("", torch.Generator().manual_seed(3))
    assert (len(a.train), len(a.val), len(a.test)) == (1000, 50, 70)
    assert torch.equal(a.train.x, b.train.x)
    with pytest.raises(ValueError, match="n_train"):
        CheckerboardDataset(n_train=0)


def test_network_has_the_papers_size():
    """App. B.1: hidden 256, time embedding 128, 2 residual blocks: ~330k parameters."""
    n = sum(p.numel() for p in ResidualMLP().parameters())
    assert 320_000 < n < 340_000
    m = sum(p.numel() for p in ResidualMLPClassifier().parameters())
    assert n - m == 257  # only the output layer differs (2 outputs vs 1)


def test_presets_resolve_and_paper_sizes():
    for factory in (plugin.demo_preset, plugin.paper_preset):
        resolve(factory())
    p = plugin.paper_preset()
    assert p.baseline.steps == 30_000 and p.baseline.batch_size == 1000
    assert p.synth.n_per_class == 50_000 and p.classifier.train.steps == 20_000
    assert p.classifier.train.batch_size == 8192 and p.classifier.train.lr == 3e-3
    assert p.distill.train.steps == 250_000 and p.iterations == 5
    assert math.isclose(p.process.options["sigma_data"], 0.5)


def batch(n):
    return torch.randn(n, 2), {}


class TestOracle(OracleContract):
    def make_oracle(self):
        return CheckerboardOracle()

    def make_batch(self, n):
        return batch(n)


class TestDenoiserNetwork(NetworkContract):
    def make_network(self):
        return ResidualMLP(hidden=32, emb_dim=16)

    def make_batch(self, n):
        return batch(n)


class TestClassifierNetwork(ClassifierContract):
    def make_classifier(self):
        return ResidualMLPClassifier(hidden=32, emb_dim=16)

    def make_batch(self, n):
        return batch(n)


def test_oracle_rejects_wrong_shape():
    with pytest.raises(ValueError, match="must be \\[B, 2\\]"):
        CheckerboardOracle().label(torch.zeros(3, 3), {})


def test_stacked_classifiers_match_their_members():
    """A stack of 3 evaluated as one batched network (genneg.stacking): the members' logits
    and the guidance of the per-classifier loop, to float32 tolerance (the sinusoidal embedding
    is float32, so the network does not run in float64)."""
    from genneg.diffusion.edm import EDMProcess
    from genneg.testing import check_stacked_forward

    torch.manual_seed(0)
    nets = [ResidualMLPClassifier(hidden=16, emb_dim=8, blocks=2) for _ in range(3)]
    x = torch.randn(7, 2)
    sigma = torch.logspace(-2, 1.5, 7)
    check_stacked_forward(nets, EDMProcess(), x, sigma, {}, rtol=1e-5, atol=1e-6)


def test_one_noise_level_embeds_once_with_the_same_outputs():
    """A sampler's batch has one noise level: the time embedding is computed for one row and
    broadcast (``noise_rows``), with the outputs of the per-row computation, also stacked."""
    from genneg_checkerboard import network

    from genneg.diffusion.edm import EDMProcess
    from genneg.testing import check_stacked_forward

    torch.manual_seed(0)
    net = ResidualMLP(hidden=32, emb_dim=16)
    x, c = torch.randn(9, 2), torch.full((9,), 0.3)
    assert network.noise_rows(c).shape == (1,)
    assert network.noise_rows(torch.tensor([0.3, 0.4])).shape == (2,)
    assert network.noise_rows(torch.tensor([0.3])).shape == (1,)
    one = net(x, c)
    per_row = torch.cat([net(x[i : i + 1], c[i : i + 1]) for i in range(9)])
    assert torch.allclose(one, per_row, rtol=1e-6, atol=1e-6)  # float32 embedding
    nets = [ResidualMLPClassifier(hidden=16, emb_dim=8) for _ in range(3)]
    sigma = torch.full((7,), 0.7)
    check_stacked_forward(nets, EDMProcess(), torch.randn(7, 2), sigma, {}, rtol=1e-5, atol=1e-6)
