"""The genome: what the outer loop chooses, encoded in one place.

Every gene is a dotted config path (``plasticity.input.rule``, ``train.lr``, ...) and is
encoded as one real number ``u`` in ``[0, 1]``, so evotorch's real-valued operators act
on every gene alike:

* categorical, ``n`` choices: ``index = min(floor(u * n), n - 1)``; encoded at the centre
  of its cell, ``u = (index + 1/2) / n``;
* continuous on ``[lo, hi]``: ``x = lo + u (hi - lo)``, or on a log scale
  ``x = lo (hi / lo)^u``; integer genes round ``x``.

A *bundle* (a gene whose choices are named, each setting several config paths) is a
categorical gene whose value is its choice's name; :meth:`GenomeSpace.expand` turns it into the
paths it sets.

Decoding a genome gives config overrides; applied to the base config they give exactly
the :class:`~hybridopt.config.Config` that trains the candidate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import torch

from hybridopt.config import Config, ConfigError, SearchConfig, parse_config, set_path

__all__ = ["INTERIOR_PROBES", "Gene", "GenomeSpace"]

# Points strictly inside a continuous gene's range that validation tries, besides its ends.
INTERIOR_PROBES = 7


@dataclass(frozen=True)
class Gene:
    path: str
    choices: Optional[tuple[Any, ...]] = None
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    integer: bool = False
    bundle: Optional[dict[str, dict[str, Any]]] = field(default=None, hash=False, compare=False)
    """A bundle's choices: name -> the ``{path: value}`` it sets (``choices`` are the names)."""

    @property
    def categorical(self) -> bool:
        return self.choices is not None

    def decode(self, u: float) -> Any:
        u = min(max(float(u), 0.0), 1.0)
        if self.choices is not None:
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        if self.log:
            x = self.low * (self.high / self.low) ** u
        else:
            x = self.low + u * (self.high - self.low)
        return int(round(x)) if self.integer else x

    def probes(self) -> list[Any]:
        """The values :meth:`GenomeSpace.validate` tries: all of them where there are finitely
        many (choices, integers), else the ends and evenly spaced interior points."""
        if self.choices is not None:
            return list(self.choices)
        if self.integer:
            a, b = sorted((self.decode(0.0), self.decode(1.0)))
            return list(range(a, b + 1))
        return [self.decode(k / (INTERIOR_PROBES + 1)) for k in range(INTERIOR_PROBES + 2)]

    def encode(self, value: Any) -> float:
        if self.choices is not None:
            if value not in self.choices:
                raise ValueError(f"{self.path}: {value!r} is not one of {list(self.choices)}")
            return (self.choices.index(value) + 0.5) / len(self.choices)
        x = min(max(float(value), self.low), self.high)
        if self.log:
            return math.log(x / self.low) / math.log(self.high / self.low)
        return (x - self.low) / (self.high - self.low)


class GenomeSpace:
    """The ordered genes of a search, with encode/decode and genome -> config."""

    def __init__(self, genes: Sequence[Gene]):
        self.genes = tuple(genes)

    @classmethod
    def from_config(cls, search: SearchConfig) -> GenomeSpace:
        genes = []
        for path, g in search.genes.items():
            if g.bundle is not None:
                genes.append(Gene(path, choices=tuple(g.bundle), bundle=dict(g.bundle)))
            elif g.choices is not None:
                genes.append(Gene(path, choices=tuple(g.choices)))
            else:
                genes.append(Gene(path, low=float(g.low), high=float(g.high), log=g.log, integer=g.integer))
        return cls(genes)

    def __len__(self) -> int:
        return len(self.genes)

    @property
    def categorical_mask(self) -> torch.Tensor:
        import torch

        return torch.tensor([g.categorical for g in self.genes], dtype=torch.bool)

    def decode(self, u: Sequence[float]) -> dict[str, Any]:
        """Unit vector -> ``{path: value}``."""
        if len(u) != len(self.genes):
            raise ValueError(f"genome has {len(u)} values, the space has {len(self.genes)} genes")
        return {g.path: g.decode(float(x)) for g, x in zip(self.genes, u)}

    def encode(self, values: dict[str, Any]) -> list[float]:
        """``{path: value}`` -> unit vector (inverse of :meth:`decode` on decoded values)."""
        return [g.encode(values[g.path]) for g in self.genes]

    def expand(self, values: dict[str, Any]) -> dict[str, Any]:
        """``{gene: value}`` -> ``{config path: value}``: each bundle replaced by the paths its
        chosen value sets (a name a bundle does not know is a ``ConfigError``)."""
        bundles = {g.path: g.bundle for g in self.genes if g.bundle is not None}
        out: dict[str, Any] = {}
        for name, value in values.items():
            if name not in bundles:
                out[name] = value
            elif value in bundles[name]:
                out.update(bundles[name][value])
            else:
                raise ConfigError(f"search.genes.{name}: {value!r} is not one of {list(bundles[name])}")
        return out

    def config_for(self, base: Config, values: dict[str, Any]) -> Config:
        """The config that trains this genome: ``base`` with every gene's value applied (a
        bundle's, every path its choice sets)."""
        raw = base.model_dump(mode="json")
        raw["search"] = None  # a candidate trains; it does not search
        for path, value in self.expand(values).items():
            set_path(raw, path, value)
        return parse_config(raw)

    @staticmethod
    def schedule_settled(search: SearchConfig) -> int:
        """The first generation that trains on every scheduled path's last value (0: no schedule)."""
        return max((len(values) - 1 for values in search.schedule.values()), default=0)

    @staticmethod
    def scheduled(search: SearchConfig, generation: int) -> dict[str, Any]:
        """``search.schedule``'s values for ``generation``: each list's value at that index, its last
        one from then on."""
        return {path: values[min(generation, len(values) - 1)] for path, values in search.schedule.items()}

    def validate(self, base: Config) -> None:
        """Check that every gene names a real config key and every value it can take is valid:
        every choice, every integer of an integer gene's range, and for a continuous gene its
        ends and :data:`INTERIOR_PROBES` points between (so nothing fails after the search has
        started writing)."""
        for g in self.genes:
            for value in g.probes():
                try:
                    self.config_for(base, {g.path: value})
                except ConfigError as e:
                    raise ConfigError(f"search.genes.{g.path} = {value!r}: {e}") from None
        for path, values in (base.search.schedule if base.search else {}).items():
            for value in values:
                try:
                    self.config_for(base, {path: value})
                except ConfigError as e:
                    raise ConfigError(f"search.schedule.{path} = {value!r}: {e}") from None

    @staticmethod
    def short_name(path: str) -> str:
        """A gene's name without its section: ``input.rule``, ``lr``, ``beta``."""
        return path.removeprefix("plasticity.").removeprefix("train.").removeprefix("network.")

    @staticmethod
    def describe(values: dict[str, Any]) -> str:
        """A short printable form: ``input=hebbian/neuromodulated lr=0.0031 hidden=64``."""
        parts = []
        for path, v in values.items():
            name = GenomeSpace.short_name(path)
            proj, _, field = name.partition(".")
            if field == "modulation" and f"plasticity.{proj}.rule" in values:
                continue  # shown with its rule
            if field == "rule":
                mode = values.get(f"plasticity.{proj}.modulation")
                parts.append(f"{proj}={v}/{mode}" if mode is not None and v != "none" else f"{proj}={v}")
                continue
            parts.append(f"{name}={v:.3g}" if isinstance(v, float) else f"{name}={v}")
        return " ".join(parts)
