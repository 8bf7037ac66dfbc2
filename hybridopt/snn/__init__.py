"""Plastic spiking networks: LIF neurons, plasticity rules, the network."""

from hybridopt.snn.network import NetworkSpec, PlasticSNN, ProjectionSpec
from hybridopt.snn.plasticity import MODES, RULES

__all__ = ["MODES", "RULES", "NetworkSpec", "PlasticSNN", "ProjectionSpec"]
