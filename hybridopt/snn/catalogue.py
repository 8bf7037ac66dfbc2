"""What the model offers, by name, without importing torch.

A config is validated against this catalogue, so a bad config or ``--set`` is reported before
torch loads (importing torch alone costs ~2 CPU-seconds).  The implementations register under
the same names (:data:`hybridopt.snn.plasticity.RULES` takes its coefficients from here,
:data:`~hybridopt.snn.plasticity.MODES` and :data:`~hybridopt.snn.neurons.SURROGATE_DERIVATIVES` are checked
against it when they load), so a name exists in exactly one list.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "MODE_NAMES",
    "PLUGINS_ENV",
    "PROJECTIONS",
    "RULE_COEFFICIENTS",
    "SURROGATE_NAMES",
    "check_registry",
    "load_plugins",
]

# Modules that register rule families (``register_rule``) or tasks (``register_task``) of their
# own, comma-separated.  They are imported before a config is validated, in the command line, the
# search's driver and every worker.
PLUGINS_ENV = "HYBRIDOPT_PLUGINS"

# The network's three projections: input -> hidden, hidden -> hidden, hidden -> readout.
PROJECTIONS: tuple[str, ...] = ("input", "recurrent", "readout")

# Rule families and the coefficients each learns, with their initial values.
RULE_COEFFICIENTS: dict[str, dict[str, float]] = {
    "none": {},
    "hebbian": {},
    "oja": {},
    "bcm": {"tau_phi": 20.0},
    "stdp": {"a_plus": 1.0, "a_minus": 1.0},
    "abcd": {"A": 1.0, "B": 0.0, "C": 0.0, "D": 0.0},  # per synapse: one value each
}

# How a rule's update reaches the plastic state.
MODE_NAMES: tuple[str, ...] = ("plain", "neuromodulated", "retroactive")

# Surrogate spike derivatives.
SURROGATE_NAMES: tuple[str, ...] = ("fast_sigmoid", "arctan")


def check_registry(kind: str, registered: Mapping[str, object] | tuple[str, ...], catalogue: object) -> None:
    """Raise unless an implementation registry holds exactly the catalogue's names."""
    have, want = set(registered), set(catalogue)  # type: ignore[arg-type]
    if have != want:
        raise RuntimeError(f"{kind} registry {sorted(have)} does not match the catalogue {sorted(want)}")


_loaded: set[str] = set()


def load_plugins() -> None:
    """Import the modules ``HYBRIDOPT_PLUGINS`` names (once each): they register their families and tasks.
    A module that cannot be imported is a config error, named."""
    import importlib
    import os

    from hybridopt.errors import ConfigError

    for name in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"{PLUGINS_ENV}: cannot import {name!r}: {e}") from None
        _loaded.add(name)
