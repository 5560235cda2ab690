"""Contract tests every plugin's test-suite can subclass (as diffusers' ``SchedulerCommonTest``).

Example, in a plugin's ``tests/test_contracts.py``::

    from genneg.testing import OracleContract

    class TestMyOracle(OracleContract):
        def make_oracle(self):
            return MyOracle()

        def make_batch(self, n):
            return torch.randn(n, 2), {}

Each class checks the part of the contract the engine relies on; pytest collects the inherited
``test_*`` methods.
"""

from __future__ import annotations

import torch

from genneg.components import OracleResult, check_classifier, check_oracle, validate_oracle_result
from genneg.diffusion.edm import EDMProcess
from genneg.diffusion.shapes import per_sample
from genneg.guidance import TimeClassifier


class OracleContract:
    """Subclass and implement ``make_oracle()`` and ``make_batch(n) -> (x, cond)``."""

    def make_oracle(self):
        raise NotImplementedError

    def make_batch(self, n: int):
        raise NotImplementedError

    def test_oracle_contract(self):
        oracle = self.make_oracle()
        check_oracle(oracle)
        x, cond = self.make_batch(7)
        result = oracle.label(x, cond)
        validate_oracle_result(result, 7, oracle.categories, type(oracle).__name__)

    def test_oracle_is_vectorised_consistently(self):
        """Labelling a batch equals labelling its halves."""
        oracle = self.make_oracle()
        x, cond = self.make_batch(8)
        whole = oracle.label(x, cond)
        first = oracle.label(x[:4], {k: v[:4] for k, v in cond.items()})
        second = oracle.label(x[4:], {k: v[4:] for k, v in cond.items()})
        assert torch.equal(whole.valid, torch.cat([first.valid, second.valid]))

    def test_infraction_categories_imply_invalid(self):
        oracle = self.make_oracle()
        x, cond = self.make_batch(16)
        result: OracleResult = oracle.label(x, cond)
        for flags in result.categories.values():
            assert not (flags & result.valid).any(), "a sample flagged with an infraction is valid"


class NetworkContract:
    """Subclass and implement ``make_network()`` and ``make_batch(n) -> (x, cond)``; set
    ``process`` to the noise process the network is used with."""

    process = EDMProcess()

    def make_network(self):
        raise NotImplementedError

    def make_batch(self, n: int):
        raise NotImplementedError

    def test_denoiser_shape_and_finite(self):
        net = self.make_network()
        denoiser = self.process.precondition(net)
        x, cond = self.make_batch(3)
        sigma = torch.tensor([self.process.sigma_min, 1.0, self.process.sigma_max * 0.5])
        out = denoiser(x, sigma, **cond)
        assert out.shape == x.shape
        assert torch.isfinite(out).all()

    def test_denoiser_differentiable_in_x(self):
        denoiser = self.process.precondition(self.make_network())
        x, cond = self.make_batch(2)
        x = x.clone().requires_grad_(True)
        denoiser(x, torch.ones(2), **cond).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()


class ClassifierContract:
    """Subclass and implement ``make_classifier()`` and ``make_batch(n) -> (x, cond)``."""

    process = EDMProcess()

    def make_classifier(self):
        raise NotImplementedError

    def make_batch(self, n: int):
        raise NotImplementedError

    def test_classifier_logits_shape(self):
        net = self.make_classifier()
        check_classifier(net)
        clf = TimeClassifier(net, self.process)
        x, cond = self.make_batch(3)
        logits = clf(x, torch.ones(3), **cond)
        expected = (3,) if net.granularity == "sample" else tuple(x.shape[:2])
        assert tuple(logits.shape) == expected
        logp = clf.log_prob(x, torch.ones(3), **cond)
        assert logp.shape == (3,) and (logp <= 0).all()


class SamplerContract:
    """Subclass and set ``sampler`` (a function); checks the shared sampler signature on a
    point-mass denoiser, whose every sampler must return the point."""

    sampler = None
    process = EDMProcess()
    steps = 10

    def test_point_mass_is_recovered(self):
        target = torch.tensor([0.3, -0.7])

        def denoiser(x, sigma, **cond):
            return target.expand_as(x)

        sigmas = self.process.sampling_sigmas(self.steps)
        x = self.process.sample_prior((64, 2), torch.Generator().manual_seed(0))
        out = type(self).sampler(denoiser, x, sigmas, cond={}, generator=torch.Generator())
        assert torch.allclose(out, target.expand_as(out), atol=1e-4)


def check_stacked_forward(nets, process, x, sigma, cond, rtol=1e-9, atol=1e-11) -> None:
    """Assert that K networks of one shape evaluated as one stack (``stacked_forward``,
    :mod:`genneg.stacking`) give every member's own logits, the summed ``log C`` and the
    guidance of the per-classifier loop (Eq. 9) to the given tolerances (use float64
    networks and inputs: then the tolerances can be tight). A network with a hand-written
    ``stacked_forward_vjp`` must give ``stacked_forward``'s logits and autograd's gradient of
    the summed ``log C``."""
    from genneg.guidance import GuidedDenoiser
    from genneg.stacking import StackedClassifiers

    clfs = [TimeClassifier(n, process).eval().requires_grad_(False) for n in nets]
    stack = StackedClassifiers(clfs)
    with torch.no_grad():
        got = stack.logits(x, sigma, **cond)
        want = torch.stack([c(x, sigma, **cond) for c in clfs])
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
        lp = stack.log_prob(x, sigma, **cond)
        torch.testing.assert_close(lp, sum(c.log_prob(x, sigma, **cond) for c in clfs))

    def base(x, sigma, **cond):
        return torch.zeros_like(x)

    if stack.vjp_fn is not None:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            want_grad = torch.autograd.grad(stack.log_prob(xg, sigma, **cond).sum(), xg)[0]
        got_grad = stack.log_prob_grad(x, sigma, **cond)
        assert want_grad.abs().max() > 0
        torch.testing.assert_close(got_grad, want_grad, rtol=rtol, atol=atol)
        s = per_sample(sigma, x)
        x_in, c_noise = clfs[0].network_input(x, s), process.c_noise(s)
        vjp_logits, _ = stack.vjp_fn(stack.params, stack.buffers, x_in, c_noise, {}, **cond)
        torch.testing.assert_close(vjp_logits, got, rtol=rtol, atol=atol)
    loop = GuidedDenoiser(base, clfs, batched=False).guidance(x, sigma, **cond)
    batched = GuidedDenoiser(base, clfs, batched=True).guidance(x, sigma, **cond)
    assert loop.abs().max() > 0
    torch.testing.assert_close(batched, loop, rtol=rtol, atol=atol)
