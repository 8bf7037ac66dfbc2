"""The native sequence kernel: the whole sequence, forward and backward, in one compiled routine each.

``sequence.cpp`` holds the maths (plain C++, a C ABI), :mod:`~hybridopt.snn.native.build` builds
it once per machine and loads it, :mod:`~hybridopt.snn.native.sequence` is the autograd function
the network calls.
"""

from hybridopt.snn.native.build import build_cpu_seconds, library, unavailable
from hybridopt.snn.native.sequence import NATIVE_MODES, NATIVE_RULES, native_sequence, supports

__all__ = [
    "NATIVE_MODES",
    "NATIVE_RULES",
    "build_cpu_seconds",
    "library",
    "native_sequence",
    "supports",
    "unavailable",
]
