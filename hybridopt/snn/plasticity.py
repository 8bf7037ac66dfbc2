"""Synaptic plasticity: rule families and modulation modes as pure functions.

A plastic projection from ``I`` pre-synaptic to ``J`` post-synaptic units has the
effective weight ``W + alpha ⊙ H`` where ``H`` (``B x I x J``) is per-sample plastic state
that starts at zero every episode.  Each step, with low-pass activity traces::

    xpre_t  = lambda * xpre_{t-1}  + a_pre_t      (a_pre_t: the activity that fed the projection at t)
    xpost_t = lambda * xpost_{t-1} + a_post_t

a *rule family* gives the raw update ``D_ij`` (``i`` pre, ``j`` post):

=========  ============================================================================
none       0 (a static projection: no ``alpha``, no ``H``)
hebbian    ``xpre_i * xpost_j``
oja        ``p_j * (xpre_i - H_ij * xpost_j)``, ``p_j = xpost_j / (1 + xpost_j^2)`` (Oja, normalised)
bcm        ``xpre_i * xpost_j * (xpost_j - phi_j)``, then ``phi_j += (xpost_j^2 - phi_j) / tau_phi``
stdp       ``a_plus * xpre_i * s_post_j - a_minus * s_pre_i * xpost_j``
=========  ============================================================================

and a *modulation mode* applies ``D`` to ``H`` (clipped to ``[-h_max, h_max]`` by :func:`clip_state`,
which passes no gradient through a state on its bound):

==============  ==============================================================================
plain           ``H <- clip(H + eta ⊙ D)``; ``eta`` per post-neuron (or one scalar)
neuromodulated  ``M_t = tanh(w_M · z_t + b_M)``; ``eta_j(t) = a_j M_t + b_j``; ``H <- clip(H + eta(t) ⊙ D)``
retroactive     ``E <- (1 - eta_E) E + eta_E D``; ``H <- clip(H + M_t E)`` (eligibility trace)
==============  ==============================================================================

Both tables are registries (:data:`RULES`, :data:`MODES`): a new family is one function
plus one registry line.  Nothing here holds state; everything is passed in and returned.

Each entry may also carry its vector-Jacobian product (``vjp``): the derivative the fused
kernel (:mod:`hybridopt.snn.fused`) plugs into its hand-written backward.  A family or mode
without one still runs fused, differentiated by autograd one step at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from hybridopt.snn.catalogue import MODE_NAMES, RULE_COEFFICIENTS, check_registry

__all__ = [
    "MODES",
    "RULES",
    "register_rule",
    "Activity",
    "ModeGrad",
    "ModulationParams",
    "Mode",
    "PlasticState",
    "Rule",
    "RuleGrad",
    "bcm_threshold",
    "bcm_update",
    "bcm_update_into",
    "bcm_vjp",
    "clamp_coefficient",
    "clip_state",
    "hebbian_update",
    "hebbian_update_into",
    "hebbian_vjp",
    "modulator_signal",
    "next_threshold",
    "oja_update",
    "oja_update_into",
    "oja_vjp",
    "plastic_current",
    "plastic_initial_state",
    "plasticity_drive",
    "plasticity_step",
    "stdp_update",
    "stdp_update_into",
    "stdp_vjp",
    "unclipped_update",
]


class Activity(NamedTuple):
    """What a rule sees at one step: traces ``B x I`` / ``B x J`` and the instantaneous activity."""

    pre_trace: Tensor
    post_trace: Tensor
    pre_spike: Tensor
    post_spike: Tensor


class PlasticState(NamedTuple):
    """Per-sample state of one plastic projection.

    ``H``: ``B x I x J``; traces ``B x I`` and ``B x J``; ``E`` (eligibility, retroactive
    mode only) ``B x I x J``; ``phi`` (BCM sliding threshold only) ``B x J``.
    """

    H: Tensor
    pre_trace: Tensor
    post_trace: Tensor
    E: Optional[Tensor] = None
    phi: Optional[Tensor] = None


class ModulationParams(NamedTuple):
    """Learned parameters of a modulation mode (fields a mode does not use are ``None``)."""

    eta: Optional[Tensor] = None  # plain: J (or 1)
    mod_a: Optional[Tensor] = None  # neuromodulated: J
    mod_b: Optional[Tensor] = None  # neuromodulated: J
    eta_E: Optional[Tensor] = None  # retroactive: scalar in [0, 1]


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


class Rule(NamedTuple):
    """A registered rule family: its raw update ``D``, its learned coefficients (with initial
    values) and the per-post-neuron threshold update if it keeps one (``phi``).

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


# --------------------------------------------------------------------------- modulation modes
# A mode is split in two: ``gain(params, M)`` is the small (B x J at most) multiplier of ``D``,
# ``update(D, H, E, gain, M)`` the B x I x J part that gives ``H`` before the clip.  The split lets
# the fused kernel keep the small part on autograd and the big part in its own backward.
def _plain_gain(p: ModulationParams, M: Optional[Tensor]) -> Tensor:
    """``eta`` (``J`` or ``1``), broadcast over the post-synaptic axis."""
    return p.eta


def _neuromodulated_gain(p: ModulationParams, M: Optional[Tensor]) -> Tensor:
    """``eta_j(t) = a_j M_t + b_j`` as ``B x 1 x J``."""
    return (p.mod_a * M.unsqueeze(1) + p.mod_b).unsqueeze(1)


def _retroactive_gain(p: ModulationParams, M: Optional[Tensor]) -> Tensor:
    """``eta_E`` clamped to ``[0, 1]``."""
    return clamp_coefficient(p.eta_E, 0.0, 1.0)


def _gain_update(D: Tensor, H: Tensor, E: Optional[Tensor], gain: Tensor, M: Optional[Tensor]):
    """``H + eta ⊙ D`` (plain and neuromodulated)."""
    return H + gain * D, None


def _eligibility_update(D: Tensor, H: Tensor, E: Optional[Tensor], gain: Tensor, M: Optional[Tensor]):
    """``E <- (1 - eta_E) E + eta_E D``; ``H + M_t E``."""
    E = (1.0 - gain) * E + gain * D
    return H + M.view(-1, 1, 1) * E, E


# In-place twins for the fused kernel: ``D``'s buffer becomes ``U``; the same operations as above
# with the operands of a product or sum swapped at most (exact in IEEE arithmetic), so the same bits.
def _gain_update_into(D: Tensor, H: Tensor, E: Optional[Tensor], gain: Tensor, M: Optional[Tensor], E_out):
    return D.mul_(gain).add_(H), None


def _eligibility_update_into(D: Tensor, H: Tensor, E: Tensor, gain: Tensor, M: Tensor, E_out: Tensor):
    torch.mul(E, 1.0 - gain, out=E_out)
    E_out.add_(D.mul_(gain))
    torch.mul(E_out, M.view(-1, 1, 1), out=D)
    return D.add_(H), E_out


class ModeGrad(NamedTuple):
    """Gradients a mode's backward returns: ``H`` and ``E`` before the step, the gain, ``M`` and the rule's."""

    H: Optional[Tensor] = None
    E: Optional[Tensor] = None
    gain: Optional[Tensor] = None
    M: Optional[Tensor] = None
    rule: RuleGrad = RuleGrad()


# Backward of the two update forms.  ``gU`` (the gradient on ``U``, clip already applied) and ``gE``
# (on the new ``E``) are buffers the caller owns: they are overwritten and handed back as the
# gradients on the old ``H`` and ``E``.  ``scratch`` is one more ``B x I x J`` buffer (or ``None``).
def _gain_vjp(rule: Rule, act: Activity, H, phi, coeffs, E, E_new, gain: Tensor, M, gU, gE, scratch) -> ModeGrad:
    """Backward of ``U = H + gain ⊙ D(H)``: ``dU/dH = 1 + gain dD/dH``."""
    if gU is None:
        return ModeGrad()
    B, _, J = gU.shape
    g = gain.expand(B, 1, J).squeeze(1)
    rg = rule.vjp(act, H, phi, coeffs, gU, g, scratch)
    if rg.h_scale is not None:
        gU.mul_((1.0 + g * rg.h_scale).unsqueeze(1))
    return ModeGrad(H=gU, gain=rg.gain.unsqueeze(1).sum_to_size(gain.shape), rule=rg)


def _eligibility_vjp(rule: Rule, act: Activity, H, phi, coeffs, E, E_new, gain, M, gU, gE, scratch) -> ModeGrad:
    """Backward of ``E' = (1 - c) E + c D(H)``, ``U = H + M E'``; ``gX = gE + M gU`` is the total
    gradient on ``E'`` (``gE`` must be given, zeros if nothing reached ``E'``, whenever ``gU`` is)."""
    if gE is None:
        return ModeGrad()
    B, _, J = gE.shape
    gX = gE if gU is None else gE.addcmul_(gU, M.view(-1, 1, 1))
    rg = rule.vjp(act, H, phi, coeffs, gX, gain.expand(B, J), scratch)
    g_gain = rg.gain.sum() - torch.dot(gX.reshape(-1), E.reshape(-1))
    g_M = None if gU is None else torch.bmm(gU.reshape(B, 1, -1), E_new.reshape(B, -1, 1)).view(B)
    gH = gU
    if rg.h_scale is not None:
        hs = (gain * rg.h_scale).unsqueeze(1)
        gH = gX * hs if gH is None else gH.addcmul_(gX, hs)
    return ModeGrad(H=gH, E=gX.mul_(1.0 - gain), gain=g_gain, M=g_M, rule=rg)


GainFn = Callable[[ModulationParams, Optional[Tensor]], Tensor]
UpdateFn = Callable[[Tensor, Tensor, Optional[Tensor], Tensor, Optional[Tensor]], tuple[Tensor, Optional[Tensor]]]
ModeVjp = Callable[..., ModeGrad]


class Mode(NamedTuple):
    """A registered modulation mode: the gain it puts on ``D``, how it changes ``H`` (before the
    clip) and what it needs.

    For the fused kernel, optionally: ``update_into(D, H, E, gain, M, E_out)``, the same update
    in place (``D``'s buffer becomes ``U``, the new ``E`` goes to ``E_out``; same bits as
    ``update``), and ``vjp``, its backward (see ``_gain_vjp``).  Without them the fused kernel
    runs ``update`` and differentiates it by autograd, one step at a time."""

    gain: GainFn
    update: UpdateFn
    needs_modulator: bool = False
    has_eligibility: bool = False
    update_into: Optional[Callable[..., tuple[Tensor, Optional[Tensor]]]] = None
    vjp: Optional[ModeVjp] = None


MODES: dict[str, Mode] = {
    "plain": Mode(_plain_gain, _gain_update, update_into=_gain_update_into, vjp=_gain_vjp),
    "neuromodulated": Mode(
        _neuromodulated_gain, _gain_update, needs_modulator=True, update_into=_gain_update_into, vjp=_gain_vjp
    ),
    "retroactive": Mode(
        _retroactive_gain,
        _eligibility_update,
        needs_modulator=True,
        has_eligibility=True,
        update_into=_eligibility_update_into,
        vjp=_eligibility_vjp,
    ),
}
check_registry("modulation", MODES, MODE_NAMES)


def clip_state(U: Tensor, h_max: float) -> Tensor:
    """The plastic state after the clip, ``H = clip(U, -h_max, h_max)``, with the derivative

        dH/dU = 1 where -h_max < U < h_max,   0 where |U| >= h_max

    fixed here rather than left to ``clamp``, whose backward at the bound itself changed between
    PyTorch releases (up to 2.13 it passes the gradient where ``U`` equals a bound, from 2.14 it
    does not).  A state that has reached its bound is saturated and passes nothing.  That is the
    choice that keeps float32 and float64 in agreement: float32 absorbs an update smaller than
    half an ulp of ``h_max`` into the bound, landing exactly on it, where float64 lands just
    outside; a mask that passed the gradient on the bound would then pass in float32 what float64
    blocks.  The values are ``clamp``'s, bit for bit; without autograd it is ``clamp`` alone.
    """
    H = U.clamp(-h_max, h_max)
    if not (U.requires_grad and torch.is_grad_enabled()):
        return H
    return torch.where((U > -h_max) & (U < h_max), U, H.detach())


# --------------------------------------------------------------------------- a plastic projection
def modulator_signal(features: Tensor, w_M: Tensor, b_M: Tensor) -> Tensor:
    """Neuromodulator ``M_t = tanh(w_M · z_t + b_M)``, one scalar per sample (``B``)."""
    return torch.tanh(features @ w_M + b_M)


def plastic_current(pre: Tensor, W: Tensor, alpha: Optional[Tensor], H: Optional[Tensor]) -> Tensor:
    """Current through the effective weight: ``pre (W + alpha ⊙ H)``, per sample (``B x J``)."""
    out = pre @ W
    if alpha is None or H is None:
        return out
    return out + torch.bmm(pre.unsqueeze(1), alpha * H).squeeze(1)


def plastic_initial_state(
    rule: str, mode: str, batch: int, n_pre: int, n_post: int, *, device=None, dtype=torch.float32
) -> Optional[PlasticState]:
    """Zero plastic state for one projection; ``None`` for a static (``rule='none'``) one."""
    if rule == "none":
        return None
    z = lambda *shape: torch.zeros(*shape, device=device, dtype=dtype)  # noqa: E731
    return PlasticState(
        H=z(batch, n_pre, n_post),
        pre_trace=z(batch, n_pre),
        post_trace=z(batch, n_post),
        E=z(batch, n_pre, n_post) if MODES[mode].has_eligibility else None,
        phi=z(batch, n_post) if RULES[rule].has_threshold else None,
    )


def plasticity_drive(
    mode: str,
    state: PlasticState,
    pre: Tensor,
    post: Tensor,
    *,
    trace_decay: float,
    mod: ModulationParams,
    M: Optional[Tensor] = None,
) -> tuple[Activity, Tensor]:
    """The small part of a step before ``D`` (nothing bigger than ``B x N``): the new traces, as
    the :class:`Activity` the rule sees, and the mode's gain."""
    act = Activity(trace_decay * state.pre_trace + pre, trace_decay * state.post_trace + post, pre, post)
    return act, MODES[mode].gain(mod, M)


def next_threshold(rule: str, act: Activity, phi: Optional[Tensor], coeffs: Mapping[str, Tensor]) -> Optional[Tensor]:
    """The rule's threshold after this step (BCM), ``None`` for a rule without one."""
    r = RULES[rule]
    return r.threshold(act, phi, coeffs) if r.threshold is not None else None


def unclipped_update(
    rule: str,
    mode: str,
    act: Activity,
    H: Tensor,
    E: Optional[Tensor],
    phi: Optional[Tensor],
    coeffs: Mapping[str, Tensor],
    gain: Tensor,
    M: Optional[Tensor],
) -> tuple[Tensor, Optional[Tensor]]:
    """The ``B x I x J`` part of a step: ``D`` from the rule, then the mode; returns ``(U, E)`` where
    the new ``H`` is ``clip(U, -h_max, h_max)``.  ``phi`` is the threshold before this step."""
    D = RULES[rule].update(act, H, phi, coeffs)
    return MODES[mode].update(D, H, E, gain, M)


def plasticity_step(
    rule: str,
    mode: str,
    state: PlasticState,
    pre: Tensor,
    post: Tensor,
    *,
    trace_decay: float,
    h_max: float,
    coeffs: Mapping[str, Tensor],
    mod: ModulationParams,
    M: Optional[Tensor] = None,
) -> PlasticState:
    """One plasticity step of a projection (plain autograd: the reference implementation).

    ``pre``/``post`` are the activities at this step (``B x I`` and ``B x J``).  Traces are
    updated first, the rule computes ``D`` from the new traces and the old ``H`` (and the old
    ``phi``), and the mode applies it.
    """
    act, gain = plasticity_drive(mode, state, pre, post, trace_decay=trace_decay, mod=mod, M=M)
    U, E = unclipped_update(rule, mode, act, state.H, state.E, state.phi, coeffs, gain, M)
    phi = next_threshold(rule, act, state.phi, coeffs)
    return PlasticState(H=clip_state(U, h_max), pre_trace=act.pre_trace, post_trace=act.post_trace, E=E, phi=phi)
