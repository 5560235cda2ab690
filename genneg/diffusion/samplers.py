"""Samplers: plain functions over any denoiser ``D(x, sigma, **cond)``.

All share one signature, ``sampler(denoiser, x, sigmas, *, cond=None, generator=None,
callback=None, progress=False, **options)``: ``x`` is the initial noise already scaled to
``sigmas[0]`` (see ``process.sample_prior``), ``sigmas`` is descending and ends in 0. A guided,
stacked or distilled model is just another denoiser, so samplers never change for guidance.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from genneg import rng, threads


def _steps(sigmas, progress):
    """The step indices of a sampler, with a progress bar; each step lets the thread governor
    look at the machine (:func:`genneg.threads.tick`)."""
    for i in tqdm(range(len(sigmas) - 1), disable=not progress, desc="sampling", leave=False):
        threads.tick()
        yield i


def _noise(x, generator):
    return rng.randn(x.shape, generator, x.device, x.dtype)


def _denoise(denoiser, x, sigma, cond):
    s = torch.full((x.shape[0],), float(sigma), device=x.device, dtype=x.dtype)
    return denoiser(x, s, **(cond or {}))


@torch.no_grad()
def edm_heun(
    denoiser,
    x,
    sigmas,
    *,
    cond=None,
    generator=None,
    callback=None,
    progress=False,
    s_churn=0.0,
    s_tmin=0.0,
    s_tmax=float("inf"),
    s_noise=1.0,
):
    """EDM Algorithm 2 (Algorithm 1 when ``s_churn == 0``): Heun's 2nd order method on the
    probability-flow ODE, with optional stochastic churn."""
    n = len(sigmas) - 1
    for i in _steps(sigmas, progress):
        t_cur, t_next = float(sigmas[i]), float(sigmas[i + 1])
        # Alg. 2 lines 4-6: temporarily increase the noise level.
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= t_cur <= s_tmax else 0.0
        t_hat = t_cur + gamma * t_cur
        if gamma > 0:
            x = x + math.sqrt(t_hat**2 - t_cur**2) * s_noise * _noise(x, generator)
        # Alg. 2 lines 7-8: Euler step.
        d_cur = (x - _denoise(denoiser, x, t_hat, cond)) / t_hat
        x_next = x + (t_next - t_hat) * d_cur
        # Alg. 2 lines 9-11: 2nd order correction unless the next level is 0.
        if t_next > 0:
            d_prime = (x_next - _denoise(denoiser, x_next, t_next, cond)) / t_next
            x_next = x + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        x = x_next
        if callback is not None:
            callback({"i": i, "x": x, "sigma": t_next})
    return x


@torch.no_grad()
def edm_heun_stochastic(
    denoiser, x, sigmas, *, s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003, **kwargs
):
    """EDM Algorithm 2 with the churn settings EDM used for ImageNet."""
    return edm_heun(
        denoiser,
        x,
        sigmas,
        s_churn=s_churn,
        s_tmin=s_tmin,
        s_tmax=s_tmax,
        s_noise=s_noise,
        **kwargs,
    )


@torch.no_grad()
def euler_maruyama(
    denoiser, x, sigmas, *, cond=None, generator=None, callback=None, progress=False
):
    """Euler-Maruyama on the reverse VE SDE ``dx = -2 sigma dsigma * score + sqrt(2 sigma) dw``
    (Song et al. 2021, reverse-diffusion predictor): the drift moves
    ``(sigma_i^2 - sigma_{i+1}^2) * score`` and the noise has that variance."""
    for i in _steps(sigmas, progress):
        s_cur, s_next = float(sigmas[i]), float(sigmas[i + 1])
        score = (_denoise(denoiser, x, s_cur, cond) - x) / s_cur**2
        var = s_cur**2 - s_next**2
        x = x + var * score
        if s_next > 0:
            x = x + math.sqrt(var) * _noise(x, generator)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s_next})
    return x


@torch.no_grad()
def ddim(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, progress=False, eta=0.0):
    """DDIM (Song et al. 2021, Eq. 12) in sigma coordinates. With ``eta = 0`` it is the Euler
    step of the probability-flow ODE, ``x' = x0_hat + sigma' * eps_hat``; ``eta = 1`` gives
    DDPM-like ancestral noise."""
    for i in _steps(sigmas, progress):
        s_cur, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = _denoise(denoiser, x, s_cur, cond)
        eps = (x - x0) / s_cur
        if s_next == 0:
            x = x0
        else:
            a_cur, a_next = 1 / (1 + s_cur**2), 1 / (1 + s_next**2)  # abar
            # DDIM's sigma_t (in VP units), Eq. 16.
            vp_std = eta * math.sqrt((1 - a_next) / (1 - a_cur) * (1 - a_cur / a_next))
            dir_coef = math.sqrt(max(1 - a_next - vp_std**2, 0.0))
            x_vp = math.sqrt(a_next) * x0 + dir_coef * eps
            if vp_std > 0:
                x_vp = x_vp + vp_std * _noise(x, generator)
            x = x_vp / math.sqrt(a_next)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s_next})
    return x


def _ddpm_step(denoiser, x, s_cur: float, s_next: float, cond, generator):
    """One ancestral step of DDPM (Ho et al. 2020, Alg. 2) from ``s_cur`` to ``s_next`` with the
    "fixed small" posterior variance, in float64 coefficients: ``alphas_cumprod`` follow from
    the sigmas (``abar = 1 / (1 + sigma^2)``), and the beta of a respaced schedule from their
    ratio, as improved-diffusion's ``space_timesteps`` computes it."""
    a_cur = 1.0 / (1.0 + s_cur**2)
    a_prev = 1.0 / (1.0 + s_next**2)
    beta = 1.0 - a_cur / a_prev
    x0 = _denoise(denoiser, x, s_cur, cond)
    x_vp = x * math.sqrt(a_cur)
    # q(x_{t-1} | x_t, x0): mean coefficients and variance (Ho et al. Eqs. 6-7).
    coef_x0 = beta * math.sqrt(a_prev) / (1.0 - a_cur)
    coef_xt = (1.0 - a_prev) * math.sqrt(1.0 - beta) / (1.0 - a_cur)
    mean = coef_x0 * x0 + coef_xt * x_vp
    if s_next == 0:
        return mean
    var = beta * (1.0 - a_prev) / (1.0 - a_cur)
    x_vp = mean + math.sqrt(var) * _noise(x, generator)
    return x_vp / math.sqrt(a_prev)


@torch.no_grad()
def ddpm_ancestral(
    denoiser, x, sigmas, *, cond=None, generator=None, callback=None, progress=False
):
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2) with the "fixed small" posterior
    variance, in DDPM's own float64 arithmetic (:func:`_ddpm_step`)."""
    sig = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    for i in _steps(sig, progress):
        s_cur, s_next = float(sig[i]), float(sig[i + 1])
        x = _ddpm_step(denoiser, x, s_cur, s_next, cond, generator)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s_next})
    return x


@torch.no_grad()
def ddpm_langevin(
    denoiser,
    x,
    sigmas,
    *,
    cond=None,
    generator=None,
    callback=None,
    progress=False,
    snr=0.5,
    correctors=1,
    corrector_sigma_max=float("inf"),
):
    """Predictor-corrector sampling (Song et al. 2021, Sec. 4.2 and Alg. 5): every DDPM
    ancestral step (:func:`_ddpm_step`, the predictor) is followed, at its new level ``sigma``
    (if ``0 < sigma <= corrector_sigma_max``), by ``correctors`` steps of Langevin MCMC on that
    level's own density, ``x <- x + eps * score + sqrt(2 eps) z`` with the score
    ``(D(x; sigma) - x) / sigma^2``. The correctors leave the target (the model's marginal at
    each level) unchanged and undo part of the predictor's discretisation error; they cost
    ``correctors`` more denoiser evaluations per level.

    Step size: Song et al. set ``eps = 2 (r |z| / |score|)^2`` per sample for a signal-to-noise
    ratio ``r = snr``; here the score's norm is taken as its value under the level's own noise,
    ``|z| / sigma``, so ``eps = 2 r^2 sigma^2`` (in ``x = x0 + sigma n`` units): no norm over
    padded elements (masked agents) enters the step, and every sample of a batch moves alike.
    """
    if correctors < 0 or snr <= 0:
        raise ValueError(
            f"ddpm-langevin needs correctors >= 0 and snr > 0, got {correctors}, {snr}"
        )
    sig = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
    for i in _steps(sig, progress):
        s_cur, s_next = float(sig[i]), float(sig[i + 1])
        x = _ddpm_step(denoiser, x, s_cur, s_next, cond, generator)
        if 0 < s_next <= corrector_sigma_max:
            eps = 2.0 * snr**2 * s_next**2
            for _ in range(correctors):
                score = (_denoise(denoiser, x, s_next, cond) - x) / s_next**2
                x = x + eps * score + math.sqrt(2.0 * eps) * _noise(x, generator)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": s_next})
    return x


BUILTIN_SAMPLERS = {
    "edm-heun": edm_heun,
    "edm-heun-stochastic": edm_heun_stochastic,
    "euler-maruyama": euler_maruyama,
    "ddim": ddim,
    "ddpm": ddpm_ancestral,
    "ddpm-langevin": ddpm_langevin,
}
