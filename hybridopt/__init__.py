"""hybridopt: evolution plus gradient descent for plastic spiking neural networks."""

__version__ = "0.1.0"
