"""The RPE transformer: Eqs. (35)-(36) against a direct loop, equivariance, masking."""

import math

import pytest
import torch
from genneg_traffic.network import RPESelfAttention, TrafficClassifier, TrafficDenoiser, sinusoidal

SMALL = dict(hidden=32, heads=4, layers=2, ff_mult=2, map_width=8)


def batch(B=3, A=5, R=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, A, 7, generator=g)
    mask = torch.ones(B, A, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2, 1:] = False
    raster = (torch.rand(B, 1, R, R, generator=g) > 0.5).to(torch.uint8)
    t = torch.tensor([0.0, 500.0, 999.0])[:B]
    return x, t, mask, raster


def frame(B=3, scale=0.5):
    """A ``map_frame``: model units -> raster coordinates (positions in [-2, 2] -> [-1, 1])."""
    return torch.tensor([[scale, 0.0, -scale, 0.0]]).expand(B, 4)


def test_rpe_attention_matches_a_loop_over_eqs_35_36():
    torch.manual_seed(0)
    att = RPESelfAttention(hidden=8, heads=2).double()
    B, A = 2, 4
    x = torch.randn(B, A, 8, dtype=torch.float64)
    p = torch.randn(B, A, A, 8, dtype=torch.float64)
    mask = torch.tensor([[True] * 4, [True, True, False, True]])
    got = att.attend(x, p, mask)
    Wq, Wk, Wv = att.qkv.weight.chunk(3)
    bq, bk, bv = att.qkv.bias.chunk(3)
    Uq, Uk, Uv = att.rpe.weight.chunk(3)
    d = 4
    want = torch.zeros_like(got)
    for b in range(B):
        for hd in range(2):
            s = slice(hd * d, (hd + 1) * d)
            for i in range(A):
                q_i = (Wq @ x[b, i] + bq)[s]
                e = []
                for j in range(A):
                    k_j = (Wk @ x[b, j] + bk)[s]
                    pq, pk = (Uq @ p[b, i, j])[s], (Uk @ p[b, i, j])[s]
                    e.append((q_i @ k_j + pq @ k_j + q_i @ pk) / math.sqrt(d))  # Eq. (36)
                e = torch.stack(e)
                e[~mask[b]] = -math.inf
                alpha = torch.softmax(e, 0)
                out = sum(
                    alpha[j] * ((Wv @ x[b, j] + bv)[s] + (Uv @ p[b, i, j])[s])  # Eq. (35)
                    for j in range(A)
                )
                want[b, i, s] = out
    assert torch.allclose(got, want, atol=1e-10)


@pytest.mark.parametrize(
    "make",
    [
        lambda: TrafficDenoiser(**SMALL),
        lambda: TrafficClassifier("element", **SMALL),
        lambda: TrafficClassifier("sample", **SMALL),
    ],
)
def test_permutation_equivariance(make):
    torch.manual_seed(1)
    net = make().eval()
    x, t, _, raster = batch()
    mask = torch.ones(3, 5, dtype=torch.bool)
    perm = torch.tensor([3, 0, 4, 1, 2])
    out = net(x, t, mask=mask, map=raster, map_frame=frame())
    out_p = net(x[:, perm], t, mask=mask[:, perm], map=raster, map_frame=frame())
    if out.ndim == 1:  # by-scene: invariant
        assert torch.allclose(out, out_p, atol=1e-5)
    else:
        assert torch.allclose(out[:, perm], out_p, atol=1e-5)


def test_padding_does_not_leak():
    torch.manual_seed(2)
    for net in (TrafficDenoiser(**SMALL).eval(), TrafficClassifier("sample", **SMALL).eval()):
        x, t, mask, raster = batch()
        out = net(x, t, mask=mask, map=raster, map_frame=frame())
        x2 = x.clone()
        x2[~mask] = 100 * torch.randn(int((~mask).sum()), 7)
        out2 = net(x2, t, mask=mask, map=raster, map_frame=frame())
        if out.ndim == 1:
            assert torch.allclose(out, out2, atol=1e-5)
        else:
            assert torch.allclose(out[mask], out2[mask], atol=1e-5)
            assert (out[~mask] == 0).all()


def test_shapes_and_map_dependence():
    torch.manual_seed(3)
    net = TrafficDenoiser(**SMALL).eval()
    x, t, mask, raster = batch()
    out = net(x, t, mask=mask, map=raster)
    assert out.shape == x.shape
    assert not torch.allclose(out, net(x, t, mask=mask, map=1 - raster), atol=1e-4)
    assert TrafficClassifier("element", **SMALL)(x, t, mask=mask, map=raster).shape == (3, 5)
    assert TrafficClassifier("sample", **SMALL)(x, t, mask=mask, map=raster).shape == (3,)
    with pytest.raises(ValueError, match="map"):
        net(x, t, mask=mask)


def test_sinusoidal_embedding():
    e = sinusoidal(torch.tensor([0.0, 1.0]), 6)
    assert e.shape == (2, 6)
    assert torch.allclose(e[0], torch.tensor([1.0, 1, 1, 0, 0, 0]))
    assert e[1, 0] == pytest.approx(math.cos(1.0))


def test_local_map_patch_reads_the_road_under_each_agent():
    """A 3 x 3 patch, one pixel apart, centred on a pixel centre reads exactly that pixel and
    its eight neighbours; points off the raster read 0."""
    from genneg_traffic.dataset import map_frame
    from genneg_traffic.features import Normalizer
    from genneg_traffic.network import LocalMap

    R, window = 8, 80.0  # 10 m pixels over [-40, 40]^2
    raster = torch.zeros(1, 1, R, R, dtype=torch.uint8)
    raster[0, 0, 2, 5] = 1  # row 2 (from the top), column 5
    norm = Normalizer(mean=[5.0, -5.0] + [0.0] * 5, std=[10.0, 20.0] + [1.0] * 5)
    centre = torch.tensor([-40 + 10 * 5.5, 40 - 10 * 2.5])  # that pixel's centre, metres
    corner = torch.tensor([-40 + 10 * 0.5, 40 - 10 * 7.5])  # bottom-left pixel's centre
    metres = torch.stack([centre, corner])[None]  # [1, 2 agents, 2]
    x_in = torch.zeros(1, 2, 7)
    x_in[..., :2] = (metres - torch.tensor([5.0, -5.0])) / torch.tensor([10.0, 20.0])
    patch = LocalMap(hidden=8, size=3).patch(x_in, raster, map_frame(norm, window))
    expected_centre = -torch.ones(9)
    expected_centre[4] = 1.0  # the agent's own pixel is drivable, its neighbours are not
    assert torch.allclose(patch[0, 0], expected_centre, atol=1e-5)
    # the bottom-left agent: the points left of and below the raster read 0, the rest -1
    expected_corner = torch.tensor([0.0, -1, -1, 0, -1, -1, 0, 0, 0])
    assert torch.allclose(patch[0, 1], expected_corner, atol=1e-5)


def test_local_map_changes_the_output_and_can_be_switched_off():
    torch.manual_seed(4)
    x, t, mask, raster = batch()
    net = TrafficDenoiser(**SMALL).eval()
    with_patch = net(x, t, mask=mask, map=raster, map_frame=frame())
    assert not torch.allclose(with_patch, net(x, t, mask=mask, map=raster), atol=1e-5)
    off = TrafficDenoiser(**SMALL, local_map=0).eval()
    assert off.backbone.local is None
    assert torch.allclose(
        off(x, t, mask=mask, map=raster, map_frame=frame()), off(x, t, mask=mask, map=raster)
    )


def test_joint_element_loss_ignores_padded_agents():
    """The by-agent network under ``element_loss="joint"``: scene labels only, padded agents
    neither change the loss nor receive a gradient."""
    from genneg.losses import weighted_bce

    torch.manual_seed(0)
    net = TrafficClassifier("element", **SMALL).eval()
    x, t, mask, raster = batch()
    labels, w = torch.tensor([True, False, False]), torch.tensor([0.5, 1.5, 1.0])

    def loss_of(x):
        logits = net(x, t, mask=mask, map=raster, map_frame=frame())
        return weighted_bce(logits, labels, w, mask=mask, element_loss="joint")

    xg = x.clone().requires_grad_(True)
    loss = loss_of(xg)
    loss.backward()
    assert torch.isfinite(loss) and (xg.grad[~mask] == 0).all() and (xg.grad[mask] != 0).any()
    x2 = x.clone()
    x2[~mask] = 100 * torch.randn(int((~mask).sum()), 7)
    assert torch.allclose(loss_of(x2), loss, atol=1e-5)


@pytest.mark.parametrize("granularity", ["element", "sample"])
def test_stacked_classifiers_match_their_members(granularity):
    """A stack of 3 by-agent (or by-scene) classifiers evaluated as one batched network
    (genneg.stacking), padding agents masked, road patches read: the members' logits and the
    guidance of the per-classifier loop, to float32 tolerance (the sinusoidal features are
    float32); the cached map tokens follow the raster."""
    from genneg.diffusion.vp import VPConfig, VPProcess
    from genneg.testing import check_stacked_forward

    process = VPProcess(VPConfig(timesteps=100))
    torch.manual_seed(0)
    opts = dict(SMALL, local_map=3)
    nets = [TrafficClassifier(granularity, **opts) for _ in range(3)]
    x, _, mask, raster = batch()
    sigma = process.sampling_sigmas(5)[:3]
    cond = {"mask": mask, "map": raster, "map_frame": frame()}
    check_stacked_forward(nets, process, x, sigma, cond, rtol=1e-4, atol=1e-5)
    # one stack across calls: its cached map tokens follow the raster
    from genneg.guidance import GuidedDenoiser, TimeClassifier

    clfs = [TimeClassifier(n, process).eval() for n in nets]
    stacked = GuidedDenoiser(lambda x, s, **c: x, clfs, batched=True)
    loop = GuidedDenoiser(lambda x, s, **c: x, clfs, batched=False)
    _, _, _, other = batch(seed=1)
    for r in (raster, other, raster.clone()):
        c = {**cond, "map": r}
        want = loop.guidance(x, sigma, **c)
        torch.testing.assert_close(stacked.guidance(x, sigma, **c), want, rtol=1e-4, atol=1e-5)
