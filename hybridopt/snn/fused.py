"""The fused plastic-synapse kernel: a plastic projection's ``B x I x J`` work with a memory-lean BPTT.

Under plain autograd every step of a plastic projection saves several ``B x I x J`` tensors
(``alpha ⊙ H`` for the current, ``D``, ``eta ⊙ D``, the pre-clip ``U``, ...): 20-25 bytes per
synapse per sample per step, which is what limits batch, width and sequence length, and on CPU
most of the time goes to faulting in that much fresh memory.  Here the two ``B x I x J``
operations of a step are custom autograd functions:

``_PlasticCurrent``  ``I_t = pre · (alpha ⊙ H_{t-1})``
``_PlasticUpdate``   ``H_t = clip(U_t)``, ``U_t = H_{t-1} + gain ⊙ D`` (or the eligibility form)

and autograd saves nothing of that size.  Everything small (traces, the BCM threshold, the
neuromodulator and gains, the neurons) stays on autograd.

Both functions share one :class:`~hybridopt.snn.tape.PlasticTape` per projection and sequence,
which runs the update steps, keeps checkpoints and recomputes chunks of steps in backward.  On
those recomputed states this module applies hand-written vector-Jacobian products: the rule's
``vjp`` (:data:`~hybridopt.snn.plasticity.RULES`) plugged into the mode's
(:data:`~hybridopt.snn.plasticity.MODES`), with the reductions as batched vector-matrix
products, and the clip's gradient (:func:`~hybridopt.snn.fused_kernels.clip_backward`).  The
current's part of the gradient on ``H_{t-1}`` is handed over through the tape and added into the
update's own buffer rather than summed by the engine.  A family or mode registered without
``update_into`` and ``vjp`` runs through the same tape, differentiated by autograd one step at a
time.  The gradients agree with the reference's to float rounding.

With ``compiled=True`` the tape's per-step work runs through ``torch.compile``-d kernels
(:mod:`hybridopt.snn.fused_kernels`), falling back to the eager path here if compiling fails.

Only :meth:`PlasticSNN.forward <hybridopt.snn.network.PlasticSNN.forward>` over a whole
sequence with gradients enabled uses this; one-step calls (``PlasticSNN.step``) and no-grad
evaluation run the reference maths, which give the same values.  Everything here is plain
tensor operations, so it runs on any device torch does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from hybridopt.snn.fused_kernels import (
    COMPILE_MIN_ELEMENTS,
    clip_backward,
    compile_available,
    mark_compile_broken,
    run_compiled,
)
from hybridopt.snn.plasticity import (
    MODES,
    RULES,
    Activity,
    ModulationParams,
    PlasticState,
    clip_state,
    next_threshold,
    plasticity_drive,
    unclipped_update,
)
from hybridopt.snn.tape import (
    BufferPool,
    CompiledHandover,
    EagerHandover,
    Handover,
    PlasticTape,
    Step,
    default_interval,
    detached,
)

__all__ = [
    "COMPILE_MIN_ELEMENTS",
    "BufferPool",
    "PlasticTape",
    "clip_backward",
    "compile_available",
    "default_interval",
    "fused_plastic_current",
    "fused_plasticity_step",
    "mark_compile_broken",
]


class _PlasticCurrent(torch.autograd.Function):
    """``pre · (alpha ⊙ H)`` per sample (``B x J``), with ``H`` fetched from the tape in backward."""

    @staticmethod
    def forward(ctx, tape: PlasticTape, pre: Tensor, alpha: Tensor, H: Tensor) -> Tensor:  # type: ignore[override]
        ctx.tape, ctx.s = tape, tape.t
        ctx.save_for_backward(pre, alpha)
        # the reference's operations, with alpha ⊙ H in a reused buffer
        return torch.bmm(pre.unsqueeze(1), torch.mul(alpha, H, out=tape.buffer("D"))).squeeze(1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        pre, alpha = ctx.saved_tensors
        tape, s = ctx.tape, ctx.s
        _, need_pre, need_alpha, need_H = ctx.needs_input_grad
        g_pre = g_alpha = g_H = None
        if tape.compiled:
            ok, res = (True, (None, None))
            if need_pre or need_alpha:
                ok, res = run_compiled("current", pre, grad, alpha, tape.H(s), need_pre, need_alpha)
            if ok:
                g_pre, g_alpha = res
                if need_H and tape.claim_grad(s):  # as below, folded into update step s's kernel
                    tape.hand_over(s, CompiledHandover(pre, grad, alpha))
                elif need_H:
                    g_H = alpha * (pre.unsqueeze(2) * grad.unsqueeze(1))
                return None, g_pre, g_alpha, g_H
            tape.compiled = False
        H = tape.H(s) if need_pre or need_alpha else None
        if need_pre:  # sum_j alpha_ij H_bij g_bj
            AH = torch.mul(alpha, H, out=tape.buffer("scratch"))
            g_pre = torch.bmm(grad.unsqueeze(1), AH.transpose(1, 2)).squeeze(1)
        if need_alpha or need_H:
            P = torch.mul(pre.unsqueeze(2), grad.unsqueeze(1), out=tape.spare())  # pre_bi g_bj
            if need_alpha:  # sum_b pre_bi g_bj H_bij
                g_alpha = torch.mul(P, H, out=tape.buffer("scratch")).sum(0)
            if need_H and tape.claim_grad(s):
                # Update step s+1 already handed the engine one of the tape's buffers as the
                # gradient on H_s, and update step s will receive it: add this function's part
                # (alpha ⊙ pre g^T) there instead of allocating it for the engine to sum.
                tape.hand_over(s, EagerHandover(P, alpha))
            else:
                g_H = P * alpha if need_H else None
                tape.give_spare(P)
        return None, g_pre, g_alpha, g_H


def _autograd_backward(
    tape: PlasticTape, st: Step, H: Tensor, E: Optional[Tensor], gH: Optional[Tensor], gE: Optional[Tensor]
) -> list[Optional[Tensor]]:
    """Fallback for a rule or mode without a ``vjp``: differentiate the recomputed step by autograd."""
    inputs = [H, E, *st.act, st.phi, st.gain, st.M, *(st.coeffs[n] for n in tape.coeff_names)]
    leaves = [None if x is None else x.detach().requires_grad_(True) for x in inputs]
    H_, E_, xpre, xpost, pre, post, phi, gain, M, *coeffs = leaves
    with torch.enable_grad():
        act = Activity(xpre, xpost, pre, post)
        U, E_new = unclipped_update(
            tape.rule, tape.mode, act, H_, E_, phi, dict(zip(tape.coeff_names, coeffs)), gain, M
        )
        outs = [(o, g) for o, g in [(clip_state(U, tape.h_max), gH), (E_new, gE)] if g is not None]
        wanted = [x for x in leaves if x is not None]
        grads = torch.autograd.grad([o for o, _ in outs], wanted, [g for _, g in outs], allow_unused=True)
    it = iter(grads)
    return [None if x is None else next(it) for x in leaves]


def _to_engine(
    ctx: Any, tape: PlasticTape, t: int, gH_prev: Optional[Tensor], gE_prev: Optional[Tensor], owned: bool
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """Update step ``t``'s gradients on ``H_{t-1}``/``E_{t-1}`` as handed to the engine.

    At ``t = 1`` (the sequence's initial state) they leave the tape: copies, and the tape gives
    its work memory back.  Otherwise they stay the tape's buffers, and when ``owned`` (the one on
    ``H_{t-1}`` is a buffer the current of step ``t`` may add its part to) the tape is told so."""
    if t == 1:  # gradients on the sequence's initial state leave the tape: no shared buffers
        gH_prev = gH_prev.clone() if gH_prev is not None and ctx.needs_input_grad[1] else None
        gE_prev = gE_prev.clone() if gE_prev is not None and ctx.needs_input_grad[2] else None
        tape.release()  # the last update step of this backward
    elif owned:
        tape.mark_grad_owned(t - 1)
    return gH_prev, gE_prev


class _PlasticUpdate(torch.autograd.Function):
    """One update step ``(H_{t-1}, E_{t-1}) -> (H_t, E_t)``; saves nothing of size ``B x I x J``."""

    @staticmethod
    def forward(ctx, tape, H, E, pre_trace, post_trace, pre, post, phi, gain, M, *coeffs):  # type: ignore[override]
        ctx.set_materialize_grads(False)
        st = Step(
            Activity(pre_trace.detach(), post_trace.detach(), pre.detach(), post.detach()),
            detached(phi),
            {n: c.detach() for n, c in zip(tape.coeff_names, coeffs)},
            gain.detach(),
            detached(M),
        )
        H_new, E_new = tape.forward_step(st, H, E)
        ctx.tape, ctx.t = tape, tape.t
        # Return aliases: autograd attaches its grad_fn to the returned objects, and the tape's own
        # buffers must stay free of one (see detached).
        return H_new.detach() if E_new is None else (H_new.detach(), E_new.detach())

    @staticmethod
    @once_differentiable
    def backward(ctx, gH: Optional[Tensor], gE: Optional[Tensor] = None):  # type: ignore[override]
        tape, t = ctx.tape, ctx.t
        n_out = 10 + len(tape.coeff_names)
        handover = tape.take_handover(t)  # current step t+1's part of the gradient on H_t
        if gH is None and gE is None and handover is None:
            return (None,) * n_out
        st = tape.steps[t - 1]
        around = tape.around(t)
        H, E, U, E_new = around
        rule, mode = RULES[tape.rule], MODES[tape.mode]
        if tape.compiled and rule.vjp is not None and mode.vjp is not None:
            out = _compiled_update_backward(ctx, tape, t, st, around, gH, gE, handover)
            if out is not None:
                return out
        G = tape.buffer("G")
        if isinstance(handover, CompiledHandover):  # from the compiled current's backward
            outer = torch.mul(handover.pre.unsqueeze(2), handover.grad.unsqueeze(1), out=tape.spare())
            handover = EagerHandover(outer, handover.alpha)
        if handover is not None:  # the whole gradient on H_t, into G
            P, alpha = handover.outer, handover.alpha
            if gH is None:
                gH = torch.mul(P, alpha, out=G)
            elif tape.owns("G", gH):
                gH = G.addcmul_(P, alpha)
            else:
                gH = torch.addcmul(gH, P, alpha, out=G)
            tape.give_spare(P)
        if rule.vjp is None or mode.vjp is None:
            return (None, *_autograd_backward(tape, st, H, E, gH, gE))
        gU = None if gH is None else clip_backward(gH, U, tape.h_max, out=G)
        if mode.has_eligibility and not tape.owns("X", gE):
            gE = tape.buffer("X").zero_() if gE is None else tape.buffer("X").copy_(gE)
        mg = mode.vjp(rule, st.act, H, st.phi, st.coeffs, E, E_new, st.gain, st.M, gU, gE, tape.buffer("scratch"))
        gH_prev, gE_prev = _to_engine(ctx, tape, t, mg.H, mg.E, owned=tape.owns("G", mg.H))
        rg = mg.rule
        return (
            None,
            gH_prev,
            gE_prev,
            rg.pre_trace,
            rg.post_trace,
            rg.pre_spike,
            rg.post_spike,
            rg.phi,
            mg.gain,
            mg.M,
            *(rg.coeffs.get(n) for n in tape.coeff_names),
        )


def _compiled_update_backward(
    ctx: Any,
    tape: PlasticTape,
    t: int,
    st: Step,
    around: tuple[Tensor, Optional[Tensor], Tensor, Optional[Tensor]],
    gH: Optional[Tensor],
    gE: Optional[Tensor],
    handover: Optional[Handover],
) -> Optional[tuple]:
    """:class:`_PlasticUpdate`'s backward through the compiled kernel (``None``: not available).

    ``around`` is the tape's ``(H_{t-1}, E_{t-1}, U_t, E_t)``.  The gradients on
    ``H_{t-1}``/``E_{t-1}`` go to one of two alternating tape buffers (never the one holding the
    incoming gradient), handed to the engine as those of step ``t - 1``."""
    if isinstance(handover, EagerHandover):  # the eager current's hand-over: go eager
        return None
    cur = None if handover is None else (handover.pre, handover.grad, handover.alpha)
    H, E, U, E_new = around
    gH_out = tape.buffer("G1" if tape.owns("G0", gH) else "G0")
    gE_out = None if E is None else tape.buffer("X1" if tape.owns("X0", gE) else "X0")
    ok, res = run_compiled(
        "backward", tape.rule, tape.mode, tape.h_max, st.act, st.phi, st.coeffs, st.gain, st.M,
        H, E, U, E_new, gH, gE, cur, gH_out, gE_out,
    )  # fmt: skip
    if not ok:  # the eager path takes over, with the same inputs
        tape.compiled = False
        return None
    has_H, has_E, pre_trace, post_trace, pre_spike, post_spike, phi, g_gain, g_M, g_coeffs = res
    gH_prev = gH_out if has_H else None
    gE_prev = gE_out if has_E else None
    gH_prev, gE_prev = _to_engine(ctx, tape, t, gH_prev, gE_prev, owned=gH_prev is not None)
    return (None, gH_prev, gE_prev, pre_trace, post_trace, pre_spike, post_spike, phi, g_gain, g_M, *g_coeffs)


def fused_plastic_current(tape: PlasticTape, pre: Tensor, W: Tensor, alpha: Tensor, H: Tensor) -> Tensor:
    """:func:`~hybridopt.snn.plasticity.plastic_current` through the fused kernel (same values)."""
    return pre @ W + _PlasticCurrent.apply(tape, pre, alpha, H)


def fused_plasticity_step(
    tape: PlasticTape,
    state: PlasticState,
    pre: Tensor,
    post: Tensor,
    *,
    trace_decay: float,
    coeffs: Mapping[str, Tensor],
    mod: ModulationParams,
    M: Optional[Tensor] = None,
) -> PlasticState:
    """:func:`~hybridopt.snn.plasticity.plasticity_step` through the fused kernel (same values).

    The rule, mode and ``h_max`` are the tape's; the step is recorded on it."""
    act, gain = plasticity_drive(tape.mode, state, pre, post, trace_decay=trace_decay, mod=mod, M=M)
    out = _PlasticUpdate.apply(
        tape, state.H, state.E, act.pre_trace, act.post_trace, pre, post, state.phi, gain, M,
        *(coeffs[n] for n in tape.coeff_names),
    )  # fmt: skip
    H, E = out if state.E is not None else (out, None)
    phi = next_threshold(tape.rule, act, state.phi, coeffs)
    return PlasticState(H=H, pre_trace=act.pre_trace, post_trace=act.post_trace, E=E, phi=phi)
