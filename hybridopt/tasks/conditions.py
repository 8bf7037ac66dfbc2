"""Conditions of the locomotion task: named changes of the robot's MuJoCo model, one table.

A condition is named by a string, ``kind[:leg][:factor]``, so that a config lists each in one
word.  ``<leg>`` is a leg of :data:`LEGS` (or, on a robot not listed there, the name of the
body at the top of the leg) and ``<factor>`` a number; every condition modifies the model of a
fresh environment in place, before its first reset:

==========================  =====================================================================
name                        what changes in the model (``g`` = gear, ``m`` = mass, ``f`` = factor)
==========================  =====================================================================
``standard``                nothing: the intact body
``crippled:<leg>``          the leg's actuators give no torque: ``g_a <- 0`` for each actuator
                            ``a`` of the leg
``weak:<leg>:<f>``          partial loss of torque, ``0 < f <= 1``: ``g_a <- f * g_a``
``reversed:<leg>``          the leg's motors wired backwards: ``g_a <- -g_a`` (the same command
                            drives its joints the other way; a gait for the intact body and a
                            gait for this one need opposite corrections of that leg)
``short:<leg>:<f>``         the leg's lowest segment (its foot or ankle body, ``0 < f <= 1``)
                            shortened about its joint: see :func:`shorten_segment`
``friction:<f>``            sliding friction of every geom, ``mu_g <- f * mu_g`` (MuJoCo takes the
                            larger of two geoms' frictions for a contact: the floor alone is not
                            enough)
``mass:<f>``                the torso denser: ``m_torso <- f * m_torso``, ``I_torso <- f * I_torso``
``crippled_leg``            alias of ``crippled:<task.crippled_leg>``
``low_friction``            alias of ``friction:<task.friction_scale>``
``heavy_body``              alias of ``mass:<task.torso_mass_scale>``
==========================  =====================================================================

A leg is a body of the model; its actuators are those driving a joint of that body or of a body
below it (:func:`leg_actuators`).  In MLflow a condition's metrics carry its :func:`metric_key`,
the name with every character but letters, digits, ``_``, ``.`` and ``-`` replaced by ``_``
(``weak:back:0.5`` -> ``weak_back_0.5``; MLflow forbids ``:`` on Windows).

This module imports no simulator at import time: a config's conditions are checked by
:func:`parse_condition` before MuJoCo loads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import mujoco

__all__ = [
    "ALIASES",
    "CONDITIONS",
    "LEGS",
    "Condition",
    "ConditionKind",
    "apply_condition",
    "check_env_and_leg",
    "check_name",
    "leg_actuators",
    "metric_key",
    "parse_condition",
    "shorten_segment",
]

# Robot (env id before "-v") -> leg name -> the body at the top of that leg.
LEGS: dict[str, dict[str, str]] = {
    "HalfCheetah": {"back": "bthigh", "front": "fthigh"},
    # Ant's own body names (its XML calls them front_left_leg, front_right_leg, back_leg, right_back_leg).
    "Ant": {
        "front_left": "front_left_leg",
        "front_right": "front_right_leg",
        "back": "back_leg",
        "right_back": "right_back_leg",
    },
}


def robot(env_id: str) -> str:
    """The robot of a gymnasium environment id: ``Ant-v5`` -> ``Ant``."""
    return env_id.split("-v")[0]


def check_env_and_leg(env_id: str, leg: str) -> None:
    """Raise ``ValueError`` for an unregistered environment or an unknown leg of a known robot."""
    import gymnasium as gym

    if env_id not in gym.envs.registry:
        raise ValueError(f"unknown gymnasium environment {env_id!r}")
    legs = LEGS.get(robot(env_id))
    if legs is not None and leg not in legs:
        raise ValueError(f"crippled_leg {leg!r} is not a leg of {robot(env_id)}; known: {', '.join(legs)}")


@dataclass(frozen=True)
class Condition:
    """A parsed condition: ``name`` as the config spells it, ``kind`` a key of :data:`CONDITIONS`,
    and its ``leg`` and ``factor`` where the kind has them."""

    name: str
    kind: str
    leg: Optional[str] = None
    factor: float = 1.0

    @property
    def key(self) -> str:
        """The name as it appears in metric names (:func:`metric_key`)."""
        return metric_key(self.name)

    @property
    def damage(self) -> tuple[str, Optional[str], float]:
        """What the condition does to the model: equal for two names of the same condition."""
        return (self.kind, self.leg, self.factor)


@dataclass(frozen=True)
class ConditionKind:
    """A row of the table: the arguments its name takes after the kind (``leg``, ``factor``), the
    largest factor it allows, and what it does to a model (``apply(model, condition, env_id)``)."""

    args: tuple[str, ...]
    apply: Callable[[Any, Condition, str], None]
    max_factor: float = math.inf


def metric_key(name: str) -> str:
    """A condition's name as a metric name may hold it: ``crippled:back`` -> ``crippled_back``."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name)


def _body(model: mujoco.MjModel, name: str) -> int:
    import mujoco

    b = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name)
    if b < 0:
        raise ValueError(f"the model has no body {name!r}")
    return b


def _leg_body(leg: str, env_id: str) -> str:
    """The body at the top of ``leg``: from :data:`LEGS`, or the leg's own name on other robots."""
    return LEGS.get(robot(env_id), {}).get(leg, leg)


def _below(model: mujoco.MjModel, b: int, root: int) -> bool:
    while b > 0:
        if b == root:
            return True
        b = int(model.body_parentid[b])
    return False


def leg_actuators(model: mujoco.MjModel, body: str) -> list[int]:
    """Actuators driving a joint of ``body`` or of any body below it."""
    import mujoco

    root = _body(model, body)
    out = [
        a
        for a in range(model.nu)
        if model.actuator_trntype[a] == mujoco.mjtTrn.mjTRN_JOINT
        and _below(model, int(model.jnt_bodyid[model.actuator_trnid[a, 0]]), root)
    ]
    if not out:
        raise ValueError(f"body {body!r} has no actuated joint below it")
    return out


def _lowest_body(model: mujoco.MjModel, top: int) -> int:
    """The last body of the chain that starts at ``top`` (each body having one child at most)."""
    b = top
    while True:
        children = [c for c in range(model.nbody) if c != b and model.body_parentid[c] == b]
        if not children:
            return b
        if len(children) > 1:
            raise ValueError(f"body {b} branches: the leg has no single lowest segment")
        b = children[0]


def shorten_segment(model: mujoco.MjModel, body: int, factor: float) -> None:
    """Shorten ``body`` (a limb segment) by ``factor`` about its origin, where its joint is.

    Scaled by ``factor``: the half-length ``geom_size[g, 1]`` and the position ``geom_pos[g]`` of
    each of its geoms ``g`` (capsules and cylinders: a segment that starts at the joint still
    starts there), its centre of mass ``body_ipos`` and the position ``body_pos`` of each body
    attached to it.  Kept: the geoms' radius ``geom_size[g, 0]`` and orientation, the segment's
    mass and rotational inertia (a shorter, denser segment: the damage changes the leg's
    geometry and lever arms, not the robot's mass).  The geoms' bounding sphere ``geom_rbound``
    and box ``geom_aabb`` follow the new length, and :func:`mujoco.mj_setConst` recomputes the
    constants derived from the model at ``qpos0``."""
    import mujoco

    geoms = [g for g in range(model.ngeom) if model.geom_bodyid[g] == body]
    capsule, cylinder = int(mujoco.mjtGeom.mjGEOM_CAPSULE), int(mujoco.mjtGeom.mjGEOM_CYLINDER)
    for g in geoms:
        if int(model.geom_type[g]) not in (capsule, cylinder):
            raise ValueError(f"geom {g} of body {body} is not a capsule or cylinder: its length is undefined")
    for g in geoms:
        model.geom_size[g, 1] *= factor
        model.geom_pos[g] *= factor
        r, h = float(model.geom_size[g, 0]), float(model.geom_size[g, 1])
        half_z = h + r if int(model.geom_type[g]) == capsule else h
        model.geom_rbound[g] = half_z if int(model.geom_type[g]) == capsule else math.hypot(r, h)
        model.geom_aabb[g] = [0.0, 0.0, 0.0, r, r, half_z]
    model.body_ipos[body] *= factor
    for c in range(1, model.nbody):
        if c != body and model.body_parentid[c] == body:
            model.body_pos[c] *= factor


def _standard(model: mujoco.MjModel, cond: Condition, env_id: str) -> None:
    pass


def _gear(model: mujoco.MjModel, cond: Condition, env_id: str) -> None:
    for a in leg_actuators(model, _leg_body(cond.leg, env_id)):  # force = gear * ctrl
        if cond.kind == "crippled":
            model.actuator_gear[a, :] = 0.0
        elif cond.kind == "reversed":
            model.actuator_gear[a, :] *= -1.0
        else:
            model.actuator_gear[a, :] *= cond.factor


def _short(model: mujoco.MjModel, cond: Condition, env_id: str) -> None:
    shorten_segment(model, _lowest_body(model, _body(model, _leg_body(cond.leg, env_id))), cond.factor)


def _friction(model: mujoco.MjModel, cond: Condition, env_id: str) -> None:
    model.geom_friction[:, 0] *= cond.factor


def _mass(model: mujoco.MjModel, cond: Condition, env_id: str) -> None:
    b = _body(model, "torso")
    model.body_mass[b] *= cond.factor
    model.body_inertia[b] *= cond.factor  # same shape, denser


CONDITIONS: dict[str, ConditionKind] = {
    "standard": ConditionKind((), _standard),
    "crippled": ConditionKind(("leg",), _gear),
    "weak": ConditionKind(("leg", "factor"), _gear, max_factor=1.0),
    "reversed": ConditionKind(("leg",), _gear),
    "short": ConditionKind(("leg", "factor"), _short, max_factor=1.0),
    "friction": ConditionKind(("factor",), _friction),
    "mass": ConditionKind(("factor",), _mass),
}

# Old names -> (kind, the task's field holding its one argument).
ALIASES: dict[str, tuple[str, str]] = {
    "crippled_leg": ("crippled", "crippled_leg"),
    "low_friction": ("friction", "friction_scale"),
    "heavy_body": ("mass", "torso_mass_scale"),
}


def _factor(text: str, name: str, kind: ConditionKind) -> float:
    try:
        f = float(text)
    except ValueError:
        raise ValueError(f"condition {name!r}: factor {text!r} is not a number") from None
    if not (math.isfinite(f) and 0.0 < f <= kind.max_factor):
        bound = f"<= {kind.max_factor:g}" if math.isfinite(kind.max_factor) else "finite"
        raise ValueError(f"condition {name!r}: factor {text!r} must be > 0 and {bound}")
    return f


def _usage() -> str:
    return ", ".join(":".join([k, *(f"<{a}>" for a in kind.args)]) for k, kind in CONDITIONS.items())


def parse_condition(name: str, task: Any = None, env_id: Optional[str] = None) -> Condition:
    """The condition a name stands for.  ``task`` (the task's config section) gives the aliases
    their argument; with ``env_id``, a leg must be one of that robot's :data:`LEGS`.  Raises
    ``ValueError`` naming what is wrong."""
    parts = name.split(":")
    if name in ALIASES:
        if task is None:
            raise ValueError(f"condition {name!r} takes its argument from the task's config")
        kind_name, field = ALIASES[name]
        parts = [kind_name, str(getattr(task, field))]
    kind = CONDITIONS.get(parts[0])
    if kind is None:
        raise ValueError(f"unknown condition {name!r}; known: {_usage()}, {', '.join(ALIASES)}")
    if len(parts) - 1 != len(kind.args):
        raise ValueError(f"condition {name!r} takes {':'.join([parts[0], *(f'<{a}>' for a in kind.args)])}")
    args = dict(zip(kind.args, parts[1:]))
    leg = args.get("leg")
    if leg is not None and env_id is not None:
        legs = LEGS.get(robot(env_id))
        if legs is not None and leg not in legs:
            raise ValueError(f"condition {name!r}: {leg!r} is not a leg of {robot(env_id)}; known: {', '.join(legs)}")
    factor = _factor(args["factor"], name, kind) if "factor" in args else 1.0
    return Condition(name, parts[0], leg, factor)


def check_name(name: str) -> str:
    """``name`` if it is a well-formed condition (legs are checked against the robot later)."""
    if name not in ALIASES:
        parse_condition(name)
    return name


def apply_condition(model: mujoco.MjModel, condition: Condition, env_id: str) -> None:
    """Modify ``model`` in place for ``condition``; the constants MuJoCo derives from a model at
    ``qpos0`` (``mj_setConst``) are recomputed after a change of geometry."""
    import mujoco

    CONDITIONS[condition.kind].apply(model, condition, env_id)
    if condition.kind == "short":
        mujoco.mj_setConst(model, mujoco.MjData(model))
