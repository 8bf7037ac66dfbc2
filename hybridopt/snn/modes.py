"""Modulation modes: how a rule's update ``D`` reaches the plastic state ``H``.

See :mod:`hybridopt.snn.plasticity` for the equations.  :data:`MODES` is the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor

from hybridopt.snn.catalogue import MODE_NAMES, check_registry
from hybridopt.snn.rules import Activity, Rule, RuleGrad, clamp_coefficient

__all__ = ["MODES", "Mode", "ModeGrad", "ModeParam", "ModulationParams"]


class ModulationParams(NamedTuple):
    """Learned parameters of a modulation mode (fields a mode does not use are ``None``)."""

    eta: Optional[Tensor] = None  # plain: J (or 1)
    mod_a: Optional[Tensor] = None  # neuromodulated: J
    mod_b: Optional[Tensor] = None  # neuromodulated: J
    eta_E: Optional[Tensor] = None  # retroactive: scalar in [0, 1]


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


class ModeParam(NamedTuple):
    """A learned parameter a mode brings to each projection that uses it: its name (a field of
    :class:`ModulationParams`), its size (``per_post``: one per post-synaptic neuron, or one in
    all when the projection's ``eta_per_neuron`` is off; else a scalar), its initial value from
    the projection's spec, and the group evolution strategies scale its search by."""

    name: str
    per_post: bool
    init: Callable[[Any], float]
    group: str = "plasticity"


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
    params: tuple[ModeParam, ...] = ()


MODES: dict[str, Mode] = {
    "plain": Mode(
        _plain_gain,
        _gain_update,
        update_into=_gain_update_into,
        vjp=_gain_vjp,
        params=(ModeParam("eta", True, lambda spec: spec.eta_init),),
    ),
    "neuromodulated": Mode(
        _neuromodulated_gain,
        _gain_update,
        needs_modulator=True,
        update_into=_gain_update_into,
        vjp=_gain_vjp,
        params=(ModeParam("mod_a", True, lambda spec: spec.eta_init), ModeParam("mod_b", True, lambda spec: 0.0)),
    ),
    "retroactive": Mode(
        _retroactive_gain,
        _eligibility_update,
        needs_modulator=True,
        has_eligibility=True,
        update_into=_eligibility_update_into,
        vjp=_eligibility_vjp,
        params=(ModeParam("eta_E", False, lambda spec: spec.eta_E_init),),
    ),
}
check_registry("modulation", MODES, MODE_NAMES)
for _name, _mode in MODES.items():
    for _p in _mode.params:
        if _p.name not in ModulationParams._fields:
            raise RuntimeError(f"mode {_name!r}: parameter {_p.name!r} is not a field of ModulationParams")
