"""A stack of classifiers of one architecture evaluated as one batched network.

Stacked guidance (Eq. 9, Algorithm 1's else-branch) needs ``sum_i log C_i(x; sigma)`` and its
gradient in ``x``. Evaluated classifier by classifier, a stack of K costs K small forward and
backward passes, and at the sizes a CPU run uses, much of each pass is per-operation overhead.
When the K networks share one architecture (same class, parameter and buffer names and shapes,
equal buffers, eval mode, same noise process and granularity) and their class implements the
batched evaluation below, :class:`StackedClassifiers` evaluates all K at once: every layer is
one batched product of the K weight matrices (``torch.baddbmm``), the input scaling and
everything that does not depend on the weights is computed once, and the backward pass is one
pass too. Other stacks keep the per-classifier path (``TimeClassifier.log_prob``).

The protocol, a method of the classifier network (called on the first member, which gives the
hyperparameters; the weights come from ``params``)::

    def stacked_forward(self, params, buffers, x_in, c_noise, cache, **cond) -> Tensor

A network whose ``stacked_forward`` does not cover all its options sets ``can_stack`` False
(the traffic network with its agent-frame additions). A network may also set
``stack_max_batch``: above that batch size its members are evaluated one
by one (on a CPU, a big stacked activation no longer fits the caches, and the loop is faster).

A network may also implement the gradient by hand, which spares a small stack autograd's
per-operation bookkeeping (its graph and its backward engine: at a sampler's batch of 64, most
of a small network's backward time)::

    def stacked_forward_vjp(self, params, buffers, x_in, c_noise, cache, **cond)
        -> (logits, pullback)

where ``pullback(g)``, ``g`` shaped like the logits, returns ``sum_k g_k . d logits_k / d x_in``
shaped like ``x_in``. Guidance (:func:`stacked_guidance_grad`) then takes the stack's gradient
from it, with no graph; everything else keeps autograd. Each plugin that implements it tests it
against autograd (:func:`genneg.testing.check_stacked_forward`).

``params`` maps each of the network's parameter names to the K members' tensors stacked on a
new leading dimension; ``buffers`` maps each buffer name to the (shared) tensor; ``cache`` is a
dict the function may keep weight-dependent, ``x``-independent results in (it is emptied
whenever the weights change). It returns every member's logits, ``[K, B]`` or ``[K, B, N]``,
equal to the members' own ``forward`` to float tolerance (each plugin tests this).

Measured on 2 CPU cores (see the benchmark's ``stackK-loop`` rows): ``torch.func.vmap`` over
``functional_call`` was no faster than the loop for any of the bundled architectures, so it is
not used. The stacked weights are detached copies, refreshed whenever a member's tensor changes
(its storage or in-place version counter: an optimiser step, ``load_state_dict``); gradients
flow to ``x`` only, which is all that guidance needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genneg.diffusion.shapes import per_sample
from genneg.guidance import LINEAR_INPUTS, TimeClassifier


def _signature(clf) -> tuple | None:
    """What must agree for two classifiers to stack, or ``None`` when ``clf`` cannot stack (not a
    plain :class:`TimeClassifier`, whose subclasses may override ``log_prob``; no
    ``stacked_forward``; a module in training mode)."""
    if type(clf) is not TimeClassifier:
        return None
    net = clf.network
    if getattr(type(net), "stacked_forward", None) is None or not getattr(net, "can_stack", True):
        return None
    if any(m.training for m in net.modules()):
        return None
    tensors = [
        (n, tuple(t.shape), t.dtype, t.device)
        for named in (net.named_parameters(), net.named_buffers())
        for n, t in named
    ]
    denoiser = id(clf.denoiser)  # the "denoised" input's D: one for the whole stack
    return (type(net), id(clf.process), clf.granularity, clf.input, denoiser, tuple(tensors))


def stackable(classifiers) -> bool:
    """True when ``classifiers`` (two or more) can be evaluated as one
    :class:`StackedClassifiers`: one architecture implementing ``stacked_forward``, eval mode,
    one noise process and granularity, equal buffers."""
    classifiers = list(classifiers)
    if len(classifiers) < 2:
        return False
    first = _signature(classifiers[0])
    if first is None or any(_signature(c) != first for c in classifiers[1:]):
        return False
    bufs = [dict(c.network.named_buffers()) for c in classifiers]
    return all(torch.equal(bufs[0][k], b[k]) for b in bufs[1:] for k in bufs[0])


def _as_one_stack(classifiers) -> bool:
    """:func:`stackable`, or one classifier that could stack (its hand-written gradient is
    taken as a stack of one, :func:`stacked_guidance_grad`)."""
    if len(classifiers) == 1:
        return _signature(classifiers[0]) is not None
    return stackable(classifiers)


class StackedClassifiers:
    """``sum_i log C_i(x; sigma)`` of K :func:`stackable` classifiers in one batched evaluation.

    Not an ``nn.Module`` on purpose: it owns no parameters (the classifiers keep theirs), so it
    adds nothing to a ``state_dict``.
    """

    def __init__(self, classifiers):
        self.classifiers = list(classifiers)
        if not _as_one_stack(self.classifiers):
            raise ValueError(
                "these classifiers cannot be stacked (different architectures, training mode, "
                "or no stacked_forward); evaluate them one by one"
            )
        first = self.classifiers[0]
        self.process = first.process
        self.granularity = first.granularity
        self.first = first
        self.forward_fn = first.network.stacked_forward
        # by hand only where the input is c(sigma) x (log_prob_grad), not through D
        linear_input = first.input in LINEAR_INPUTS
        self.vjp_fn = getattr(first.network, "stacked_forward_vjp", None) if linear_input else None
        self.max_batch = getattr(first.network, "stack_max_batch", None)
        self._tensors = self._member_tensors()
        self._key = None
        self.params: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self.cache: dict = {}

    def __len__(self) -> int:
        return len(self.classifiers)

    def _member_tensors(self) -> list:
        return [
            t for c in self.classifiers for t in (*c.network.parameters(), *c.network.buffers())
        ]

    def refresh(self) -> None:
        """Re-stack the weights (and empty the cache) if any member's tensors changed: their
        storage (a move, a new tensor) or their in-place version (an optimiser step,
        ``load_state_dict``)."""
        key = [(t.data_ptr(), t._version) for t in self._tensors]
        if key == self._key:
            return
        if self._key is None or [p for p, _ in key] != [p for p, _ in self._key]:
            if not _as_one_stack(self.classifiers):  # moved apart, or changed shape
                raise ValueError("the stacked classifiers no longer share one architecture")
            self._tensors = self._member_tensors()
            key = [(t.data_ptr(), t._version) for t in self._tensors]
        params = [dict(c.network.named_parameters()) for c in self.classifiers]
        with torch.no_grad():
            self.params = {name: torch.stack([p[name] for p in params]) for name in params[0]}
        self.buffers = dict(self.classifiers[0].network.named_buffers())
        self.cache = {}
        self._key = key

    def logits(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        """Every member's logits, stacked: ``[K, B]`` or ``[K, B, N]``."""
        self.refresh()
        sigma = per_sample(sigma, x)
        p = self.process
        x_in = self.first.network_input(x, sigma, **cond)  # as TimeClassifier.forward, once
        return self.forward_fn(
            self.params, self.buffers, x_in, p.c_noise(sigma), self.cache, **cond
        )

    def log_prob(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        """``sum_i log C_i(x; sigma)`` per sample ``[B]`` (per-element members: summed over the
        real elements, ``cond["mask"]``), as :func:`genneg.guidance.log_prob_from_logits`
        member by member."""
        logp = F.logsigmoid(self.logits(x, sigma, **cond))  # [K, B] or [K, B, N]
        if self.granularity == "sample":
            return logp.reshape(logp.shape[0], -1).sum(0)
        mask = cond.get("mask")
        if mask is not None:
            logp = logp * mask.to(logp.dtype)
        return logp.sum(dim=(0, 2))

    def log_prob_grad(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        """``grad_x sum_i log C_i(x; sigma)`` from the network's ``stacked_forward_vjp``, no
        autograd: ``d log sigmoid(l) / dl = sigmoid(-l)`` pulled back through the network,
        then through the input scaling, ``x_in = c(sigma) x`` for every classifier input
        (:func:`genneg.guidance.classifier_input`), so ``grad_x = c(sigma) grad_{x_in}``."""
        if self.vjp_fn is None:
            raise ValueError("this stack's network has no stacked_forward_vjp")
        self.refresh()
        sigma = per_sample(sigma, x)
        with torch.no_grad():
            scale = self.first.network_input(torch.ones_like(x), sigma)
            x_in, c_noise = scale * x, self.process.c_noise(sigma)
            logits, pullback = self.vjp_fn(
                self.params, self.buffers, x_in, c_noise, self.cache, **cond
            )
            g = torch.sigmoid(-logits)
            mask = cond.get("mask")
            if self.granularity != "sample" and mask is not None:
                g = g * mask.to(g.dtype)
            return scale * pullback(g)


def _stack_plan(owner, classifiers) -> tuple:
    """``(stacks, singles, by_hand)`` of ``owner``'s classifiers: the stackable groups, the
    others, and those of the others whose gradient the network writes by hand (each a stack of
    one). Kept on ``owner`` and rebuilt when the stack (its members, their modes, shapes or
    devices) changes."""
    # the members and their modes; the stacks check their own tensors (refresh)
    key = [(id(c), c.training, getattr(c, "network", c).training) for c in classifiers]
    plan = owner.__dict__.get("_stack_plan")
    if plan is None or plan[0] != key:
        groups, singles = split_stack(classifiers)
        lone = [StackedClassifiers([c]) for c in singles if _signature(c) is not None]
        by_hand = [stack for stack in lone if stack.vjp_fn is not None]
        plan = (key, [StackedClassifiers(g) for g in groups], singles, by_hand)
        owner.__dict__["_stack_plan"] = plan
    return plan[1], plan[2], plan[3]


def stacked_guidance_grad(owner, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
    """``grad_x owner.log_prob(x)`` (the stack's sum, Eq. 9) for guidance: the stackable
    groups whose network implements ``stacked_forward_vjp`` by hand, at batches up to their
    ``stack_max_batch``, lone classifiers of such a network too (as stacks of one); the
    others, and every member above its ``stack_max_batch``, through autograd of
    :func:`stacked_log_prob`'s terms (measured on the checkerboard demo, at batch 5000 the
    hand-written pass was 10-20 % slower than autograd's). ``x`` is taken as a constant (the
    result carries no graph), as guidance takes it."""
    stacks, singles, by_hand = _stack_plan(owner, list(owner.classifiers))
    sigma = per_sample(sigma, x)
    x = x.detach()
    grad = torch.zeros_like(x)
    hand_members = {id(s.first) for s in by_hand}
    rest = [c for c in singles if id(c) not in hand_members]
    for stack in [*stacks, *by_hand]:
        above = stack.max_batch is not None and x.shape[0] > stack.max_batch
        if stack.vjp_fn is not None and not above:
            grad = grad + stack.log_prob_grad(x, sigma, **cond)
        elif above:
            rest.extend(stack.classifiers)
        else:
            rest.append(stack)
    if rest:
        with torch.enable_grad():
            xg = x.requires_grad_(True)
            total = sum(member.log_prob(xg, sigma, **cond).sum() for member in rest)
            grad = grad + torch.autograd.grad(total, xg)[0]
    return grad


def split_stack(classifiers) -> tuple[list[list], list]:
    """``(groups, singles)``: the lists of two or more classifiers that :func:`stackable`
    accepts together (in order of first appearance), and the others, evaluated one by one."""
    groups: dict = {}
    singles = []
    for clf in classifiers:
        sig = _signature(clf)
        if sig is None:
            singles.append(clf)
        else:
            groups.setdefault(sig, []).append(clf)
    stacked = []
    for members in groups.values():
        if stackable(members):
            stacked.append(members)
        else:
            singles.extend(members)
    return stacked, singles


def stacked_log_prob(owner, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
    """``owner.log_prob`` (a :class:`~genneg.guidance.GuidedDenoiser`'s sum over its stack,
    Eq. 9) with each stackable group of ``owner.classifiers`` evaluated as one
    :class:`StackedClassifiers`, the others one by one. The grouping is kept on ``owner`` and
    rebuilt when the stack (its members, their modes, shapes or devices) changes."""
    stacks, singles, _ = _stack_plan(owner, list(owner.classifiers))
    sigma = per_sample(sigma, x)
    total = x.new_zeros(x.shape[0])
    for stack in stacks:
        if stack.max_batch is not None and x.shape[0] > stack.max_batch:
            for clf in stack.classifiers:
                total = total + clf.log_prob(x, sigma, **cond)
        else:
            total = total + stack.log_prob(x, sigma, **cond)
    for clf in singles:
        total = total + clf.log_prob(x, sigma, **cond)
    return total


def batched_linear(w, b, h: torch.Tensor, shared: bool = False) -> torch.Tensor:
    """K linear maps (``w`` ``[K, out, in]``, ``b`` ``[K, out]`` or ``None``) as one batched
    product: ``h`` is ``[K, ..., in]`` (one input per member) or, with ``shared``,
    ``[..., in]`` (one input for all); returns ``[K, ..., out]``."""
    k = w.shape[0]
    if shared:
        # one product with the members' weights side by side, [..., in] x [in, K * out]: its
        # gradient in h is one product too, not K products summed over the members
        out = F.linear(h, w.reshape(-1, w.shape[-1]), None if b is None else b.reshape(-1))
        return out.unflatten(-1, (k, w.shape[1])).movedim(-2, 0)  # a view, [K, ..., out]
    lead = h.shape[1:-1]
    flat = h.reshape(k, -1, h.shape[-1])
    wt = w.transpose(1, 2)
    out = torch.bmm(flat, wt) if b is None else torch.baddbmm(b[:, None], flat, wt)
    return out.reshape(k, *lead, w.shape[1])


def linear(params: dict, name: str, h: torch.Tensor, shared: bool = False) -> torch.Tensor:
    """The K members' ``nn.Linear`` called ``name`` (:func:`batched_linear`)."""
    return batched_linear(params[f"{name}.weight"], params.get(f"{name}.bias"), h, shared)


def layer_norm(params: dict, name: str, h: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The K members' ``nn.LayerNorm`` called ``name`` on ``h`` ``[K, ..., d]``."""
    w, b = params[f"{name}.weight"], params[f"{name}.bias"]
    shape = (w.shape[0], *([1] * (h.ndim - 2)), w.shape[1])
    out = F.layer_norm(h, h.shape[-1:], eps=eps)
    return torch.addcmul(b.reshape(shape), out, w.reshape(shape))
