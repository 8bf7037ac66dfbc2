"""The table of locomotion conditions: each damage changes exactly its part of the real MuJoCo
model, on every leg of HalfCheetah and Ant; bad names are one-line config errors."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from hybridopt.config import ConfigError, parse_config
from hybridopt.tasks.conditions import LEGS, leg_actuators, metric_key, parse_condition
from hybridopt.tasks.locomotion import Locomotion

ROBOTS = {"HalfCheetah": "HalfCheetah-v5", "Ant": "Ant-v5"}
EVERY_LEG = [(robot, leg) for robot in ROBOTS for leg in LEGS[robot]]


def _task(env_id: str, **task) -> Locomotion:
    return Locomotion(
        parse_config({"task": {"name": "locomotion", "env_id": env_id, "episode_steps": 20, **task}}).task
    )


@pytest.fixture(scope="module")
def tasks() -> dict[str, Locomotion]:
    return {robot: _task(env_id, conditions=[]) for robot, env_id in ROBOTS.items()}


def _model(task: Locomotion, name: str) -> mujoco.MjModel:
    return task.make_env(name).unwrapped.model


def _leaf(model: mujoco.MjModel, top: str) -> int:
    b = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, top)
    while (children := [c for c in range(1, model.nbody) if model.body_parentid[c] == b]) != []:
        (b,) = children
    return b


@pytest.mark.parametrize(("robot", "leg"), EVERY_LEG)
def test_weak_and_crippled_scale_exactly_that_legs_gears(tasks, robot, leg):
    task = tasks[robot]
    std = _model(task, "standard")
    ids = leg_actuators(std, LEGS[robot][leg])
    others = [a for a in range(std.nu) if a not in ids]
    assert ids and others
    weak, crippled = _model(task, f"weak:{leg}:0.5"), _model(task, f"crippled:{leg}")
    reversed_ = _model(task, f"reversed:{leg}")
    np.testing.assert_array_equal(weak.actuator_gear[ids], 0.5 * std.actuator_gear[ids])
    assert np.all(std.actuator_gear[ids, 0] != 0.0)
    np.testing.assert_array_equal(weak.actuator_gear[others], std.actuator_gear[others])
    np.testing.assert_array_equal(crippled.actuator_gear[ids], 0.0)
    np.testing.assert_array_equal(crippled.actuator_gear[others], std.actuator_gear[others])
    np.testing.assert_array_equal(reversed_.actuator_gear[ids], -std.actuator_gear[ids])
    np.testing.assert_array_equal(reversed_.actuator_gear[others], std.actuator_gear[others])
    for m in (weak, crippled, reversed_):  # nothing else of the body changes
        np.testing.assert_array_equal(m.geom_size, std.geom_size)
        np.testing.assert_array_equal(m.body_mass, std.body_mass)


@pytest.mark.parametrize(("robot", "leg"), EVERY_LEG)
def test_short_scales_the_lowest_segment_of_that_leg_only(tasks, robot, leg):
    task = tasks[robot]
    std, short = _model(task, "standard"), _model(task, f"short:{leg}:0.6")
    body = _leaf(std, LEGS[robot][leg])
    mine = std.geom_bodyid == body
    assert mine.any()
    changed = np.flatnonzero((short.geom_size != std.geom_size).any(axis=1))
    np.testing.assert_array_equal(changed, np.flatnonzero(mine))
    # the half-length and the centre scale, the radius stays: the capsule still starts at the joint
    np.testing.assert_allclose(short.geom_size[mine, 1], 0.6 * std.geom_size[mine, 1])
    np.testing.assert_array_equal(short.geom_size[mine, 0], std.geom_size[mine, 0])
    np.testing.assert_allclose(short.geom_pos[mine], 0.6 * std.geom_pos[mine])
    np.testing.assert_array_equal(short.geom_pos[~mine], std.geom_pos[~mine])
    np.testing.assert_allclose(short.body_ipos[body], 0.6 * std.body_ipos[body])
    np.testing.assert_allclose(short.geom_rbound[mine], short.geom_size[mine, 0] + short.geom_size[mine, 1])
    np.testing.assert_array_equal(short.body_mass, std.body_mass)  # mass kept: geometry and lever arms change
    np.testing.assert_array_equal(short.actuator_gear, std.actuator_gear)


def test_a_weak_leg_gives_half_the_torque_on_its_joints_only(tasks):
    task = tasks["HalfCheetah"]
    std, weak = task.make_env("standard"), task.make_env("weak:back:0.5")
    for env in (std, weak):
        env.reset(seed=0)
        env.step(np.full(task.n_out, 0.7, dtype=np.float32))
    m = std.unwrapped.model
    ids = leg_actuators(m, "bthigh")
    dof = [int(m.jnt_dofadr[m.actuator_trnid[a, 0]]) for a in range(task.n_out)]
    q_std, q_weak = std.unwrapped.data.qfrc_actuator[dof], weak.unwrapped.data.qfrc_actuator[dof]
    np.testing.assert_allclose(q_weak[ids], 0.5 * q_std[ids])
    others = [a for a in range(task.n_out) if a not in ids]
    np.testing.assert_array_equal(q_weak[others], q_std[others])


def test_a_reversed_leg_moves_as_the_intact_body_under_that_legs_command_negated(tasks):
    # the same trajectory: u on the reversed body, u with the leg's commands negated on the intact one
    task = tasks["HalfCheetah"]
    std, rev = task.make_env("standard"), task.make_env("reversed:back")
    ids = leg_actuators(std.unwrapped.model, "bthigh")
    rng = np.random.default_rng(0)
    for env in (std, rev):
        env.reset(seed=3)
    for _ in range(30):
        u = rng.uniform(-1.0, 1.0, task.n_out).astype(np.float32)
        flipped = u.copy()
        flipped[ids] = -flipped[ids]
        rev.step(u)
        std.step(flipped)
    np.testing.assert_array_equal(rev.unwrapped.data.qpos, std.unwrapped.data.qpos)
    np.testing.assert_array_equal(rev.unwrapped.data.qvel, std.unwrapped.data.qvel)
    # and not the trajectory of the same command on the intact body
    std.reset(seed=3)
    rev.reset(seed=3)
    for _ in range(30):
        u = rng.uniform(-1.0, 1.0, task.n_out).astype(np.float32)
        rev.step(u)
        std.step(u)
    assert np.abs(rev.unwrapped.data.qpos - std.unwrapped.data.qpos).max() > 1e-2


def test_friction_mass_and_the_old_names_agree(tasks):
    task = _task("HalfCheetah-v5", friction_scale=0.3, torso_mass_scale=2.0, crippled_leg="front")
    std = _model(task, "standard")
    torso = mujoco.mj_name2id(std, mujoco.mjtObj.mjOBJ_BODY, "torso")
    for new, old in (("friction:0.3", "low_friction"), ("mass:2", "heavy_body"), ("crippled:front", "crippled_leg")):
        a, b = _model(task, new), _model(task, old)
        for field in ("geom_friction", "body_mass", "body_inertia", "actuator_gear"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    np.testing.assert_allclose(_model(task, "friction:0.3").geom_friction[:, 0], 0.3 * std.geom_friction[:, 0])
    heavy = _model(task, "mass:2")
    assert heavy.body_mass[torso] == pytest.approx(2.0 * std.body_mass[torso])
    np.testing.assert_allclose(heavy.body_inertia[torso], 2.0 * std.body_inertia[torso])


def test_names_and_metric_keys():
    assert parse_condition("weak:back:0.5").damage == ("weak", "back", 0.5)
    assert parse_condition("weak:back:0.50").damage == parse_condition("weak:back:0.5").damage
    assert metric_key("crippled:back") == "crippled_back"
    assert metric_key("weak:front_left:0.5") == "weak_front_left_0.5"
    assert metric_key("crippled_leg") == "crippled_leg"


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (
            {"conditions": ["gravity"]},
            r"^task\.conditions\.0: unknown condition 'gravity'; known: standard, crippled:<leg>",
        ),
        (
            {"conditions": ["weak:middle:0.5"]},
            r"task: conditions: .*'middle' is not a leg of HalfCheetah; known: back, front",
        ),
        ({"env_id": "Ant-v5", "conditions": ["short:front:0.5"]}, r"'front' is not a leg of Ant; known: front_left"),
        ({"conditions": ["weak:back:0"]}, r"^task\.conditions\.0: condition 'weak:back:0': factor '0' must be > 0"),
        ({"conditions": ["mass:-1"]}, r"^task\.conditions\.0: condition 'mass:-1': factor '-1' must be > 0"),
        ({"train_conditions": ["short:back:x"]}, r"^task\.train_conditions\.0: .*factor 'x' is not a number"),
        ({"conditions": ["crippled"]}, r"condition 'crippled' takes crippled:<leg>"),
        ({"conditions": ["reversed:back:0.5"]}, r"condition 'reversed:back:0.5' takes reversed:<leg>$"),
        ({"train_conditions": []}, r"task\.train_conditions"),
        (
            {"train_conditions": ["standard", "weak:back:0.5"], "conditions": ["weak:back:0.50"]},
            r"task: conditions: 'weak:back:0.50' is trained on, so it cannot be held out",
        ),
        ({"conditions": ["crippled_leg", "crippled:back"]}, r"'crippled:back' names the same condition twice"),
        ({"conditions": ["standard"]}, r"'standard' is trained on, so it cannot be held out"),
    ],
)
def test_a_bad_condition_is_one_config_error(task, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"task": {"name": "locomotion", **task}})


def test_every_leg_is_accepted_in_a_config():
    for robot, leg in EVERY_LEG:
        names = [f"crippled:{leg}", f"weak:{leg}:0.5", f"reversed:{leg}", f"short:{leg}:0.5"]
        cfg = parse_config({"task": {"name": "locomotion", "env_id": ROBOTS[robot], "conditions": names}})
        assert cfg.task.conditions == names
