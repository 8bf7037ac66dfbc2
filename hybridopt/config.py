"""Validated configuration: YAML in, a frozen tree of pydantic models out.

Sections: ``task``, ``network``, ``plasticity`` (one entry per projection), ``train``,
``es`` (the search-gradient inner loop of control tasks), ``search``, ``ray``, ``tracking``.
The ``task`` section is the registered task's own (:mod:`hybridopt.tasks.registry`): its
``name`` picks the section it is validated against, a task of one's own included.
Unknown keys are rejected with the key named; ``--set a.b=value`` overrides any key (the
value is parsed as YAML).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from hybridopt.errors import ConfigError
from hybridopt.snn.catalogue import PROJECTIONS, load_plugins
from hybridopt.snn.spec import NetworkConfig, NetworkSpec, ProjectionSpec, check_kernel
from hybridopt.tasks.registry import Fraction, Positive, TaskSection, task_section

__all__ = [
    "Config",
    "ConfigError",
    "apply_overrides",
    "set_path",
    "load_config",
    "network_spec",
    "parse_config",
    "placement_overrides",
]


# What ``train.freeze`` names: a projection, a projection's parameter group, or a bias.
FREEZABLE = (
    *PROJECTIONS,
    *(f"{p}.{g}" for p in PROJECTIONS for g in ("weights", "plasticity", "rule")),
    "b_hidden",
    "b_out",
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlasticityConfig(Strict):
    """Plasticity of each projection (see :class:`~hybridopt.snn.spec.ProjectionSpec`)."""

    input: ProjectionSpec = ProjectionSpec()
    recurrent: ProjectionSpec = ProjectionSpec()
    readout: ProjectionSpec = ProjectionSpec()


class TrainConfig(Strict):
    """Gradient inner loop: Adam on all learned parameters, BPTT with the surrogate.

    The loss is the task's plus a firing-rate regulariser that keeps hidden neurons alive
    (a silent LIF layer passes almost no surrogate gradient)::

        L = L_task + rate_reg * mean_j (r_j - rate_target)^2,   r_j = mean_{b,t} s_{b,t,j}

    The budget is ``steps`` optimiser steps of ``batch_size`` episodes, cut short after
    ``cpu_minutes`` of this process's CPU time (CPU, not wall time, so that budgets stay
    comparable when several candidates share a machine).  At the end: ``test/accuracy`` on
    ``test_episodes`` fresh episodes of seeds reserved for testing (never the evaluation's).

    ``freeze`` holds parameters where they are: each entry a projection (``input``,
    ``recurrent``, ``readout``: all its parameters), a projection's group (``input.weights``,
    ``input.plasticity``, ``input.rule``: see :meth:`~hybridopt.snn.network.PlasticSNN.parameter_groups`)
    or a bias (``b_hidden``, ``b_out``).  Their gradient is dropped before clipping, so Adam
    neither moves them nor keeps moments for them, while ``step < freeze_steps`` (the run's step,
    counted on across a continued state; ``freeze_steps`` unset: the whole run).  A first phase
    that trains the readout on the layer's code as initialised, then everything, is
    ``freeze: [input, recurrent, b_hidden]`` with ``freeze_steps`` its length.

    ``lr_schedule: cosine`` anneals Adam's rate over the call's budget (see
    :func:`hybridopt.train.gradient.scheduled_lr`)::

        lr(p) = lr * (f + (1 - f) * (1 + cos(pi p)) / 2),   f = lr_final,
        p = min(1, max(steps done / steps, CPU spent / CPU budget))

    so it reaches ``lr_final * lr`` where the budget ends, whichever limit binds.  Each call
    anneals over its own budget: a run continued from a state (a rung of successive halving, a
    winner's further training) starts again at ``lr``, a warm restart.  With
    ``lr_horizon_minutes`` set it anneals over the lineage instead::

        p = min(1, (CPU behind the start state + CPU spent in this call) / (60 lr_horizon_minutes))

    so a state continued (a rung, an inherited child, the winner's further training) goes on at
    the rate where its lineage stopped, and every call after the horizon trains at
    ``lr_final * lr``.  Where the CPU budget binds, the rate at a step depends on the CPU time
    spent so far, so two runs of the same seed agree only up to that.

    ``keep_best``: at each evaluation (every ``eval_every`` steps and at the end) the network
    whose evaluation accuracy is the highest so far is kept, and the run ends on it (weights
    and the optimiser's moments; its step, ``best_step``, is logged): a run that falls after its
    best returns its best, as early stopping on the evaluation episodes does.  A run continued
    from a state (a rung, an inherited child, the winner's further training) evaluates that state
    first and counts it among its candidates, so it ends no worse than it started.  The steps and
    CPU spent after the best still count.
    """

    steps: Annotated[int, Field(ge=1)] = 200
    batch_size: Annotated[int, Field(ge=1)] = 32
    lr: Positive = 3e-3
    grad_clip: Positive = 1.0
    eval_every: Annotated[int, Field(ge=1)] = 25
    eval_batches: Annotated[int, Field(ge=1)] = 4
    test_episodes: Annotated[int, Field(ge=0)] = 1024
    rate_reg: Annotated[float, Field(ge=0.0)] = 0.0
    rate_target: Fraction = 0.05
    lr_schedule: Literal["constant", "cosine"] = "constant"
    lr_final: Fraction = 0.1
    lr_horizon_minutes: Optional[Positive] = None
    keep_best: bool = False
    cpu_minutes: Optional[Positive] = None
    threads: Annotated[int, Field(ge=1)] = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    freeze: tuple[str, ...] = ()
    freeze_steps: Optional[Annotated[int, Field(ge=0)]] = None

    @model_validator(mode="after")
    def _horizon_anneals(self) -> TrainConfig:
        if self.lr_horizon_minutes is not None and self.lr_schedule == "constant":
            raise ValueError("train.lr_horizon_minutes anneals the rate: it needs lr_schedule: cosine")
        return self

    @field_validator("freeze")
    @classmethod
    def _freezable(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            if entry not in FREEZABLE:
                raise ValueError(f"cannot freeze {entry!r}: one of {', '.join(FREEZABLE)}")
        return value


class ESConfig(Strict):
    """Search-gradient inner loop for control tasks (``locomotion``): evotorch PGPE or SNES
    over the flat vector of learned parameters.

    Weights and biases are sampled with stdev ``stdev``; plasticity coefficients (``alpha``,
    ``eta``, ``mod_a``/``mod_b``, ``eta_E``, ``w_M``/``b_M``, a gate's ``w_G``/``b_G`` and the rule's
    own coefficients, the latter relative to their magnitude) with ``plastic_stdev``: perturbed as much as the
    weights they drive ``H`` to its clip within a few steps.  PGPE samples antithetic pairs
    (``popsize`` even) and moves its centre with ``optimizer`` (ClipUp: step ``center_lr``,
    speed limit ``max_speed``, default ``2 * center_lr``).  Each sample plays
    ``episodes_per_sample`` episodes, in ``workers`` processes (default ``train.threads``, which
    a search sets to the CPUs a candidate declares); the budget is ``generations``, cut short
    after ``cpu_minutes`` of CPU time (this process and its episode workers).
    """

    algorithm: Literal["pgpe", "snes"] = "pgpe"
    popsize: Annotated[int, Field(ge=2)] = 48
    generations: Annotated[int, Field(ge=1)] = 200
    stdev: Positive = 0.1
    plastic_stdev: Positive = 0.01
    center_lr: Positive = 0.1
    stdev_lr: Positive = 0.1
    max_speed: Optional[Positive] = None
    optimizer: Literal["clipup", "adam", "sgd"] = "clipup"
    ranking: Literal["centered", "linear", "nes", "normalized", "raw"] = "centered"
    episodes_per_sample: Annotated[int, Field(ge=1)] = 1
    workers: Optional[Annotated[int, Field(ge=1)]] = None
    eval_every: Annotated[int, Field(ge=1)] = 10
    cpu_minutes: Optional[Positive] = None

    @model_validator(mode="after")
    def _even_popsize(self) -> ESConfig:
        if self.algorithm == "pgpe" and self.popsize % 2:
            raise ValueError(f"pgpe samples antithetic pairs: popsize must be even (got {self.popsize})")
        return self


class GeneConfig(Strict):
    """One gene: ``choices`` (categorical) or ``low``/``high`` (continuous; ``log`` scale;
    ``integer`` rounds).

    ``choices`` given as a mapping makes a *bundle*: a gene whose name is not a config path
    but a word of its own, each choice named and setting several config paths at once, e.g. ::

        readout_learning:
          choices:
            static: {plasticity.readout.rule: none}
            error_gated: {plasticity.readout.rule: abcd, plasticity.readout.modulator_gate: true,
                          network.modulator_reads_output: true}

    A mechanism that takes several options to work is then one choice of one gene, as likely
    to be drawn as any other, rather than a conjunction of independent genes (with ``k``
    binary options each needed, a random genome has it with probability ``2^-k``)."""

    choices: Optional[Union[list[Any], dict[str, dict[str, Any]]]] = None
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    integer: bool = False

    @field_validator("choices", mode="before")
    @classmethod
    def _bundle_maps_paths(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for name, sets in value.items():
                if not isinstance(sets, dict):
                    raise ValueError(f"a bundle's choice {name!r} maps config paths to values (got {sets!r})")
        return value

    @property
    def bundle(self) -> Optional[dict[str, dict[str, Any]]]:
        """A bundle's choices (name -> ``{path: value}``), or ``None`` for a gene of one path."""
        return self.choices if isinstance(self.choices, dict) else None

    @model_validator(mode="after")
    def _one_kind(self) -> GeneConfig:
        ranged = self.low is not None or self.high is not None or self.log or self.integer
        if self.choices is not None and (ranged or not self.choices):
            raise ValueError("a gene has either choices (not empty) or low/high, not both")
        if self.choices is None and (self.low is None or self.high is None):
            raise ValueError("a gene needs choices, or both low and high")
        if self.choices is None and not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale gene needs low > 0")
        return self


class SearchConfig(Strict):
    """Outer loop: an evotorch genetic algorithm over the genes (dotted config paths).

    Each generation keeps the ``elite`` best and fills the rest with children made by
    tournament selection, one-point cross-over, Gaussian mutation of the (unit-encoded)
    genes and uniform resampling of categorical genes.  With ``inheritance: lamarckian`` a
    child's training starts from the trained state of the parent it shares most genes with
    (what still means the same in its network; see :mod:`hybridopt.search.inherit`); with
    ``none`` every candidate trains from scratch.

    Successive halving inside a generation: ``rungs`` are fractions of a candidate's budget
    (``train.cpu_minutes`` and ``train.steps``; ``es.*`` for locomotion), ``keep`` the fraction
    promoted from one rung to the next.  Every candidate trains to the first rung; the best
    ``ceil(keep * n)`` of a rung's ``n`` go on from their own state to the next, each as soon as
    its place among them is certain.  ``[1.0]`` (the default) trains every candidate to its full
    budget.  With inheritance, the ``elite`` survivors also train on from their own state each
    generation, through the same rungs, and are measured again.

    ``final_budget``: after the last generation the best candidate so far trains on from its own
    state for ``final_budget`` times a candidate's budget (through the same rungs), so the winner
    is not a network of one candidate's budget; it needs ``inheritance: lamarckian`` (the state).

    ``initial_population``: generation 0 draws this many random genomes (at least
    ``population``; default ``population``), trains them all through the rungs, and the
    ``population`` fittest (ties: the first drawn) become the GA's first population.  A wider
    first draw costs its first rung for each extra genome and makes the search depend less on the
    luck of a few random genomes, where a working network needs several categorical genes at once.

    ``max_concurrent`` caps how many of its candidates train at once (default: as many as the
    cluster's free CPUs allow), so that searches sharing a cluster do not starve each other.

    ``schedule``: a curriculum, config paths whose value rises (or falls) with the generation:
    generation ``g`` trains with each list's ``g``-th value, the last one from then on (the final
    training and the winner's test measurement included), e.g. ``{task.noise: [0.0, 0.1, 0.2]}``.
    With inheritance a child starts from a parent trained on an earlier value.  A list is at most
    ``generations`` long, and a path is a gene or scheduled, not both.

    ``fixed``: config paths held at one value in every candidate, a gene of the same path (or a
    scheduled one) dropped and the path taken out of every bundle's choices, e.g.
    ``{plasticity.input.rule: none, ...}``: the same search with part of its space taken away
    (every plasticity gene fixed to ``none``: the static control).
    """

    population: Annotated[int, Field(ge=2)] = 8
    initial_population: Optional[Annotated[int, Field(ge=2)]] = None
    generations: Annotated[int, Field(ge=1)] = 4
    elite: Annotated[int, Field(ge=0)] = 2
    tournament: Annotated[int, Field(ge=1)] = 2
    mutation_stdev: Positive = 0.1
    mutation_prob: Fraction = 0.3
    categorical_resample: Fraction = 0.2
    checkpoint: str = "checkpoints/search.ckpt"
    inheritance: Literal["none", "lamarckian"] = "lamarckian"
    rungs: list[float] = Field(default_factory=lambda: [1.0])
    keep: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    final_budget: Annotated[float, Field(ge=0.0)] = 0.0
    max_concurrent: Optional[Annotated[int, Field(ge=1)]] = None
    genes: dict[str, GeneConfig] = Field(default_factory=dict)
    schedule: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(default_factory=dict)
    fixed: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _sizes(self) -> SearchConfig:
        r = self.rungs
        if not r or any(not 0.0 < x <= 1.0 for x in r) or any(a >= b for a, b in zip(r, r[1:])) or r[-1] != 1.0:
            raise ValueError(f"search.rungs must increase within (0, 1] and end at 1.0 (got {r})")
        children = self.population - self.elite
        if self.initial_population is not None and self.initial_population < self.population:
            raise ValueError(
                f"search.initial_population must be at least search.population "
                f"(got {self.initial_population} < {self.population})"
            )
        if children < 2 or children % 2:
            raise ValueError(f"population - elite must be an even number >= 2 (got {self.population} - {self.elite})")
        if not self.genes:
            raise ValueError("search.genes is empty: declare at least one gene")
        if self.final_budget > 0 and self.inheritance != "lamarckian":
            raise ValueError("search.final_budget needs search.inheritance: lamarckian (it trains on a kept state)")
        if both := sorted(set(self.schedule) & set(self.genes)):
            raise ValueError(f"search.schedule and search.genes both name {', '.join(both)}")
        owner: dict[str, str] = {}  # path -> the bundle that sets it
        for name, gene in self.genes.items():
            if gene.bundle is None:
                continue
            if "." in name:
                raise ValueError(f"search.genes.{name}: a bundle's name is a word of its own, not a config path")
            for choice, sets in gene.bundle.items():
                for path in sets:
                    if path in self.genes or path in self.schedule:
                        raise ValueError(
                            f"search.genes.{name}.{choice} sets {path}, which is searched (or scheduled) on its own"
                        )
                    if owner.setdefault(path, name) != name:
                        raise ValueError(f"search.genes.{owner[path]} and search.genes.{name} both set {path}")
        if long := [p for p, v in self.schedule.items() if len(v) > self.generations]:
            raise ValueError(f"search.schedule.{long[0]} has more values than generations ({self.generations})")
        return self


class RayConfig(Strict):
    """Where candidates run: resources per candidate, retries when a worker dies."""

    address: Optional[str] = None
    num_cpus: Optional[Annotated[int, Field(ge=1)]] = None
    num_cpus_per_candidate: Annotated[float, Field(gt=0)] = 1
    num_gpus_per_candidate: Annotated[float, Field(ge=0)] = 0
    max_retries: Annotated[int, Field(ge=0)] = 2


class TrackingConfig(Strict):
    experiment: Optional[str] = None
    uri: Optional[str] = None


class Config(Strict):
    """The whole run: what to learn, with which network, how, and where to record it."""

    experiment: str = "hybridopt"
    seed: int = 0
    task: SerializeAsAny[TaskSection]
    network: NetworkConfig = NetworkConfig()
    plasticity: PlasticityConfig = PlasticityConfig()
    train: TrainConfig = TrainConfig()
    es: ESConfig = ESConfig()
    search: Optional[SearchConfig] = None
    ray: RayConfig = RayConfig()
    tracking: TrackingConfig = TrackingConfig()

    @field_validator("task", mode="wrap")
    @classmethod
    def _registered_task(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> TaskSection:
        """The section of the task ``name`` picks, from the registry (a task of one's own included)."""
        if isinstance(value, TaskSection):
            return value
        if not isinstance(value, dict) or "name" not in value:
            raise ValueError("needs a name (one of the registered tasks)")
        try:
            section = task_section(value["name"])
        except LookupError as e:
            raise ValueError(str(e)) from None
        return section.model_validate(value)

    @model_validator(mode="after")
    def _network_options(self) -> Config:
        check_kernel(self.network, {name: getattr(self.plasticity, name) for name in PROJECTIONS})
        if self.network.share_positions and self.task.input_positions() is None:
            raise ValueError(f"network.share_positions: task {self.task.name!r} declares no input positions")
        if self.train.freeze and type(self.task).kind != "gradient":
            why = "is trained by the search gradient (es), which freezes nothing"
            raise ValueError(f"train.freeze: task {self.task.name!r} {why}")
        return self


def _format_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = [str(x) for x in e["loc"]]
        where = ".".join(loc) or "config"
        unknown = e["type"] in ("extra_forbidden", "unexpected_keyword_argument")
        msg = "unknown key" if unknown else e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def set_path(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for ``key = "a.b.c"``, creating sections as needed."""
    path = [k for k in key.strip().split(".") if k]
    if not path:
        raise ConfigError(f"empty key {key!r}")
    node = raw
    for k in path[:-1]:
        if node.get(k) is None:
            node[k] = {}
        if not isinstance(node[k], dict):
            raise ConfigError(f"{key}: {k!r} is not a section")
        node = node[k]
    node[path[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``a.b.c=value`` applied (value parsed as YAML)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: value is not valid YAML") from None
        set_path(out, key, parsed)
    return out


def parse_config(raw: Any, overrides: Optional[list[str]] = None) -> Config:
    """Validate a plain dict (after overrides) into a :class:`Config`."""
    if not isinstance(raw, dict):
        raise ConfigError("config must be a mapping of sections (task, network, plasticity, train, ...)")
    raw = _fix(apply_overrides(raw, overrides or []))
    load_plugins()  # families registered by the user's own modules
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None


def _fix(raw: dict[str, Any]) -> dict[str, Any]:
    """``search.fixed`` carried out: each path set to its value, its gene and schedule dropped, and
    taken out of the bundles."""
    search = raw.get("search")
    fixed = search.get("fixed") if isinstance(search, dict) else None
    if not fixed or not isinstance(fixed, dict):
        return raw
    raw = copy.deepcopy(raw)
    for path, value in fixed.items():
        set_path(raw, str(path), value)
        for part in ("genes", "schedule"):
            if isinstance(raw["search"].get(part), dict):
                raw["search"][part].pop(path, None)
        for gene in (raw["search"].get("genes") or {}).values():
            choices = gene.get("choices") if isinstance(gene, dict) else None
            if isinstance(choices, dict):  # a bundle sets the path no more
                for sets in choices.values():
                    if isinstance(sets, dict):
                        sets.pop(path, None)
    return raw


def load_config(path: Union[str, Path], overrides: Optional[list[str]] = None) -> Config:
    """Read, override and validate a YAML config file; errors are :class:`ConfigError`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"invalid YAML in {p}{where}: {getattr(e, 'problem', e)}") from None
    return parse_config(raw, overrides)


def placement_overrides(name: str) -> list[str]:
    """Overrides for a named placement: ``static`` (every projection static) or ``<projection>:<rule>/<mode>``
    (that projection plastic, the others static), e.g. ``input:hebbian/neuromodulated``."""
    out = [f"plasticity.{p}.rule=none" for p in PROJECTIONS]
    if name != "static":
        try:
            proj, rule_mode = name.split(":")
            rule, mode = rule_mode.split("/")
        except ValueError:
            raise ConfigError(f"placement {name!r}: expected 'static' or PROJECTION:RULE/MODE") from None
        out += [f"plasticity.{proj}.rule={rule}", f"plasticity.{proj}.modulation={mode}"]
    return out


def network_spec(cfg: Config, n_in: int, n_out: int) -> NetworkSpec:
    """The :class:`~hybridopt.snn.spec.NetworkSpec` a config describes, for a task with these input/output sizes."""
    positions = cfg.task.input_positions() if cfg.network.share_positions else None
    return NetworkSpec.of(cfg.network, cfg.plasticity, n_in, n_out, positions)
