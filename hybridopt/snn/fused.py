"""The fused plastic-synapse kernel: a plastic projection's ``B x I x J`` work with a memory-lean BPTT.

Under plain autograd every step of a plastic projection saves several ``B x I x J`` tensors
(``alpha ⊙ H`` for the current, ``D``, ``eta ⊙ D``, the pre-clip ``U``, ...): 20-25 bytes per
synapse per sample per step, which is what limits batch, width and sequence length, and on CPU
most of the time goes to faulting in that much fresh memory.  Here the two ``B x I x J``
operations of a step are custom autograd functions:

``_PlasticCurrent``  ``pre · (alpha ⊙ H_{t-1})``
``_PlasticUpdate``   ``H_t = clip(U_t)``, ``U_t = H_{t-1} + gain ⊙ D`` (or the eligibility form)

and autograd saves nothing of that size.  Everything small (traces, the BCM threshold, the
neuromodulator and gains, the neurons) stays on autograd.

Forward.  Both functions share one :class:`PlasticTape` per projection and sequence.  It runs
the rule's and the mode's in-place twins (``update_into``: the reference's operations, written
into a few reused buffers, so the values are the reference's bit for bit) and keeps each step's
small inputs plus ``H`` (and ``E``) every ``interval`` steps.

Backward.  The tape walks back one chunk of steps at a time: it recomputes the chunk's ``U`` and
``H`` from its checkpoint with the forward's operations (so the clip masks are the forward's),
then applies hand-written vector-Jacobian products: the rule's ``vjp``
(:data:`~hybridopt.snn.plasticity.RULES`) plugged into the mode's
(:data:`~hybridopt.snn.plasticity.MODES`), with the reductions as batched vector-matrix
products.  The current's part of the gradient on ``H_{t-1}`` is added into the update's own
buffer rather than summed by the engine.  A family or mode registered without ``update_into``
and ``vjp`` runs through the same tape, differentiated by autograd one step at a time.

Memory per projection: ``ceil(T / interval)`` checkpoints plus ``2 * interval`` recomputed states
and a few buffers (``interval = ceil(sqrt(T))`` by default), instead of ``~5 T``.  With
``store=True`` every step's ``U`` is kept instead (``T`` states, no recomputation).  Work memory
comes from the network's :class:`BufferPool` and goes back to it after each backward.

The clip's gradient is the reference's (:func:`~hybridopt.snn.plasticity.clip_state`): it passes
where ``-h_max < U < h_max`` and is zero on the bound and beyond, whatever ``clamp``'s backward does
in the installed PyTorch.  The gradients agree with the reference's to float rounding.

Compiled steps.  With ``compiled=True`` (``NetworkSpec.compile``; by default for states of at
least :data:`COMPILE_MIN_ELEMENTS` elements) the tape runs each step's ``B x I x J`` work through
``torch.compile``-d functions instead: the update and clip in one loop (``_forward_impl``), and
in backward the current's gradient on ``H``, the clip mask and the mode's and rule's
vector-Jacobian products fused into one kernel (``_backward_impl``), the current's own
gradients into another (``_current_backward_impl``).  They are the same maths written
functionally (the rule's ``update`` and ``vjp``, the mode's ``update`` and ``vjp``), so a family
or mode registered with those compiles too.  Each ``(rule, mode, h_max, shape)`` compiles once
per process (seconds; Inductor's on-disk cache makes later processes fast).  If compiling fails
(no C++ compiler, say), one warning is issued and the eager path above takes over.

Only :meth:`PlasticSNN.forward <hybridopt.snn.network.PlasticSNN.forward>` over a whole
sequence with gradients enabled uses this; one-step calls (``PlasticSNN.step``) and no-grad
evaluation run the reference maths, which give the same values.  Everything here is plain
tensor operations, so it runs on any device torch does.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from typing import NamedTuple, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

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

__all__ = [
    "BufferPool",
    "PlasticTape",
    "clip_backward",
    "compile_available",
    "default_interval",
    "fused_plastic_current",
    "fused_plasticity_step",
    "mark_compile_broken",
]


def default_interval(steps: int) -> int:
    """Checkpoint interval ``ceil(sqrt(T))``: about ``3 sqrt(T)`` stored ``H`` in all."""
    return max(1, math.isqrt(max(steps, 1) - 1) + 1)


def clip_backward(grad: Tensor, U: Tensor, h_max: float, out: Optional[Tensor] = None) -> Tensor:
    """Gradient through :func:`~hybridopt.snn.plasticity.clip_state`: ``grad`` where
    ``-h_max < U < h_max``, else 0.

    One fused kernel: ``hardtanh_backward`` zeroes where ``U <= lo or U >= hi`` with the bounds
    cast to ``U``'s dtype, which is that mask.  (The boolean mask plus ``where`` that autograd
    uses costs ~10x more on CPU.)  ``out`` may be ``grad`` itself.
    """
    if out is None:
        return torch.ops.aten.hardtanh_backward(grad, U, -h_max, h_max)
    return torch.ops.aten.hardtanh_backward.grad_input(grad, U, -h_max, h_max, grad_input=out)


# --------------------------------------------------------------------------- compiled steps
# The same maths as the eager path, written functionally so that ``torch.compile`` (Inductor)
# can fuse each step's elementwise passes and reductions over ``B x I x J`` into a few loops.
# Each function writes its big results into buffers the caller passes (graph-input mutation,
# which Inductor stores in place), so the tape's buffer reuse stays as it is.

COMPILE_MIN_ELEMENTS = 1 << 20
"""``compile="auto"`` compiles a projection's steps when its state has at least this many
elements (``B * I * J``; 4 MiB in float32): below it the compile time is not earned back."""

_compiled: dict[str, object] = {}
_compile_broken: list[str] = []  # the reason, once a compilation has failed in this process


def _forward_impl(rule: str, mode: str, h_max: float, act, H, E, phi, coeffs, gain, M, U_out, H_out, E_out):
    """One update step: ``U = mode(rule D)``; ``H_out = clip(U)``; ``U_out``/``E_out`` when given."""
    U, E_new = unclipped_update(rule, mode, act, H, E, phi, coeffs, gain, M)
    if U_out is not None:
        U_out.copy_(U)
    H_out.copy_(U.clamp(-h_max, h_max))
    if E_out is not None:
        E_out.copy_(E_new)


def _backward_impl(
    rule: str, mode: str, h_max: float, act, phi, coeffs, gain, M, H, E, U, E_new, gH, gE, cur, gH_out, gE_out
):
    """Backward of one update step, with the plastic current's part on ``H_t`` folded in.

    ``cur = (pre, g, alpha)`` adds ``alpha ⊙ pre g^T`` (the current ``pre · (alpha ⊙ H_t)``'s
    gradient on ``H_t``) to ``gH``; then ``gU = gH`` where ``-h_max < U < h_max`` (else 0),
    and the mode's and rule's vector-Jacobian products.  ``gH_out``/``gE_out`` receive the
    gradients on ``H_{t-1}``/``E_{t-1}``; the small gradients are returned."""
    if cur is not None:
        pre, g, alpha = cur
        P = alpha * (pre.unsqueeze(2) * g.unsqueeze(1))
        gH = P if gH is None else gH + P
    gU = None if gH is None else torch.where((U > -h_max) & (U < h_max), gH, 0.0)
    m = MODES[mode]
    if m.has_eligibility:
        gE = torch.zeros_like(U) if gE is None else gE.clone()
    mg = m.vjp(RULES[rule], act, H, phi, coeffs, E, E_new, gain, M, gU, gE, None)
    if mg.H is not None:
        gH_out.copy_(mg.H)
    if mg.E is not None:
        gE_out.copy_(mg.E)
    rg = mg.rule
    return (
        mg.H is not None, mg.E is not None,
        rg.pre_trace, rg.post_trace, rg.pre_spike, rg.post_spike, rg.phi, mg.gain, mg.M,
        tuple(rg.coeffs.get(n) for n in RULES[rule].coefficients),
    )  # fmt: skip


def _current_backward_impl(pre, g, alpha, H, need_pre: bool, need_alpha: bool):
    """``g_pre_bi = sum_j alpha_ij H_bij g_bj`` and ``g_alpha_ij = sum_b pre_bi g_bj H_bij``."""
    g_pre = (alpha * H * g.unsqueeze(1)).sum(2) if need_pre else None
    g_alpha = (pre.unsqueeze(2) * g.unsqueeze(1) * H).sum(0) if need_alpha else None
    return g_pre, g_alpha


def _compiled_fn(name: str):
    """The ``torch.compile``-d step function ``name`` (compiled per input signature, lazily)."""
    fn = _compiled.get(name)
    if fn is None:
        import torch._dynamo.config as dynamo_config

        # one signature per rule x mode x clip x which inputs are given x shape: well above 8
        for key in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo_config, key):
                setattr(dynamo_config, key, max(getattr(dynamo_config, key), 256))
        impl = {"forward": _forward_impl, "backward": _backward_impl, "current": _current_backward_impl}[name]
        fn = _compiled[name] = torch.compile(impl, dynamic=False, fullgraph=True)
    return fn


def compile_available() -> Optional[str]:
    """``None`` when the compiled steps can run here, else why not (e.g. no C++ compiler on CPU)."""
    if _compile_broken:
        return _compile_broken[0]
    return None


def mark_compile_broken(e: Exception, what: str) -> None:
    """Compiling failed here: remember why (every compiled path then steps aside) and warn once."""
    import warnings

    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    _compile_broken.append(f"{type(e).__name__}: {first}")
    warnings.warn(f"{what} ({_compile_broken[0]})", stacklevel=3)


def _run_compiled(name: str, *args) -> tuple[bool, object]:
    """Call a compiled step: ``(True, result)``, or ``(False, None)`` once compiling has failed
    (the caller then takes the eager path, which gives the same values)."""
    if _compile_broken:
        return False, None
    try:
        return True, _compiled_fn(name)(*args)
    except Exception as e:  # noqa: BLE001 - any compiler failure: fall back, say why once
        mark_compile_broken(e, "compiled plastic step unavailable, using the eager fused kernel")
        return False, None


class _Step(NamedTuple):
    """The small inputs of one update step (detached), enough to recompute it."""

    act: Activity
    phi: Optional[Tensor]
    coeffs: dict[str, Tensor]
    gain: Tensor
    M: Optional[Tensor]


def _detach(x: Optional[Tensor]) -> Optional[Tensor]:
    # Held tensors must not carry a grad_fn: the graph holds the tape, and a tape holding the
    # graph would be a reference cycle through C++ nodes that the garbage collector cannot see.
    return None if x is None else x.detach()


class BufferPool:
    """Spare ``B x I x J`` tensors that one network's tapes borrow and give back.

    On CPU the first touch of fresh memory costs a page fault per 4 KiB (here about as long as
    three passes over the tensor), and the allocator hands large blocks back to the system when
    they are freed: without a pool every training step would fault its work memory in anew.
    :class:`~hybridopt.snn.network.PlasticSNN` keeps one (it is not pickled).
    """

    def __init__(self) -> None:
        self._free: dict[tuple, list[Tensor]] = {}

    def take(self, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
        spare = self._free.get((tuple(shape), dtype, device))
        return spare.pop() if spare else torch.empty(shape, dtype=dtype, device=device)

    def give(self, tensors) -> None:
        for x in tensors:
            self._free.setdefault((tuple(x.shape), x.dtype, x.device), []).append(x)

    def __len__(self) -> int:
        return sum(len(v) for v in self._free.values())


class PlasticTape:
    """What one plastic projection keeps over one sequence for the fused backward.

    Forward appends each step's small inputs and keeps ``H`` (and ``E``) at steps
    ``0, interval, 2 interval, ...``; with ``store=True`` it also keeps every step's pre-clip
    ``U`` (and ``E``), about 4 bytes per synapse per step, so that the first backward needs no
    recomputation.  Otherwise backward recomputes one chunk of steps at a time from its
    checkpoint into reusable slots (memory ``~3 sqrt(T)`` states instead of ``T``), with the
    forward's own operations, so the values and clip masks are the forward's bits.  The stored
    steps are given back when the first backward reaches step 1; a second backward
    (``retain_graph``) recomputes from the checkpoints.

    A few ``B x I x J`` work buffers are reused across steps: on CPU, a fresh temporary per
    operation pushes the working set out of the last-level cache and costs several times the
    arithmetic.  Work memory comes from ``pool`` when given and goes back to it when the tape is
    done.  Nothing held carries a ``grad_fn``; the tape lives as long as the graph that uses it.
    """

    # buffers that leave the tape as outputs (the state handed to the next step, or the final
    # state to the caller) are its own; everything else may come from the pool
    _OWN = ("H0", "H1", "E0", "E1")

    def __init__(
        self,
        rule: str,
        mode: str,
        h_max: float,
        initial: PlasticState,
        interval: int,
        *,
        store: bool = False,
        pool: Optional[BufferPool] = None,
        compiled: bool = False,
    ):
        if interval < 1:
            raise ValueError(f"checkpoint interval must be >= 1, got {interval}")
        self.rule, self.mode, self.h_max, self.interval, self.store = rule, mode, h_max, interval, store
        self.compiled = compiled
        self.coeff_names = tuple(RULES[rule].coefficients)
        self.steps: list[_Step] = []
        self._H: dict[int, Tensor] = {0: initial.H.detach()}
        self._E: dict[int, Optional[Tensor]] = {0: _detach(initial.E)}
        self._U_store: dict[int, Tensor] = {}  # store=True: U_t and E_t of every step
        self._E_store: dict[int, Tensor] = {}
        self._H_cache: Optional[tuple[int, Tensor]] = None  # store=True: the last clip(U_s) computed
        self._buffers: dict[str, Tensor] = {}
        self._chunk: Optional[tuple[int, list[Tensor], list[Tensor], list[Optional[Tensor]]]] = None
        # gradient hand-over between the two functions (see _PlasticCurrent.backward)
        self._owned_grad: set[int] = set()
        self._pending: dict[int, tuple[Tensor, Tensor]] = {}
        self._spare: list[Tensor] = []
        self._pool = pool
        self._borrowed: list[Tensor] = []
        if pool is not None:  # whatever is still borrowed goes back when the graph (and tape) dies
            weakref.finalize(self, pool.give, self._borrowed)

    @property
    def t(self) -> int:
        """Number of update steps recorded (so the newest ``H`` is ``H_t``)."""
        return len(self.steps)

    @property
    def checkpoints(self) -> int:
        """How many ``H`` the tape holds between forward and backward (besides stored steps)."""
        return len(self._H)

    def _new(self, pooled: bool = True) -> Tensor:
        H0 = self._H[0]
        if pooled and self._pool is not None:
            x = self._pool.take(H0.shape, H0.dtype, H0.device)
            self._borrowed.append(x)
            return x
        return torch.empty(H0.shape, dtype=H0.dtype, device=H0.device)

    def buffer(self, name: str) -> Tensor:
        """A ``B x I x J`` work buffer, allocated (or borrowed) on first use and reused after."""
        b = self._buffers.get(name)
        if b is None:
            b = self._buffers[name] = self._new(pooled=name not in self._OWN)
        return b

    def spare(self) -> Tensor:
        """A work buffer for an outer product handed from one backward call to another."""
        return self._spare.pop() if self._spare else self._new()

    def owns(self, name: str, x: Optional[Tensor]) -> bool:
        b = self._buffers.get(name)
        return x is not None and b is not None and x.data_ptr() == b.data_ptr() and x.stride() == b.stride()

    def release(self) -> None:
        """Give the stored steps and work memory back to the pool (the checkpoints stay)."""
        if self._pool is None:
            return
        self._U_store.clear()
        self._E_store.clear()
        self._H_cache = self._chunk = None
        self._spare.clear()
        self._pending.clear()  # nothing is left to hand over once step 1 is done
        self._owned_grad.clear()
        self._buffers = {k: v for k, v in self._buffers.items() if k in self._OWN}
        self._pool.give(self._borrowed)
        self._borrowed.clear()

    def update_into(self, st: _Step, H: Tensor, E: Optional[Tensor], U_out: Tensor, E_out: Optional[Tensor]):
        """``(U, E_new)`` of one step written into ``U_out`` / ``E_out``: the reference operations."""
        rule, mode = RULES[self.rule], MODES[self.mode]
        if rule.update_into is not None:
            D = rule.update_into(st.act, H, st.phi, st.coeffs, U_out, self.buffer("scratch"))
        else:
            D = U_out.copy_(rule.update(st.act, H, st.phi, st.coeffs))
        if mode.update_into is not None:
            return mode.update_into(D, H, E, st.gain, st.M, E_out)
        U, E_new = mode.update(D, H, E, st.gain, st.M)
        return D.copy_(U), (None if E_new is None else E_out.copy_(E_new))

    def forward_step(self, st: _Step, H: Tensor, E: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        """Run and record one update step; returns the new ``(H, E)``."""
        t = self.t + 1
        if t % self.interval == 0:  # a checkpoint: fresh tensors, kept
            H_out, E_out = self._new(pooled=False), (None if E is None else self._new(pooled=False))
        else:  # alternate two buffers: the state two steps back is dead (only the newest is passed on)
            H_out, E_out = self.buffer(f"H{t % 2}"), (None if E is None else self.buffer(f"E{t % 2}"))
        U_kept = self._new() if self.store else None
        if self.compiled and self._compiled_step(st, H, E, U_kept, H_out, E_out):
            U, E_new, H_new = U_kept, E_out, H_out
        else:
            U, E_new = self.update_into(st, H, E, self.buffer("D") if U_kept is None else U_kept, E_out)
            H_new = torch.clamp(U, -self.h_max, self.h_max, out=H_out)
        self.steps.append(st)
        if self.store:
            self._U_store[t] = U
            if E_new is not None:
                self._E_store[t] = self._new().copy_(E_new)
        if t % self.interval == 0:
            self._H[t], self._E[t] = H_new.detach(), _detach(E_new)
        return H_new, E_new

    def _compiled_step(self, st: _Step, H, E, U_out, H_out, E_out) -> bool:
        """One update step through the compiled kernel into the given buffers (False: not available)."""
        args = (self.rule, self.mode, self.h_max, st.act, H, E, st.phi, st.coeffs, st.gain, st.M, U_out, H_out, E_out)
        ok, _ = _run_compiled("forward", *args)
        self.compiled = ok
        return ok

    def _load(self, t: int) -> tuple[int, list[Tensor], list[Tensor], list[Optional[Tensor]]]:
        """The chunk holding update step ``t``: ``(start, [H_start ..], [U_start+1 ..], [E_start ..])``."""
        start = (t - 1) // self.interval * self.interval
        if self._chunk is None or self._chunk[0] != start:
            self._chunk = None
            H, E = self._H[start], self._E[start]
            Hs, Us, Es = [H], [], [E]
            U_slots = self._slots("U")
            H_slots = self._slots("H")
            E_slots = self._slots("E") if E is not None else None
            with torch.no_grad():
                for k, s in enumerate(range(start, min(start + self.interval, self.t))):
                    E_out = None if E is None else E_slots[k]
                    if self.compiled and self._compiled_step(self.steps[s], H, E, U_slots[k], H_slots[k], E_out):
                        U, E, H = U_slots[k], E_out, H_slots[k]
                    else:
                        U, E = self.update_into(self.steps[s], H, E, U_slots[k], E_out)
                        H = torch.clamp(U, -self.h_max, self.h_max, out=H_slots[k])
                    Hs.append(H)
                    Us.append(U)
                    Es.append(E)
            self._chunk = (start, Hs, Us, Es)
        return self._chunk

    def _slots(self, name: str) -> list[Tensor]:
        key = "slots_" + name
        if key not in self._buffers:
            for k in range(min(self.interval, self.t)):
                self.buffer(f"{key}_{k}")
            self._buffers[key] = torch.empty(0)  # marker: the slots exist
        return [self._buffers[f"{key}_{k}"] for k in range(min(self.interval, self.t))]

    def H(self, s: int) -> Tensor:
        """``H_s`` (``H_0`` is the initial state)."""
        if s in self._H:
            return self._H[s]
        if s in self._U_store:
            if self._H_cache is None or self._H_cache[0] != s:
                H = torch.clamp(self._U_store[s], -self.h_max, self.h_max, out=self.buffer("H_prev"))
                self._H_cache = (s, H)
            return self._H_cache[1]
        start, Hs, _, _ = self._load(s)
        return Hs[s - start]

    def around(self, t: int) -> tuple[Tensor, Optional[Tensor], Tensor, Optional[Tensor]]:
        """``(H_{t-1}, E_{t-1}, U_t, E_t)`` for update step ``t``."""
        if t in self._U_store:
            E_prev = self._E_store.get(t - 1, self._E.get(t - 1))
            return self.H(t - 1), E_prev, self._U_store[t], self._E_store.get(t)
        start, Hs, Us, Es = self._load(t)
        k = t - start
        return Hs[k - 1], Es[k - 1], Us[k - 1], Es[k]


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
                ok, res = _run_compiled("current", pre, grad, alpha, tape.H(s), need_pre, need_alpha)
            if ok:
                g_pre, g_alpha = res
                if need_H and s in tape._owned_grad:  # as below, folded into update step s's kernel
                    tape._owned_grad.discard(s)
                    tape._pending[s] = (pre, grad, alpha)
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
            if need_H and s in tape._owned_grad:
                # Update step s+1 already handed the engine one of the tape's buffers as the
                # gradient on H_s, and update step s will receive it: add this function's part
                # (alpha ⊙ pre g^T) there instead of allocating it for the engine to sum.
                tape._owned_grad.discard(s)
                tape._pending[s] = (P, alpha)
            else:
                g_H = P * alpha if need_H else None
                tape._spare.append(P)
        return None, g_pre, g_alpha, g_H


def _autograd_backward(tape: PlasticTape, st: _Step, H, E, gH, gE):
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


class _PlasticUpdate(torch.autograd.Function):
    """One update step ``(H_{t-1}, E_{t-1}) -> (H_t, E_t)``; saves nothing of size ``B x I x J``."""

    @staticmethod
    def forward(ctx, tape, H, E, pre_trace, post_trace, pre, post, phi, gain, M, *coeffs):  # type: ignore[override]
        ctx.set_materialize_grads(False)
        st = _Step(
            Activity(pre_trace.detach(), post_trace.detach(), pre.detach(), post.detach()),
            _detach(phi),
            {n: c.detach() for n, c in zip(tape.coeff_names, coeffs)},
            gain.detach(),
            _detach(M),
        )
        H_new, E_new = tape.forward_step(st, H, E)
        ctx.tape, ctx.t = tape, tape.t
        # Return aliases: autograd attaches its grad_fn to the returned objects, and the tape's own
        # buffers must stay free of one (see _detach).
        return H_new.detach() if E_new is None else (H_new.detach(), E_new.detach())

    @staticmethod
    @once_differentiable
    def backward(ctx, gH: Optional[Tensor], gE: Optional[Tensor] = None):  # type: ignore[override]
        tape, t = ctx.tape, ctx.t
        n_out = 10 + len(tape.coeff_names)
        pending = tape._pending.pop(t, None)  # current step t+1's part of the gradient on H_t
        if gH is None and gE is None and pending is None:
            return (None,) * n_out
        st = tape.steps[t - 1]
        H, E, U, E_new = tape.around(t)
        rule, mode = RULES[tape.rule], MODES[tape.mode]
        if tape.compiled and rule.vjp is not None and mode.vjp is not None:
            out = _compiled_update_backward(ctx, tape, t, st, H, E, U, E_new, gH, gE, pending)
            if out is not None:
                return out
        G = tape.buffer("G")
        if pending is not None and len(pending) == 3:  # from the compiled current's backward
            pre, g, alpha = pending
            pending = (torch.mul(pre.unsqueeze(2), g.unsqueeze(1), out=tape.spare()), alpha)
        if pending is not None:  # the whole gradient on H_t, into G
            P, alpha = pending
            if gH is None:
                gH = torch.mul(P, alpha, out=G)
            elif tape.owns("G", gH):
                gH = G.addcmul_(P, alpha)
            else:
                gH = torch.addcmul(gH, P, alpha, out=G)
            tape._spare.append(P)
        if rule.vjp is None or mode.vjp is None:
            return (None, *_autograd_backward(tape, st, H, E, gH, gE))
        gU = None if gH is None else clip_backward(gH, U, tape.h_max, out=G)
        if mode.has_eligibility and not tape.owns("X", gE):
            gE = tape.buffer("X").zero_() if gE is None else tape.buffer("X").copy_(gE)
        mg = mode.vjp(rule, st.act, H, st.phi, st.coeffs, E, E_new, st.gain, st.M, gU, gE, tape.buffer("scratch"))
        gH_prev, gE_prev = mg.H, mg.E
        if t == 1:  # gradients on the sequence's initial state leave the tape: no shared buffers
            gH_prev = gH_prev.clone() if gH_prev is not None and ctx.needs_input_grad[1] else None
            gE_prev = gE_prev.clone() if gE_prev is not None and ctx.needs_input_grad[2] else None
            tape.release()  # the last update step of this backward
        elif tape.owns("G", gH_prev):
            tape._owned_grad.add(t - 1)
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


def _compiled_update_backward(ctx, tape: PlasticTape, t: int, st: _Step, H, E, U, E_new, gH, gE, pending):
    """:class:`_PlasticUpdate`'s backward through the compiled kernel (``None``: not available).

    The gradients on ``H_{t-1}``/``E_{t-1}`` go to one of two alternating tape buffers (never the
    one holding the incoming gradient), handed to the engine as those of step ``t - 1``."""
    if pending is not None and len(pending) != 3:  # the eager current's hand-over: go eager
        return None
    cur = pending
    gH_out = tape.buffer("G1" if tape.owns("G0", gH) else "G0")
    gE_out = None if E is None else tape.buffer("X1" if tape.owns("X0", gE) else "X0")
    ok, res = _run_compiled(
        "backward", tape.rule, tape.mode, tape.h_max, st.act, st.phi, st.coeffs, st.gain, st.M,
        H, E, U, E_new, gH, gE, cur, gH_out, gE_out,
    )  # fmt: skip
    if not ok:  # the eager path takes over, with the same inputs
        tape.compiled = False
        return None
    has_H, has_E, pre_trace, post_trace, pre_spike, post_spike, phi, g_gain, g_M, g_coeffs = res
    gH_prev = gH_out if has_H else None
    gE_prev = gE_out if has_E else None
    if t == 1:  # gradients on the sequence's initial state leave the tape: no shared buffers
        gH_prev = gH_prev.clone() if gH_prev is not None and ctx.needs_input_grad[1] else None
        gE_prev = gE_prev.clone() if gE_prev is not None and ctx.needs_input_grad[2] else None
        tape.release()
    elif gH_prev is not None:
        tape._owned_grad.add(t - 1)
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
