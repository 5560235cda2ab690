"""The distillation student ``s_psi`` of Eq. (14).

Two kinds (``distill.student``):

* ``fine-tune`` (the paper's, App. B: "the same architecture and hyperparameters as the
  baseline"): a copy of the baseline denoiser, initialised from its weights, every weight
  trained.
* ``residual``: the frozen baseline plus a correction network shaped like the teacher's
  guidance term (:class:`ResidualStudent`). The paper allows another architecture ("possibly
  with the same architecture as the baseline", Sec. 3.2); this one is ours.

Why the residual student exists (docs/traffic.md, session 14): the teacher is
``D(x) + sigma^2 grad log C(D(x))`` (Eq. 9 with the ``denoised-st`` input), a function of the
baseline's denoised value; a fine-tuned copy of the baseline has to compute ``D`` and the
classifiers' gradient on top of it with ``D``'s own capacity, and on SUMO traffic it fitted
almost none of the term pointwise. The correction network reads ``D(x)`` as the classifiers
do and has all of its capacity for the term; the baseline's part is exact by construction.
It costs one more network evaluation per step (the teacher: one plus a forward and backward
per classifier).

A residual student can be confined to the teacher's guidance window (``distill.in_window``,
ours): outside ``classifier.guidance_window`` the windowed teacher *is* the baseline
(:mod:`genneg.window`), so a student whose correction acts only inside the window equals the
teacher there exactly, and Eq. (14) only has to be regressed at the levels inside it (the
terms dropped are identically zero, so the optimum is unchanged). On the DDPM-100 traffic
process the window ``[0, 0.35]`` holds 10 of the 100 training levels: without the option nine
in ten of the distiller's points teach the correction to be zero.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genneg.diffusion.shapes import broadcast, per_sample
from genneg.guidance import data_scale

STUDENTS = ("fine-tune", "residual")


class ResidualStudent(nn.Module):
    """``D_s(x; sigma) = D(x; sigma) + sigma^2 sigma_d c_in(sigma)^2 F(D(x; sigma) / sigma_d,
    c_noise(sigma))``.

    ``base`` is the baseline denoiser ``D`` (frozen: no weight of it is trained), ``network``
    a raw network ``F`` of the denoiser's architecture (``F(x_in, c_noise, **cond)``, shaped
    like ``x``) that reads the baseline's estimate of the clean sample, as the ``denoised-st``
    classifiers do. The factor is the one the ``posterior-mean`` / ``denoised-st`` classifier
    input puts in front of ``grad_u log C(u)`` in the guidance term ``sigma^2 grad_x log C``
    (:func:`genneg.guidance.classifier_input`): ``F``'s optimum under Eq. (14) is then the
    stack's summed input gradient ``scale * sum_i grad_u log C_i``, an O(1) field at every
    level. ``F``'s output layer starts at zero, so the untrained student is the baseline.
    Both parts are in the ``state_dict``: a checkpoint of the student is self-contained.

    ``window = (sigma_lo, sigma_hi)``: the correction acts only for ``sigma`` in that closed
    interval (elsewhere the student is the baseline), as the windowed teacher's guidance term
    (:class:`genneg.window.WindowedClassifier`); kept in the ``state_dict`` as the buffer
    ``window`` (a checkpoint without it, from before the option, loads as every level)."""

    def __init__(self, base: nn.Module, network: nn.Module, process, window=(0.0, math.inf)):
        super().__init__()
        lo, hi = (float(w) for w in window)
        if not 0 <= lo < hi:
            raise ValueError(f"a student's window needs 0 <= sigma_lo < sigma_hi, got {window}")
        self.base = base
        self.network = network
        self.process = process
        self.register_buffer("window", torch.tensor([lo, hi], dtype=torch.float32))
        zero_output_layer(network)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "window", torch.tensor([0.0, math.inf]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def inside(self, sigma: torch.Tensor) -> torch.Tensor:
        """Bool, per level of ``sigma``: is it inside the student's window? (In float32, as
        the windowed classifiers compare their float32 levels.)"""
        lo, hi = self.window.to(sigma.device, torch.float32)
        s = sigma.to(torch.float32)
        return (s >= lo) & (s <= hi)

    def term_factor(self, s: torch.Tensor) -> torch.Tensor:
        """``sigma^2 sigma_d c_in(sigma)^2`` at the broadcast levels ``s``."""
        c = self.process.c_in(s)
        return s * s * data_scale(self.process) * c * c

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        sigma = per_sample(sigma, x)
        return self.corrected(self.base(x, sigma, **cond), sigma, **cond)

    def corrected(self, denoised: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        """The student's output given the baseline's ``denoised = D(x; sigma)`` (per-sample
        levels ``sigma`` ``[B]``): a distiller that already has ``D`` (the teacher evaluates
        it too) regresses the correction without evaluating the frozen baseline again."""
        s = broadcast(sigma, denoised)
        inside = self.inside(sigma)
        if not inside.any():
            return denoised
        u = denoised / data_scale(self.process)
        term = self.term_factor(s) * self.network(u, self.process.c_noise(sigma), **cond)
        return denoised + torch.where(broadcast(inside, denoised), term, torch.zeros_like(term))


def zero_output_layer(network: nn.Module) -> None:
    """Zero the weight and bias of ``network``'s last ``nn.Linear`` (in registration order,
    the output layer of the shipped networks), so that its output starts at zero."""
    linears = [m for m in network.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"the residual student zeroes its correction network's output layer, but "
            f"{type(network).__name__} has no nn.Linear; use distill.student = 'fine-tune'"
        )
    with torch.no_grad():
        linears[-1].weight.zero_()
        if linears[-1].bias is not None:
            linears[-1].bias.zero_()


def make_student(kind: str, new_denoiser, process, window=(), new_correction=None) -> nn.Module:
    """An untrained student of ``kind`` (:data:`STUDENTS`); ``new_denoiser()`` makes a fresh
    denoiser of the baseline's architecture (a preconditioned wrapper with ``.network``).
    ``window`` (``(sigma_lo, sigma_hi)``; empty: every level) confines a residual student's
    correction to those noise levels; a fine-tuned copy has no part that could be confined.
    ``new_correction()`` (default ``new_denoiser``) makes the denoiser whose ``.network`` is
    a residual student's correction (``distill.correction``: other options, same kind)."""
    if kind == "fine-tune":
        if window:
            raise ValueError(
                "distill.in_window confines a residual student's correction to the guidance "
                "window; a fine-tuned student has none (use distill.student = 'residual')"
            )
        return new_denoiser()
    if kind == "residual":
        correction = getattr((new_correction or new_denoiser)(), "network", None)
        if not isinstance(correction, nn.Module):
            raise ValueError(
                "distill.student = 'residual' needs a denoiser with a raw .network (a "
                "preconditioned denoiser, as the shipped ones); use 'fine-tune'"
            )
        return ResidualStudent(new_denoiser(), correction, process, window or (0.0, math.inf))
    raise ValueError(f"unknown distill.student {kind!r}; choose from {STUDENTS}")


def init_student(student: nn.Module, base: nn.Module) -> nn.Module:
    """Ready ``student`` for Eq. (14): its baseline part takes ``base``'s weights; the
    trainable weights (all of a fine-tuned copy's, the correction network's of a residual
    one) require gradients, the residual student's baseline none. Returns ``student``."""
    residual = isinstance(student, ResidualStudent)
    (student.base if residual else student).load_state_dict(base.state_dict())
    student.train().requires_grad_(True)
    if residual:
        student.base.eval().requires_grad_(False)
    return student
