"""A rule family that exists only for the tests, registered the way a user registers their own.

Anti-Hebbian with a learned gain ``k``::

    D_ij = -k xpre_i xpost_j

Its update, its in-place twin and its vector-Jacobian product, then one ``register_rule`` call:
every generic test (reference, fused, compiled, the network and the search) picks it up from
the registry.  A CLI run loads it with ``HYBRIDOPT_PLUGINS=tests.extra_family``.
"""

from __future__ import annotations

import torch

from hybridopt.snn.rules import Rule, RuleGrad, _col_sums, _row_sums, register_rule

NAME = "anti_hebbian"


def anti_hebbian_update(act, H, phi, coeffs):
    """``D_ij = -k xpre_i xpost_j``."""
    return -(act.pre_trace.unsqueeze(2) * act.post_trace.unsqueeze(1)) * coeffs["k"]


def anti_hebbian_update_into(act, H, phi, coeffs, out, scratch):
    """The same ``D`` written into ``out`` (negation is exact: the same bits)."""
    torch.mul(act.pre_trace.unsqueeze(2), act.post_trace.unsqueeze(1), out=out)
    return out.mul_(coeffs["k"]).neg_()


def anti_hebbian_vjp(act, H, phi, coeffs, gX, gain, scratch=None) -> RuleGrad:
    """With ``Y_j = sum_i gX_ij xpre_i``: ``d xpre_i = -k sum_j gX_ij gain_j xpost_j``,
    ``d xpost_j = -k gain_j Y_j``, ``d k = -sum_j gain_j xpost_j Y_j``, and the gradient of
    ``gain_j`` is ``sum_i gX_ij D_ij = -k xpost_j Y_j``."""
    k = coeffs["k"]
    Y = _col_sums(act.pre_trace, gX)
    return RuleGrad(
        pre_trace=-k * _row_sums(gX, gain * act.post_trace),
        post_trace=-k * gain * Y,
        coeffs={"k": -(gain * act.post_trace * Y).sum()},
        gain=-k * act.post_trace * Y,
    )


register_rule(NAME, Rule(anti_hebbian_update, {"k": 0.5}, None, anti_hebbian_update_into, anti_hebbian_vjp))
