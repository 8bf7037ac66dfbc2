"""A recurrent LIF network whose three projections can each be plastic.

One step, with input spikes ``x_t`` (``B x N_in``), hidden spikes ``s`` (``B x N``) and a
leaky-integrator readout ``y`` (``B x N_out``)::

    I_t = x_t (W_in + alpha_in ⊙ H_in) + s_{t-1} (W + alpha ⊙ H) + b
    s_t = LIF(I_t)                                   (see ``neurons.lif_step``)
    y_t = kappa * y_{t-1} + s_t (W_out + alpha_out ⊙ H_out) + b_out
    M_t = tanh(w_M · [x_t, s_t] + b_M)               (per modulated projection)

then each plastic projection updates its ``H`` from its own pre/post activity: input
``(x_t, s_t)``, recurrent ``(s_{t-1}, s_t)``, readout ``(s_t, tanh(y_t))``.  A projection
whose rule is ``none`` has no ``alpha`` and no ``H``: it is an ordinary static weight.

The maths is :func:`network_step` over explicit :class:`NetworkParams` and
:class:`NetworkState`; :class:`PlasticSNN` is the thin ``nn.Module`` that owns the
parameters and runs the time loop.

``NetworkSpec.kernel`` picks how a sequence is differentiated: ``"fused"`` (the default) runs
every plastic projection's ``B x I x J`` work through :mod:`hybridopt.snn.fused` (same
forward values, a fraction of the memory and time in training); ``"reference"`` is plain
autograd through the same equations, kept as the yardstick the fused kernel is tested against.
``NetworkSpec.compile`` says whether the fused kernel's steps go through ``torch.compile``
(``"auto"``: for plastic states of at least
:data:`~hybridopt.snn.fused.COMPILE_MIN_ELEMENTS` elements, where the compile time pays).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from hybridopt.snn.fused import (
    COMPILE_MIN_ELEMENTS,
    BufferPool,
    PlasticTape,
    default_interval,
    fused_plastic_current,
    fused_plasticity_step,
)
from hybridopt.snn.neurons import LIFParameters, LIFState, lif_initial_state, lif_step
from hybridopt.snn.plasticity import (
    MODES,
    RULES,
    ModulationParams,
    PlasticState,
    modulator_signal,
    plastic_current,
    plastic_initial_state,
    plasticity_step,
)

__all__ = [
    "COMPILE",
    "KERNELS",
    "PROJECTIONS",
    "NetworkParams",
    "NetworkSpec",
    "NetworkState",
    "PlasticSNN",
    "ProjectionParams",
    "ProjectionSpec",
    "network_step",
]

PROJECTIONS = ("input", "recurrent", "readout")
KERNELS = ("fused", "reference")
COMPILE = ("auto", "always", "never")


@dataclass(frozen=True)
class ProjectionSpec:
    """How one projection is plastic.  ``rule='none'`` makes it static.

    ``coefficients`` overrides the initial values of the rule's own learned coefficients
    (e.g. ``{"tau_phi": 50.0}`` for BCM).
    """

    rule: str = "none"
    modulation: str = "plain"
    alpha_init: float = 0.05
    eta_init: float = 0.1
    eta_per_neuron: bool = True
    eta_E_init: float = 0.1
    h_max: float = 1.0
    trace_decay: float = 0.8
    coefficients: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown rule {self.rule!r}; known: {sorted(RULES)}")
        if self.modulation not in MODES:
            raise ValueError(f"unknown modulation {self.modulation!r}; known: {sorted(MODES)}")
        unknown = set(self.coefficients) - set(RULES[self.rule].coefficients)
        if unknown:
            raise ValueError(f"rule {self.rule!r} has no coefficient(s) {sorted(unknown)}")

    @property
    def plastic(self) -> bool:
        return self.rule != "none"

    @property
    def modulated(self) -> bool:
        return self.plastic and MODES[self.modulation].needs_modulator


@dataclass(frozen=True)
class NetworkSpec:
    """Sizes, neuron hyper-parameters, the plasticity of each projection and the kernel
    (``"fused"`` or ``"reference"``, see the module docstring).

    ``checkpoint_interval`` (fused kernel only) trades memory for time: ``k >= 1`` keeps ``H``
    every ``k`` steps and recomputes the rest in backward; ``None`` (the default) takes
    ``k = ceil(sqrt(T))``, the least memory; ``0`` keeps every step's pre-clip ``U`` instead (about
    4 bytes per synapse per sample per step, a few percent faster).  The results are the same.

    ``compile`` (fused kernel only): ``"always"`` runs each plastic step's ``B x I x J`` work
    through ``torch.compile``-d functions (Inductor fuses its elementwise passes and reductions;
    the first sequence of each shape pays seconds of compilation, later processes reuse
    Inductor's on-disk cache), ``"never"`` keeps the eager fused kernel, ``"auto"`` compiles
    projections whose state has at least ``COMPILE_MIN_ELEMENTS`` elements.  Compiled forward
    values equal the eager ones up to float rounding (fused multiply-adds); if compilation is
    not possible here (no C++ compiler, say) the eager kernel runs, with one warning."""

    n_in: int
    n_hidden: int
    n_out: int
    beta: float = 0.9
    theta: float = 1.0
    reset: str = "zero"
    surrogate: str = "fast_sigmoid"
    slope: float = 10.0
    readout_decay: float = 0.8
    input_gain: float = 1.0
    recurrent_gain: float = 0.5
    readout_gain: float = 1.0
    input: ProjectionSpec = field(default_factory=ProjectionSpec)
    recurrent: ProjectionSpec = field(default_factory=ProjectionSpec)
    readout: ProjectionSpec = field(default_factory=ProjectionSpec)
    kernel: str = "fused"
    checkpoint_interval: Optional[int] = None
    compile: str = "auto"

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown kernel {self.kernel!r}; known: {', '.join(KERNELS)}")
        if self.compile not in COMPILE:
            raise ValueError(f"unknown compile setting {self.compile!r}; known: {', '.join(COMPILE)}")
        if self.checkpoint_interval is not None and self.checkpoint_interval < 0:
            raise ValueError(f"checkpoint_interval must be >= 0, got {self.checkpoint_interval}")

    @property
    def lif(self) -> LIFParameters:
        return LIFParameters(self.beta, self.theta, self.reset, self.surrogate, self.slope)

    def projection(self, name: str) -> ProjectionSpec:
        return getattr(self, name)

    def shape(self, name: str) -> tuple[int, int]:
        return {
            "input": (self.n_in, self.n_hidden),
            "recurrent": (self.n_hidden, self.n_hidden),
            "readout": (self.n_hidden, self.n_out),
        }[name]


class ProjectionParams(NamedTuple):
    """Learned tensors of one projection; plastic-only fields are ``None`` when static."""

    W: Tensor
    alpha: Optional[Tensor] = None
    mod: ModulationParams = ModulationParams()
    coeffs: dict[str, Tensor] = {}
    w_M: Optional[Tensor] = None
    b_M: Optional[Tensor] = None


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


def _projection_forward(
    spec: ProjectionSpec, p: ProjectionParams, pre: Tensor, st: Optional[PlasticState], tape: Optional[PlasticTape]
) -> Tensor:
    if st is not None and tape is not None:
        return fused_plastic_current(tape, pre, p.W, p.alpha, st.H)
    return plastic_current(pre, p.W, p.alpha, st.H if st is not None else None)


def _projection_update(
    spec: ProjectionSpec,
    p: ProjectionParams,
    st: Optional[PlasticState],
    pre: Tensor,
    post: Tensor,
    features: Tensor,
    tape: Optional[PlasticTape],
) -> Optional[PlasticState]:
    if st is None:
        return None
    M = modulator_signal(features, p.w_M, p.b_M) if spec.modulated else None
    if tape is not None:
        return fused_plasticity_step(
            tape, st, pre, post, trace_decay=spec.trace_decay, coeffs=p.coeffs, mod=p.mod, M=M
        )  # fmt: skip
    return plasticity_step(
        spec.rule,
        spec.modulation,
        st,
        pre,
        post,
        trace_decay=spec.trace_decay,
        h_max=spec.h_max,
        coeffs=p.coeffs,
        mod=p.mod,
        M=M,
    )


def network_step(
    params: NetworkParams,
    spec: NetworkSpec,
    x: Tensor,
    state: NetworkState,
    tapes: Optional[Mapping[str, PlasticTape]] = None,
) -> tuple[Tensor, Tensor, NetworkState]:
    """One time step; returns ``(y_t, s_t, new_state)`` (equations in the module docstring).

    ``tapes`` (projection name -> :class:`~hybridopt.snn.fused.PlasticTape`, one per plastic
    projection, made for this sequence) routes those projections through the fused kernel;
    without it the step is plain autograd.  The values are the same either way."""
    tp = {name: (tapes or {}).get(name) for name in PROJECTIONS}
    s_prev = state.lif.s
    current = (
        _projection_forward(spec.input, params.input, x, state.input, tp["input"])
        + _projection_forward(spec.recurrent, params.recurrent, s_prev, state.recurrent, tp["recurrent"])
        + params.b_hidden
    )
    s, lif = lif_step(current, state.lif, spec.lif)
    y = (
        spec.readout_decay * state.y
        + _projection_forward(spec.readout, params.readout, s, state.readout, tp["readout"])
        + params.b_out
    )
    features = (
        torch.cat([x, s], dim=1) if (spec.input.modulated or spec.recurrent.modulated or spec.readout.modulated) else s
    )
    new = NetworkState(
        lif=lif,
        y=y,
        input=_projection_update(spec.input, params.input, state.input, x, s, features, tp["input"]),
        recurrent=_projection_update(
            spec.recurrent, params.recurrent, state.recurrent, s_prev, s, features, tp["recurrent"]
        ),
        readout=_projection_update(
            spec.readout, params.readout, state.readout, s, torch.tanh(y), features, tp["readout"]
        ),
    )
    return y, s, new


class _Projection(nn.Module):
    """Owns the learned tensors of one projection (see :class:`ProjectionSpec`)."""

    def __init__(
        self, n_pre: int, n_post: int, n_features: int, spec: ProjectionSpec, gain: float, gen: torch.Generator
    ):
        super().__init__()
        self.spec = spec
        self.W = nn.Parameter(torch.randn(n_pre, n_post, generator=gen) * (gain / math.sqrt(n_pre)))
        if not spec.plastic:
            return
        self.alpha = nn.Parameter(torch.full((n_pre, n_post), spec.alpha_init))
        n_eta = n_post if spec.eta_per_neuron else 1
        if spec.modulation == "plain":
            self.eta = nn.Parameter(torch.full((n_eta,), spec.eta_init))
        elif spec.modulation == "neuromodulated":
            self.mod_a = nn.Parameter(torch.full((n_eta,), spec.eta_init))
            self.mod_b = nn.Parameter(torch.zeros(n_eta))
        elif spec.modulation == "retroactive":
            self.eta_E = nn.Parameter(torch.tensor(spec.eta_E_init))
        if spec.modulated:
            self.w_M = nn.Parameter(torch.randn(n_features, generator=gen) / math.sqrt(n_features))
            self.b_M = nn.Parameter(torch.zeros(()))
        initial = {**RULES[spec.rule].coefficients, **spec.coefficients}
        self.coeffs = nn.ParameterDict({k: nn.Parameter(torch.tensor(float(v))) for k, v in initial.items()})

    def params(self) -> ProjectionParams:
        if not self.spec.plastic:
            return ProjectionParams(W=self.W)
        return ProjectionParams(
            W=self.W,
            alpha=self.alpha,
            mod=ModulationParams(
                eta=getattr(self, "eta", None),
                mod_a=getattr(self, "mod_a", None),
                mod_b=getattr(self, "mod_b", None),
                eta_E=getattr(self, "eta_E", None),
            ),
            coeffs=dict(self.coeffs.items()),
            w_M=getattr(self, "w_M", None),
            b_M=getattr(self, "b_M", None),
        )


class PlasticSNN(nn.Module):
    """Recurrent LIF network with optionally plastic input, recurrent and readout projections.

    ``seed`` fixes the initial weights (a private generator: nothing global is touched).
    """

    def __init__(self, spec: NetworkSpec, seed: int = 0):
        super().__init__()
        self.spec = spec
        gen = torch.Generator().manual_seed(seed)
        n_features = spec.n_in + spec.n_hidden
        gains = {"input": spec.input_gain, "recurrent": spec.recurrent_gain, "readout": spec.readout_gain}
        self.projections = nn.ModuleDict(
            {
                name: _Projection(*spec.shape(name), n_features, spec.projection(name), gains[name], gen)
                for name in PROJECTIONS
            }
        )
        self.b_hidden = nn.Parameter(torch.zeros(spec.n_hidden))
        self.b_out = nn.Parameter(torch.zeros(spec.n_out))

    def __getstate__(self) -> dict:
        # the fused kernel's buffer pool is scratch memory: not part of the network
        return {k: v for k, v in self.__dict__.items() if k != "_pool"}

    def _compiles(self, batch: int, name: str) -> bool:
        """Whether projection ``name``'s fused steps go through ``torch.compile`` (see :class:`NetworkSpec`)."""
        if self.spec.compile == "auto":
            n_pre, n_post = self.spec.shape(name)
            return batch * n_pre * n_post >= COMPILE_MIN_ELEMENTS
        return self.spec.compile == "always"

    def params(self) -> NetworkParams:
        p = {name: self.projections[name].params() for name in PROJECTIONS}
        return NetworkParams(**p, b_hidden=self.b_hidden, b_out=self.b_out)

    def initial_state(self, batch: int) -> NetworkState:
        """Resting neurons, zero readout, zero plastic state (every episode starts here)."""
        dev, dt = self.b_hidden.device, self.b_hidden.dtype
        plastic = {
            name: plastic_initial_state(
                self.spec.projection(name).rule,
                self.spec.projection(name).modulation,
                batch,
                *self.spec.shape(name),
                device=dev,
                dtype=dt,
            )
            for name in PROJECTIONS
        }
        return NetworkState(
            lif=lif_initial_state(batch, self.spec.n_hidden, device=dev, dtype=dt),
            y=torch.zeros(batch, self.spec.n_out, device=dev, dtype=dt),
            **plastic,
        )

    def step(self, x: Tensor, state: NetworkState, params: Optional[NetworkParams] = None):
        """One step: ``(y_t, s_t, state)``.  Pass ``params`` to avoid rebuilding them every step.

        Plain autograd maths whatever the kernel (the fused kernel needs the whole sequence);
        the values are the same as :meth:`forward`'s."""
        return network_step(params if params is not None else self.params(), self.spec, x, state)

    def forward(
        self, x: Tensor, state: Optional[NetworkState] = None, *, checkpoint_interval: Optional[int] = None
    ) -> tuple[Tensor, Tensor, NetworkState]:
        """Run a ``B x T x N_in`` input; returns readout ``B x T x N_out``, spikes ``B x T x N``
        and the final state.  Without ``state`` the episode starts from :meth:`initial_state`.

        With the fused kernel and gradients enabled, ``checkpoint_interval`` (default: the
        spec's) says what each plastic projection keeps for backward (see :class:`NetworkSpec`);
        the results do not depend on it."""
        if state is None:
            state = self.initial_state(x.shape[0])
        params = self.params()
        tapes = None
        if self.spec.kernel == "fused" and torch.is_grad_enabled():
            k = self.spec.checkpoint_interval if checkpoint_interval is None else checkpoint_interval
            k = default_interval(x.shape[1]) if k is None else k
            pool = self.__dict__.setdefault("_pool", BufferPool())
            tapes = {
                name: PlasticTape(
                    spec.rule,
                    spec.modulation,
                    spec.h_max,
                    getattr(state, name),
                    k or default_interval(x.shape[1]),
                    store=k == 0,
                    pool=pool,
                    compiled=self._compiles(x.shape[0], name),
                )
                for name in PROJECTIONS
                if getattr(state, name) is not None
                for spec in [self.spec.projection(name)]
            }
        ys, ss = [], []
        for t in range(x.shape[1]):
            y, s, state = network_step(params, self.spec, x[:, t], state, tapes)
            ys.append(y)
            ss.append(s)
        return torch.stack(ys, 1), torch.stack(ss, 1), state
