"""What the model offers, by name, without importing torch.

A config is validated against this catalogue, so a bad config or ``--set`` is reported before
torch loads (importing torch alone costs ~2 CPU-seconds).  The implementations register under
the same names (:data:`hybridopt.snn.plasticity.RULES` takes its coefficients from here,
:data:`~hybridopt.snn.plasticity.MODES` and :data:`~hybridopt.snn.neurons.SURROGATES` are checked
against it when they load), so a name exists in exactly one list.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["MODE_NAMES", "PROJECTIONS", "RULE_COEFFICIENTS", "SURROGATE_NAMES", "check_registry"]

# The network's three projections: input -> hidden, hidden -> hidden, hidden -> readout.
PROJECTIONS: tuple[str, ...] = ("input", "recurrent", "readout")

# Rule families and the coefficients each learns, with their initial values.
RULE_COEFFICIENTS: dict[str, dict[str, float]] = {
    "none": {},
    "hebbian": {},
    "oja": {},
    "bcm": {"tau_phi": 20.0},
    "stdp": {"a_plus": 1.0, "a_minus": 1.0},
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
