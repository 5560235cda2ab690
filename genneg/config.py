"""Run configuration: frozen attrs classes, read from and written to TOML through cattrs.

One converter at the edges (``forbid_extra_keys``), so a typo names the key: ``genneg run
checkerboard --set classifer.train.steps=10`` fails with ``extra fields found: classifer``.
Component options (``denoiser.options`` etc.) are passed to the component's factory, whose
keyword arguments are checked when the run builds it.
"""

from __future__ import annotations

import tomllib
from typing import Any

import attrs
import cattrs
import tomli_w
from attrs import validators as v

from genneg.errors import ConfigError
from genneg.guidance import INPUTS
from genneg.losses import ELEMENT_LOSSES, SCORE_ON, WEIGHTINGS
from genneg.precision import CONFIG_PRECISIONS
from genneg.student import STUDENTS

__all__ = ["ClassifierConfig", "ComponentSpec", "ConfigError", "DistillConfig", "EvalConfig"]
__all__ += ["ProcessSpec", "RunConfig", "SamplingConfig", "SynthConfig", "TrainConfig"]
__all__ += ["dumps_toml", "from_dict", "load_toml", "resolve", "to_dict"]


def _positive(instance, attribute, value):
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _non_negative(instance, attribute, value):
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class ComponentSpec:
    """A registered component by name, with the keyword options for its factory."""

    name: str = attrs.field(validator=v.instance_of(str))
    options: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class ProcessSpec:
    """The noise process: ``edm`` (options of :class:`genneg.diffusion.edm.EDMConfig`) or ``vp``
    (options of :class:`genneg.diffusion.vp.VPConfig`)."""

    kind: str = attrs.field(default="edm", validator=v.in_(("edm", "vp")))
    options: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class TrainConfig:
    """An optimisation loop: Adam, full steps, optional gradient clipping."""

    steps: int = attrs.field(default=1000, validator=_non_negative)
    batch_size: int = attrs.field(default=256, validator=_positive)
    lr: float = attrs.field(default=3e-4, validator=_positive)
    grad_clip: float = attrs.field(default=0.0, validator=_non_negative)
    lr_warmup: int = attrs.field(default=0, validator=_non_negative)
    #: ``constant`` or ``cosine`` (decay to 0 over ``steps``, after the warm-up).
    lr_schedule: str = attrs.field(default="constant", validator=v.in_(("constant", "cosine")))
    #: ``> 0``: the trained network ends with the exponential moving average of its weights,
    #: this decay per step (Polyak averaging); ``0``: the last step's weights.
    ema: float = attrs.field(default=0.0, validator=[v.ge(0.0), v.lt(1.0)])
    log_every: int = attrs.field(default=100, validator=_positive)
    #: The forward pass's precision (:mod:`genneg.precision`): ``fp32``, or ``bf16`` / ``auto``
    #: for mixed precision (autocast: products in bf16, weights, Adam and the loss in float32).
    #: The distillation teacher runs inside the student's loss, so ``distill.train.precision``
    #: applies to it too (besides ``sampling.precision``).
    precision: str = attrs.field(default="fp32", validator=v.in_(CONFIG_PRECISIONS))


@attrs.frozen(kw_only=True)
class SamplingConfig:
    """Which registered sampler, with how many steps (``0``: the process' default)."""

    sampler: str = "edm-heun"
    steps: int = attrs.field(default=32, validator=_non_negative)
    options: dict[str, Any] = attrs.field(factory=dict)
    batch_size: int = attrs.field(default=4096, validator=_positive)
    #: The precision of the model's evaluations while sampling (synthetic sets, evaluation
    #: samples) and of the distillation teacher's targets: ``fp32``, ``tf32``, ``bf16``
    #: (autocast; the sampler's own arithmetic, the ELBO and every training loss stay float32)
    #: or ``auto`` (``bf16`` where the device multiplies it natively, else ``fp32``); see
    #: :mod:`genneg.precision`.
    precision: str = attrs.field(default="fp32", validator=v.in_(CONFIG_PRECISIONS))


@attrs.frozen(kw_only=True)
class SynthConfig:
    """Synthetic labelled data per Gen-neG iteration (Algorithm 1, inner while loop).

    ``n_per_class`` is N: sampling continues until N positives and N negatives exist, or until
    ``max_samples`` have been drawn (the sample budget); then the run stops with a message if
    fewer than ``min_per_class`` negatives (or positives) were found, and otherwise trains on
    what there is.

    ``keep_positive`` (``0``: ``n_per_class``, Algorithm 1's balanced set) keeps up to that
    many of the valid samples drawn on the way: when negatives are rare, sampling stops at N
    negatives with many more positives already drawn, and keeping them costs no sampling.
    Train on such a set with ``classifier.minibatch = "balanced"``.
    """

    n_per_class: int = attrs.field(default=5000, validator=_positive)
    keep_positive: int = attrs.field(default=0, validator=_non_negative)
    max_samples: int = attrs.field(default=200_000, validator=_positive)
    min_per_class: int = attrs.field(default=50, validator=_positive)
    steps: int = attrs.field(default=0, validator=_non_negative)  # 0: as sampling.steps


@attrs.frozen(kw_only=True)
class ClassifierConfig:
    """The guidance classifier, its loss weighting (Eq. 13 or an ablation) and scale.

    ``element_loss`` (per-element networks only): ``per-element`` trains each element's logit on
    its own oracle label, the paper's by-agent classifier, whose guidance counts an infraction
    shared by k elements (a collision) k times; ``joint`` trains ``prod_a sigmoid(f_a)`` on the
    scene label, whose optimum is Theorem 1's ``p(y = 1 | x_t)`` (see :mod:`genneg.losses`).
    The default stays the paper's.
    """

    network: ComponentSpec
    train: TrainConfig = attrs.field(factory=TrainConfig)
    weighting: str = attrs.field(default="is", validator=v.in_(WEIGHTINGS))
    element_loss: str = attrs.field(default="per-element", validator=v.in_(ELEMENT_LOSSES))
    guidance_scale: float = 1.0
    #: Fraction of each synthetic set held out (balanced) for the classifier's per-noise-level
    #: diagnostics (:mod:`genneg.diagnostics`); ``0``: train on all of it, no diagnostics.
    holdout: float = attrs.field(default=0.0, validator=[v.ge(0.0), v.lt(1.0)])
    #: ``hard``: the oracle's labels; ``posterior``: the labels averaged over which training
    #: point made ``x_t`` (same expected loss, less noise; :mod:`genneg.classifier_targets`).
    targets: str = attrs.field(default="hard", validator=v.in_(("hard", "posterior")))
    #: ``[sigma_lo, sigma_hi]``: guide only at those noise levels (:mod:`genneg.window`);
    #: empty: at every level.
    guidance_window: list[float] = attrs.field(factory=list)
    #: Below this noise level the classifiers are evaluated at it (:mod:`genneg.window`).
    sigma_floor: float = attrs.field(default=0.0, validator=v.ge(0.0))
    #: ``uniform``: minibatch rows drawn from the whole synthetic set (the paper's); ``balanced``:
    #: half from its positives, half from its negatives, whatever their numbers (stratified:
    #: with the importance weights at ``pi1 = 1/2`` the expected loss is still Eq. 13's).
    minibatch: str = attrs.field(default="uniform", validator=v.in_(("uniform", "balanced")))
    #: ``scratch``: every classifier starts from fresh weights (the paper's); ``baseline``:
    #: its parameters whose name and shape match the baseline denoiser's (a shared backbone)
    #: start as the trained baseline's (:mod:`genneg.engine.warm_start`).
    init: str = attrs.field(default="scratch", validator=v.in_(("scratch", "baseline")))
    #: What the network sees of ``x_t``: ``c_in`` (scaled like the denoiser's input, the
    #: paper's), ``posterior-mean`` (``E[x0 | x_t]`` under a Gaussian data prior) or
    #: ``tapered`` (``c_in`` up to the data scale, then the posterior mean's decay); the last
    #: two make the guidance term decay like the Bayes classifier's at high noise
    #: (:func:`genneg.guidance.classifier_input`); ``denoised``: the baseline's ``D(x_t)``,
    #: the model's own posterior mean (guidance then backpropagates through ``D``);
    #: ``denoised-st``: ``D(x_t)``'s value with the ``posterior-mean`` input's gradient.
    input: str = attrs.field(default="c_in", validator=v.in_(INPUTS))
    #: ``last``: the weights after the last step (the paper's); ``holdout``: the weights that
    #: scored best (Eq. 13) on the held-out part of the synthetic set at the end of a
    #: ``train.log_every`` window, i.e. early stopping (:mod:`genneg.engine.selection`); needs
    #: ``holdout > 0``.
    select: str = attrs.field(default="last", validator=v.in_(("last", "holdout")))
    #: ``> 0``: the classifier's loss adds that multiple of the guided model's denoising-loss
    #: change on the synthetic set's valid samples (:func:`genneg.losses.guided_denoising_change`:
    #: the r-ELBO's per-level term; same optimum as Eq. 13, Theorem 1's guidance); ``0``: Eq.
    #: (13) alone, the paper's.
    score_weight: float = attrs.field(default=0.0, validator=v.ge(0.0))
    #: Where the score term is charged: ``synthetic`` (the synthetic set's valid samples),
    #: ``data`` (noised scenes of the training split instead: valid by construction, the
    #: points the r-ELBO is measured on, and every training map) or ``both``
    #: (:class:`genneg.losses.ClassifierLoss`).
    score_on: str = attrs.field(default="synthetic", validator=v.in_(SCORE_ON))

    def loss_options(self) -> dict:
        """The keyword arguments of :func:`genneg.engine.train.train_classifier` this config
        sets besides the training loop's: weighting, element loss, targets, minibatch,
        selection and the score term's weight and points."""
        names = ("weighting", "element_loss", "targets", "minibatch", "select", "score_weight")
        return {name: getattr(self, name) for name in (*names, "score_on")}

    def __attrs_post_init__(self):
        if self.select == "holdout" and self.holdout <= 0:
            raise ValueError("classifier.select = 'holdout' needs classifier.holdout > 0")
        if self.score_on != "synthetic" and not self.score_weight:
            raise ValueError(
                f"classifier.score_on = {self.score_on!r} places the score term, which "
                "classifier.score_weight = 0 turns off; set a weight > 0"
            )

    @guidance_window.validator
    def _check_window(self, attribute, value):
        if value and not (len(value) == 2 and 0 <= value[0] < value[1]):
            raise ValueError(f"guidance_window must be [sigma_lo, sigma_hi], got {value!r}")


@attrs.frozen(kw_only=True)
class DistillConfig:
    """Distillation of the stacked model into one denoiser (Eq. 14)."""

    enabled: bool = True
    distiller: str = "score-matching"
    train: TrainConfig = attrs.field(factory=TrainConfig)
    options: dict[str, Any] = attrs.field(factory=dict)
    #: Eq. (14) regresses the student on noised true data; ``samples > 0`` adds that many
    #: scenes drawn from ``samples_from`` (``baseline``: the unguided model the student starts
    #: from, infractions included; ``teacher``: the guided stack) to the points it is regressed
    #: at (:func:`genneg.engine.distill.distillation_points`). 0: the paper's.
    samples: int = attrs.field(default=0, validator=_non_negative)
    samples_from: str = attrs.field(default="baseline", validator=v.in_(("baseline", "teacher")))
    #: The student's kind (:mod:`genneg.student`): ``fine-tune`` (the paper's: a copy of the
    #: baseline, every weight trained) or ``residual`` (the frozen baseline plus a correction
    #: network reading its denoised value, shaped like the guidance term).
    student: str = attrs.field(default="fine-tune", validator=v.in_(STUDENTS))
    #: ``trajectories > 0`` also regresses the student at ``trajectory_states`` noisy states
    #: of each of that many sampler trajectories of ``trajectories_from`` (``baseline``: the
    #: model the student starts as; ``teacher``: the guided stack it should end as), as
    #: visited (:func:`genneg.engine.distill.trajectory_states`). 0: the paper's.
    trajectories: int = attrs.field(default=0, validator=_non_negative)
    #: ``True``: the (residual) student corrects the baseline only inside
    #: ``classifier.guidance_window``, where the windowed teacher differs from the baseline,
    #: and Eq. (14) is regressed only at the levels inside it (:mod:`genneg.student`; ours).
    in_window: bool = False
    trajectory_states: int = attrs.field(default=4, validator=_positive)
    #: Each teacher target of Eq. (14) is regressed at this many times: the distiller
    #: evaluates the stacked teacher once per ``target_reuse`` minibatches and regresses the
    #: student at each row in that many shuffled passes (:mod:`genneg.engine.target_pool`;
    #: ours). 1: a fresh minibatch and teacher evaluation every step (the paper's).
    target_reuse: int = attrs.field(default=1, validator=_positive)
    trajectories_from: str = attrs.field(
        default="baseline", validator=v.in_(("baseline", "teacher"))
    )
    #: States of the trajectories whose final sample the oracle flags are kept this many
    #: times (``distill.trajectories``; ours): the regression's share of the states where
    #: the teacher's term is large and rare (an offroad car's road-edge push) grows, its
    #: optimum (the teacher wherever the states have support) does not change. 1: each once.
    #: (3 on the SUMO stack: no better fit at the offroad cars; docs/traffic.md, session 21.)
    infracting_repeats: int = attrs.field(default=1, validator=_positive)
    #: Options that replace the denoiser's (``denoiser.options``) for the residual student's
    #: correction network: the correction is of the baseline's architecture with these
    #: changed (ours; e.g. the traffic network's ``road_gradients``). Empty: the baseline's.
    correction: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class EvalConfig:
    """Evaluation at every stage."""

    n_samples: int = attrs.field(default=10_000, validator=_positive)
    elbo_k: int = attrs.field(default=32, validator=_positive)
    elbo_points: int = attrs.field(default=1000, validator=_positive)
    elbo_split: str = attrs.field(default="test", validator=v.in_(("val", "test")))
    plot_samples: int = attrs.field(default=4000, validator=_positive)
    #: ``elbo``: the variational bound; ``r-elbo``: DDPM's reweighted bound (uniform weights).
    elbo: str = attrs.field(default="elbo", validator=v.in_(("elbo", "r-elbo")))
    #: The split whose conditions (``cond``: maps, masks, ...) the evaluation samples are drawn
    #: under (rows with replacement); ``test`` scores a conditional model on held-out
    #: conditions (e.g. traffic's held-out city). Synthetic sets always use ``train``.
    condition_split: str = attrs.field(default="train", validator=v.in_(("train", "val", "test")))


@attrs.frozen(kw_only=True)
class RunConfig:
    """Everything a Gen-neG run needs (Algorithm 1 plus evaluation)."""

    name: str = "run"
    seed: int = 0
    device: str = "cpu"
    data_root: str = "~/.cache/genneg"
    dataset: ComponentSpec
    oracle: ComponentSpec
    process: ProcessSpec = attrs.field(factory=ProcessSpec)
    denoiser: ComponentSpec
    #: A run directory (or a ``baseline.pt``) whose trained baseline this run reuses instead of
    #: training one; variants of one experiment (ablations, by-agent/by-scene) share it.
    baseline_from: str = ""
    baseline: TrainConfig = attrs.field(factory=TrainConfig)
    sampling: SamplingConfig = attrs.field(factory=SamplingConfig)
    iterations: int = attrs.field(default=1, validator=_non_negative)
    synth: SynthConfig = attrs.field(factory=SynthConfig)
    classifier: ClassifierConfig
    distill: DistillConfig = attrs.field(factory=DistillConfig)
    eval: EvalConfig = attrs.field(factory=EvalConfig)

    def __attrs_post_init__(self):
        d = self.distill
        if d.in_window and not (self.classifier.guidance_window and d.student == "residual"):
            raise ValueError(
                "distill.in_window confines a residual student to classifier.guidance_window; "
                f"it needs both (distill.student = {d.student!r}, classifier.guidance_window = "
                f"{self.classifier.guidance_window})"
            )
        if d.correction and d.student != "residual":
            raise ValueError(
                "distill.correction sets the options of a residual student's correction "
                f"network; distill.student is {d.student!r} (use 'residual')"
            )


converter = cattrs.Converter(forbid_extra_keys=True)


@converter.register_structure_hook
def _strict_int(value: Any, _type: type[int]) -> int:
    """Integers stay integers: ``--set baseline.steps=2.5`` is an error, not 2 steps (an
    integral float such as ``1e3`` is taken as the integer it is)."""
    integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral:
        raise ValueError(f"expected an integer, got {value!r}")
    return int(value)


@converter.register_structure_hook
def _strict_bool(value: Any, _type: type[bool]) -> bool:
    """Booleans are ``true``/``false``: a string such as ``"no"`` is an error, not True."""
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Structure a plain dict into a :class:`RunConfig`; errors name the key."""
    try:
        return converter.structure(data, RunConfig)
    except Exception as exc:  # cattrs raises ExceptionGroups; flatten them into one message
        if isinstance(exc, (cattrs.BaseValidationError,)):
            lines = cattrs.transform_error(exc, path="config", format_exception=_format)
            raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None
        raise ConfigError(f"invalid config: {exc}") from None


def _format(exc: BaseException, type_) -> str:
    if isinstance(exc, (ValueError, TypeError)) and not isinstance(exc, cattrs.BaseValidationError):
        return str(exc.args[0]) if exc.args else repr(exc)
    return cattrs.v.format_exception(exc, type_)


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return converter.unstructure(cfg)


def load_toml(path) -> dict[str, Any]:
    """The tables of the TOML file ``path``; a malformed file is a :class:`ConfigError` naming
    the file, line and column."""
    with open(path, "rb") as fh:
        try:
            return tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def dumps_toml(cfg: RunConfig) -> str:
    return tomli_w.dumps(to_dict(cfg))


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive merge of ``override`` into a copy of ``base`` (tables merge, values replace)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_assignment(text: str) -> dict[str, Any]:
    """``a.b.c=value`` as a nested dict; the value is read as a TOML literal (so ``3``,
    ``1e-3``, ``true``, ``"x"`` and ``[1, 2]`` work), or as a bare string if it is not one."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set has an empty key: {text!r}")
    out: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        out = {part: out}
    return out


def resolve(base: RunConfig, files=(), assignments=()) -> RunConfig:
    """A preset overridden by TOML files, then by ``--set`` assignments, in that order."""
    data = to_dict(base)
    for path in files:
        data = merge(data, load_toml(path))
    for text in assignments:
        data = merge(data, parse_assignment(text))
    return from_dict(data)
