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


@pytest.mark.parametrize("with_time", [False, True])
def test_rpe_attention_matches_a_loop_over_eqs_35_36(with_time):
    """The reordered sums of rpe_attend against Eqs. (35)-(36) term by term, with p_ij given
    whole or as a pair part plus a per-sample time embedding."""
    torch.manual_seed(0)
    att = RPESelfAttention(hidden=8, heads=2).double()
    B, A = 2, 4
    x = torch.randn(B, A, 8, dtype=torch.float64)
    p = torch.randn(B, A, A, 8, dtype=torch.float64)
    mask = torch.tensor([[True] * 4, [True, True, False, True]])
    if with_time:
        t = torch.randn(B, 8, dtype=torch.float64)
        got = att.attend(x, p, mask, t)
        p = p + t[:, None, None, :]
    else:
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


# --- the agent-frame additions: pair poses and the footprint read of the road ---

FULL = dict(SMALL, pair_pose=True, footprint=(5, 3))


def frames(B=3, R=16, seed=0):
    """``feature_frame`` (identity normalisation but for positions: std 10 m) and an SDF."""
    g = torch.Generator().manual_seed(seed)
    ff = torch.tensor([[0.0] * 7 + [10.0, 10.0] + [1.0] * 5]).expand(B, 14)
    sdf = (4 * torch.randn(B, 1, R, R, generator=g)).to(torch.float16)
    return ff, sdf


@pytest.mark.parametrize("granularity", [None, "element", "sample"])
def test_pose_and_footprint_keep_permutation_equivariance(granularity):
    torch.manual_seed(5)
    net = TrafficDenoiser(**FULL) if granularity is None else TrafficClassifier(granularity, **FULL)
    net = net.eval()
    x, t, _, raster = batch()
    x[..., 2:4] = x[..., 2:4].abs() + 1  # physical sizes
    ff, sdf = frames()
    mask = torch.ones(3, 5, dtype=torch.bool)
    perm = torch.tensor([3, 0, 4, 1, 2])
    cond = dict(map=raster, map_frame=frame(), feature_frame=ff, sdf=sdf)
    out = net(x, t, mask=mask, **cond)
    out_p = net(x[:, perm], t, mask=mask[:, perm], **cond)
    if out.ndim == 1:
        assert torch.allclose(out, out_p, atol=1e-5)
    else:
        assert torch.allclose(out[:, perm], out_p, atol=1e-5)
    # the additions are used: another SDF changes the output
    assert not torch.allclose(out, net(x, t, mask=mask, **dict(cond, sdf=-sdf)), atol=1e-5)


def test_missing_conditions_of_the_additions_are_errors():
    x, t, mask, raster = batch()
    ff, sdf = frames()
    with pytest.raises(ValueError, match="footprint needs cond \\['sdf'\\]"):
        TrafficDenoiser(**FULL)(x, t, mask=mask, map=raster, map_frame=frame(), feature_frame=ff)
    with pytest.raises(ValueError, match="pair_pose needs cond \\['feature_frame'\\]"):
        TrafficDenoiser(**SMALL, pair_pose=True)(x, t, mask=mask, map=raster)
    with pytest.raises(ValueError, match="at least 2 x 2"):
        TrafficDenoiser(**SMALL, footprint=(1, 3))


def test_pair_pose_is_the_pose_of_j_in_is_frame():
    from genneg_traffic.network import PairPose

    pose = PairPose(hidden=8, freqs=3)
    # agent 0 at (1, 2) heading +y (90 deg); agent 1 at (1, 7) heading -x (180 deg), 4 x 2 m
    phys = torch.tensor(
        [[[1.0, 2.0, 5.0, 2.0, 0.0, 1.0, 3.0], [1.0, 7.0, 4.0, 2.0, -1.0, 0.0, 0.0]]]
    )
    f = pose.features(phys)  # [1, 2, 2, 4 * 3 + 9]
    omega = 2 * math.pi / torch.tensor([1.0, 2.0, 4.0])
    # j = 1 seen from i = 0: 5 m straight ahead (dx = 5, dy = 0), turned 90 deg to the left
    dx, dy = 5.0, 0.0
    want = torch.cat(
        [
            torch.cos(dx * omega), torch.sin(dx * omega),
            torch.cos(dy * omega), torch.sin(dy * omega),
            torch.tensor([0.0, 1.0, 1.0, 0.4, 0.8, 0.4]),
            # gaps: along 5 - 2.5 - (0 + 1) = 1.5 m, across 0 - 1 - (2 + 0) = -3 m, max 1.5
            torch.tensor([1.5, -3.0, 1.5]) / 5,
        ]
    )  # fmt: skip
    assert torch.allclose(f[0, 0, 1], want, atol=1e-5)
    # i = 1 sees j = 0 5 m to its left (dx = 0, dy = 5), turned 90 deg to the right
    assert torch.allclose(f[0, 1, 0, [0, 3, 6, 9]], torch.tensor([1.0, 0.0, 1.0, 0.0]), atol=1e-5)
    assert torch.allclose(f[0, 1, 0, 12:14], torch.tensor([0.0, -1.0]), atol=1e-6)
    # invariant under a rigid motion of the whole scene (rotate by 0.7 rad, translate)
    c, s = math.cos(0.7), math.sin(0.7)
    rot = torch.tensor([[c, -s], [s, c]])
    moved = phys.clone()
    moved[..., :2] = phys[..., :2] @ rot.T + torch.tensor([30.0, -12.0])
    moved[..., 4:6] = phys[..., 4:6] @ rot.T
    assert torch.allclose(pose.features(moved), f, atol=1e-4)


def test_footprint_points_and_reads_in_the_map_frame():
    """The grid spans the car's rectangle plus the margin in its own frame; on a raster whose
    signed distance is linear in x, the bilinear reads give exactly x / 4 at every point."""
    from genneg_traffic.dataset import feature_frame, map_frame
    from genneg_traffic.features import Normalizer
    from genneg_traffic.network import Footprint

    fp = Footprint(hidden=8, grid=(3, 2), margin=1.0)
    # a 4 x 2 m car at (10, 0) heading +y: half length 3 m, half width 2 m with the margin
    phys = torch.tensor([[[10.0, 0.0, 4.0, 2.0, 0.0, 1.0, 0.0]]])
    pts = fp.points(phys)[0, 0]
    want = torch.tensor(
        [[12.0, -3.0], [8.0, -3.0], [12.0, 0.0], [8.0, 0.0], [12.0, 3.0], [8.0, 3.0]]
    )  # rear-right first; the right of a car heading +y is +x
    assert torch.allclose(pts, want, atol=1e-5)
    R, window = 16, 80.0  # 5 m pixels over [-40, 40]^2
    centres = -40 + 5 * (torch.arange(R) + 0.5)
    sdf = centres[None, :].expand(R, R)[None, None] / 2  # signed distance x / 2 metres
    raster = (sdf > 0).to(torch.uint8)
    norm = Normalizer(mean=[5.0, -5.0, 4.0, 2.0, 0.0, 0.0, 0.0], std=[10.0, 20.0] + [1.0] * 5)
    reads = fp.read(phys, raster, sdf, map_frame(norm, window), feature_frame(norm))
    assert reads.shape == (1, 1, 2, 6)
    assert torch.allclose(reads[0, 0, 1], (pts[:, 0] / 2 / 4).clamp(-2, 2), atol=1e-5)
    assert torch.allclose(reads[0, 0, 0], torch.ones(6))  # all on the drivable side


def test_wide_map_reads_raster_and_distance_spacing_pixels_apart():
    """A 3 x 3 grid two pixels apart, centred on a pixel centre, reads exactly the pixels two
    away (raster +-1 and the signed distance / 4); points off the raster read 0; the module
    joins the backbone's input embedding only when asked for."""
    from genneg_traffic.dataset import map_frame
    from genneg_traffic.features import Normalizer
    from genneg_traffic.network import WideMap

    R, window = 16, 80.0  # 5 m pixels over [-40, 40]^2
    centres = -40 + 5 * (torch.arange(R) + 0.5)
    sdf = centres[None, :].expand(R, R)[None, None].clone() / 2  # x / 2 metres: +- 18.75
    raster = (sdf > 0).to(torch.uint8)
    norm = Normalizer(mean=[5.0, -5.0] + [0.0] * 5, std=[10.0, 20.0] + [1.0] * 5)
    centre = torch.tensor([centres[8], centres[5]])  # pixel (row 10, column 8), metres
    corner = torch.tensor([centres[0], centres[0]])  # bottom-left pixel (row 15, column 0)
    x_in = torch.zeros(1, 2, 7)
    x_in[0, :, :2] = (torch.stack([centre, corner]) - torch.tensor([5.0, -5.0])) / torch.tensor(
        [10.0, 20.0]
    )
    reads = WideMap(hidden=8, size=3, spacing=2).read(x_in, raster, sdf, map_frame(norm, window))
    assert reads.shape == (1, 2, 2, 9)
    cols = torch.tensor([6, 8, 10]).repeat(3)  # row-major: x varies fastest
    want_sdf = (centres[cols] / 2 / 4).clamp(-2, 2)
    assert torch.allclose(reads[0, 0, 1], want_sdf, atol=1e-5)
    assert torch.allclose(reads[0, 0, 0], torch.where(centres[cols] > 0, 1.0, -1.0))
    # bottom-left agent: the left column and the bottom row are off the raster
    off = torch.tensor([1, 0, 0, 1, 0, 0, 1, 1, 1], dtype=torch.bool)
    assert torch.all(reads[0, 1, :, off] == 0)
    assert torch.all(reads[0, 1, 0, ~off] == -1)
    with pytest.raises(ValueError, match="wide_map"):
        WideMap(hidden=8, size=1)
    assert TrafficDenoiser(**SMALL).backbone.wide is None
    net = TrafficDenoiser(**SMALL, wide_map=[3, 2]).eval()
    x, t, mask, raster = batch()
    with pytest.raises(ValueError, match="wide_map needs cond"):
        net(x, t, mask=mask, map=raster, map_frame=frame())


def test_footprint_lane_reads_are_in_the_agents_frame():
    """A lane field travelling +y everywhere, offset linear in x: a car heading +y reads
    direction (1, 0) relative to itself, one heading -x reads (cos, sin) of -90 deg = (0, -1);
    the offset channel is offset / 2 at every grid point."""
    from genneg_traffic.dataset import feature_frame, map_frame
    from genneg_traffic.features import Normalizer
    from genneg_traffic.network import Footprint

    fp = Footprint(hidden=8, grid=(2, 2), margin=0.5, lanes=True)
    R = 16
    centres = -40 + 5 * (torch.arange(R) + 0.5)
    offset = (centres[None, :].expand(R, R) / 10)[None]  # x / 10 metres
    lanes = torch.cat([offset, torch.zeros(1, R, R), torch.ones(1, R, R)])[None]
    sdf = torch.full((1, 1, R, R), 3.0)
    raster = torch.ones(1, 1, R, R, dtype=torch.uint8)
    phys = torch.tensor(
        [[[4.0, 1.0, 4.0, 2.0, 0.0, 1.0, 0.0], [-6.0, 3.0, 4.0, 2.0, -1.0, 0.0, 0.0]]]
    )
    norm = Normalizer(mean=[0.0] * 7, std=[10.0, 10.0] + [1.0] * 5)
    reads = fp.read(phys, raster, sdf, map_frame(norm, 80.0), feature_frame(norm), lanes)
    assert reads.shape == (1, 2, 5, 4)
    pts = fp.points(phys)[0]  # [2, 4, 2]
    assert torch.allclose(reads[0, :, 2], pts[..., 0] / 10 / 2, atol=1e-5)
    assert torch.allclose(reads[0, 0, 3:], torch.tensor([[1.0] * 4, [0.0] * 4]), atol=1e-5)
    assert torch.allclose(reads[0, 1, 3:], torch.tensor([[0.0] * 4, [-1.0] * 4]), atol=1e-5)
    assert torch.allclose(reads[0, :, 1], torch.full((2, 4), 0.75))
    with pytest.raises(ValueError, match="footprint too"):
        TrafficDenoiser(**SMALL, lanes=True)


def test_a_stack_with_agent_frame_options_keeps_the_per_classifier_path():
    """stacked_forward does not cover pair poses and the footprint: such classifiers are not
    stacked (genneg.stacking), and the guided model's guidance is the loop's."""
    from genneg.diffusion.vp import VPConfig, VPProcess
    from genneg.guidance import GuidedDenoiser, TimeClassifier
    from genneg.stacking import split_stack

    process = VPProcess(VPConfig(timesteps=100))
    torch.manual_seed(0)
    opts = dict(SMALL, local_map=3, pair_pose=True, footprint=[3, 3])
    clfs = [TimeClassifier(TrafficClassifier("element", **opts), process).eval() for _ in "ab"]
    assert not clfs[0].network.can_stack and TrafficClassifier("element", **SMALL).can_stack
    groups, singles = split_stack(clfs)
    assert groups == [] and singles == clfs
    x, _, mask, raster = batch()
    ff, sdf = frames()
    cond = dict(mask=mask, map=raster, map_frame=frame(), feature_frame=ff, sdf=sdf)
    sigma = process.sampling_sigmas(5)[:3]
    stacked = GuidedDenoiser(lambda x, s, **c: x, clfs, batched=True).guidance(x, sigma, **cond)
    loop = GuidedDenoiser(lambda x, s, **c: x, clfs, batched=False).guidance(x, sigma, **cond)
    assert loop.abs().max() > 0 and torch.equal(stacked, loop)


def test_footprint_corner_reads_are_the_rectangles_own_grid_and_its_minimum():
    """``corners``: the signed distance at the car's 3 x 3 grid without margin (corners, edge
    midpoints, centre) and its minimum, exact on a raster whose signed distance is linear;
    the option widens the MLP's input and needs the footprint."""
    from genneg_traffic.dataset import feature_frame, map_frame
    from genneg_traffic.features import Normalizer
    from genneg_traffic.network import Footprint

    fp = Footprint(hidden=8, grid=(3, 2), margin=1.0, corners=True)
    phys = torch.tensor([[[10.0, 0.0, 4.0, 2.0, 0.0, 1.0, 0.0]]])  # 4 x 2 m heading +y
    pts = fp.points(phys, Footprint.CORNER_GRID, 0.0)[0, 0]
    assert torch.allclose(pts[0], torch.tensor([11.0, -2.0]), atol=1e-5)  # rear right
    assert torch.allclose(pts[4], torch.tensor([10.0, 0.0]), atol=1e-5)  # the centre
    R, window = 16, 80.0
    centres = -40 + 5 * (torch.arange(R) + 0.5)
    sdf = centres[None, :].expand(R, R)[None, None] / 2 - 4.75  # x / 2 - 4.75 metres
    norm = Normalizer(mean=[5.0, -5.0, 4.0, 2.0, 0.0, 0.0, 0.0], std=[10.0, 20.0] + [1.0] * 5)
    reads = fp.corner_reads(phys, sdf, map_frame(norm, window), feature_frame(norm))
    assert reads.shape == (1, 1, 10)
    want = (pts[:, 0] / 2 - 4.75) / 4  # the left side (x = 9) is 0.25 m off the road
    assert torch.allclose(reads[0, 0, :9], want, atol=1e-5)
    assert reads[0, 0, 9] == reads[0, 0, :9].min() and abs(reads[0, 0, 9] * 4 + 0.25) < 1e-5
    assert fp.proj[0].in_features == 2 * 3 * 2 + 10
    raster = (sdf > 0).to(torch.uint8)
    out = fp(phys, raster, sdf, map_frame(norm, window), feature_frame(norm))
    assert out.shape == (1, 1, 8)
    with pytest.raises(ValueError, match="corners are read by the footprint"):
        TrafficDenoiser(**SMALL, corners=True)


#: The x coordinates (metres) of the pixel centres of :func:`road_on_raster`'s raster: 16
#: pixels of 5 m spanning [-40, 40] m (the y coordinates are the same, top row largest).
RASTER_CENTRES = -40 + 5 * (torch.arange(16) + 0.5)


def road_on_raster(sdf):
    """``(normalizer, cond)`` for a ``[1, 1, 16, 16]`` signed distance (metres) on a raster
    spanning [-40, 40]^2 m (5 m pixels, :data:`RASTER_CENTRES`), positions normalised with
    scales 10 / 20 m."""
    from genneg_traffic.dataset import feature_frame, map_frame
    from genneg_traffic.features import Normalizer

    norm = Normalizer(mean=[5.0, -5.0, 4.0, 2.0, 0.0, 0.0, 0.0], std=[10.0, 20.0] + [1.0] * 5)
    cond = dict(
        map=(sdf > 0).to(torch.uint8),
        map_frame=map_frame(norm, 80.0),
        feature_frame=feature_frame(norm),
        sdf=sdf,
    )
    return norm, cond


def test_corner_logit_adds_a_monotone_term_of_the_rectangles_signed_distance():
    """``corner_logit``: each agent's logit is the backbone's plus ``softplus(a(t)) *
    asinh(d / 0.25 m)`` of the worst corner read ``d``; its input gradient is the signed
    distance's (it points onto the road); padded agents stay at zero; the option is
    by-agent and needs the footprint."""
    from genneg_traffic.network import CornerLogit

    torch.manual_seed(0)
    net = TrafficClassifier("element", **FULL, corner_logit=True).eval()
    sdf = RASTER_CENTRES[None, :].expand(16, 16)[None, None] / 2 - 4.75  # x / 2 - 4.75 metres
    norm, cond = road_on_raster(sdf)
    # a 4 x 2 m car heading +y whose left side (x = 9) is 0.25 m off the road, and a padded one
    phys = torch.tensor([[[10.0, 0.0, 4.0, 2.0, 0.0, 1.0, 0.0], [20.0, 5.0, 4.0, 2.0, 1, 0, 0]]])
    x_in = torch.as_tensor(norm.normalize(phys.numpy()), dtype=torch.float32)
    mask = torch.tensor([[True, False]])
    t = torch.tensor([3.0])
    read = net.corner_logit.read(x_in, cond["map_frame"], cond["feature_frame"], sdf)
    assert abs(read[0, 0].item() - math.asinh(-1.0)) < 1e-4
    # the backbone's head switched off and a(t) = 3 for every t: the logit is 3 asinh(-1)
    torch.nn.init.zeros_(net.head[1][2].weight)
    torch.nn.init.zeros_(net.head[1][2].bias)
    with torch.no_grad():
        net.corner_logit.slope[2].weight.zero_()
        net.corner_logit.slope[2].bias.fill_(math.log(math.expm1(3.0)))  # softplus^-1(3)
    x = x_in.clone().requires_grad_(True)
    logit = net(x, t, mask=mask, **cond)
    assert abs(logit[0, 0].item() - 3 * math.asinh(-1)) < 1e-4 and logit[0, 1] == 0
    (grad,) = torch.autograd.grad(logit[0, 0], x)
    # d logit / d x_model = 3 asinh'(-1) / 0.25 m * (1/2 per metre) * 10 metres per model
    # unit, towards +x (onto the road)
    assert abs(grad[0, 0, 0].item() - 3 / math.sqrt(2) / 0.25 * 0.5 * 10) < 1e-3
    assert grad[0, 1].abs().max() == 0
    # the slope is never negative, whatever a(t)'s weights
    with torch.no_grad():
        net.corner_logit.slope[2].bias.fill_(-50.0)
    assert net.corner_logit(x_in, t, cond["map_frame"], cond["feature_frame"], sdf)[0, 0] <= 0
    feats = net.corner_logit.noise_features(torch.tensor([0.0, 8.0]), torch.float32)
    assert (
        feats.shape == (2, CornerLogit.TIME_DIM + 2) == (2, net.corner_logit.slope[0].in_features)
    )
    assert torch.allclose(feats[:, -2:], torch.tensor([[1.0, 1.0], [math.exp(-4), math.exp(-1)]]))
    with pytest.raises(ValueError, match="needs granularity 'element'"):
        TrafficClassifier("sample", **FULL, corner_logit=True)
    with pytest.raises(ValueError, match="set footprint too"):
        TrafficClassifier("element", **SMALL, corner_logit=True)


def _planar_road():
    """A signed distance planar in metres, ``0.3 x - 0.2 y + 1``, on the 80 m raster of
    :func:`road_on_raster` (bilinear reads of it are exact everywhere)."""
    c = RASTER_CENTRES
    y = c.flip(0)[:, None]  # row 0 is the top, the largest y (dataset.map_frame)
    return road_on_raster((0.3 * c[None, :] - 0.2 * y + 1.0)[None, None])


def test_road_gradients_are_the_signed_distances_derivatives():
    """``RoadGradients.directions``: per agent and read point, the derivative of the scaled
    signed distance in the agent's 7 model-unit features. On a planar road the position
    derivatives are the plane's slope times the position scale / 4 at every point, and all
    seven (heading and size move the points too) match autograd's."""
    from genneg_traffic.network import RoadGradients

    norm, cond = _planar_road()
    road = RoadGradients(hidden=8, grid=(5, 3), margin=1.0)
    assert road.n_points == 9 + 15
    phys = torch.tensor([[[10.0, 5.0, 4.0, 2.0, 0.6, 0.8, 3.0], [-6.0, 2.0, 5.0, 2.2, -1, 0, 0]]])
    x_in = torch.as_tensor(norm.normalize(phys.numpy()), dtype=torch.float32)
    args = (cond["sdf"], cond["map_frame"], cond["feature_frame"])
    g = road.directions(x_in, *args)
    assert g.shape == (1, 2, 24, 7)
    torch.testing.assert_close(g[..., 0], torch.full((1, 2, 24), 0.3 * 10 / 4), atol=2e-3, rtol=0)
    torch.testing.assert_close(g[..., 1], torch.full((1, 2, 24), -0.2 * 20 / 4), atol=2e-3, rtol=0)
    assert g[..., 6].abs().max() == 0  # the speed moves no point
    x = x_in.clone().requires_grad_(True)
    reads = road.reads(x, *args)
    for k in range(road.n_points):
        (want,) = torch.autograd.grad(reads[..., k].sum(), x, retain_graph=True)
        torch.testing.assert_close(g[:, :, k], want, atol=2e-3, rtol=1e-3)
    assert g[..., 4:6].abs().max() > 0.1  # turning the car moves its corners across the slope


def test_road_gradients_head_adds_coefficients_times_directions_and_starts_at_zero():
    """``TrafficDenoiser(road_gradients=True)``: the output is the head's plus ``sum_k c_k
    grad d_k``, zero at the start; with the output layer zeroed (the residual student's
    correction) the network is exactly zero; padded agents stay zero; it needs the footprint."""
    from genneg.student import zero_output_layer

    torch.manual_seed(0)
    norm, cond = _planar_road()
    net = TrafficDenoiser(**FULL, road_gradients=True).eval()
    phys = torch.tensor([[[10.0, 5.0, 4.0, 2.0, 0.6, 0.8, 3.0], [-6.0, 2.0, 5.0, 2.2, -1, 0, 0]]])
    x = torch.as_tensor(norm.normalize(phys.numpy()), dtype=torch.float32)
    t, mask = torch.tensor([3.0]), torch.tensor([[True, False]])
    out = net(x, t, mask=mask, **cond)
    head = net.head(net.backbone(x, t, mask, cond["map"], cond["map_frame"],
                                 cond["feature_frame"], cond["sdf"], None))  # fmt: skip
    torch.testing.assert_close(out, head * mask[..., None])  # the road term starts at zero
    k = 4  # the rectangle's centre
    with torch.no_grad():
        net.road.coef[1].bias[k] = 1.5
    g = net.road.directions(x, cond["sdf"], cond["map_frame"], cond["feature_frame"])
    want = (head + 1.5 * g[:, :, k]) * mask[..., None]
    torch.testing.assert_close(net(x, t, mask=mask, **cond), want)
    assert net(x, t, mask=mask, **cond)[0, 1].abs().max() == 0
    fresh = TrafficDenoiser(**FULL, road_gradients=True)
    zero_output_layer(fresh)
    assert fresh(x, t, mask=mask, **cond).abs().max() == 0
    with pytest.raises(ValueError, match="road_gradients reads the footprint"):
        TrafficDenoiser(**SMALL, road_gradients=True)
