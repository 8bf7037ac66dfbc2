"""Rule families: the raw update ``D_ij`` of a plastic projection from pre ``i`` to post ``j``.

See :mod:`hybridopt.snn.plasticity` for the equations.  :data:`RULES` is the registry:
:func:`register_rule` adds a family (its update, and optionally its in-place twin and
vector-Jacobian product for the fused kernel).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from hybridopt.snn.catalogue import RULE_COEFFICIENTS, check_registry

__all__ = [
    "RULES",
    "Activity",
    "Rule",
    "RuleGrad",
    "abcd_update",
    "abcd_update_into",
    "abcd_vjp",
    "bcm_threshold",
    "bcm_update",
    "bcm_update_into",
    "bcm_vjp",
    "clamp_coefficient",
    "hebbian_update",
    "hebbian_update_into",
    "hebbian_vjp",
    "oja_update",
    "oja_update_into",
    "oja_vjp",
    "register_rule",
    "stdp_update",
    "stdp_update_into",
    "stdp_vjp",
]


class Activity(NamedTuple):
    """What a rule sees at one step: traces ``B x I`` / ``B x J`` and the instantaneous activity."""

    pre_trace: Tensor
    post_trace: Tensor
    pre_spike: Tensor
    post_spike: Tensor


# --------------------------------------------------------------------------- rule families
RuleFn = Callable[[Activity, Tensor, Optional[Tensor], Mapping[str, Tensor]], Tensor]
ThresholdFn = Callable[[Activity, Tensor, Mapping[str, Tensor]], Tensor]


class RuleGrad(NamedTuple):
    """Vector-Jacobian product of a rule's ``D`` (what a fused backward needs from a family).

    Given the gradient ``gD_bij = gX_bij * gain_bj`` flowing into ``D``: the gradients of the
    activity fields, of ``phi`` and of the coefficients; ``gain`` is ``sum_i gX_bij D_bij``
    (``B x J``: the gradient of a per-post-neuron multiplier of ``D``); ``h_scale`` is
    ``dD_bij / dH_bij`` as ``B x J`` when ``D`` depends on ``H`` (Oja), else ``None``.
    """

    pre_trace: Optional[Tensor] = None
    post_trace: Optional[Tensor] = None
    pre_spike: Optional[Tensor] = None
    post_spike: Optional[Tensor] = None
    phi: Optional[Tensor] = None
    coeffs: dict[str, Tensor] = {}
    gain: Optional[Tensor] = None
    h_scale: Optional[Tensor] = None


RuleVjp = Callable[..., RuleGrad]
RuleIntoFn = Callable[..., Tensor]


def _col_sums(a: Tensor, gX: Tensor) -> Tensor:
    """``sum_i a_bi gX_bij`` (``B x J``; ``a`` may carry an extra leading axis: ``B x K x I`` -> ``B x K x J``)."""
    return torch.bmm(a.unsqueeze(1), gX).squeeze(1) if a.dim() == 2 else torch.bmm(a, gX)


def _row_sums(gX: Tensor, c: Tensor) -> Tensor:
    """``sum_j gX_bij c_bj`` (``B x I``; ``c`` may be ``B x K x J`` -> ``B x K x I``)."""
    gT = gX.transpose(1, 2)  # a transposed batched vector-matrix product is the fast BLAS path on CPU
    return torch.bmm(c.unsqueeze(1), gT).squeeze(1) if c.dim() == 2 else torch.bmm(c, gT)


def hebbian_update(act: Activity, H: Tensor, phi: Optional[Tensor], coeffs: Mapping[str, Tensor]) -> Tensor:
    """``D_ij = xpre_i * xpost_j``."""
    return act.pre_trace.unsqueeze(2) * act.post_trace.unsqueeze(1)


def hebbian_update_into(act: Activity, H: Tensor, phi, coeffs, out: Tensor, scratch: Optional[Tensor]) -> Tensor:
    """:func:`hebbian_update` written into ``out`` (the same operations, so the same bits)."""
    return torch.mul(act.pre_trace.unsqueeze(2), act.post_trace.unsqueeze(1), out=out)


def hebbian_vjp(act: Activity, H: Tensor, phi, coeffs, gX: Tensor, gain: Tensor, scratch=None) -> RuleGrad:
    """``d xpre_i = sum_j gD_ij xpost_j``, ``d xpost_j = sum_i gD_ij xpre_i``."""
    Y = _col_sums(act.pre_trace, gX)
    return RuleGrad(pre_trace=_row_sums(gX, gain * act.post_trace), post_trace=gain * Y, gain=act.post_trace * Y)


def _oja_gain(post: Tensor) -> Tensor:
    """``p_j = xpost_j / (1 + xpost_j^2)``: Oja's post factor, normalised (see :func:`oja_update`)."""
    return post / (1.0 + post * post)


def oja_update(act: Activity, H: Tensor, phi: Optional[Tensor], coeffs: Mapping[str, Tensor]) -> Tensor:
    """``D_ij = p_j (xpre_i - H_ij xpost_j)``, ``p_j = xpost_j / (1 + xpost_j^2)``: Oja's rule,
    ``xpost_j (xpre_i - H_ij xpost_j)``, with its step normalised by ``1 + xpost_j^2``.

    Oja's rule was made for activities of order one; here it sees spike traces, which reach
    ``1 / (1 - trace_decay)`` (20 at 0.95).  Its decay term ``-eta xpost^2 H`` then multiplies ``H``
    by ``1 - eta xpost^2`` each step, tens in magnitude, and the gradient through ``H`` grows by that
    factor per step: such networks went non-finite in their first training step.  Divided by
    ``1 + xpost^2`` (as normalised LMS divides by the input's power), the factor is
    ``1 - eta q_j`` with ``q_j = xpost_j^2 / (1 + xpost_j^2)`` in ``[0, 1)``, stable for
    ``0 <= eta < 2`` whatever the traces; the fixed points (``xpre_i = H_ij xpost_j``) are Oja's,
    and for small traces (``xpost << 1``) so is the update."""
    post = act.post_trace.unsqueeze(1)
    return _oja_gain(act.post_trace).unsqueeze(1) * (act.pre_trace.unsqueeze(2) - H * post)


def oja_update_into(act: Activity, H: Tensor, phi, coeffs, out: Tensor, scratch: Optional[Tensor]) -> Tensor:
    """:func:`oja_update` written into ``out``: ``H xpost``, ``xpre - that``, ``p * that``."""
    torch.mul(H, act.post_trace.unsqueeze(1), out=out)
    torch.sub(act.pre_trace.unsqueeze(2), out, out=out)
    return out.mul_(_oja_gain(act.post_trace).unsqueeze(1))


def oja_vjp(act: Activity, H: Tensor, phi, coeffs, gX: Tensor, gain: Tensor, scratch=None) -> RuleGrad:
    """``D_ij = p_j (xpre_i - H_ij y_j)`` with ``y = xpost``, ``p = y / (1 + y^2)``,
    ``dp/dy = (1 - y^2) / (1 + y^2)^2``.  With ``Y_j = sum_i gX_ij xpre_i`` and
    ``Z_j = sum_i gX_ij H_ij``: ``d xpre_i = sum_j gD_ij p_j``,
    ``d y_j = gain_j (dp/dy (Y_j - y_j Z_j) - p_j Z_j)``, the gain's ``p_j (Y_j - y_j Z_j)``, and
    ``dD_ij/dH_ij = -p_j y_j``."""
    post = act.post_trace
    Y = _col_sums(act.pre_trace, gX)
    Z = torch.mul(gX, H, out=scratch).sum(1)  # sum_i gX_ij H_ij
    sq = post * post
    den = 1.0 + sq
    p = post / den
    dp = (1.0 - sq) / (den * den)
    inner = Y - post * Z
    return RuleGrad(
        pre_trace=_row_sums(gX, gain * p),
        post_trace=gain * (dp * inner - p * Z),
        gain=p * inner,
        h_scale=-(p * post),
    )


def bcm_update(act: Activity, H: Tensor, phi: Optional[Tensor], coeffs: Mapping[str, Tensor]) -> Tensor:
    """``D_ij = xpre_i * xpost_j * (xpost_j - phi_j)`` with the threshold before this step's update."""
    assert phi is not None, "bcm needs its sliding threshold phi"
    post = act.post_trace
    return act.pre_trace.unsqueeze(2) * (post * (post - phi)).unsqueeze(1)


def clamp_coefficient(x: Tensor, lo: Optional[float], hi: Optional[float]) -> Tensor:
    """A learned coefficient kept in ``[lo, hi]``: ``clamp``'s values, with the derivative 1 on
    ``lo <= x <= hi`` (bounds included, so a coefficient that starts on its bound can still
    learn its way in) and 0 outside, on every PyTorch release (``clamp``'s own backward stopped
    passing on the bound in 2.14)."""
    c = x.clamp(lo, hi)
    if not (x.requires_grad and torch.is_grad_enabled()):
        return c
    inside = torch.ones_like(x, dtype=torch.bool)
    if lo is not None:
        inside = inside & (x >= lo)
    if hi is not None:
        inside = inside & (x <= hi)
    return torch.where(inside, x, c.detach())


def bcm_threshold(act: Activity, phi: Tensor, coeffs: Mapping[str, Tensor]) -> Tensor:
    """``phi_j += (xpost_j^2 - phi_j) / tau_phi``; ``tau_phi`` (steps, learned) is kept at least 1
    so the threshold never overshoots its target."""
    post = act.post_trace
    tau = clamp_coefficient(coeffs["tau_phi"], 1.0, None)
    return phi + (post * post - phi) / tau


def bcm_update_into(act: Activity, H: Tensor, phi: Optional[Tensor], coeffs, out: Tensor, scratch) -> Tensor:
    """:func:`bcm_update` written into ``out``."""
    post = act.post_trace
    return torch.mul(act.pre_trace.unsqueeze(2), (post * (post - phi)).unsqueeze(1), out=out)


def bcm_vjp(
    act: Activity, H: Tensor, phi: Optional[Tensor], coeffs, gX: Tensor, gain: Tensor, scratch=None
) -> RuleGrad:
    """``D = xpre q^T`` with ``q_j = xpost_j (xpost_j - phi_j)``."""
    post = act.post_trace
    q = post * (post - phi)
    Y = _col_sums(act.pre_trace, gX)
    gq = gain * Y
    return RuleGrad(pre_trace=_row_sums(gX, gain * q), post_trace=gq * (2.0 * post - phi), phi=-gq * post, gain=q * Y)


def stdp_update(act: Activity, H: Tensor, phi: Optional[Tensor], coeffs: Mapping[str, Tensor]) -> Tensor:
    """Trace-based pair rule: ``D_ij = a_plus * xpre_i * s_post_j - a_minus * s_pre_i * xpost_j``."""
    ltp = act.pre_trace.unsqueeze(2) * act.post_spike.unsqueeze(1)
    ltd = act.pre_spike.unsqueeze(2) * act.post_trace.unsqueeze(1)
    return coeffs["a_plus"] * ltp - coeffs["a_minus"] * ltd


def stdp_update_into(
    act: Activity, H: Tensor, phi, coeffs: Mapping[str, Tensor], out: Tensor, scratch: Tensor
) -> Tensor:
    """:func:`stdp_update` written into ``out`` (LTP) and ``scratch`` (LTD)."""
    torch.mul(act.pre_trace.unsqueeze(2), act.post_spike.unsqueeze(1), out=out)
    torch.mul(act.pre_spike.unsqueeze(2), act.post_trace.unsqueeze(1), out=scratch)
    out.mul_(coeffs["a_plus"])
    scratch.mul_(coeffs["a_minus"])
    return out.sub_(scratch)


def stdp_vjp(
    act: Activity, H: Tensor, phi, coeffs: Mapping[str, Tensor], gX: Tensor, gain: Tensor, scratch=None
) -> RuleGrad:
    """Two outer products: LTP ``xpre s_post^T`` and LTD ``s_pre xpost^T``, reduced in one pass each way."""
    a_plus, a_minus = coeffs["a_plus"], coeffs["a_minus"]
    Y = _col_sums(torch.stack([act.pre_trace, act.pre_spike], 1), gX)  # B x 2 x J
    X = _row_sums(gX, torch.stack([gain * act.post_spike, gain * act.post_trace], 1))  # B x 2 x I
    ltp, ltd = act.post_spike * Y[:, 0], act.post_trace * Y[:, 1]  # sum_i gX ⊙ (each outer product)
    return RuleGrad(
        pre_trace=a_plus * X[:, 0],
        pre_spike=-a_minus * X[:, 1],
        post_spike=a_plus * gain * Y[:, 0],
        post_trace=-a_minus * gain * Y[:, 1],
        coeffs={"a_plus": (gain * ltp).sum(), "a_minus": -(gain * ltd).sum()},
        gain=a_plus * ltp - a_minus * ltd,
    )


def abcd_update(act: Activity, H: Tensor, phi: Optional[Tensor], coeffs: Mapping[str, Tensor]) -> Tensor:
    """The generalised Hebbian rule with a coefficient of each kind per synapse::

        D_ij = A_ij xpre_i xpost_j + B_ij xpre_i + C_ij xpost_j + D_ij

    (``A``, ``B``, ``C``, ``D`` are ``I x J``): correlation, presynaptic, postsynaptic and constant
    terms, each synapse its own mix, as in evolved Hebbian controllers whose weights start random
    in every lifetime and are built by the rule alone."""
    pre, post = act.pre_trace.unsqueeze(2), act.post_trace.unsqueeze(1)
    return coeffs["A"] * (pre * post) + coeffs["B"] * pre + coeffs["C"] * post + coeffs["D"]


def _shaped(g: Tensor, coefficient: Tensor) -> Tensor:
    """A per-synapse gradient ``g`` (``I x J``) summed to its coefficient's shape (a scalar: all of it)."""
    return g if g.shape == coefficient.shape else g.sum()


def abcd_update_into(
    act: Activity, H: Tensor, phi, coeffs: Mapping[str, Tensor], out: Tensor, scratch: Tensor
) -> Tensor:
    """:func:`abcd_update` written into ``out`` (the same operations in the same order: the same bits)."""
    pre, post = act.pre_trace.unsqueeze(2), act.post_trace.unsqueeze(1)
    torch.mul(pre, post, out=out)
    torch.mul(coeffs["A"], out, out=out)
    out.add_(torch.mul(coeffs["B"], pre, out=_part(scratch, coeffs["B"], pre)))
    out.add_(torch.mul(coeffs["C"], post, out=_part(scratch, coeffs["C"], post)))
    return out.add_(coeffs["D"])


def _part(scratch: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """The start of the (contiguous) work buffer ``scratch`` viewed as the shape of ``a * b``: a
    scalar or per-neuron coefficient makes a ``B x I x 1`` or ``B x 1 x J`` term, and an ``out=``
    of another shape would be resized, the buffer's shape lost for its next user."""
    shape = torch.broadcast_shapes(a.shape, b.shape)
    return scratch.view(-1)[: math.prod(shape)].view(shape)


def abcd_vjp(
    act: Activity, H: Tensor, phi, coeffs: Mapping[str, Tensor], gX: Tensor, gain: Tensor, scratch=None
) -> RuleGrad:
    """With ``gD_bij = gX_bij gain_bj``: ``d xpre_i = sum_j gD_ij (A_ij xpost_j + B_ij)``,
    ``d xpost_j = sum_i gD_ij (A_ij xpre_i + C_ij)``, ``dA_ij = sum_b gD_bij xpre_bi xpost_bj``,
    ``dB_ij = sum_b gD_bij xpre_bi``, ``dC_ij = sum_b gD_bij xpost_bj``, ``dD_ij = sum_b gD_bij``,
    and the gain's ``sum_i gX_bij D_bij``."""
    pre, post = act.pre_trace.unsqueeze(2), act.post_trace.unsqueeze(1)
    A, B, C = coeffs["A"], coeffs["B"], coeffs["C"]
    gD = gX * gain.unsqueeze(1)
    gD_pre, gD_post = gD * pre, gD * post
    D = abcd_update(act, H, phi, coeffs)
    grads = {"A": (gD_pre * post).sum(0), "B": gD_pre.sum(0), "C": gD_post.sum(0), "D": gD.sum(0)}
    return RuleGrad(
        pre_trace=(A * gD_post).sum(2) + (B * gD).sum(2),
        post_trace=(A * gD_pre).sum(1) + (C * gD).sum(1),
        coeffs={k: _shaped(g, coeffs[k]) for k, g in grads.items()},
        gain=(gX * D).sum(1),
    )


class Rule(NamedTuple):
    """A registered rule family: its raw update ``D``, its learned coefficients (with initial
    values) and the per-post-neuron threshold update if it keeps one (``phi``).

    ``per_synapse`` names the coefficients that are ``I x J`` tensors, one value per synapse
    (each starts at its initial value); the others are scalars.  ``update`` broadcasts them
    against the ``B x I x J`` activity, and every kernel differentiates them like any other.

    For the fused kernel, optionally: ``update_into(act, H, phi, coeffs, out, scratch)``, the
    same ``D`` written into a ``B x I x J`` buffer (it must give the same bits as ``update``;
    ``scratch`` is a second buffer it may use), and ``vjp(act, H, phi, coeffs, gX, gain,
    scratch)``, the :class:`RuleGrad` of ``D``.  Without them the fused kernel runs ``update``
    and differentiates it by autograd, one step at a time."""

    update: Optional[RuleFn]
    coefficients: Mapping[str, float] = {}
    threshold: Optional[ThresholdFn] = None
    update_into: Optional[RuleIntoFn] = None
    vjp: Optional[RuleVjp] = None
    per_synapse: tuple[str, ...] = ()

    @property
    def has_threshold(self) -> bool:
        return self.threshold is not None


# Coefficients and their initial values are the catalogue's (what a config is validated against).
_C = RULE_COEFFICIENTS
RULES: dict[str, Rule] = {
    "none": Rule(None),
    "hebbian": Rule(hebbian_update, _C["hebbian"], update_into=hebbian_update_into, vjp=hebbian_vjp),
    "oja": Rule(oja_update, _C["oja"], update_into=oja_update_into, vjp=oja_vjp),
    "bcm": Rule(bcm_update, _C["bcm"], bcm_threshold, bcm_update_into, bcm_vjp),
    "stdp": Rule(stdp_update, _C["stdp"], update_into=stdp_update_into, vjp=stdp_vjp),
    "abcd": Rule(abcd_update, _C["abcd"], None, abcd_update_into, abcd_vjp, per_synapse=("A", "B", "C", "D")),
}
check_registry("rule", RULES, RULE_COEFFICIENTS)


def register_rule(name: str, rule: Rule) -> None:
    """Add a rule family: its update ``D`` (and optionally the rest of :class:`Rule`).  That is the
    whole job: configs accept it, the search can choose it, every kernel runs it (the fused one
    by autograd per step unless it brings ``update_into`` and ``vjp``).  Put the call in a module
    named by ``HYBRIDOPT_PLUGINS`` so that the command line and its workers load it."""
    if name in RULES and RULES[name] != rule:
        raise ValueError(f"rule family {name!r} is already registered")
    RULES[name] = rule
    RULE_COEFFICIENTS[name] = dict(rule.coefficients)
