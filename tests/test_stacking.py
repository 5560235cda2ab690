"""A stack of classifiers evaluated as one batched network (genneg.stacking) gives the guidance
of the per-classifier loop (Eq. 9)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genneg.diffusion.edm import EDMProcess
from genneg.guidance import GuidedDenoiser, TimeClassifier
from genneg.stacking import StackedClassifiers, linear, split_stack, stackable


class TinyNet(nn.Module):
    """A two-layer per-sample (or per-element) classifier implementing ``stacked_forward``."""

    def __init__(self, seed, granularity="sample", dim=3, hidden=8):
        super().__init__()
        torch.manual_seed(seed)
        self.granularity = granularity
        self.fc1 = nn.Linear(dim + 1, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, x_in, c_noise, mask=None):
        t = c_noise.reshape(-1, *([1] * (x_in.ndim - 1))).expand(*x_in.shape[:-1], 1)
        out = self.fc2(F.silu(self.fc1(torch.cat([x_in, t], -1)))).squeeze(-1)
        return out if self.granularity == "sample" else out * mask

    def stacked_forward(self, params, buffers, x_in, c_noise, cache, mask=None):
        t = c_noise.reshape(-1, *([1] * (x_in.ndim - 1))).expand(*x_in.shape[:-1], 1)
        h = linear(params, "fc1", torch.cat([x_in, t], -1), shared=True)
        out = linear(params, "fc2", F.silu(h)).squeeze(-1)
        return out if self.granularity == "sample" else out * mask


class TinyNetByHand(TinyNet):
    """:class:`TinyNet` with its input gradient written by hand (``stacked_forward_vjp``)."""

    def stacked_forward_vjp(self, params, buffers, x_in, c_noise, cache, mask=None):
        t = c_noise.reshape(-1, *([1] * (x_in.ndim - 1))).expand(*x_in.shape[:-1], 1)
        h = linear(params, "fc1", torch.cat([x_in, t], -1), shared=True)  # [K, ..., H]
        out = linear(params, "fc2", F.silu(h)).squeeze(-1)
        out = out if self.granularity == "sample" else out * mask

        def pullback(g):
            if self.granularity != "sample":
                g = g * mask
            w_out = params["fc2.weight"][:, 0]  # [K, H], broadcast over the rows
            w_out = w_out.reshape(w_out.shape[0], *([1] * (h.ndim - 2)), w_out.shape[1])
            dh = torch.ops.aten.silu_backward(g[..., None] * w_out, h)
            w = params["fc1.weight"][..., :-1]  # [K, H, dim]: the x_in columns
            return torch.einsum("k...h,khd->...d", dh, w)

        return out, pullback


class Quadratic(nn.Module):
    """No ``stacked_forward``: always evaluated on its own."""

    granularity = "sample"

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor([0.3, -0.2, 0.1]))

    def forward(self, x_in, c_noise, **cond):
        return x_in @ self.a - 0.1 * (x_in**2).sum(-1)


def base(x, sigma, **cond):
    return 0.5 * x


def clfs(seeds, granularity="sample", process=None):
    process = process or EDMProcess()
    return [
        TimeClassifier(TinyNet(s, granularity), process).double().eval().requires_grad_(False)
        for s in seeds
    ]


def both(classifiers, x, sigma, **cond):
    loop = GuidedDenoiser(base, classifiers, batched=False).guidance(x, sigma, **cond)
    batched = GuidedDenoiser(base, classifiers, batched=True).guidance(x, sigma, **cond)
    return loop, batched


def test_batched_stack_matches_loop_per_sample():
    x = torch.randn(5, 3, dtype=torch.float64)
    sigma = torch.tensor([0.05, 0.3, 1.0, 4.0, 20.0], dtype=torch.float64)
    for k in (2, 4):
        loop, batched = both(clfs(range(k)), x, sigma)
        assert loop.abs().max() > 1e-3  # the guidance is not trivially zero
        torch.testing.assert_close(batched, loop, rtol=1e-10, atol=1e-12)


def test_batched_stack_matches_loop_per_element_with_mask():
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    mask = torch.rand(4, 5, generator=torch.Generator().manual_seed(0)) < 0.6
    mask[:, 0] = True
    sigma = torch.tensor([0.1, 0.5, 2.0, 8.0], dtype=torch.float64)
    loop, batched = both(clfs(range(3), "element"), x, sigma, mask=mask)
    torch.testing.assert_close(batched, loop, rtol=1e-10, atol=1e-12)
    assert torch.all(batched[~mask] == 0) and torch.all(batched[mask] != 0)
    stack = StackedClassifiers(clfs(range(3), "element"))
    logp = stack.log_prob(x, sigma, mask=mask)
    want = sum(c.log_prob(x, sigma, mask=mask) for c in stack.classifiers)
    torch.testing.assert_close(logp, want, rtol=1e-12, atol=1e-12)


def test_mixed_stack_groups_and_singles():
    process = EDMProcess()
    quad = TimeClassifier(Quadratic(), process).double()
    other = TimeClassifier(TinyNet(9, dim=3, hidden=5), process).double().eval()
    members = [*clfs((0, 1), process=process), quad, *clfs((2,), process=process), other]
    groups, singles = split_stack(members)
    assert [len(g) for g in groups] == [3] and set(map(id, singles)) == {id(quad), id(other)}
    x, sigma = torch.randn(6, 3, dtype=torch.float64), torch.full((6,), 0.7, dtype=torch.float64)
    loop, batched = both(members, x, sigma)
    torch.testing.assert_close(batched, loop, rtol=1e-10, atol=1e-12)


def test_training_mode_and_lone_members_are_not_stacked():
    members = clfs((0, 1))
    assert stackable(members) and not stackable(members[:1])
    members[1].train()
    assert not stackable(members)
    groups, singles = split_stack(members)
    assert groups == [] and set(map(id, singles)) == set(map(id, members))
    with pytest.raises(ValueError, match="cannot be stacked"):
        StackedClassifiers(members)


def test_weights_changed_after_stacking_are_seen():
    """An in-place update (an optimiser step, load_state_dict) re-stacks the weights."""
    members = clfs((0, 1, 2))
    model = GuidedDenoiser(base, members)
    x, sigma = torch.randn(4, 3, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    before = model.guidance(x, sigma)
    with torch.no_grad():
        members[1].network.fc2.weight.mul_(-3.0)
    after = model.guidance(x, sigma)
    want = GuidedDenoiser(base, members, batched=False).guidance(x, sigma)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, want, rtol=1e-10, atol=1e-12)
    model.classifiers.append(clfs((7,))[0])  # a new member: a new plan
    want = GuidedDenoiser(base, list(model.classifiers), batched=False).guidance(x, sigma)
    torch.testing.assert_close(model.guidance(x, sigma), want, rtol=1e-10, atol=1e-12)


def test_stacking_adds_nothing_to_the_state_dict():
    members = clfs((0, 1))
    model = GuidedDenoiser(base, members)
    keys = set(model.state_dict())
    model.guidance(torch.randn(2, 3, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    assert set(model.state_dict()) == keys


def test_batches_above_stack_max_batch_take_the_loop():
    members = clfs((0, 1, 2))
    for c in members:
        c.network.stack_max_batch = 4
    model = GuidedDenoiser(base, members)
    for n in (3, 6):
        x, sigma = torch.randn(n, 3, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
        want = GuidedDenoiser(base, members, batched=False).guidance(x, sigma)
        torch.testing.assert_close(model.guidance(x, sigma), want, rtol=1e-10, atol=1e-12)
    (stack,) = model._stack_plan[1]
    assert stack.max_batch == 4 and len(stack) == 3


def test_hand_written_gradients_match_autograd_and_mix_with_the_rest():
    """A stack with ``stacked_forward_vjp`` gives autograd's guidance with no graph, per sample
    and per element (masked elements contribute nothing), beside a stack without it and a
    single classifier; the result carries no graph."""
    process = EDMProcess()

    def by_hand(seeds, granularity="sample"):
        return [
            TimeClassifier(TinyNetByHand(s, granularity), process).double().eval() for s in seeds
        ]

    x = torch.randn(5, 3, dtype=torch.float64)
    sigma = torch.logspace(-1, 1, 5, dtype=torch.float64)
    hand = [c.requires_grad_(False) for c in by_hand((0, 1, 2))]
    assert StackedClassifiers(hand).vjp_fn is not None
    loop, batched = both(hand, x, sigma)
    torch.testing.assert_close(batched, loop, rtol=1e-10, atol=1e-12)
    assert not batched.requires_grad and loop.abs().max() > 0
    xe = torch.randn(4, 5, 3, dtype=torch.float64)
    mask = torch.rand(4, 5) > 0.3
    hand_el = [c.requires_grad_(False) for c in by_hand((3, 4), "element")]
    loop, batched = both(hand_el, xe, sigma[:4], mask=mask)
    torch.testing.assert_close(batched, loop, rtol=1e-10, atol=1e-12)
    assert torch.all(batched[~mask] == 0) and batched[mask].abs().max() > 0
    single = TimeClassifier(Quadratic(), process).double().eval().requires_grad_(False)
    mixed = hand + clfs((5, 6)) + [single]
    loop, batched = both(mixed, x, sigma)
    torch.testing.assert_close(batched, loop, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="no stacked_forward_vjp"):
        StackedClassifiers(clfs((0, 1))).log_prob_grad(x, sigma)
    # a lone classifier; a stack above its stack_max_batch takes autograd, member by member
    lone = GuidedDenoiser(base, hand[:1])
    torch.testing.assert_close(lone.guidance(x, sigma), both(hand[:1], x, sigma)[0])
    assert len(lone._stack_plan[3]) == 1
    for c in hand:
        c.network.stack_max_batch = 4
    loop, batched = both(hand, x, sigma)
    torch.testing.assert_close(batched, loop, rtol=1e-10, atol=1e-12)
