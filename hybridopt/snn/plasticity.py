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

(a gated modulator is ``sigmoid(w_G · z_t + b_G) tanh(w_M · z_t + b_M)``: see :func:`modulator_signal`)

Both tables are registries: :data:`RULES` in :mod:`hybridopt.snn.rules` (a new family is one
function plus one :func:`register_rule` call) and :data:`MODES` in :mod:`hybridopt.snn.modes`;
this module re-exports both and holds what a projection does with them.  Nothing here holds
state; everything is passed in and returned.

Each entry may also carry its vector-Jacobian product (``vjp``): the derivative the fused
kernel (:mod:`hybridopt.snn.fused`) plugs into its hand-written backward.  A family or mode
without one still runs fused, differentiated by autograd one step at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from hybridopt.snn.modes import MODES, Mode, ModeGrad, ModulationParams
from hybridopt.snn.rules import RULES, Activity, Rule, RuleGrad, clamp_coefficient, register_rule

# The registries and their types are re-exported: most callers need them with the maths below.
__all__ = [
    "MODES",
    "RULES",
    "Activity",
    "Mode",
    "ModeGrad",
    "ModulationParams",
    "PlasticState",
    "Rule",
    "RuleGrad",
    "clamp_coefficient",
    "clip_state",
    "modulator_signal",
    "next_threshold",
    "plastic_current",
    "plastic_initial_state",
    "plasticity_drive",
    "plasticity_step",
    "register_rule",
    "unclipped_update",
]


class PlasticState(NamedTuple):
    """Per-sample state of one plastic projection.

    ``H``: ``B x I x J``; traces ``B x I`` and ``B x J``; ``E`` (eligibility, retroactive
    mode only) ``B x I x J``; ``phi`` (BCM sliding threshold only) ``B x J``; ``drive`` (a
    filtered neuromodulator only, see :func:`modulator_signal`) ``B``.
    """

    H: Tensor
    pre_trace: Tensor
    post_trace: Tensor
    E: Optional[Tensor] = None
    phi: Optional[Tensor] = None
    drive: Optional[Tensor] = None


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
def modulator_signal(
    features: Tensor,
    w_M: Tensor,
    b_M: Tensor,
    drive: Optional[Tensor] = None,
    tau: float = 1.0,
    w_G: Optional[Tensor] = None,
    b_G: Optional[Tensor] = None,
) -> tuple[Tensor, Optional[Tensor]]:
    """Neuromodulator ``M_t``, one scalar per sample (``B``), and the filter's new value.

    Unfiltered (``drive`` is ``None``): ``M_t = tanh(w_M · z_t + b_M)``.  Filtered over ``tau``
    steps, from the previous value ``zbar_{t-1}`` (``drive``)::

        zbar_t = zbar_{t-1} + (w_M · z_t + b_M - zbar_{t-1}) / tau,    M_t = tanh(zbar_t)

    Gated (``w_G`` given), the same times a gate on the unfiltered features::

        M_t = sigmoid(w_G · z_t + b_G) tanh(zbar_t)
    """
    z = features @ w_M + b_M
    zbar = None if drive is None else drive + (z - drive) / tau
    M = torch.tanh(z if zbar is None else zbar)
    if w_G is not None:
        M = torch.sigmoid(features @ w_G + b_G) * M
    return M, zbar


def plastic_current(
    pre: Tensor,
    W: Tensor,
    alpha: Optional[Tensor],
    H: Optional[Tensor],
    *,
    normalise: bool = False,
    positions: int = 1,
) -> Tensor:
    """Current through the effective weight: ``pre (W + alpha ⊙ H)``, per sample (``B x J``).

    ``normalise``: through ``W_eff[:, j] = |W_j| (W_j + alpha_j ⊙ H_j) / |W_j + alpha_j ⊙ H_j|``
    instead (each column keeps the length of ``W``'s column; see ``ProjectionSpec.normalise``).
    ``positions`` ``P > 1``: ``pre`` has ``B P`` rows, sample ``b``'s positions at rows
    ``b P .. b P + P - 1``, all reading sample ``b``'s ``H`` (``B x I x J``); the result has
    ``B P`` rows too."""
    if alpha is None or H is None:
        return pre @ W
    B, n_pre, n_post = H.shape
    rows = pre.view(B, positions, n_pre)
    if not normalise:
        return pre @ W + torch.bmm(rows, alpha * H).reshape(B * positions, n_post)
    U = W + alpha * H
    W_eff = U * (W.norm(dim=0) / U.norm(dim=1).clamp_min(1e-12)).unsqueeze(1)
    return torch.bmm(rows, W_eff).reshape(B * positions, n_post)


def plastic_initial_state(
    rule: str,
    mode: str,
    batch: int,
    n_pre: int,
    n_post: int,
    *,
    filtered: bool = False,
    positions: int = 1,
    device=None,
    dtype=torch.float32,
) -> Optional[PlasticState]:
    """Zero plastic state for one projection; ``None`` for a static (``rule='none'``) one.
    ``filtered``: its neuromodulator's drive is filtered (a ``drive`` of zeros).  ``positions``
    ``P``: the activity it reads has ``B P`` rows (pools sharing one ``H``; see
    :func:`plasticity_step`), so its traces and ``phi`` have ``B P`` rows, ``H`` and ``E`` ``B``."""
    if rule == "none":
        return None
    z = lambda *shape: torch.zeros(*shape, device=device, dtype=dtype)  # noqa: E731
    rows = batch * positions
    return PlasticState(
        H=z(batch, n_pre, n_post),
        pre_trace=z(rows, n_pre),
        post_trace=z(rows, n_post),
        E=z(batch, n_pre, n_post) if MODES[mode].has_eligibility else None,
        phi=z(rows, n_post) if RULES[rule].has_threshold else None,
        drive=z(batch) if filtered else None,
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
    positions: int = 1,
) -> PlasticState:
    """One plasticity step of a projection (plain autograd: the reference implementation).

    ``pre``/``post`` are the activities at this step (``B x I`` and ``B x J``).  Traces are
    updated first, the rule computes ``D`` from the new traces and the old ``H`` (and the old
    ``phi``), and the mode applies it.

    ``positions`` ``P > 1``: ``pre``/``post`` (and the traces, ``phi``) have ``B P`` rows, sample
    ``b``'s pools at rows ``b P .. b P + P - 1``, sharing sample ``b``'s ``H``: the rule runs per
    pool on that ``H`` and the mode applies the pools' sum, ``D_b = sum_p D_bp``.
    """
    act, gain = plasticity_drive(mode, state, pre, post, trace_decay=trace_decay, mod=mod, M=M)
    if positions > 1:
        D = RULES[rule].update(act, state.H.repeat_interleave(positions, 0), state.phi, coeffs)
        D = D.view(state.H.shape[0], positions, *state.H.shape[1:]).sum(1)
        U, E = MODES[mode].update(D, state.H, state.E, gain, M)
    else:
        U, E = unclipped_update(rule, mode, act, state.H, state.E, state.phi, coeffs, gain, M)
    phi = next_threshold(rule, act, state.phi, coeffs)
    return PlasticState(H=clip_state(U, h_max), pre_trace=act.pre_trace, post_trace=act.post_trace, E=E, phi=phi)
