"""The plastic tape: what one plastic projection keeps over a sequence for the fused backward.

One update step of a plastic projection is

    ``U_t = H_{t-1} + gain ⊙ D_t``  (or the eligibility form),  ``H_t = clip(U_t)``

with ``D_t`` the rule's drive.  Forward.  The tape runs the rule's and the mode's in-place
twins (``update_into``: the reference's operations, written into a few reused buffers, so the
values are the reference's bit for bit) and keeps each step's small inputs (:class:`Step`) plus
``H`` (and ``E``) every ``interval`` steps.

Backward.  The tape hands back one chunk of steps at a time: it recomputes the chunk's ``U``
and ``H`` from its checkpoint with the forward's operations (so the clip masks are the
forward's), for :mod:`hybridopt.snn.fused`'s hand-written vector-Jacobian products.

Memory per projection: ``ceil(T / interval)`` checkpoints plus ``2 * interval`` recomputed states
and a few buffers (``interval = ceil(sqrt(T))`` by default), instead of ``~5 T``.  With
``store=True`` every step's ``U`` is kept instead (``T`` states, no recomputation).  Work memory
comes from the network's :class:`BufferPool` and goes back to it after each backward.

Gradient hand-over.  The plastic current of step ``s + 1``, ``pre · (alpha ⊙ H_s)``, has a
gradient on ``H_s``, ``alpha ⊙ pre g^T``, and so has update step ``s + 1``.  When update step
``s + 1``'s backward hands the engine one of the tape's buffers as its gradient on ``H_s``
(:meth:`PlasticTape.mark_grad_owned`), the current's backward, which runs next, claims it
(:meth:`PlasticTape.claim_grad`) and hands its part over instead of returning it
(:meth:`PlasticTape.hand_over`): a :class:`CompiledHandover` (the factors, for the compiled
kernel to fold in) or an :class:`EagerHandover` (the outer product, in a spare buffer).  Update
step ``s``'s backward takes it (:meth:`PlasticTape.take_handover`) and adds it into that buffer,
so the engine never sums two ``B x I x J`` gradients.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from hybridopt.snn.fused_kernels import run_compiled
from hybridopt.snn.plasticity import MODES, RULES, Activity, PlasticState

__all__ = [
    "BufferPool",
    "CompiledHandover",
    "EagerHandover",
    "Handover",
    "PlasticTape",
    "Step",
    "default_interval",
    "detached",
]


def default_interval(steps: int) -> int:
    """Checkpoint interval ``ceil(sqrt(T))``: about ``3 sqrt(T)`` stored ``H`` in all."""
    return max(1, math.isqrt(max(steps, 1) - 1) + 1)


class Step(NamedTuple):
    """The small inputs of one update step (detached), enough to recompute it."""

    act: Activity
    phi: Optional[Tensor]
    coeffs: dict[str, Tensor]
    gain: Tensor
    M: Optional[Tensor]


def detached(x: Optional[Tensor]) -> Optional[Tensor]:
    """``x.detach()``, or ``None``."""
    # Held tensors must not carry a grad_fn: the graph holds the tape, and a tape holding the
    # graph would be a reference cycle through C++ nodes that the garbage collector cannot see.
    return None if x is None else x.detach()


@dataclass(frozen=True, eq=False)
class CompiledHandover:
    """The current's part of the gradient on ``H_s``, ``alpha ⊙ pre grad^T``, as its factors."""

    pre: Tensor
    grad: Tensor
    alpha: Tensor


@dataclass(frozen=True, eq=False)
class EagerHandover:
    """The current's part of the gradient on ``H_s``, ``alpha ⊙ outer``, with ``outer = pre grad^T``
    in one of the tape's spare buffers (given back with :meth:`PlasticTape.give_spare` once used)."""

    outer: Tensor
    alpha: Tensor


Handover = Union[CompiledHandover, EagerHandover]


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

    def give(self, tensors: Iterable[Tensor]) -> None:
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
        self.steps: list[Step] = []
        self._H: dict[int, Tensor] = {0: initial.H.detach()}
        self._E: dict[int, Optional[Tensor]] = {0: detached(initial.E)}
        self._U_store: dict[int, Tensor] = {}  # store=True: U_t and E_t of every step
        self._E_store: dict[int, Tensor] = {}
        self._H_cache: Optional[tuple[int, Tensor]] = None  # store=True: the last clip(U_s) computed
        self._buffers: dict[str, Tensor] = {}
        self._chunk: Optional[tuple[int, list[Tensor], list[Tensor], list[Optional[Tensor]]]] = None
        # the gradient hand-over (see the module's docstring)
        self._owned_grad: set[int] = set()
        self._pending: dict[int, Handover] = {}
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

    def owns(self, name: str, x: Optional[Tensor]) -> bool:
        """Whether ``x`` is the work buffer ``name`` (the same memory, the same layout)."""
        b = self._buffers.get(name)
        return x is not None and b is not None and x.data_ptr() == b.data_ptr() and x.stride() == b.stride()

    # ----------------------------------------------------------------------- gradient hand-over
    def spare(self) -> Tensor:
        """A work buffer for an outer product handed from one backward call to another."""
        return self._spare.pop() if self._spare else self._new()

    def give_spare(self, buf: Tensor) -> None:
        """Give back a buffer from :meth:`spare` once its outer product is used."""
        self._spare.append(buf)

    def mark_grad_owned(self, s: int) -> None:
        """The gradient on ``H_s`` just handed to the engine is one of the tape's buffers."""
        self._owned_grad.add(s)

    def claim_grad(self, s: int) -> bool:
        """Whether the gradient on ``H_s`` is one of the tape's buffers, which the caller then adds
        its part to through :meth:`hand_over` (a claim is granted once)."""
        if s in self._owned_grad:
            self._owned_grad.discard(s)
            return True
        return False

    def hand_over(self, s: int, part: Handover) -> None:
        """Leave the current's part of the gradient on ``H_s`` for update step ``s``'s backward."""
        self._pending[s] = part

    def take_handover(self, t: int) -> Optional[Handover]:
        """The part of the gradient on ``H_t`` handed over for update step ``t``, if any (once)."""
        return self._pending.pop(t, None)

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

    # ----------------------------------------------------------------------- the steps
    def update_into(
        self, st: Step, H: Tensor, E: Optional[Tensor], U_out: Tensor, E_out: Optional[Tensor]
    ) -> tuple[Tensor, Optional[Tensor]]:
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

    def forward_step(self, st: Step, H: Tensor, E: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
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
            self._H[t], self._E[t] = H_new.detach(), detached(E_new)
        return H_new, E_new

    def _compiled_step(
        self,
        st: Step,
        H: Tensor,
        E: Optional[Tensor],
        U_out: Optional[Tensor],
        H_out: Tensor,
        E_out: Optional[Tensor],
    ) -> bool:
        """One update step through the compiled kernel into the given buffers (False: not available)."""
        args = (self.rule, self.mode, self.h_max, st.act, H, E, st.phi, st.coeffs, st.gain, st.M, U_out, H_out, E_out)
        ok, _ = run_compiled("forward", *args)
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
