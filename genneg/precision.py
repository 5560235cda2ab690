"""The arithmetic precision of a model's evaluations: float32, TF32 or bfloat16 autocast.

* ``fp32``: IEEE float32 matrix products (on a GPU ``allow_tf32`` is switched off);
* ``tf32``: float32 tensors, matrix products on a GPU's tensor cores with 10-bit mantissas
  (on a CPU the same as ``fp32``);
* ``bf16``: ``torch.autocast`` to bfloat16: matrix products (and attention) in bf16, with
  float32 accumulation, reductions, softmax and losses in float32 as autocast's op lists say;
  a sampler's own state and arithmetic stay float32 (:class:`AtPrecision` returns float32);
* ``auto``: ``bf16`` where the device multiplies bf16 natively (a CUDA GPU that supports it,
  a CPU with AVX512-BF16 or AMX), else ``fp32`` (on CPUs without them bf16 is emulated and
  slower than float32).

Where a reduced precision is used (``sampling.precision``: the synthetic sets, the evaluation
samples and the distillation teacher's targets) it changes the numbers by bf16's rounding
(relative error about 2^-8 per product); the likelihood (ELBO) and every training loss stay
in float32. Tested in ``tests/test_precision.py`` (the closed-form Gaussian sampled in bf16)
and measured on the demo (README, "Benchmarks": "Reduced precision").
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

PRECISIONS = ("fp32", "tf32", "bf16")
#: What a config may name: the precisions and ``auto``.
CONFIG_PRECISIONS = ("fp32", "tf32", "bf16", "auto")


def native_bf16(device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively (faster than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
    return False


def resolve_precision(precision: str, device) -> str:
    """``precision`` with ``auto`` replaced by ``bf16`` or ``fp32`` for ``device``."""
    if precision not in CONFIG_PRECISIONS:
        raise ValueError(f"precision must be one of {CONFIG_PRECISIONS}, not {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


@contextlib.contextmanager
def precision_mode(precision: str, device_type: str = "cuda"):
    """Run the block's matrix products in ``precision`` (``fp32``, ``tf32`` or ``bf16``); the
    global TF32 switches are restored on exit.

    In bf16 on a GPU, attention runs in PyTorch's math kernel: at batch 65536 the traffic
    transformer's attention (agents x samples rows) failed in cuDNN's fused kernel (its
    backward, the guided model's input gradient: ``mha_graph.execute(...).is_good()``) and in
    the flash / memory-efficient ones (``CUDA error: invalid argument``), on an H200 with torch
    2.11 and CUDA 13."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    stack = contextlib.ExitStack()
    if precision == "bf16":
        stack.enter_context(torch.autocast(device_type, dtype=torch.bfloat16))
        if device_type == "cuda":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
    try:
        with stack:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class AtPrecision(nn.Module):
    """``model`` evaluated in ``precision`` (``fp32``, ``tf32`` or ``bf16``), its output
    returned in the input's dtype, so a sampler's state stays float32. Attributes the
    samplers and the distiller read (``classifiers``, ``base``, ...) are the wrapped
    model's."""

    def __init__(self, model: nn.Module, precision: str):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        self.model = model
        self.precision = precision

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        with precision_mode(self.precision, x.device.type):
            out = self.model(x, sigma, **cond)
        return out.to(x.dtype)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name == "model":  # not set up yet (copy, unpickle)
                raise
            return getattr(super().__getattr__("model"), name)


def at_precision(model: nn.Module, precision: str) -> nn.Module:
    """``model`` itself for ``fp32`` (no wrapper, no cost), else :class:`AtPrecision`."""
    return model if precision == "fp32" else AtPrecision(model, precision)
