"""Which kernel runs a sequence (or a step): the one place that reads ``network.kernel``.

=============  ===============================================================================
``native``     all ``T`` steps, forward and backward, in one compiled routine each
               (:mod:`hybridopt.snn.native`): built once per machine, any genome, no per-structure
               compile.  CPU, float32/float64, the built-in families and modes.
``compiled``   whole time steps through ``torch.compile`` (:mod:`hybridopt.snn.compiled`):
               compiles once per structure and process (a minute of CPU in a fresh cache).
``fused``      the memory-lean plastic-synapse kernel (:mod:`hybridopt.snn.fused`): no compile.
``reference``  plain autograd through the same equations: the yardstick.
=============  ===============================================================================

:func:`choose_kernel` resolves ``auto``: ``native`` wherever it runs; elsewhere (a GPU, a
family registered without a native kernel, no C++ compiler) ``compiled`` for small plastic
states, but only for a run whose budget pays the per-structure compile many times over
(:class:`KernelBudget`; a network no run declared a budget for pays none), and ``fused``
otherwise.  A network with options only the kernels that run the step function itself have
(``share_positions``, ``centre_input``, a projection's ``normalise``) runs ``compiled`` where its
budget repays the compile against plain autograd (:data:`STEPWISE_COMPILE_MIN_CPU_S`),
``reference`` otherwise.  An explicit choice is kept; ``native`` asked
for where it cannot run falls back to what ``auto`` would pick there, and says so once.  No
kernel rewrites a network's spec: the training loop hands its budget to the network
(:meth:`PlasticSNN.set_budget <hybridopt.snn.network.PlasticSNN.set_budget>`), and the network
asks this function at every sequence.  All kernels give the same values up to float rounding.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

from hybridopt.snn.fused_kernels import COMPILE_MIN_ELEMENTS
from hybridopt.snn.spec import stepwise_only

if TYPE_CHECKING:
    from hybridopt.snn.spec import NetworkSpec

__all__ = [
    "COMPILE_MIN_CPU_S",
    "COMPILE_MIN_ELEMENTS",
    "STEPWISE_COMPILE_MIN_CPU_S",
    "KernelBudget",
    "choose_kernel",
    "cpu_numerics",
    "native_unavailable",
]

# The whole-step compiled kernel keeps a few plastic states per step for backward: it is used only
# below COMPILE_MIN_ELEMENTS elements (B * I * J) per plastic state; above, the fused kernel.

COMPILE_MIN_CPU_S = 1800.0
"""A ``torch.compile`` of one structure costs 50-130 CPU seconds in a fresh cache (measured on
the cue-association network): a run is given the compiled kernel only when its budget is at
least this (30 CPU-minutes), so that the compile is a small part of it."""


STEPWISE_COMPILE_MIN_CPU_S = 120.0
"""Where only the step kernels run a network (:func:`~hybridopt.snn.spec.stepwise_only`), the
compile is weighed against plain autograd, not against the native kernel: on the cue-association
network with pools per position, 210 CPU-ms a training step compiled against 961 plain (65
compiled with its layer frozen), so a compile of 85-155 CPU-seconds in a fresh cache (about 20
warm) is repaid after 115-210 steps, two to three minutes of plain autograd.  A run of at least
two CPU-minutes is given the compiled steps: with the compile kept out of its budget it trains
4.6x the steps, and even counting the compile's CPU it makes more steps for the CPU spent."""


@dataclass(frozen=True)
class KernelBudget:
    """What a run may spend: at most ``steps`` sequences and ``cpu_s`` CPU seconds.  A network no
    run has declared a budget for (``KernelBudget()``) pays no compile."""

    steps: float = 0.0
    cpu_s: float = 0.0

    @property
    def pays_compile(self) -> bool:
        """Whether a per-structure compile is a small part of this budget."""
        return self.cpu_s >= COMPILE_MIN_CPU_S and self.steps >= 100

    @property
    def pays_stepwise_compile(self) -> bool:
        """Whether compiling the step is worth it where the alternative is plain autograd."""
        return self.cpu_s >= STEPWISE_COMPILE_MIN_CPU_S and self.steps >= 100


_warned: set[str] = set()


def cpu_numerics(threads: int) -> None:
    """Set this thread's CPU arithmetic for a run: ``threads`` intra-op threads, and subnormal
    floats flushed to zero (``|x| < 2^-126`` in float32 reads and is written as 0).

    A trace or membrane that decays geometrically, ``x_t = d^t x_0``, is subnormal after
    ``t > 126 / -log2(d)`` steps: ``d = 0.5`` after 126, within one cue-association episode
    (240 steps), and on x86 every operation that meets a subnormal then takes tens of times as
    long.  Measured (``python -m benchmarks.train_settings``): a training step of the pools network
    with ``beta = 0.7`` and ``trace_decay = 0.5`` costs about twice the CPU without the flush.
    Flushing moves each such value by less than ``2^-126``.  The setting holds for the calling
    thread (the one that runs the forward and, on CPU, the backward)."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)


def native_unavailable(spec: NetworkSpec, device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """``None`` when the native kernel runs this network here, else why not."""
    if device.type != "cpu":
        return f"it runs on the CPU, not {device.type}"
    if dtype not in (torch.float32, torch.float64):
        return f"it runs float32 and float64, not {dtype}"
    from hybridopt.snn.native import unavailable

    return supports_reason(spec) or unavailable()


def supports_reason(spec: NetworkSpec) -> Optional[str]:
    """Why the native kernel has no code for this structure (a family or mode registered
    without one), or ``None``."""
    from hybridopt.snn.native import supports

    return supports(spec)


def choose_kernel(
    spec: NetworkSpec,
    *,
    batch: int,
    grad: bool,
    device: torch.device,
    dtype: torch.dtype,
    budget: Optional[KernelBudget] = None,
    single_step: bool = False,
) -> str:
    """The kernel a sequence (``single_step``: one step, no gradients) runs on; see the module
    docstring.  ``budget`` is the run's (default: none declared, so no per-structure compile)."""
    budget = budget if budget is not None else KernelBudget()
    asked = spec.kernel
    if stepwise_only(spec, spec.projections()) is not None:
        # options only the step kernels have (the spec allows no other choice)
        if asked == "auto":
            return "compiled" if budget.pays_stepwise_compile else "reference"
        return asked
    if asked not in ("auto", "native"):
        if single_step or not grad:  # without a tape: the plain maths unless compiled was asked for
            return "compiled" if asked == "compiled" else "reference"
        return asked
    if not single_step:
        why = native_unavailable(spec, device, dtype)
        if why is None:
            return "native"
        structural = supports_reason(spec) is not None
        if (asked == "native" or structural) and why not in _warned:
            _warned.add(why)
            warnings.warn(f"native kernel asked for but not used: {why}; using the next best", stacklevel=3)
    if single_step or not grad:
        return "compiled" if budget.pays_compile else "reference"
    sizes = [batch * math.prod(spec.shape(n)) for n in ("input", "recurrent", "readout") if spec.projection(n).plastic]
    small = all(n < COMPILE_MIN_ELEMENTS for n in sizes)
    return "compiled" if small and budget.pays_compile else "fused"
