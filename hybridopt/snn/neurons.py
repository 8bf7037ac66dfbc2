"""Leaky integrate-and-fire neurons as pure functions over explicit state.

Discrete time, one step per call.  With input current ``I_t``::

    v_t = beta * v_{t-1} * (1 - s_{t-1}) + I_t          (reset="zero")
    v_t = beta * v_{t-1} - theta * s_{t-1} + I_t        (reset="subtract")
    s_t = Heaviside(v_t - theta)

With ``k`` winners (``LIFParameters.winners``), the units of a sample compete: the threshold is
raised midway between the ``k``-th and ``(k+1)``-th largest potentials of the sample,
``s_t = Heaviside(v_t - theta_t)`` with ``theta_t = max(theta, (v_t^(k) + v_t^(k+1)) / 2)``, so
that at most ``k`` units spike per step.  Like the reset, ``theta_t`` is detached: the surrogate
derivative is taken at ``v_t - theta_t``.  Midway, the first loser is as far below the threshold
as the last winner is above it; at ``v_t^(k+1)`` itself it sat at the surrogate's peak at every
step, and through a plastic layer the gradient grew without bound with the plastic gain.

``beta = exp(-dt / tau_mem)`` is the membrane decay per step (dimensionless; ``v`` and
``theta`` are in the same arbitrary units as ``I``).  The Heaviside step has zero
derivative almost everywhere, so its backward pass uses a *surrogate* derivative
(``fast_sigmoid`` or ``arctan``, both with a slope ``k``).  The reset term is detached
from the graph, as is usual for BPTT in SNNs: gradients flow through the membrane, not
through the discontinuous reset.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from hybridopt.snn.catalogue import SURROGATE_NAMES, check_registry

__all__ = [
    "LIFParameters",
    "LIFState",
    "SURROGATE_DERIVATIVES",
    "arctan_spike",
    "competition_threshold",
    "fast_sigmoid_spike",
    "lif_initial_state",
    "lif_step",
    "spike",
    "surrogate_derivative",
]


class LIFParameters(NamedTuple):
    """Parameters of a LIF population (plain floats: they are hyper-parameters)."""

    beta: float = 0.9
    theta: float = 1.0
    reset: str = "zero"
    surrogate: str = "fast_sigmoid"
    slope: float = 10.0
    winners: int = 0  # k > 0: at most k units spike per step (k winners take all)


class LIFState(NamedTuple):
    """Membrane potential ``v`` and last spikes ``s``, both ``B x N``."""

    v: Tensor
    s: Tensor


def _fast_sigmoid_derivative(x: Tensor, k: float) -> Tensor:
    """``d s / d x = 1 / (k |x| + 1)^2``."""
    return 1.0 / (k * x.abs() + 1.0) ** 2


def _arctan_derivative(x: Tensor, k: float) -> Tensor:
    """``d s / d x = (k / 2) / (1 + (pi k x / 2)^2)``."""
    return (k / 2.0) / (1.0 + (math.pi * k * x / 2.0) ** 2)


# The surrogate derivatives by name: the one definition the spike's backward, the fused and
# compiled kernels and the tests use.
SURROGATE_DERIVATIVES: dict[str, Callable[[Tensor, float], Tensor]] = {
    "fast_sigmoid": _fast_sigmoid_derivative,
    "arctan": _arctan_derivative,
}
check_registry("surrogate", SURROGATE_DERIVATIVES, SURROGATE_NAMES)


class _SurrogateSpike(torch.autograd.Function):
    """Heaviside forward ``s = H(x)``; backward ``d s / d x`` = the named surrogate derivative."""

    generate_vmap_rule = True  # pure tensor maths both ways: it runs under torch.func.vmap

    @staticmethod
    def forward(x: Tensor, slope: float, name: str) -> Tensor:  # type: ignore[override]
        return (x > 0).to(x.dtype)

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor, float, str], output: Tensor) -> None:  # type: ignore[override]
        x, slope, name = inputs
        ctx.save_for_backward(x)
        ctx.slope, ctx.name = slope, name

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * SURROGATE_DERIVATIVES[ctx.name](x, ctx.slope), None, None


def spike(x: Tensor, slope: float, surrogate: str) -> Tensor:
    """Spike ``H(x)`` whose backward is the named surrogate derivative (:data:`SURROGATE_DERIVATIVES`)."""
    if surrogate not in SURROGATE_DERIVATIVES:
        raise ValueError(f"unknown surrogate {surrogate!r}; known: {sorted(SURROGATE_DERIVATIVES)}")
    return _SurrogateSpike.apply(x, slope, surrogate)


def fast_sigmoid_spike(x: Tensor, slope: float = 10.0) -> Tensor:
    """Spike ``H(x)`` with the fast-sigmoid surrogate ``1 / (k|x| + 1)^2``."""
    return spike(x, slope, "fast_sigmoid")


def arctan_spike(x: Tensor, slope: float = 10.0) -> Tensor:
    """Spike ``H(x)`` with the arctan surrogate ``(k/2) / (1 + (pi k x / 2)^2)``."""
    return spike(x, slope, "arctan")


def surrogate_derivative(name: str, x: Tensor, slope: float) -> Tensor:
    """The surrogate derivative in closed form (for tests and fused kernels)."""
    if name not in SURROGATE_DERIVATIVES:
        raise ValueError(f"unknown surrogate {name!r}; known: {sorted(SURROGATE_DERIVATIVES)}")
    return SURROGATE_DERIVATIVES[name](x, slope)


def lif_initial_state(batch: int, n: int, *, device=None, dtype=torch.float32) -> LIFState:
    """Resting state: ``v = 0``, no spikes."""
    zeros = torch.zeros(batch, n, device=device, dtype=dtype)
    return LIFState(v=zeros, s=zeros)


def lif_step(current: Tensor, state: LIFState, p: LIFParameters) -> tuple[Tensor, LIFState]:
    """One LIF step; returns the new spikes ``s_t`` and the new state.

    ``current`` is ``I_t`` (``B x N``); see the module docstring for the equations.
    """
    s_prev = state.s.detach()
    if p.reset == "zero":
        v = p.beta * state.v * (1.0 - s_prev) + current
    elif p.reset == "subtract":
        v = p.beta * state.v - p.theta * s_prev + current
    else:
        raise ValueError(f"unknown reset mode {p.reset!r}; known: 'zero', 'subtract'")
    s = spike(v - competition_threshold(v, p.theta, p.winners), p.slope, p.surrogate)
    return s, LIFState(v=v, s=s)


def competition_threshold(v: Tensor, theta: float | Tensor, winners: int) -> float | Tensor:
    """``theta_t = max(theta, (v^(k) + v^(k+1)) / 2)`` per sample (``B x 1``, detached), midway
    between the ``k``-th and ``(k+1)``-th largest potentials of the row; ``theta`` itself
    without competition (``k = 0`` or ``k >= N``)."""
    if winners <= 0 or winners >= v.shape[-1]:
        return theta
    top = v.detach().topk(winners + 1, dim=-1).values
    return torch.clamp((top[..., -2:-1] + top[..., -1:]) / 2, min=theta)
