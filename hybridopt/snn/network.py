"""A recurrent LIF network whose three projections can each be plastic.

One step, with input spikes ``x_t`` (``B x N_in``), hidden spikes ``s`` (``B x N``) and a
leaky-integrator readout ``y`` (``B x N_out``)::

    I_t = x_t (W_in + alpha_in ⊙ H_in) + s_{t-1} (W + alpha ⊙ H) + b
    s_t = LIF(I_t)                                   (see ``neurons.lif_step``)
    y_t = kappa * y_{t-1} + s_t (W_out + alpha_out ⊙ H_out) + b_out
    M_t = tanh(w_M · [x_t, s_t] + b_M)               (per modulated projection;
                                                      [x_t, s_t, y_t] with modulator_reads_output;
                                                      times sigmoid(w_G · [...] + b_G) when gated)

then each plastic projection updates its ``H`` from its own pre/post activity: input
``(x_t, s_t)``, recurrent ``(s_{t-1}, s_t)``, readout ``(s_t, tanh(y_t))``.  A projection
whose rule is ``none`` has no ``alpha`` and no ``H``: it is an ordinary static weight.

With ``share_positions`` the hidden layer is one pool per input position the task declares,
each reading its position's channels and the shared ones through the same ``W_in + alpha_in ⊙
H_in`` (one ``H`` per sample, the pools' updates summed), the readout and the modulators reading
``s_t = sum_p s_{p,t}``; ``centre_input`` and a projection's ``normalise`` are in
:class:`~hybridopt.snn.spec.NetworkConfig` and :class:`~hybridopt.snn.spec.ProjectionSpec`.
These run on the compiled time steps or the reference kernel (they are in :func:`network_step`).

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
from typing import Optional

import torch
from torch import Tensor, nn

from hybridopt.snn.catalogue import PROJECTIONS
from hybridopt.snn.compiled import compiled_sequence, compiled_step
from hybridopt.snn.fused import BufferPool, PlasticTape, default_interval
from hybridopt.snn.kernels import COMPILE_MIN_ELEMENTS, KernelBudget, choose_kernel
from hybridopt.snn.native import native_sequence
from hybridopt.snn.neurons import lif_initial_state
from hybridopt.snn.plasticity import MODES, RULES, ModulationParams, plastic_initial_state
from hybridopt.snn.spec import COMPILE, KERNELS, NetworkSpec, ProjectionSpec, stepwise_only
from hybridopt.snn.step import NetworkParams, NetworkState, ProjectionParams, StepConstants, network_step

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


class _Projection(nn.Module):
    """Owns the learned tensors of one projection (see :class:`ProjectionSpec`): ``W``; when
    plastic, ``alpha``, the parameters its mode declares (:class:`~hybridopt.snn.modes.ModeParam`),
    the modulator's ``w_M``/``b_M`` when modulated (and its gate's ``w_G``/``b_G``), and the rule's own coefficients."""

    def __init__(
        self,
        n_pre: int,
        n_post: int,
        n_features: int,
        spec: ProjectionSpec,
        gain: float,
        gen: torch.Generator,
        n_output_features: int = 0,
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
            w = torch.randn(n_features, generator=gen) / math.sqrt(n_features)
            self.w_M = nn.Parameter(torch.cat([w, torch.zeros(n_output_features)]))  # the output's start at 0
            self.b_M = nn.Parameter(torch.zeros(()))
            self.groups |= {"w_M": "plasticity", "b_M": "plasticity"}
        if spec.gated:  # the gate starts at 1/2 everywhere (and draws nothing from the generator)
            self.w_G = nn.Parameter(torch.zeros(n_features + n_output_features))
            self.b_G = nn.Parameter(torch.zeros(()))
            self.groups |= {"w_G": "plasticity", "b_G": "plasticity"}
        initial = {**RULES[spec.rule].coefficients, **spec.coefficients}
        shapes = {k: (n_pre, n_post) if k in RULES[spec.rule].per_synapse else () for k in initial}
        self.coeffs = nn.ParameterDict({k: nn.Parameter(torch.full(shapes[k], float(v))) for k, v in initial.items()})
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
            w_G=getattr(self, "w_G", None),
            b_G=getattr(self, "b_G", None),
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
        n_out_features = spec.n_out if spec.modulator_reads_output else 0
        gains = self.gains()
        self.projections = nn.ModuleDict(
            {
                name: _Projection(
                    *spec.shape(name), n_features, spec.projection(name), gains[name], gen, n_out_features
                )
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

    def set_budget(self, budget: Optional[KernelBudget]) -> None:
        """What the run that trains this network may spend (``None``: nothing declared): the kernel choice
        (:func:`~hybridopt.snn.kernels.choose_kernel`) never picks a kernel whose compile it cannot pay."""
        self.__dict__["_budget"] = budget

    def kernel_for(self, batch: int, *, grad: bool = True, single_step: bool = False) -> str:
        """The kernel a sequence of ``batch`` episodes (or one step) runs on here: the policy's
        answer (:func:`~hybridopt.snn.kernels.choose_kernel`) for this network, device and budget."""
        return choose_kernel(
            self.spec,
            batch=batch,
            grad=grad,
            device=self.b_hidden.device,
            dtype=self.b_hidden.dtype,
            budget=self.__dict__.get("_budget"),
            single_step=single_step,
        )

    def parameter_groups(self) -> dict[str, str]:
        """Each parameter's name (as in ``named_parameters``) -> ``"weights"`` (``W``, biases),
        ``"plasticity"`` (``alpha``, the modes' parameters, ``w_M``/``b_M``) or ``"rule"`` (a rule's
        own coefficients): what it is, as the projection that made it declares."""
        groups = {f"projections.{n}.{k}": g for n, proj in self.projections.items() for k, g in proj.groups.items()}
        return {name: groups.get(name, "weights") for name, _ in self.named_parameters()}

    def params(self) -> NetworkParams:
        p = {name: self.projections[name].params() for name in PROJECTIONS}
        return NetworkParams(**p, b_hidden=self.b_hidden, b_out=self.b_out)

    def gains(self) -> dict[str, float]:
        """Each projection's initial-weight gain: ``W ~ N(0, gain^2 / n_pre)`` at construction."""
        s = self.spec
        return {"input": s.input_gain, "recurrent": s.recurrent_gain, "readout": s.readout_gain}

    def fresh_weights(
        self, params: NetworkParams, seed: int, scale: Optional[dict[str, float]] = None
    ) -> NetworkParams:
        """``params`` with every projection's ``W`` drawn anew from the construction's distribution,
        ``W ~ N(0, (scale * gain)^2 / n_pre)`` (``scale`` per projection, default 1), by a generator
        seeded with ``seed``: a lifetime that starts from random weights, which only plasticity
        (``W + alpha ⊙ H``) can shape.  The same seed gives the same weights."""
        gen = torch.Generator().manual_seed(int(seed))
        new = {}
        for name, gain in self.gains().items():
            n_pre, n_post = self.spec.shape(name)
            g = gain * (scale or {}).get(name, 1.0) / math.sqrt(n_pre)
            W = torch.randn(n_pre, n_post, generator=gen, dtype=self.b_hidden.dtype) * g
            new[name] = getattr(params, name)._replace(W=W.to(self.b_hidden.device))
        return params._replace(**new)

    def initial_state(self, batch: int) -> NetworkState:
        """Resting neurons, zero readout, zero plastic state (every episode starts here).  With
        ``share_positions`` the neurons and the input and recurrent traces have a row per pool
        (``batch x positions``), the plastic states one per sample."""
        dev, dt = self.b_hidden.device, self.b_hidden.dtype
        plastic = {
            name: plastic_initial_state(
                self.spec.projection(name).rule,
                self.spec.projection(name).modulation,
                batch,
                *self.spec.shape(name),
                filtered=self.spec.projection(name).filtered,
                positions=self.spec.n_positions if name != "readout" else 1,
                device=dev,
                dtype=dt,
            )
            for name in PROJECTIONS
        }
        return NetworkState(
            lif=lif_initial_state(batch * self.spec.n_positions, self.spec.hidden, device=dev, dtype=dt),
            y=torch.zeros(batch, self.spec.n_out, device=dev, dtype=dt),
            **plastic,
        )

    def step(self, x: Tensor, state: NetworkState, params: Optional[NetworkParams] = None):
        """One step: ``(y_t, s_t, state)``.  Pass ``params`` to avoid rebuilding them every step.

        Plain autograd maths (the fused kernel needs the whole sequence), except that with
        ``kernel="compiled"`` and gradients off the step runs compiled (a policy stepping in its
        environment); the values are the same as :meth:`forward`'s."""
        params = params if params is not None else self.params()
        if not torch.is_grad_enabled() and self.kernel_for(x.shape[0], grad=False, single_step=True) == "compiled":
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
        kernel = self.kernel_for(x.shape[0], grad=torch.is_grad_enabled())
        if kernel == "native":
            pool = self.__dict__.setdefault("_pool", BufferPool())
            out = native_sequence(params, self.spec, self._constants(x), x, state, pool)
            if out is not None:
                return out
            kernel = "fused" if torch.is_grad_enabled() else "reference"  # (after one warning)
        if kernel == "compiled":
            out = compiled_sequence(params, self.spec, self._constants(x), x, state)
            if out is not None:
                return out
            # compiling is not possible here (warned once): the same values
            kernel = "reference" if stepwise_only(self.spec, self.spec.projections()) else "fused"
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
