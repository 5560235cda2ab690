"""Warm-starting a guidance classifier from the trained baseline (``classifier.init =
"baseline"``).

The paper trains each classifier from scratch. When the classifier and the denoiser share a
backbone (traffic's by-agent classifier and the denoiser are both the App. B.2 transformer), the
baseline's backbone already knows where roads and lanes are and how far apart cars sit, which a
classifier trained on a few thousand synthetic scenes must otherwise learn again; starting from
it changes the initial point of the optimisation, not the loss (Eq. 13) or its optimum.
"""

from __future__ import annotations

import torch
from torch import nn

from genneg.errors import ConfigError


def copy_matching(dst: nn.Module, src: nn.Module) -> list[str]:
    """Copy into ``dst`` every parameter and buffer of ``src`` with the same name and shape
    (in place, no gradient); the names copied. Raises :class:`ConfigError` when none match:
    the two networks share nothing to start from."""
    src_state = src.state_dict()
    copied = []
    with torch.no_grad():
        for name, tensor in dst.state_dict().items():
            other = src_state.get(name)
            if other is not None and other.shape == tensor.shape:
                tensor.copy_(other)
                copied.append(name)
    if not copied:
        raise ConfigError(
            f"classifier.init = 'baseline', but no parameter of the classifier "
            f"({type(dst).__name__}) has a name and shape in the denoiser ({type(src).__name__}); "
            "use classifier.init = 'scratch'"
        )
    return copied
