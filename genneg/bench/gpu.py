"""Sampler throughput on a GPU at large batch (issue 13), in float32, TF32 and bf16.

For one preset (untrained networks: the baseline and a stack of ``stack`` classifiers) or one
finished run directory (its trained baseline and last stacked stage), every model draws
``batch`` samples in one sampler call (all of the sampler's steps) at each precision:

* ``fp32``: IEEE float32 matrix products (``torch.backends.cuda.matmul.allow_tf32 = False``);
* ``tf32``: float32 tensors, matrix products on the tensor cores with 10-bit mantissas;
* ``bf16``: ``torch.autocast`` to bfloat16 (matrix products and attention in bf16, reductions
  and the sampler's own arithmetic in float32).

Reported per row: samples and sample-steps per second, the FLOPs of one evaluation (counted at
float32 by ``FlopCounterMode``; a guided model's input gradient included), the achieved FLOP/s
and its fraction of two peaks: the measured rate of an 8192-cube matrix product at the same
precision, and the vendor's dense datasheet rate where the device is known. Whether a reduced
precision is *correct* is measured, not assumed: the relative RMS difference of one network
evaluation from float32's, and the infraction rate of the drawn samples (the oracle's labels of
``label`` of them) next to float32's, with standard errors.
"""

from __future__ import annotations

import math
import time

import torch

from genneg.bench.timing import matmul_flops, peak_memory, sync
from genneg.components import DataSplit
from genneg.engine.sampling import CountingDenoiser, resample_conditions
from genneg.precision import PRECISIONS, precision_mode

#: Dense datasheet peaks (FLOP/s) by device-name fragment: fp32, tf32, bf16 (no sparsity).
DATASHEET_PEAKS = {
    "H200": {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12},
    "H100": {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12},
    "A100": {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12},
}


def datasheet_peak(device_name: str, precision: str) -> float | None:
    """The vendor's dense peak for ``precision`` on a device whose name contains a known key."""
    for key, peaks in DATASHEET_PEAKS.items():
        if key in device_name:
            return peaks[precision]
    return None


def measured_peak(device, precision: str, n: int = 8192, repeat: int = 5) -> float:
    """FLOP/s of an ``n``-cube matrix product at ``precision`` on ``device``
    (:func:`genneg.bench.timing.matmul_flops` under :func:`precision_mode`)."""
    with precision_mode(precision, torch.device(device).type):
        return matmul_flops(device, n=n, repeat=repeat)


def _eval_once(model, x, sigma, cond):
    out = model(x, sigma, **cond)
    return out.float()


def relative_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` over every element, in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


class GpuSamplerBench:
    """The measurement of one experiment's models (see the module docstring).

    :param exp: a :class:`genneg.Experiment` on the GPU.
    :param models: name -> denoiser (a baseline, a :class:`GuidedDenoiser`, a student).
    """

    def __init__(self, exp, models: dict, *, preset: str, source: str, seed: int = 0):
        self.exp, self.models, self.preset, self.source = exp, models, preset, source
        self.device = exp.device
        self.seed = seed
        cfg = exp.cfg
        self.sampler_fn = exp.registry.get("samplers", cfg.sampling.sampler)
        self.options = dict(cfg.sampling.options)
        self.sigmas = exp.process.sampling_sigmas(cfg.sampling.steps or None)
        self.conditions = getattr(exp.splits, cfg.eval.condition_split)

    def _conditions(self, n: int, generator) -> tuple[dict, tuple]:
        """Conditions of ``n`` random rows (on the device) and the sample shape."""
        cond, shape = resample_conditions(self.conditions, n, generator)
        return {k: v.to(self.device) for k, v in cond.items()}, shape

    def draw(self, model, n: int, seed: int) -> tuple[DataSplit, int]:
        """``n`` samples of ``model`` in one sampler call (noise from a generator on the
        GPU); returns them and the network calls per sample."""
        cond, shape = self._conditions(n, torch.Generator().manual_seed(seed))
        gen = torch.Generator(device=self.device).manual_seed(seed)
        x = self.exp.process.sample_prior((n, *shape), gen, device=self.device)
        counting = CountingDenoiser(model)
        x = self.sampler_fn(counting, x, self.sigmas, cond=cond, generator=gen, **self.options)
        return DataSplit(x=x.float(), cond=cond), counting.calls

    def infraction(self, samples: DataSplit, n: int) -> tuple[float, float]:
        """Infraction rate (and its standard error) of the first ``n`` samples."""
        part = samples.index(torch.arange(min(n, len(samples))))
        valid = self.exp.label(part).valid.float()
        p = 1.0 - float(valid.mean())
        return p, math.sqrt(max(p * (1 - p), 1e-12) / len(valid))

    def flops_per_eval(self, model, rows: int = 256) -> float:
        """FLOPs of one evaluation per sample (float32 count; the same at every precision)."""
        from genneg.bench.domain import _flops_per_sample

        cpu = torch.Generator().manual_seed(self.seed)
        cond, shape = self._conditions(rows, cpu)
        x = torch.randn((rows, *shape), generator=cpu).to(self.device)
        sigma = torch.full((rows,), float(self.sigmas[len(self.sigmas) // 2]), device=self.device)
        return _flops_per_sample(model, x, sigma, cond)

    def eval_error(self, model, precision: str, rows: int = 4096) -> float:
        """Relative RMS difference of one evaluation at ``precision`` from float32's, on noisy
        data rows ``x0 + sigma * noise`` at random sampling levels."""
        cpu = torch.Generator().manual_seed(self.seed + 1)
        idx = torch.randint(0, len(self.conditions), (rows,), generator=cpu)
        part = self.conditions.index(idx)
        level = torch.randint(0, len(self.sigmas) - 1, (rows,), generator=cpu)
        sigma = self.sigmas[level].float()
        x0 = part.x.cpu()
        x = x0 + sigma.view(-1, *([1] * (x0.ndim - 1))) * torch.randn(x0.shape, generator=cpu)
        x, sigma = x.to(self.device), sigma.to(self.device)
        cond = {k: v.to(self.device) for k, v in part.cond.items()}
        with precision_mode("fp32", self.device.type):
            ref = _eval_once(model, x, sigma, cond)
        with precision_mode(precision, self.device.type):
            out = _eval_once(model, x, sigma, cond)
        return relative_rms(out, ref)

    def run(
        self,
        report,
        *,
        batch: int,
        precisions=PRECISIONS,
        label: int = 8192,
        peak_n: int = 8192,
        log=print,
    ):
        """Measure every model at every precision; rows ``gpu-sampler`` in ``report``."""
        peaks = {p: measured_peak(self.device, p, n=peak_n) for p in precisions}
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        report.meta.setdefault("gpu_sampler", {"device": name, "matmul_peaks": {}})
        report.meta["gpu_sampler"]["matmul_peaks"].update(peaks)
        flops = {m: self.flops_per_eval(model) for m, model in self.models.items()}
        reference = {}
        for precision in precisions:
            for m, model in self.models.items():
                try:
                    with precision_mode(precision, self.device.type):
                        self.draw(model, min(batch, 1024), self.seed)  # warm-up: kernels
                        sync(self.device)
                        with peak_memory(self.device) as mem:
                            t0 = time.perf_counter()
                            samples, nfe = self.draw(model, batch, self.seed)
                            sync(self.device)
                            seconds = time.perf_counter() - t0
                except Exception as exc:  # one failing precision must not end the case
                    report.error(f"{self.preset}/gpu/{m}/{precision}", exc)
                    continue
                error = self.eval_error(model, precision) if precision != "fp32" else 0.0
                rate, rate_se = self.infraction(samples, label) if label else (None, None)
                if precision == "fp32":
                    reference[m] = (rate, rate_se)
                ref_rate, ref_se = reference.get(m, (None, None))
                evals_per_s = batch * nfe / seconds
                achieved = flops[m] * evals_per_s
                sheet = datasheet_peak(name, precision)
                row = report.add(
                    "gpu-sampler",
                    preset=self.preset,
                    source=self.source,
                    model=m,
                    classifiers=len(getattr(model, "classifiers", ())),
                    precision=precision,
                    device=name,
                    batch=batch,
                    steps=len(self.sigmas) - 1,
                    nfe_per_sample=nfe,
                    seconds=seconds,
                    samples_per_s=batch / seconds,
                    sample_evals_per_s=evals_per_s,
                    flops_per_eval=flops[m],
                    achieved_flops=achieved,
                    matmul_peak=peaks[precision],
                    fraction_of_matmul_peak=achieved / peaks[precision],
                    datasheet_peak=sheet,
                    fraction_of_datasheet_peak=achieved / sheet if sheet else None,
                    eval_rel_error_vs_fp32=error,
                    infraction=rate,
                    infraction_se=rate_se,
                    infraction_fp32=ref_rate,
                    infraction_diff_in_se=(
                        (rate - ref_rate) / math.hypot(rate_se, ref_se)
                        if rate is not None and ref_rate is not None and precision != "fp32"
                        else None
                    ),
                    labelled=min(label, batch) if label else 0,
                    **mem,
                )
                log(
                    f"gpu {self.preset} {m} {precision}: {row['samples_per_s']:.0f} samples/s, "
                    f"{achieved / 1e12:.2f} TFLOP/s ({row['fraction_of_matmul_peak']:.1%} of "
                    f"the measured matmul), error {error:.1e}, infraction {rate}"
                )
                del samples
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()


def bench_preset(preset: str, cfg, registry, report, *, device="cuda", stack: int = 4, **kw):
    """:class:`GpuSamplerBench` of ``preset`` with untrained networks: the baseline and a
    batched stack of ``stack`` classifiers."""
    import attrs

    from genneg.experiment import Experiment

    torch.manual_seed(0)
    exp = Experiment.from_config(attrs.evolve(cfg, device=str(device)), registry=registry)
    base = exp.base.eval().requires_grad_(False)
    classifiers = [exp.new_classifier().eval().requires_grad_(False) for _ in range(stack)]
    models = {"baseline": base, f"stack{stack}": exp.guided(classifiers)}
    GpuSamplerBench(exp, models, preset=preset, source="untrained").run(report, **kw)


def bench_run_dir(run_dir, report, *, registry=None, device="cuda", **kw):
    """:class:`GpuSamplerBench` of a finished run's trained baseline and its last stacked
    stage (``iterK``)."""
    from genneg.experiment import Experiment

    exp = Experiment.from_run_dir(run_dir, registry=registry, device=str(device))
    stages = [s for s in exp.finished_stages() if s.startswith("iter")]
    models = {"baseline": exp.load_stage("baseline")}
    if stages:
        last = max(stages, key=lambda s: int(s[4:]))
        models[last] = exp.load_stage(last)
    preset = exp.cfg.name
    GpuSamplerBench(exp, models, preset=preset, source=str(run_dir)).run(report, **kw)
