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

``NetworkSpec.kernel`` picks how a sequence is differentiated: ``"compiled"`` runs whole time
steps, several at a time, as compiled units (:mod:`hybridopt.snn.compiled`: at the tasks' own
sizes a step's cost is per-operation overhead, which this removes); ``"fused"`` runs every
plastic projection's ``B x I x J`` work through :mod:`hybridopt.snn.fused` (a fraction of the
memory, which is what limits large plastic states); ``"auto"`` (the default) takes the first
below :data:`~hybridopt.snn.fused.COMPILE_MIN_ELEMENTS` elements of plastic state and the
second from there on; ``"reference"`` is plain autograd through the same equations, kept as
the yardstick the others are tested against.  All give the same forward values (up to float
rounding where compiled).  ``NetworkSpec.compile`` says whether the fused kernel's steps go
through ``torch.compile`` (``"auto"``: for plastic states of at least ``COMPILE_MIN_ELEMENTS``
elements, where the compile time pays).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from hybridopt.snn.catalogue import PROJECTIONS
from hybridopt.snn.compiled import compiled_sequence, compiled_step
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
from hybridopt.snn.spec import COMPILE, KERNELS, NetworkSpec, ProjectionSpec

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
    "StepConstants",
    "network_step",
]


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


class StepConstants(NamedTuple):
    """The float hyper-parameters a step reads, as Python floats or as 0-d tensors (with tensors
    one compiled step serves every value; see :mod:`hybridopt.snn.compiled`).  ``trace_decay`` and
    ``h_max`` are per projection, in :data:`PROJECTIONS` order."""

    beta: float | Tensor
    theta: float | Tensor
    readout_decay: float | Tensor
    trace_decay: tuple[float | Tensor, ...]
    h_max: tuple[float | Tensor, ...]

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
        )


def _projection_forward(
    p: ProjectionParams, pre: Tensor, st: Optional[PlasticState], tape: Optional[PlasticTape]
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
    trace_decay: float | Tensor,
    h_max: float | Tensor,
) -> Optional[PlasticState]:
    if st is None:
        return None
    M = modulator_signal(features, p.w_M, p.b_M) if spec.modulated else None
    if tape is not None:
        return fused_plasticity_step(tape, st, pre, post, trace_decay=trace_decay, coeffs=p.coeffs, mod=p.mod, M=M)
    return plasticity_step(
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
    )


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
    lif_p = LIFParameters(c.beta, c.theta, spec.reset, spec.surrogate, spec.slope)
    s_prev = state.lif.s
    current = (
        _projection_forward(params.input, x, state.input, tp["input"])
        + _projection_forward(params.recurrent, s_prev, state.recurrent, tp["recurrent"])
        + params.b_hidden
    )
    s, lif = lif_step(current, state.lif, lif_p)
    y = c.readout_decay * state.y + _projection_forward(params.readout, s, state.readout, tp["readout"]) + params.b_out
    features = (
        torch.cat([x, s], dim=1) if (spec.input.modulated or spec.recurrent.modulated or spec.readout.modulated) else s
    )
    pre_post = {
        "input": (x, s),
        "recurrent": (s_prev, s),
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
        )  # fmt: skip
        for i, name in enumerate(PROJECTIONS)
    }
    return y, s, NetworkState(lif=lif, y=y, **plastic)


class _Projection(nn.Module):
    """Owns the learned tensors of one projection (see :class:`ProjectionSpec`): ``W``; when
    plastic, ``alpha``, the parameters its mode declares (:class:`~hybridopt.snn.modes.ModeParam`),
    the modulator's ``w_M``/``b_M`` when modulated, and the rule's own coefficients."""

    def __init__(
        self, n_pre: int, n_post: int, n_features: int, spec: ProjectionSpec, gain: float, gen: torch.Generator
    ):
        super().__init__()
        self.spec = spec
        self.W = nn.Parameter(torch.randn(n_pre, n_post, generator=gen) * (gain / math.sqrt(n_pre)))
        self.groups = {"W": "weights"}  # parameter name -> what kind of parameter it is
        if not spec.plastic:
            return
        self.alpha = nn.Parameter(torch.full((n_pre, n_post), spec.alpha_init))
        self.groups["alpha"] = "plasticity"
        n_eta = n_post if spec.eta_per_neuron else 1
        for p in MODES[spec.modulation].params:
            setattr(self, p.name, nn.Parameter(torch.full((n_eta,) if p.per_post else (), float(p.init(spec)))))
            self.groups[p.name] = p.group
        if spec.modulated:
            self.w_M = nn.Parameter(torch.randn(n_features, generator=gen) / math.sqrt(n_features))
            self.b_M = nn.Parameter(torch.zeros(()))
            self.groups |= {"w_M": "plasticity", "b_M": "plasticity"}
        initial = {**RULES[spec.rule].coefficients, **spec.coefficients}
        self.coeffs = nn.ParameterDict({k: nn.Parameter(torch.tensor(float(v))) for k, v in initial.items()})
        self.groups |= {f"coeffs.{k}": "rule" for k in initial}

    def params(self) -> ProjectionParams:
        if not self.spec.plastic:
            return ProjectionParams(W=self.W)
        return ProjectionParams(
            W=self.W,
            alpha=self.alpha,
            mod=ModulationParams(**{f: getattr(self, f, None) for f in ModulationParams._fields}),
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
        n_features = spec.n_in + spec.hidden
        gains = {"input": spec.input_gain, "recurrent": spec.recurrent_gain, "readout": spec.readout_gain}
        self.projections = nn.ModuleDict(
            {
                name: _Projection(*spec.shape(name), n_features, spec.projection(name), gains[name], gen)
                for name in PROJECTIONS
            }
        )
        self.b_hidden = nn.Parameter(torch.zeros(spec.hidden))
        self.b_out = nn.Parameter(torch.zeros(spec.n_out))

    def __getstate__(self) -> dict:
        # the fused kernel's buffer pool is scratch memory: not part of the network
        return {k: v for k, v in self.__dict__.items() if k not in ("_pool", "_consts")}

    def _compiles(self, batch: int, name: str) -> bool:
        """Whether projection ``name``'s fused steps go through ``torch.compile`` (see :class:`NetworkSpec`)."""
        if self.spec.compile == "auto":
            n_pre, n_post = self.spec.shape(name)
            return batch * n_pre * n_post >= COMPILE_MIN_ELEMENTS
        return self.spec.compile == "always"

    def kernel_for(self, batch: int) -> str:
        """The kernel a training sequence of ``batch`` episodes runs on: the spec's, where ``"auto"``
        is ``"compiled"`` when every plastic state has fewer than ``COMPILE_MIN_ELEMENTS`` elements
        (where the step's cost is per-operation overhead) and ``"fused"`` from there on (where it
        is memory).  No-grad sequences run the reference maths whatever the kernel."""
        if self.spec.kernel != "auto":
            return self.spec.kernel
        sizes = [batch * math.prod(self.spec.shape(n)) for n in PROJECTIONS if self.spec.projection(n).plastic]
        return "compiled" if all(n < COMPILE_MIN_ELEMENTS for n in sizes) else "fused"

    def _kernel(self, x: Tensor) -> str:
        """The kernel this sequence runs on (see :meth:`kernel_for`)."""
        if not torch.is_grad_enabled():  # no tape: the plain maths, or compiled where asked for
            return "compiled" if self.spec.kernel == "compiled" else "reference"
        return self.kernel_for(x.shape[0])

    def parameter_groups(self) -> dict[str, str]:
        """Each parameter's name (as in ``named_parameters``) -> ``"weights"`` (``W``, biases),
        ``"plasticity"`` (``alpha``, the modes' parameters, ``w_M``/``b_M``) or ``"rule"`` (a rule's
        own coefficients): what it is, as the projection that made it declares."""
        groups = {f"projections.{n}.{k}": g for n, proj in self.projections.items() for k, g in proj.groups.items()}
        return {name: groups.get(name, "weights") for name, _ in self.named_parameters()}

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
            lif=lif_initial_state(batch, self.spec.hidden, device=dev, dtype=dt),
            y=torch.zeros(batch, self.spec.n_out, device=dev, dtype=dt),
            **plastic,
        )

    def step(self, x: Tensor, state: NetworkState, params: Optional[NetworkParams] = None):
        """One step: ``(y_t, s_t, state)``.  Pass ``params`` to avoid rebuilding them every step.

        Plain autograd maths (the fused kernel needs the whole sequence), except that with
        ``kernel="compiled"`` and gradients off the step runs compiled (a policy stepping in its
        environment); the values are the same as :meth:`forward`'s."""
        params = params if params is not None else self.params()
        if self.spec.kernel == "compiled" and not torch.is_grad_enabled():
            out = compiled_step(params, self.spec, self._constants(x), x, state)
            if out is not None:
                return out
        return network_step(params, self.spec, x, state)

    def _constants(self, like: Tensor) -> StepConstants:
        """The spec's step constants as tensors of ``like``'s dtype and device (kept while they fit)."""
        cached = self.__dict__.get("_consts")
        b = cached[1].beta if cached is not None else None
        if cached is None or cached[0] is not self.spec or b.dtype != like.dtype or b.device != like.device:
            cached = self.__dict__["_consts"] = (self.spec, StepConstants.of(self.spec, like=like))
        return cached[1]

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
        kernel = self._kernel(x)
        if kernel == "compiled":
            out = compiled_sequence(params, self.spec, self._constants(x), x, state)
            if out is not None:
                return out
            kernel = "fused"  # compiling is not possible here (warned once): the same values
        if kernel == "fused":
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
        consts = StepConstants.of(self.spec)  # once per sequence, not per time step
        for t in range(x.shape[1]):
            y, s, state = network_step(params, self.spec, x[:, t], state, tapes, consts)
            ys.append(y)
            ss.append(s)
        return torch.stack(ys, 1), torch.stack(ss, 1), state
