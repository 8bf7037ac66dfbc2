"""One time step of the network, as a pure function: :func:`network_step` over explicit
:class:`NetworkParams` and :class:`NetworkState` (equations in :mod:`hybridopt.snn.network`).

Every kernel runs (or reproduces) this function: the reference and fused kernels call it per
step, the compiled kernel traces it, the native kernel is its transcription.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Optional, TypeVar

import torch
from torch import Tensor
from torch.func import vmap
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from hybridopt.snn.catalogue import PROJECTIONS
from hybridopt.snn.fused import fused_plastic_current, fused_plasticity_step
from hybridopt.snn.neurons import LIFParameters, LIFState, lif_step
from hybridopt.snn.plasticity import (
    ModulationParams,
    PlasticState,
    modulator_signal,
    plastic_current,
    plasticity_step,
)
from hybridopt.snn.spec import NetworkSpec, ProjectionSpec
from hybridopt.snn.tape import PlasticTape

__all__ = [
    "NetworkParams",
    "NetworkState",
    "ProjectionParams",
    "StepConstants",
    "MembersStep",
    "hidden_input",
    "network_step",
    "stack_members",
]


class ProjectionParams(NamedTuple):
    """Learned tensors of one projection; plastic-only fields are ``None`` when static."""

    W: Tensor
    alpha: Optional[Tensor] = None
    mod: ModulationParams = ModulationParams()
    coeffs: dict[str, Tensor] = {}
    w_M: Optional[Tensor] = None
    b_M: Optional[Tensor] = None
    w_G: Optional[Tensor] = None
    b_G: Optional[Tensor] = None


class NetworkParams(NamedTuple):
    input: ProjectionParams
    recurrent: ProjectionParams
    readout: ProjectionParams
    b_hidden: Tensor
    b_out: Tensor


class NetworkState(NamedTuple):
    """Everything that evolves within an episode; plastic entries are ``None`` when static."""

    lif: LIFState
    y: Tensor
    input: Optional[PlasticState]
    recurrent: Optional[PlasticState]
    readout: Optional[PlasticState]


class StepConstants(NamedTuple):
    """The float hyper-parameters a step reads, as Python floats or as 0-d tensors (with tensors
    one compiled step serves every value; see :mod:`hybridopt.snn.compiled`).  ``trace_decay``,
    ``h_max`` and ``modulator_tau`` are per projection, in :data:`PROJECTIONS` order (whether a
    modulator is filtered at all, ``modulator_tau > 1``, is the spec's structure, not a value)."""

    beta: float | Tensor
    theta: float | Tensor
    readout_decay: float | Tensor
    trace_decay: tuple[float | Tensor, ...]
    h_max: tuple[float | Tensor, ...]
    modulator_tau: tuple[float | Tensor, ...]

    @classmethod
    def of(cls, spec: NetworkSpec, like: Optional[Tensor] = None) -> StepConstants:
        """The spec's values; as 0-d tensors of ``like``'s dtype and device when given."""
        as_t = (lambda v: torch.tensor(v, dtype=like.dtype, device=like.device)) if like is not None else float
        projs = [spec.projection(name) for name in PROJECTIONS]
        return cls(
            as_t(spec.beta),
            as_t(spec.theta),
            as_t(spec.readout_decay),
            tuple(as_t(p.trace_decay) for p in projs),
            tuple(float(p.h_max) for p in projs),  # a constant of the step: it bounds B x I x J work
            tuple(as_t(p.modulator_tau) for p in projs),
        )


def _projection_forward(
    spec: ProjectionSpec,
    p: ProjectionParams,
    pre: Tensor,
    st: Optional[PlasticState],
    tape: Optional[PlasticTape],
    positions: int = 1,
) -> Tensor:
    if st is not None and tape is not None:
        return fused_plastic_current(tape, pre, p.W, p.alpha, st.H)
    H = st.H if st is not None else None
    return plastic_current(pre, p.W, p.alpha, H, normalise=spec.normalise, positions=positions)


def hidden_input(spec: NetworkSpec, x: Tensor) -> Tensor:
    """What the hidden layer reads of the input ``x`` (``B x N_in``): ``x`` itself; with
    ``share_positions`` one row per pool, ``B P x (n_pos + n_shared)`` (sample ``b``'s pool ``p`` at
    row ``b P + p``: its position's channels, then the shared ones); with ``centre_input`` each
    position's channels less their mean at this step, ``x_i - mean_{k in position} x_k`` (without
    positions, over all channels)."""
    if not spec.share_positions:
        return x - x.mean(1, keepdim=True) if spec.centre_input else x
    pos = torch.tensor(spec.positions, dtype=torch.long, device=x.device)  # P x n_pos
    shared = torch.tensor(spec.shared_channels, dtype=torch.long, device=x.device)
    B, P = x.shape[0], pos.shape[0]
    xp = x[:, pos]  # B x P x n_pos
    if spec.centre_input:
        xp = xp - xp.mean(2, keepdim=True)
    xs = x[:, shared].unsqueeze(1).expand(B, P, shared.shape[0])
    return torch.cat([xp, xs], 2).reshape(B * P, -1)


def _projection_update(
    spec: ProjectionSpec,
    p: ProjectionParams,
    st: Optional[PlasticState],
    pre: Tensor,
    post: Tensor,
    features: Tensor,
    tape: Optional[PlasticTape],
    trace_decay: float | Tensor,
    h_max: float | Tensor,
    modulator_tau: float | Tensor,
    positions: int = 1,
) -> Optional[PlasticState]:
    if st is None:
        return None
    M = drive = None
    if spec.modulated:  # a filtered one starts from zero where the state has no filter yet
        if spec.filtered:
            drive = st.drive if st.drive is not None else features.new_zeros(features.shape[0])
        M, drive = modulator_signal(features, p.w_M, p.b_M, drive, modulator_tau, p.w_G, p.b_G)
    if tape is not None:
        new = fused_plasticity_step(tape, st, pre, post, trace_decay=trace_decay, coeffs=p.coeffs, mod=p.mod, M=M)
        return new if drive is None else new._replace(drive=drive)
    new = plasticity_step(
        spec.rule,
        spec.modulation,
        st,
        pre,
        post,
        trace_decay=trace_decay,
        h_max=h_max,
        coeffs=p.coeffs,
        mod=p.mod,
        M=M,
        positions=positions,
    )
    return new if drive is None else new._replace(drive=drive)


def network_step(
    params: NetworkParams,
    spec: NetworkSpec,
    x: Tensor,
    state: NetworkState,
    tapes: Optional[Mapping[str, PlasticTape]] = None,
    consts: Optional[StepConstants] = None,
) -> tuple[Tensor, Tensor, NetworkState]:
    """One time step; returns ``(y_t, s_t, new_state)`` (equations in the module docstring).

    ``tapes`` (projection name -> :class:`~hybridopt.snn.fused.PlasticTape`, one per plastic
    projection, made for this sequence) routes those projections through the fused kernel;
    without it the step is plain autograd.  The values are the same either way.  ``consts``
    (default: the spec's) gives the float hyper-parameters the step reads."""
    tp = {name: (tapes or {}).get(name) for name in PROJECTIONS}
    c = consts if consts is not None else StepConstants.of(spec)
    lif_p = LIFParameters(c.beta, c.theta, spec.reset, spec.surrogate, spec.slope, spec.winners)
    P = spec.n_positions
    if P > 1 and tapes:
        raise ValueError("share_positions has no fused kernel (no tapes): the step kernels run it")
    x_h = hidden_input(spec, x)
    s_prev = state.lif.s  # B P x N: the pools' spikes (P = 1: the layer's)
    current = (
        _projection_forward(spec.input, params.input, x_h, state.input, tp["input"], P)
        + _projection_forward(spec.recurrent, params.recurrent, s_prev, state.recurrent, tp["recurrent"], P)
        + params.b_hidden
    )
    s_pools, lif = lif_step(current, state.lif, lif_p)
    s = s_pools.view(-1, P, s_pools.shape[1]).sum(1) if P > 1 else s_pools  # what the readout reads
    y = c.readout_decay * state.y + _projection_forward(spec.readout, params.readout, s, state.readout, tp["readout"])
    y = y + params.b_out
    features = s
    if spec.input.modulated or spec.recurrent.modulated or spec.readout.modulated:
        features = torch.cat([x, s, y] if spec.modulator_reads_output else [x, s], dim=1)
    pre_post = {
        "input": (x_h, s_pools),
        "recurrent": (s_prev, s_pools),
        "readout": (s, torch.tanh(y) if state.readout is not None else y),
    }
    plastic = {
        name: _projection_update(
            spec.projection(name),
            getattr(params, name),
            getattr(state, name),
            *pre_post[name],
            features,
            tp[name],
            c.trace_decay[i],
            c.h_max[i],
            c.modulator_tau[i],
            P if name != "readout" else 1,
        )  # fmt: skip
        for i, name in enumerate(PROJECTIONS)
    }
    s_out = s_pools.reshape(-1, P * s_pools.shape[1]) if P > 1 else s  # the pools side by side
    return y, s_out, NetworkState(lif=lif, y=y, **plastic)


# --------------------------------------------------------------------------- many parameter sets
_Tree = TypeVar("_Tree")


def stack_members(items: Sequence[_Tree]) -> _Tree:
    """``M`` parameter sets (or states) of the same structure as one, each tensor stacked along a
    new leading *member* axis (``None`` entries stay ``None``)."""
    return tree_map(lambda *xs: torch.stack(xs) if isinstance(xs[0], Tensor) else xs[0], *items)


def _tensors(tree: Any) -> tuple[list[Tensor], tuple[list[Any], list[int], Any]]:
    leaves, treespec = tree_flatten(tree)
    at = [i for i, leaf in enumerate(leaves) if isinstance(leaf, Tensor)]
    return [leaves[i] for i in at], (leaves, at, treespec)


def _rebuild(values: Sequence[Tensor], how: tuple[list[Any], list[int], Any]) -> Any:
    leaves, at, treespec = how
    out = list(leaves)
    for i, v in zip(at, values):
        out[i] = v
    return tree_unflatten(out, treespec)


class MembersStep:
    """:func:`network_step` for ``M`` networks of one structure at once, each with its own
    parameters: every tensor of ``params`` and of a state has a leading member axis ``M``
    (:func:`stack_members`).  ``step(x, state)`` with ``x`` of ``M x B x N_in`` returns ``y``
    (``M x B x N_out``), ``s`` (``M x B x N``) and the new state, member ``m`` of each equal to
    ``network_step(params[m], spec, x[m], state[m])`` up to float rounding (a product over the
    members may sum in another order than a single member's) and independent of the others.
    One call steps a whole population of candidates (``torch.func.vmap``), where a loop would pay
    the per-operation overhead of every small step ``M`` times; the parameters are taken apart
    once, at construction, not at every step of an episode.  No gradient (a policy played in
    its environment)."""

    def __init__(self, params: NetworkParams, spec: NetworkSpec, consts: Optional[StepConstants] = None) -> None:
        self._spec = spec
        self._consts = consts if consts is not None else StepConstants.of(spec)
        self._p_values, self._p_how = _tensors(params)
        self._s_how: Any = None
        self._out_how: Any = None
        self._vstep = vmap(self._one)

    def _one(self, p_values: list[Tensor], x: Tensor, s_values: list[Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
        params = _rebuild(p_values, self._p_how)
        y, s, new = network_step(params, self._spec, x, _rebuild(s_values, self._s_how), None, self._consts)
        values, self._out_how = _tensors(new)
        return y, s, values

    def __call__(self, x: Tensor, state: NetworkState) -> tuple[Tensor, Tensor, NetworkState]:
        s_values, self._s_how = _tensors(state)
        y, s, values = self._vstep(self._p_values, x, s_values)
        return y, s, _rebuild(values, self._out_how)
