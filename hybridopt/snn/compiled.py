"""Whole time steps as compiled units: the network's step, ``K`` steps at a time, through ``torch.compile``.

At the tasks' own sizes (a plastic state of a few hundred kilobytes, which sits in L2) a time step
costs what its ~50 small operations cost to dispatch and to record on autograd's tape, not what
they compute.  Here :func:`~hybridopt.snn.step.network_step` -- LIF update, traces,
neuromodulator, every projection's current and ``H`` update, readout -- is traced by Dynamo for
``K`` consecutive steps (:data:`STEPS_PER_CALL`) and compiled by Inductor into one forward kernel
and one backward kernel (AOTAutograd, min-cut partition: what backward needs is saved or
recomputed inside the kernels).  A training sequence of ``T`` steps is then ``ceil(T / K)`` calls
and as many autograd nodes, instead of ``~50 T`` of each.  The maths is the same function the
reference runs (:func:`~hybridopt.snn.step.network_step`, the surrogate spike's and
:func:`~hybridopt.snn.plasticity.clip_state`'s derivatives included), so values equal the
reference's up to float rounding (fused multiply-adds, reassociated sums).

What is compiled depends only on the network's structure: the rule and mode of each projection,
the reset and the surrogate (with its slope).  The float hyper-parameters a step reads (``beta``,
``theta``, the readout decay, each projection's trace decay and ``h_max``) go in as 0-d tensors
(:class:`~hybridopt.snn.step.StepConstants`), so candidates of a search that differ only in
them share one compiled unit.  A unit compiles once per process, per structure, input shape and
grad mode (seconds to minutes); a sequence without gradients of a kind already trained in the
process runs the training variant, its graph dropped, rather than compile a forward-only one
(evaluation after training).  Each structure gets its own code object, so Dynamo's cache per
structure holds only its shapes, and Inductor's on-disk cache makes later processes (a Ray
worker's next candidate, the next run) cheaper.  The memory kept for backward is a few tensors
of the plastic state's size per step, which is why the network uses this only below
:data:`~hybridopt.snn.fused.COMPILE_MIN_ELEMENTS` elements of plastic state and the memory-lean
fused kernel above.  If compiling is not possible here (no C++ compiler, say), one warning is
issued and the fused kernel runs, which gives the same values.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor
from torch.utils._pytree import tree_leaves

from hybridopt.snn.fused_kernels import compile_available, mark_compile_broken
from hybridopt.snn.step import NetworkParams, NetworkState, StepConstants, network_step

if TYPE_CHECKING:
    from hybridopt.snn.spec import NetworkSpec

__all__ = ["STEPS_PER_CALL", "compiled_sequence", "compiled_step", "structure_key"]

# Steps per compiled call: the per-call overhead (guards, one autograd node) is paid once per K
# steps; the compile time grows about linearly with K (benchmarks/train_step.py measures both).
# At the cue-association size, CPU ms per training step: K=8 78, K=16 66, K=24 69.  A sequence
# whose length is not a multiple of K compiles one more variant for its last, shorter call.
STEPS_PER_CALL = 16

_units: dict[tuple, Callable] = {}

# A CUDA build of torch on a machine without CUDA logs "No CUDA runtime is found" when Inductor
# first builds C++; it says nothing about a CPU run.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def structure_key(spec: NetworkSpec) -> tuple:
    """What a compiled unit is specialised on: everything of the spec but the float hyper-parameters."""
    return (
        spec.reset,
        spec.surrogate,
        spec.slope,
        spec.modulator_reads_output,
        spec.winners,
        tuple(
            (p.rule, p.modulation, p.h_max, p.filtered, p.gated, p.normalise)
            for p in (spec.input, spec.recurrent, spec.readout)
        ),
        spec.centre_input,
        (spec.positions, spec.shared_channels) if spec.share_positions else None,
    )


def _unit(spec: NetworkSpec) -> Callable:
    """The compiled ``K``-step function for ``spec``'s structure (made once per process)."""
    key = structure_key(spec)
    fn = _units.get(key)
    if fn is None:

        def steps(params, consts, x, state):
            ys, ss = [], []
            for k in range(x.shape[1]):
                y, s, state = network_step(params, spec, x[:, k], state, consts=consts)
                ys.append(y)
                ss.append(s)
            return torch.stack(ys, 1), torch.stack(ss, 1), state

        # a code object of its own: Dynamo keeps its compiled variants per code object
        code = steps.__code__.replace(co_name=f"network_steps_{len(_units)}")
        fresh = types.FunctionType(code, steps.__globals__, code.co_name, steps.__defaults__, steps.__closure__)
        import torch._dynamo.config as dynamo_config

        # train and evaluation batches, the last chunk's length, grad and no-grad: a few variants
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo_config, name):
                setattr(dynamo_config, name, max(getattr(dynamo_config, name), 64))
        fn = _units[key] = torch.compile(fresh, dynamic=False, fullgraph=True)
    return fn


# Per structure and pattern of parameters requiring grad: which state tensors a parameter that
# requires grad reaches (learned on the unit's first sequence, then set from every first call on).
_needs: dict[tuple, list[bool]] = {}

# The (structure and grad pattern, input shape, dtype, device) that have run with gradients here:
# a sequence without gradients of the same kind runs the same compiled variant (its outputs
# detached) instead of compiling a forward-only one.  A forward-only variant of a task's unrolled
# steps takes about as long to compile as the training one's forward (a minute, in a fresh cache),
# for a forward that costs milliseconds: evaluation after training would pay it in every process.
_trained: set[tuple] = set()


def _leaves(tree) -> list:
    """A state's tensors (and ``None`` slots) in a fixed order."""
    if tree is None or isinstance(tree, Tensor):
        return [tree]
    return [leaf for part in tree for leaf in _leaves(part)]


def _with_grad(state: NetworkState, needs: list[bool]) -> NetworkState:
    """The state with each tensor that ``needs`` marks requiring grad (as a leaf where it did not)."""
    it = iter(needs)

    def req(t):
        if t is None or isinstance(t, Tensor):
            need = next(it)
            return t if t is None or t.requires_grad or not need else t.detach().requires_grad_()
        return type(t)(*(req(u) for u in t))  # the state's named tuples

    return req(state)


def _grad_pattern(state: NetworkState) -> list[bool]:
    return [t is not None and t.requires_grad for t in _leaves(state)]


def _reached(params: NetworkParams, spec: NetworkSpec, consts: StepConstants, x: Tensor, state: NetworkState):
    """Which state tensors the parameters that require grad reach: eager steps of the plain maths
    (no compile) from ``state``, each from the last one's pattern, until a step adds none (the
    pattern map ``P -> P | out(P)`` has reached its fixed point)."""
    needs = _grad_pattern(state)
    for k in range(x.shape[1]):
        _, _, out = network_step(params, spec, x[:, k], _with_grad(state, needs), consts=consts)
        seen = [a or b for a, b in zip(_grad_pattern(out), needs)]
        if seen == needs:
            break
        needs = seen
    return needs


def compiled_sequence(
    params: NetworkParams, spec: NetworkSpec, consts: StepConstants, x: Tensor, state: NetworkState
) -> Optional[tuple[Tensor, Tensor, NetworkState]]:
    """Run a ``B x T x N_in`` sequence through the compiled units; ``(y, s, final state)`` as
    :meth:`PlasticSNN.forward <hybridopt.snn.network.PlasticSNN.forward>` returns them, or
    ``None`` when compiling is not possible here (after one warning; the caller runs another kernel)."""
    if compile_available() is not None:
        return None
    # Which state tensors require grad is part of what a variant is compiled for.  Only those a
    # parameter requiring grad reaches are made to (a frozen hidden layer's state is not: its
    # backward is never compiled nor run), and they are made to from the sequence's first call
    # on, so that its calls share one variant; the pattern is learned on the first sequence.
    key = (structure_key(spec), tuple(t.requires_grad for t in tree_leaves(params) if isinstance(t, Tensor)))
    kind = (key, tuple(x.shape), x.dtype, x.device)
    if torch.is_grad_enabled():
        out = _sequence(params, spec, consts, x, state, key)
        if out is not None:
            _trained.add(kind)
        return out
    if kind in _trained and not torch.is_inference_mode_enabled():  # (inference tensors cannot be saved)
        # the training variant, its graph dropped: no forward-only compile
        with torch.enable_grad():
            out = _sequence(params, spec, consts, x, state, key)
        return None if out is None else (out[0].detach(), out[1].detach(), _detached(out[2]))
    return _sequence(params, spec, consts, x, state, None)


def _detached(state: NetworkState) -> NetworkState:
    """The state with every tensor detached from the graph that made it."""

    def det(t):
        if t is None or isinstance(t, Tensor):
            return t if t is None else t.detach()
        return type(t)(*(det(u) for u in t))

    return det(state)


def _sequence(
    params: NetworkParams,
    spec: NetworkSpec,
    consts: StepConstants,
    x: Tensor,
    state: NetworkState,
    key: Optional[tuple],
) -> Optional[tuple[Tensor, Tensor, NetworkState]]:
    """:func:`compiled_sequence`'s calls, ``K`` steps each; ``key`` (the structure and grad
    pattern) where the sequence is differentiated, ``None`` where not."""
    fn = _unit(spec)
    ys, ss = [], []
    T = x.shape[1]
    needs = None
    if key is not None:
        needs = _needs.get(key)
        if needs is None:
            needs = _needs[key] = _reached(params, spec, consts, x, state)
    try:
        for t in range(0, T, STEPS_PER_CALL):
            if needs is not None:
                state = _with_grad(state, needs)
            y, s, state = fn(params, consts, x[:, t : t + STEPS_PER_CALL], state)
            if needs is not None and _grad_pattern(state) != needs:  # (not expected: the fixed point)
                needs = _needs[key] = [a or b for a, b in zip(_grad_pattern(state), needs)]
            ys.append(y)
            ss.append(s)
    except Exception as e:  # noqa: BLE001 - a compiler failure: fall back, say why once (others re-raised)
        mark_compile_broken(e, "compiled time steps unavailable, using the fused kernel")
        return None
    if len(ys) == 1:
        return ys[0], ss[0], state
    return torch.cat(ys, 1), torch.cat(ss, 1), state


def compiled_step(
    params: NetworkParams, spec: NetworkSpec, consts: StepConstants, x: Tensor, state: NetworkState
) -> Optional[tuple[Tensor, Tensor, NetworkState]]:
    """One step (``x``: ``B x N_in``) through the compiled unit, for a caller that steps the
    network itself (a policy in its environment, without gradients); ``(y_t, s_t, state)`` or
    ``None`` when compiling is not possible here (after one warning)."""
    if compile_available() is not None:
        return None
    try:
        y, s, state = _unit(spec)(params, consts, x.unsqueeze(1), state)
    except Exception as e:  # noqa: BLE001 - a compiler failure: fall back, say why once (others re-raised)
        mark_compile_broken(e, "compiled time steps unavailable, using the reference step")
        return None
    return y[:, 0], s[:, 0], state
