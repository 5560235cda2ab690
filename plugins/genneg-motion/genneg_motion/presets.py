"""Experiment presets: ``motion`` (CPU, minutes, synthetic data) and ``motion-paper`` (App.
B.3: HumanML3D, MDM at full size, the official checkpoint as the baseline)."""

from __future__ import annotations

import attrs

from genneg import (
    ClassifierConfig,
    ComponentSpec,
    DistillConfig,
    EvalConfig,
    ProcessSpec,
    RunConfig,
    SamplingConfig,
    SynthConfig,
    TrainConfig,
)
from genneg_motion.oracle import DEFAULT_THRESHOLD

#: MDM's diffusion: 1000-step cosine DDPM predicting x0.
MDM_PROCESS = ProcessSpec(
    kind="vp", options={"timesteps": 1000, "schedule": "cosine", "prediction": "x0"}
)
SMALL_NET = {"latent_dim": 64, "ff_size": 128, "num_layers": 2, "num_heads": 4, "dropout": 0.0}


def demo_preset() -> RunConfig:
    """CPU demo: synthetic HumanML3D-format motions, a small MDM, 50 DDPM steps (minutes).

    1000 training motions of 2-3 s, MDM with latent 64 and 2 layers, one Gen-neG iteration
    with 600 + 600 synthetic motions."""
    return RunConfig(
        name="motion",
        dataset=ComponentSpec(
            name="motion-synthetic",
            options={
                "n_train": 1000,
                "n_val": 200,
                "n_test": 200,
                "min_frames": 40,
                "max_frames": 60,
            },
        ),
        oracle=ComponentSpec(name="ground-penetration", options={"threshold": DEFAULT_THRESHOLD}),
        process=MDM_PROCESS,
        denoiser=ComponentSpec(name="mdm", options=SMALL_NET),
        baseline=TrainConfig(
            steps=1500, batch_size=64, lr=1e-3, lr_warmup=100, grad_clip=1.0, log_every=250
        ),
        sampling=SamplingConfig(sampler="ddpm", steps=50, batch_size=500),
        iterations=1,
        synth=SynthConfig(n_per_class=600, max_samples=6000, min_per_class=50),
        classifier=ClassifierConfig(
            network=ComponentSpec(name="mdm-classifier", options=SMALL_NET),
            train=TrainConfig(
                steps=800, batch_size=128, lr=5e-4, lr_warmup=50, grad_clip=1.0, log_every=200
            ),
        ),
        distill=DistillConfig(enabled=False),
        eval=EvalConfig(
            n_samples=1000, elbo="r-elbo", elbo_k=8, elbo_points=200, plot_samples=1000
        ),
    )


def paper_preset() -> RunConfig:
    """App. B.3: HumanML3D + CLIP, full-size MDM, 1000 DDPM steps (a GPU and the data).

    MDM (512 latent, 8 layers, 4 heads, ff 1024); 250k + 250k synthetic motions; classifier
    batch 256, lr 1e-4, 100k steps;
    4626 evaluation motions (one per test caption). Set ``baseline_from`` to the run made by
    ``genneg motion import-mdm model000475000.pt`` (or train: MDM used 475k steps of batch 64,
    lr 1e-4)."""
    net = {"latent_dim": 512, "ff_size": 1024, "num_layers": 8, "num_heads": 4, "dropout": 0.1}
    return RunConfig(
        name="motion-paper",
        device="cuda",
        dataset=ComponentSpec(
            name="humanml3d", options={"path": "dataset/HumanML3D", "text_encoder": "clip"}
        ),
        oracle=ComponentSpec(name="ground-penetration", options={"threshold": DEFAULT_THRESHOLD}),
        process=MDM_PROCESS,
        denoiser=ComponentSpec(name="mdm", options=net),
        baseline=TrainConfig(steps=475_000, batch_size=64, lr=1e-4, log_every=1000),
        sampling=SamplingConfig(sampler="ddpm", steps=1000, batch_size=256),
        iterations=1,
        synth=SynthConfig(n_per_class=250_000, max_samples=3_000_000, min_per_class=1000),
        classifier=ClassifierConfig(
            network=ComponentSpec(name="mdm-classifier", options=net),
            train=TrainConfig(steps=100_000, batch_size=256, lr=1e-4, log_every=1000),
        ),
        distill=DistillConfig(enabled=False),
        eval=EvalConfig(n_samples=4626, elbo="r-elbo", elbo_k=32, elbo_points=1000),
    )


def ablation(preset, weighting: str, suffix: str):
    """``preset`` with the classifier loss weighting ``weighting`` (``no-is``: Table 2's
    "w/o IS")."""

    def factory() -> RunConfig:
        cfg = preset()
        return attrs.evolve(
            cfg,
            name=f"{cfg.name}-{suffix}",
            classifier=attrs.evolve(cfg.classifier, weighting=weighting),
        )

    first = (preset.__doc__ or "").splitlines()[0].rstrip(".")
    factory.__doc__ = f"{first}; classifier weighting {weighting!r}."
    return factory
