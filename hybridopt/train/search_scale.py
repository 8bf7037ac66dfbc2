"""The scale at which the control loop's search perturbs each learned parameter.

The search distribution's ``sigma`` starts per parameter group (:func:`parameter_group`):
weights and biases at ``es.stdev``; plasticity coefficients at the much smaller
``es.plastic_stdev``; rule coefficients (``tau_phi``, ``a_plus``, ...) at ``es.plastic_stdev``
times their magnitude (at least 1)::

    sigma_i = es.stdev                          (weights)
    sigma_i = es.plastic_stdev                  (plasticity)
    sigma_i = es.plastic_stdev * max(|p_i|, 1)  (rule)

A coefficient that scales every plastic synapse (``eta``, ``alpha``) has a far larger effect
per unit than one weight: perturbed as much as the weights, it drives ``H`` to its clip within
a few steps.  Because PGPE's centre step is proportional to ``sigma``, the smaller scale also
makes the centre move less along those coordinates.
"""

from __future__ import annotations

import torch

from hybridopt.config import ESConfig
from hybridopt.snn.network import PlasticSNN

__all__ = ["group_masks", "parameter_group", "search_stdev", "searched"]


def parameter_group(net: PlasticSNN, name: str) -> str:
    """``"weights"`` (``W``, biases), ``"plasticity"`` (``alpha``, the modes' parameters such as
    ``eta``, ``mod_a``/``mod_b``, ``eta_E``, ``w_M``/``b_M`` and ``w_G``/``b_G``) or ``"rule"`` (a rule's own
    coefficients) for a parameter of ``net``, as the network declares it."""
    return net.parameter_groups()[name]


def searched(net: PlasticSNN, fresh_weights: bool = False) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters the search moves, in the flat vector's order: all of them, or, when every
    episode draws its own weights (``fresh_weights``), all but each projection's ``W``."""
    return [
        (name, p)
        for name, p in net.named_parameters()
        if not (fresh_weights and name.startswith("projections.") and name.endswith(".W"))
    ]


def search_stdev(net: PlasticSNN, es: ESConfig, fresh_weights: bool = False) -> torch.Tensor:
    """Initial search stdev per coordinate of the flat parameter vector (see the module docstring)."""
    parts, groups = [], net.parameter_groups()
    for name, p in searched(net, fresh_weights):
        group = groups[name]
        if group == "weights":
            s = torch.full((p.numel(),), es.stdev)
        elif group == "plasticity":
            s = torch.full((p.numel(),), es.plastic_stdev)
        else:
            s = es.plastic_stdev * p.detach().abs().reshape(-1).clamp(min=1.0)
        parts.append(s)
    return torch.cat(parts).float()


def group_masks(net: PlasticSNN, fresh_weights: bool = False) -> dict[str, torch.Tensor]:
    """Per group present, which coordinates of the flat parameter vector belong to it."""
    by_name = net.parameter_groups()
    groups = [by_name[n] for n, p in searched(net, fresh_weights) for _ in range(p.numel())]
    return {g: torch.tensor([x == g for x in groups]) for g in ("weights", "plasticity", "rule") if g in groups}
