"""A tiny domain for engine tests: 2-D Gaussian data, a half-plane oracle, small MLPs."""

import math

import torch
from torch import nn

from genneg import hookimpl
from genneg.components import Dataset, DataSplit, Oracle, OracleResult, Splits
from genneg.config import (
    ClassifierConfig,
    ComponentSpec,
    DistillConfig,
    EvalConfig,
    RunConfig,
    SamplingConfig,
    SynthConfig,
    TrainConfig,
)


class ToyData(Dataset):
    def __init__(self, n=400, nan=False):
        self.n, self.nan = n, nan

    def load(self, root, generator):
        def make():
            x = 0.5 * torch.randn(self.n, 2, generator=generator)
            return DataSplit(x=x)

        train = make()
        if self.nan:
            train.x[3, 1] = float("nan")
        return Splits(train=train, val=make(), test=make())

    def log_density(self, x):
        return (-0.5 * (x / 0.5) ** 2 - 0.5 * math.log(2 * math.pi * 0.25)).sum(-1)

    def plot_samples(self, samples, result, path, title):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(3, 3))
        ok = result.valid.numpy()
        ax.scatter(*samples.x[ok].T.numpy(), s=1)
        ax.scatter(*samples.x[~ok].T.numpy(), s=1, c="brown")
        ax.set_title(title)
        fig.savefig(path)
        plt.close(fig)


class HalfPlane(Oracle):
    categories = ("left",)

    def __init__(self, threshold=-0.3):
        self.threshold = threshold

    def label(self, x, cond):
        valid = x[:, 0] > self.threshold
        return OracleResult(valid=valid, categories={"left": ~valid})


class MLP(nn.Module):
    def __init__(self, out=2, hidden=32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, out),
        )

    def forward(self, x_in, c_noise, **cond):
        return self.net(torch.cat([x_in, c_noise[:, None]], dim=1))


class MLPClassifier(MLP):
    granularity = "sample"

    def __init__(self, hidden=32):
        super().__init__(out=1, hidden=hidden)

    def forward(self, x_in, c_noise, **cond):
        return super().forward(x_in, c_noise).squeeze(-1)


@hookimpl
def register_datasets(register):
    register("toy", ToyData)


@hookimpl
def register_oracles(register):
    register("half-plane", HalfPlane)


@hookimpl
def register_denoisers(register):
    register("mlp", MLP)


@hookimpl
def register_classifiers(register):
    register("mlp", MLPClassifier)


def toy_config(**changes) -> RunConfig:
    import attrs

    cfg = RunConfig(
        name="toy",
        dataset=ComponentSpec(name="toy"),
        oracle=ComponentSpec(name="half-plane"),
        denoiser=ComponentSpec(name="mlp"),
        baseline=TrainConfig(steps=150, batch_size=400, lr=3e-3, log_every=50),
        sampling=SamplingConfig(sampler="edm-heun", steps=8, batch_size=1000),
        iterations=2,
        synth=SynthConfig(n_per_class=300, max_samples=6000, min_per_class=20),
        classifier=ClassifierConfig(
            network=ComponentSpec(name="mlp"),
            train=TrainConfig(steps=100, batch_size=256, lr=3e-3, log_every=50),
        ),
        distill=DistillConfig(train=TrainConfig(steps=40, batch_size=200, log_every=20)),
        eval=EvalConfig(n_samples=1000, elbo_k=4, elbo_points=200, plot_samples=500),
    )
    return attrs.evolve(cfg, **changes)
