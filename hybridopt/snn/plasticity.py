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
oja        ``xpost_j * (xpre_i - H_ij * xpost_j)``
bcm        ``xpre_i * xpost_j * (xpost_j - phi_j)``, then ``phi_j += (xpost_j^2 - phi_j) / tau_phi``
stdp       ``a_plus * xpre_i * s_post_j - a_minus * s_pre_i * xpost_j``
=========  ============================================================================

and a *modulation mode* applies ``D`` to ``H`` (clipped to ``[-h_max, h_max]``):

==============  ==============================================================================
plain           ``H <- clip(H + eta ⊙ D)``; ``eta`` per post-neuron (or one scalar)
neuromodulated  ``M_t = tanh(w_M · z_t + b_M)``; ``eta_j(t) = a_j M_t + b_j``; ``H <- clip(H + eta(t) ⊙ D)``
retroactive     ``E <- (1 - eta_E) E + eta_E D``; ``H <- clip(H + M_t E)`` (eligibility trace)
==============  ==============================================================================

Both tables are registries (:data:`RULES`, :data:`MODES`): a new family is one function
plus one registry line.  Nothing here holds state; everything is passed in and returned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple, Optional

import torch
from torch import Tensor

__all__ = [
    "MODES",
    "RULES",
    "Activity",
    "ModulationParams",
    "Mode",
    "PlasticState",
    "Rule",
    "apply_modulation",
    "bcm_update",
    "hebbian_update",
    "modulator_signal",
    "oja_update",
    "plastic_current",
    "plastic_initial_state",
    "plasticity_step",
    "stdp_update",
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
RuleFn = Callable[[Activity, Tensor, Optional[Tensor], Mapping[str, Tensor]], tuple[Tensor, Optional[Tensor]]]


def hebbian_update(act: Activity, H: Tensor, phi: Optional[Tensor], coeffs: Mapping[str, Tensor]):
    """``D_ij = xpre_i * xpost_j``."""
    return act.pre_trace.unsqueeze(2) * act.post_trace.unsqueeze(1), None


def oja_update(act: Activity, H: Tensor, phi: Optional[Tensor], coeffs: Mapping[str, Tensor]):
    """``D_ij = xpost_j * (xpre_i - H_ij * xpost_j)``."""
    post = act.post_trace.unsqueeze(1)
    return post * (act.pre_trace.unsqueeze(2) - H * post), None


def bcm_update(act: Activity, H: Tensor, phi: Optional[Tensor], coeffs: Mapping[str, Tensor]):
    """``D_ij = xpre_i * xpost_j * (xpost_j - phi_j)``; then ``phi_j += (xpost_j^2 - phi_j) / tau_phi``.

    ``D`` uses the threshold before this step's update.  ``tau_phi`` (steps) is learned and
    kept at least 1 so the threshold never overshoots its target.
    """
    assert phi is not None, "bcm needs its sliding threshold phi"
    post = act.post_trace
    D = act.pre_trace.unsqueeze(2) * (post * (post - phi)).unsqueeze(1)
    tau = coeffs["tau_phi"].clamp(min=1.0)
    return D, phi + (post * post - phi) / tau


def stdp_update(act: Activity, H: Tensor, phi: Optional[Tensor], coeffs: Mapping[str, Tensor]):
    """Trace-based pair rule: ``D_ij = a_plus * xpre_i * s_post_j - a_minus * s_pre_i * xpost_j``."""
    ltp = act.pre_trace.unsqueeze(2) * act.post_spike.unsqueeze(1)
    ltd = act.pre_spike.unsqueeze(2) * act.post_trace.unsqueeze(1)
    return coeffs["a_plus"] * ltp - coeffs["a_minus"] * ltd, None


class Rule(NamedTuple):
    """A registered rule family: its update, its learned coefficients (with initial values)
    and whether it keeps a per-post-neuron threshold ``phi``."""

    update: Optional[RuleFn]
    coefficients: Mapping[str, float] = {}
    has_threshold: bool = False


RULES: dict[str, Rule] = {
    "none": Rule(None),
    "hebbian": Rule(hebbian_update),
    "oja": Rule(oja_update),
    "bcm": Rule(bcm_update, {"tau_phi": 20.0}, has_threshold=True),
    "stdp": Rule(stdp_update, {"a_plus": 1.0, "a_minus": 1.0}),
}


# --------------------------------------------------------------------------- modulation modes
def _plain(D: Tensor, H: Tensor, E: Optional[Tensor], M: Optional[Tensor], p: ModulationParams, h_max: float):
    """``H <- clip(H + eta ⊙ D)`` with ``eta`` broadcast over the post-synaptic axis."""
    return (H + p.eta * D).clamp(-h_max, h_max), None


def _neuromodulated(D: Tensor, H: Tensor, E: Optional[Tensor], M: Optional[Tensor], p: ModulationParams, h_max: float):
    """``eta_j(t) = a_j M_t + b_j``; ``H <- clip(H + eta(t) ⊙ D)``."""
    eta = p.mod_a * M.unsqueeze(1) + p.mod_b  # B x J
    return (H + eta.unsqueeze(1) * D).clamp(-h_max, h_max), None


def _retroactive(D: Tensor, H: Tensor, E: Optional[Tensor], M: Optional[Tensor], p: ModulationParams, h_max: float):
    """``E <- (1 - eta_E) E + eta_E D``; ``H <- clip(H + M_t E)``."""
    eta_E = p.eta_E.clamp(0.0, 1.0)
    E = (1.0 - eta_E) * E + eta_E * D
    return (H + M.view(-1, 1, 1) * E).clamp(-h_max, h_max), E


ModeFn = Callable[..., tuple[Tensor, Optional[Tensor]]]


class Mode(NamedTuple):
    """A registered modulation mode: how ``D`` changes ``H``, and what it needs."""

    apply: ModeFn
    needs_modulator: bool = False
    has_eligibility: bool = False


MODES: dict[str, Mode] = {
    "plain": Mode(_plain),
    "neuromodulated": Mode(_neuromodulated, needs_modulator=True),
    "retroactive": Mode(_retroactive, needs_modulator=True, has_eligibility=True),
}


def apply_modulation(
    mode: str, D: Tensor, H: Tensor, E: Optional[Tensor], M: Optional[Tensor], p: ModulationParams, h_max: float
) -> tuple[Tensor, Optional[Tensor]]:
    """Apply the raw update ``D`` to ``H`` under modulation ``mode``; returns ``(H, E)``."""
    return MODES[mode].apply(D, H, E, M, p, h_max)


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
    """One plasticity step of a projection.

    ``pre``/``post`` are the activities at this step (``B x I`` and ``B x J``).  Traces are
    updated first, the rule computes ``D`` from the new traces and the old ``H``, and the
    mode applies it.
    """
    pre_trace = trace_decay * state.pre_trace + pre
    post_trace = trace_decay * state.post_trace + post
    act = Activity(pre_trace, post_trace, pre, post)
    D, phi = RULES[rule].update(act, state.H, state.phi, coeffs)
    H, E = apply_modulation(mode, D, state.H, state.E, M, mod, h_max)
    return PlasticState(H=H, pre_trace=pre_trace, post_trace=post_trace, E=E, phi=phi)
