"""The per-step kernels of the fused plastic synapse: the clip's gradient and the compiled steps.

The clip's gradient is the reference's (:func:`~hybridopt.snn.plasticity.clip_state`): with
``H_t = clip(U_t) = min(max(U_t, -h_max), h_max)``,

    ``dL/dU_t = dL/dH_t`` where ``-h_max < U_t < h_max``, else ``0``

(zero on the bound and beyond, whatever ``clamp``'s backward does in the installed PyTorch).

Compiled steps.  With ``compiled=True`` (``NetworkSpec.compile``; by default for states of at
least :data:`COMPILE_MIN_ELEMENTS` elements) the :class:`~hybridopt.snn.tape.PlasticTape` runs
each step's ``B x I x J`` work through ``torch.compile``-d functions instead of its eager
buffers: the update and clip in one loop (``_forward_impl``), and in backward the current's
gradient on ``H``, the clip mask and the mode's and rule's vector-Jacobian products fused into
one kernel (``_backward_impl``), the current's own gradients into another
(``_current_backward_impl``).  They are the same maths as the eager path written functionally
(the rule's ``update`` and ``vjp``, the mode's ``update`` and ``vjp``), so a family or mode
registered with those compiles too, and Inductor can fuse each step's elementwise passes and
reductions into a few loops.  Each function writes its big results into buffers the caller
passes (graph-input mutation, which Inductor stores in place), so the tape's buffer reuse stays
as it is.  Each ``(rule, mode, h_max, shape)`` compiles once per process (seconds; Inductor's
on-disk cache makes later processes fast).  If compiling fails (no C++ compiler, say), one
warning is issued and every compiled path steps aside for the eager one, which gives the same
values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import Tensor

from hybridopt.snn.plasticity import MODES, RULES, Activity, unclipped_update

__all__ = ["COMPILE_MIN_ELEMENTS", "clip_backward", "compile_available", "mark_compile_broken", "run_compiled"]

COMPILE_MIN_ELEMENTS = 1 << 20
"""``compile="auto"`` compiles a projection's steps when its state has at least this many
elements (``B * I * J``; 4 MiB in float32): below it the compile time is not earned back."""

_compiled: dict[str, Callable[..., Any]] = {}
_compile_broken: list[str] = []  # the reason, once a compilation has failed in this process


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


def _forward_impl(
    rule: str,
    mode: str,
    h_max: float,
    act: Activity,
    H: Tensor,
    E: Optional[Tensor],
    phi: Optional[Tensor],
    coeffs: dict[str, Tensor],
    gain: Tensor,
    M: Optional[Tensor],
    U_out: Optional[Tensor],
    H_out: Tensor,
    E_out: Optional[Tensor],
) -> None:
    """One update step: ``U = mode(rule D)``; ``H_out = clip(U)``; ``U_out``/``E_out`` when given."""
    U, E_new = unclipped_update(rule, mode, act, H, E, phi, coeffs, gain, M)
    if U_out is not None:
        U_out.copy_(U)
    H_out.copy_(U.clamp(-h_max, h_max))
    if E_out is not None:
        E_out.copy_(E_new)


def _backward_impl(
    rule: str,
    mode: str,
    h_max: float,
    act: Activity,
    phi: Optional[Tensor],
    coeffs: dict[str, Tensor],
    gain: Tensor,
    M: Optional[Tensor],
    H: Tensor,
    E: Optional[Tensor],
    U: Tensor,
    E_new: Optional[Tensor],
    gH: Optional[Tensor],
    gE: Optional[Tensor],
    cur: Optional[tuple[Tensor, Tensor, Tensor]],
    gH_out: Tensor,
    gE_out: Optional[Tensor],
) -> tuple:
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


def _current_backward_impl(
    pre: Tensor, g: Tensor, alpha: Tensor, H: Tensor, need_pre: bool, need_alpha: bool
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """``g_pre_bi = sum_j alpha_ij H_bij g_bj`` and ``g_alpha_ij = sum_b pre_bi g_bj H_bij``."""
    g_pre = (alpha * H * g.unsqueeze(1)).sum(2) if need_pre else None
    g_alpha = (pre.unsqueeze(2) * g.unsqueeze(1) * H).sum(0) if need_alpha else None
    return g_pre, g_alpha


def _compiled_fn(name: str) -> Callable[..., Any]:
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


def is_compile_failure(e: BaseException) -> bool:
    """Whether ``e`` says that compiling is not possible here (no or a broken C++ compiler,
    Dynamo or Inductor refusing the graph), not that the computation itself is wrong: a shape or
    value error met while tracing is the caller's, and is raised as it is."""
    from torch._dynamo.exc import TorchDynamoException, TorchRuntimeError
    from torch._inductor.exc import CppCompileError

    return isinstance(e, (TorchDynamoException, CppCompileError, OSError)) and not isinstance(e, TorchRuntimeError)


def mark_compile_broken(e: Exception, what: str) -> None:
    """Compiling failed here: remember why (every compiled path then steps aside) and warn once;
    anything but a compile failure (:func:`is_compile_failure`) is raised again."""
    import warnings

    if not is_compile_failure(e):
        raise e

    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    _compile_broken.append(f"{type(e).__name__}: {first}")
    warnings.warn(f"{what} ({_compile_broken[0]})", stacklevel=3)


def run_compiled(name: str, *args: Any) -> tuple[bool, Any]:
    """Call the compiled step ``name`` (``"forward"``, ``"backward"`` or ``"current"``):
    ``(True, result)``, or ``(False, None)`` once compiling has failed (the caller then takes the
    eager path, which gives the same values)."""
    if _compile_broken:
        return False, None
    try:
        return True, _compiled_fn(name)(*args)
    except Exception as e:  # noqa: BLE001 - a compiler failure: fall back, say why once (others re-raised)
        mark_compile_broken(e, "compiled plastic step unavailable, using the eager fused kernel")
        return False, None
