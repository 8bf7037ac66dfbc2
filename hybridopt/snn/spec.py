"""What a network is, defined once: the config file's ``network`` and ``plasticity`` sections
and the library's :class:`NetworkSpec` are the same validated dataclasses.

Torch-free (a config is validated before torch loads); names are checked against
:mod:`hybridopt.snn.catalogue`, where the implementations register.  A projection's plasticity
is :class:`ProjectionSpec`; the network section of a config is :class:`NetworkConfig`; a
:class:`NetworkSpec` is that plus the task's input/output sizes and the three projections::

    NetworkSpec(n_in=35, n_out=4, hidden=64, input=ProjectionSpec(rule="stdp", modulation="neuromodulated"))

``beta = exp(-dt / tau_mem)`` is the membrane's decay per step, ``readout_decay`` the readout
integrator's (``kappa``); the gains scale each projection's initial weights by
``gain / sqrt(n_pre)``.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal, Optional, get_args

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.dataclasses import dataclass

from hybridopt.snn.catalogue import MODE_NAMES, PROJECTIONS, RULE_COEFFICIENTS, SURROGATE_NAMES

__all__ = [
    "COMPILE",
    "KERNELS",
    "PROJECTION_INITIAL_VALUES",
    "Compile",
    "Kernel",
    "NetworkConfig",
    "NetworkSpec",
    "ProjectionSpec",
    "STEPWISE_KERNELS",
    "check_kernel",
    "stepwise_only",
]

# How training differentiates a sequence (see :mod:`hybridopt.snn.network`): whole compiled time
# steps, the fused plastic-synapse kernel, or plain autograd; auto: compiled steps for small
# plastic states, fused for large ones.
Kernel = Literal["auto", "native", "compiled", "fused", "reference"]
KERNELS: tuple[str, ...] = get_args(Kernel)
# Whether the fused kernel's steps go through torch.compile: for large plastic states (auto).
Compile = Literal["auto", "always", "never"]
COMPILE: tuple[str, ...] = get_args(Compile)

_STRICT = ConfigDict(extra="forbid")


def _known(field: str, name: str) -> str:
    """``name`` if the catalogue lists it for this field (rule, modulation, surrogate)."""
    known = {"rule": RULE_COEFFICIENTS, "modulation": MODE_NAMES, "surrogate": SURROGATE_NAMES}[field]
    if name not in known:
        raise ValueError(f"unknown {field} {name!r}; known: {', '.join(known)}")
    return name


Positive = Annotated[float, Field(gt=0.0)]


# The fields of a projection's spec that only set the initial value of learned tensors (``alpha``,
# the mode's ``eta``/``mod_a``/``eta_E``, the rule's coefficients): once a network has trained,
# or a child has inherited those tensors, they no longer act.
PROJECTION_INITIAL_VALUES = ("alpha_init", "eta_init", "eta_E_init", "coefficients")


@dataclass(frozen=True, config=_STRICT)
class ProjectionSpec:
    """How one projection is plastic: rule family, modulation mode, initial coefficients.
    ``rule='none'`` makes it static.  ``coefficients`` overrides the initial values of the rule's
    own learned coefficients (e.g. ``{"tau_phi": 50.0}`` for BCM).

    ``modulator_tau`` (modulated modes): the neuromodulator's drive is low-pass filtered over
    that many steps before its ``tanh``, ``zbar_t = zbar_{t-1} + (w_M . z_t + b_M - zbar_{t-1}) / tau``,
    ``M_t = tanh(zbar_t)``, so that it follows a count of its inputs rather than each step's
    spikes; ``1`` (the default) is the unfiltered ``M_t = tanh(w_M . z_t + b_M)``.

    ``modulator_gate`` (modulated modes): the neuromodulator is a product, a gate that says
    *when* times the (filtered) signal that says *how much*,
    ``M_t = sigmoid(w_G . z_t + b_G) tanh(zbar_t)``; the gate reads the same ``z_t`` unfiltered
    and starts at ``1/2`` everywhere (``w_G = 0``, ``b_G = 0``).  A sum of its inputs cannot be
    zero outside a window and signed within it (an error during feedback, nothing elsewhere); a
    product can.

    ``normalise`` (plastic projections): the plastic term turns each post-synaptic unit's
    weight vector without changing its length, ``W_eff[:, j] = |W_j| (W_j + alpha_j ⊙ H_j) /
    |W_j + alpha_j ⊙ H_j|`` (``|.|``: the Euclidean norm over the pre-synaptic units, per sample),
    so a unit whose plastic state grows moves its preferred input instead of winning every input.
    Compiled or reference kernel."""

    rule: str = "none"
    modulation: str = "plain"
    alpha_init: float = 0.05
    eta_init: float = 0.1
    eta_per_neuron: bool = True
    eta_E_init: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    h_max: Positive = 1.0
    trace_decay: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.8
    modulator_tau: Annotated[float, Field(ge=1.0)] = 1.0
    modulator_gate: bool = False
    normalise: bool = False
    coefficients: dict[str, float] = dataclasses.field(default_factory=dict)

    @field_validator("rule", "modulation")
    @classmethod
    def _known_names(cls, v: str, info: ValidationInfo) -> str:
        return _known(info.field_name, v)

    @model_validator(mode="after")
    def _known_coefficients(self) -> ProjectionSpec:
        unknown = set(self.coefficients) - set(RULE_COEFFICIENTS[self.rule])
        if unknown and self.plastic:  # a projection without a rule: its rule's options have no effect
            raise ValueError(f"rule {self.rule!r} has no coefficient(s) {', '.join(sorted(unknown))}")
        return self

    @property
    def plastic(self) -> bool:
        return self.rule != "none"

    @property
    def modulated(self) -> bool:
        """Whether its mode needs the neuromodulator ``M_t`` (the mode registry says)."""
        from hybridopt.snn.modes import MODES

        return self.plastic and MODES[self.modulation].needs_modulator

    @property
    def filtered(self) -> bool:
        """Whether its neuromodulator's drive is low-pass filtered (``modulator_tau > 1``): the
        filter's value ``zbar`` is then part of the plastic state."""
        return self.modulated and self.modulator_tau > 1.0

    @property
    def gated(self) -> bool:
        """Whether its neuromodulator is gated: ``M_t = sigmoid(w_G . z_t + b_G) tanh(zbar_t)``."""
        return self.modulated and self.modulator_gate


@dataclass(frozen=True, config=_STRICT)
class NetworkConfig:
    """The hidden LIF layer, the readout and how a sequence is differentiated (a config's
    ``network`` section).

    ``modulator_reads_output``: every neuromodulator also reads the network's output, its
    drive ``w_M . [x_t, s_t, y_t] + b_M`` (the output's weights start at zero).  With a learned
    weight on ``y_t`` the modulator can carry a prediction error, feedback minus the network's
    own answer, and a modulated update ``eta(t) D`` becomes error-driven (a delta rule) rather
    than Hebbian: it stops changing ``H`` once the answer is right.

    ``winners``: ``k > 0`` makes the hidden units compete, ``k`` winners take all at each step.
    A unit spikes only above the threshold and above the midpoint of the ``k``-th and
    ``(k+1)``-th largest membrane potentials of its sample,
    ``s_j = H(v_j - max(theta, (v_(k) + v_(k+1)) / 2))``, so at most ``k`` units spike per step:
    an instantaneous global inhibition.  The competition's threshold is not differentiated (it
    acts like the reset), so the surrogate gradient reaches every unit near it, winner or not;
    midway, the first loser sits as far below it as the last winner above, not at the
    surrogate's peak (where, through a plastic layer, the gradient grew without bound with the
    plastic gain).  ``0`` (the default), or ``k >= hidden``, is no competition.

    ``share_positions``: where the task shows one layout of channels at several positions (cue
    association: two cue banks), the hidden layer runs once per position, a pool of ``hidden``
    units reading that position's channels and the channels every position shares, all pools
    with the same weights and **one plastic state per sample**: a step's updates from the pools
    are summed, ``H <- clip(H + sum_p eta ⊙ D_p)``, so what a pool learns about an input at one
    position holds at every other (a convolution over the positions).  Recurrence
    (``W + alpha ⊙ H``, its ``H`` shared the same way) and competition (``winners``) are within
    each pool; the readout and the neuromodulators read the pools' spikes summed,
    ``s = sum_p s_p``; the spikes a sequence returns are the pools side by side
    (``positions x hidden`` units).  Compiled or reference kernel.

    ``centre_input``: the hidden layer reads its input less the step's mean over the channels of
    each position, ``x_i - mean_{k in position} x_k`` (without positions: over all channels;
    shared channels are read as they are), in its current and in its plastic rule's
    pre-synaptic term: a feed-forward inhibition that counts the active channels, without which a
    Hebbian prototype drifts to the mean input.  The neuromodulators read the input as it is.
    Compiled or reference kernel.

    ``pools_read_shared``: with ``share_positions``, whether each pool also reads the channels
    the positions share (cue association: the response marker and the feedback).  ``false``: a
    pool reads its position's channels only, so its plastic prototypes move toward what the
    position shows and not toward the marker and feedback every pool sees alike; the
    neuromodulators still read every input channel.  Without ``share_positions`` there are no
    pools and it has no effect, as a rule's options have none on a projection without a rule
    (so a search may choose the two apart)."""

    hidden: Annotated[int, Field(ge=1, le=8192)] = 64
    beta: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9
    theta: Positive = 1.0
    reset: Literal["zero", "subtract"] = "zero"
    surrogate: str = "fast_sigmoid"
    slope: Positive = 10.0
    readout_decay: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.8
    input_gain: Positive = 1.0
    recurrent_gain: Annotated[float, Field(ge=0.0)] = 0.5
    readout_gain: Positive = 1.0
    modulator_reads_output: bool = False
    winners: Annotated[int, Field(ge=0)] = 0
    share_positions: bool = False
    centre_input: bool = False
    pools_read_shared: bool = True
    kernel: Kernel = "auto"
    compile: Compile = "auto"

    @field_validator("surrogate")
    @classmethod
    def _known_surrogate(cls, v: str, info: ValidationInfo) -> str:
        return _known(info.field_name, v)


# The kernels that run the step function itself (plain, or traced and compiled): the options
# :func:`stepwise_only` names have no code in the others.
STEPWISE_KERNELS = ("compiled", "reference")


def stepwise_only(network: NetworkConfig, projections: dict[str, ProjectionSpec]) -> Optional[str]:
    """The options of a network (its config and its projections' plasticity) that only the
    kernels running the step function itself have (:data:`STEPWISE_KERNELS`), named as a config
    names them, or ``None``."""
    names = [f"network.{k}" for k in ("share_positions", "centre_input") if getattr(network, k)]
    names += [f"plasticity.{p}.normalise" for p, spec in projections.items() if spec.plastic and spec.normalise]
    return ", ".join(names) or None


def check_kernel(network: NetworkConfig, projections: dict[str, ProjectionSpec]) -> None:
    """``ValueError`` where a network that has options only the step kernels run asks for another."""
    only = stepwise_only(network, projections)
    if only is not None and network.kernel not in ("auto", *STEPWISE_KERNELS):
        raise ValueError(
            f"{only} run(s) on the compiled or reference kernel only: "
            "network.kernel must be auto, compiled or reference"
        )


@dataclass(frozen=True, config=_STRICT, kw_only=True)
class NetworkSpec(NetworkConfig):
    """A network: the config's :class:`NetworkConfig`, the task's sizes and each projection's
    plasticity.

    ``kernel`` (see :mod:`hybridopt.snn.network`) picks how a sequence is differentiated.

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

    n_in: Annotated[int, Field(ge=1)]
    n_out: Annotated[int, Field(ge=1)]
    input: ProjectionSpec = dataclasses.field(default_factory=ProjectionSpec)
    recurrent: ProjectionSpec = dataclasses.field(default_factory=ProjectionSpec)
    readout: ProjectionSpec = dataclasses.field(default_factory=ProjectionSpec)
    checkpoint_interval: Optional[Annotated[int, Field(ge=0)]] = None
    positions: tuple[tuple[int, ...], ...] = ()
    shared_channels: tuple[int, ...] = ()

    @model_validator(mode="after")
    def _positions(self) -> NetworkSpec:
        check_kernel(self, self.projections())
        if not self.share_positions:
            return self
        pos, shared = self.positions, self.shared_channels
        if not pos:
            raise ValueError("network.share_positions needs the input positions the task declares (none given)")
        if len({len(p) for p in pos}) != 1 or not pos[0]:
            raise ValueError(f"every input position needs the same number of channels (got {[len(p) for p in pos]})")
        every = [c for p in pos for c in p] + list(shared)
        if len(set(every)) != len(every) or not all(0 <= c < self.n_in for c in every):
            raise ValueError(f"input positions and shared channels must be distinct channels below n_in={self.n_in}")
        return self

    @classmethod
    def of(
        cls,
        network: NetworkConfig,
        plasticity: object,
        n_in: int,
        n_out: int,
        positions: Optional[tuple[list[list[int]], list[int]]] = None,
    ) -> NetworkSpec:
        """The spec of a config's ``network`` and ``plasticity`` sections for a task of these sizes;
        ``positions``: the task's input positions and shared channels (read with ``share_positions``)."""
        projections = {name: getattr(plasticity, name) for name in PROJECTIONS}
        where = {}
        if positions is not None:
            shared = tuple(positions[1]) if network.pools_read_shared else ()
            where = {"positions": tuple(tuple(p) for p in positions[0]), "shared_channels": shared}
        return cls(**dataclasses.asdict(network) | projections | where, n_in=n_in, n_out=n_out)

    @property
    def n_positions(self) -> int:
        """How many pools the hidden layer runs (``share_positions``), else 1."""
        return len(self.positions) if self.share_positions else 1

    def projection(self, name: str) -> ProjectionSpec:
        return getattr(self, name)

    def projections(self) -> dict[str, ProjectionSpec]:
        """Each projection's spec by name, in :data:`PROJECTIONS` order."""
        return {name: self.projection(name) for name in PROJECTIONS}

    def shape(self, name: str) -> tuple[int, int]:
        """``(n_pre, n_post)`` of a projection."""
        n_pre = len(self.positions[0]) + len(self.shared_channels) if self.share_positions else self.n_in
        return {
            "input": (n_pre, self.hidden),
            "recurrent": (self.hidden, self.hidden),
            "readout": (self.hidden, self.n_out),
        }[name]
