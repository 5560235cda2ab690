"""Hook specifications: how a plugin adds components to genneg.

Every hook receives a ``register`` callback (the pattern of ``llm``): the host owns the
names, rejects duplicates and checks each component against its contract, so a plugin never
mutates a global table. Built-in components are registered through the very same hooks by
:mod:`genneg.builtin`, exactly as external plugins found through the ``genneg`` entry-point
group are. A plugin marks its implementations with :data:`hookimpl` (``genneg.hookimpl``).
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("genneg")
hookimpl = pluggy.HookimplMarker("genneg")


@hookspec
def register_oracles(register):
    """Register oracles.

    :param register: ``register(name, factory)``; ``factory(**options)`` returns an object with
        ``categories: tuple[str, ...]`` and ``label(x, cond) -> OracleResult``
        (see :class:`genneg.components.Oracle`).
    """


@hookspec
def register_denoisers(register):
    """Register denoiser networks (the raw network ``F`` that a noise process preconditions).

    :param register: ``register(name, factory)``; ``factory(**options)`` returns an
        ``nn.Module`` whose ``forward(x_in, c_noise, **cond)`` returns a tensor shaped like
        ``x_in`` (see :class:`genneg.components.DenoiserNetwork`).
    """


@hookspec
def register_classifiers(register):
    """Register time-dependent classifier networks.

    :param register: ``register(name, factory)``; ``factory(**options)`` returns an
        ``nn.Module`` with ``granularity`` (``"sample"`` or ``"element"``) whose
        ``forward(x_in, c_noise, **cond)`` returns logits shaped ``[B]`` or ``[B, N]``
        (see :class:`genneg.components.ClassifierNetwork`).
    """


@hookspec
def register_samplers(register):
    """Register samplers.

    :param register: ``register(name, fn)``; ``fn(denoiser, x, sigmas, *, cond=None,
        generator=None, callback=None, progress=False, **options)`` returns the final sample
        (see :mod:`genneg.diffusion.samplers`).
    """


@hookspec
def register_distillers(register):
    """Register distillers: trainers of a student denoiser that matches a teacher (Eq. 14).

    :param register: ``register(name, fn)``; ``fn(student, teacher, data, *, process, train,
        generator, progress, log, **options)`` trains ``student`` (a denoiser, initialised from
        the baseline; of ``distill.student``'s kind, :mod:`genneg.student`: train only its
        parameters that require gradients) in place to match ``teacher`` (the stacked, guided
        model) on ``data`` (the training :class:`genneg.DataSplit`), with ``train`` a
        :class:`genneg.config.TrainConfig`, ``generator`` the stage's ``torch.Generator``,
        ``log`` a message callback and ``options`` the config's ``distill.options`` (plus
        ``states``, :class:`genneg.engine.distill.NoisyStates` to regress at as they are, when
        ``distill.trajectories > 0``); returns
        the loss history ``[(step, loss)]``. :class:`genneg.losses.DistillationLoss` is
        Eq. (14), sharded under torchrun (see :mod:`genneg.engine.distill`, the built-in
        ``score-matching``).
    """


@hookspec
def register_datasets(register):
    """Register datasets.

    :param register: ``register(name, factory)``; ``factory(**options)`` returns a
        :class:`genneg.components.Dataset` (``load(root, generator) -> Splits``).
    """


@hookspec
def register_presets(register):
    """Register named experiment presets.

    :param register: ``register(name, factory)``; ``factory()`` returns a
        :class:`genneg.config.RunConfig`.
    """


@hookspec
def register_benchmarks(register):
    """Register benchmark cases run by ``tox -e bench``.

    :param register: ``register(name, fn)``; ``fn(report)`` measures something and records it
        with ``report.add(...)``.
    """


@hookspec
def register_commands(register):
    """Register sub-commands of the ``genneg`` command line.

    :param register: ``register(command)``; ``command`` is a ``click.Command`` (a group named
        after the domain, e.g. ``genneg traffic build-dataset``), added under its own name; a
        name that another plugin or the core already uses is an error naming both.
    """
