"""The locomotion task: normaliser maths, novel conditions on the MuJoCo model, plastic state
reset per episode and per sample, determinism, config validation."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest
import torch

from hybridopt.config import ConfigError, load_config, parse_config
from hybridopt.snn.network import PlasticSNN
from hybridopt.tasks.locomotion import Locomotion, ObsNormalizer, ObsStats, leg_actuators
from hybridopt.train.es import build_policy, evaluate_policy

SMOKE = "configs/smoke_locomotion.yaml"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # As the inner loop runs it: batches of 2-5 episodes are slower multi-threaded.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cfg():
    return load_config(SMOKE)


@pytest.fixture(scope="module")
def policy(cfg):
    return build_policy(cfg)


def _actuator_names(model, ids):
    return sorted(mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, model.actuator_trnid[a, 0]) for a in ids)


# --------------------------------------------------------------------------- normaliser
def test_normalizer_merge_equals_statistics_of_all_data():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (5, 17, 1)]
    norm = ObsNormalizer.identity(4)
    for c in chunks:
        stats = ObsStats.empty(4)
        stats.add(c)
        norm = norm.merged(stats)
    data = np.concatenate(chunks)
    np.testing.assert_allclose(norm.mean, data.mean(0))
    np.testing.assert_allclose(norm.var, data.var(0))
    assert norm.count == len(data)
    z = norm.normalize(data, clip=100.0)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-12)
    assert np.abs(norm.normalize(data * 100, clip=5.0)).max() <= 5.0


def test_empty_stats_leave_the_normalizer_unchanged():
    norm = ObsNormalizer(np.ones(3), np.full(3, 2.0), 10.0)
    assert norm.merged(ObsStats.empty(3)) is norm


# --------------------------------------------------------------------------- conditions
def test_crippled_leg_zeroes_exactly_that_legs_torque(cfg):
    task = Locomotion(cfg.task)
    std, crip = task.make_env("standard"), task.make_env("crippled_leg")
    ids = leg_actuators(std.unwrapped.model, "bthigh")
    assert _actuator_names(std.unwrapped.model, ids) == ["bfoot", "bshin", "bthigh"]
    for env in (std, crip):
        env.reset(seed=0)
        env.step(np.ones(task.n_out, dtype=np.float32))
    # Generalised force the actuators put on each actuated joint (gear * actuator force).
    m = std.unwrapped.model
    dof = [int(m.jnt_dofadr[m.actuator_trnid[a, 0]]) for a in range(task.n_out)]
    q_std, q_crip = std.unwrapped.data.qfrc_actuator[dof], crip.unwrapped.data.qfrc_actuator[dof]
    assert np.all(q_crip[ids] == 0.0) and np.all(q_std[ids] != 0.0)
    others = [a for a in range(task.n_out) if a not in ids]
    np.testing.assert_array_equal(q_crip[others], q_std[others])
    np.testing.assert_array_equal(crip.unwrapped.model.actuator_gear[ids], 0.0)


def test_front_leg_and_ant_legs_resolve_to_their_actuators(cfg):
    front = cfg.task.model_copy(update={"crippled_leg": "front"})
    env = Locomotion(front).make_env("crippled_leg")
    m = env.unwrapped.model
    zeroed = [a for a in range(m.nu) if m.actuator_gear[a, 0] == 0.0]
    assert _actuator_names(m, zeroed) == ["ffoot", "fshin", "fthigh"]
    ant = parse_config({"task": {"name": "locomotion", "env_id": "Ant-v5", "crippled_leg": "front_left"}}).task
    m = Locomotion(ant).make_env("crippled_leg").unwrapped.model
    zeroed = [a for a in range(m.nu) if m.actuator_gear[a, 0] == 0.0]
    assert _actuator_names(m, zeroed) == ["ankle_1", "hip_1"]


def test_low_friction_and_heavy_body_change_the_model(cfg):
    task = Locomotion(cfg.task)
    std = task.make_env("standard").unwrapped.model
    low = task.make_env("low_friction").unwrapped.model
    heavy = task.make_env("heavy_body").unwrapped.model
    floor = mujoco.mj_name2id(std, mujoco.mjtObj.mjOBJ_GEOM, "floor")
    np.testing.assert_allclose(low.geom_friction[:, 0], 0.25 * std.geom_friction[:, 0])
    assert low.geom_friction[floor, 0] == pytest.approx(0.25 * std.geom_friction[floor, 0])
    np.testing.assert_array_equal(low.body_mass, std.body_mass)
    torso = mujoco.mj_name2id(std, mujoco.mjtObj.mjOBJ_BODY, "torso")
    assert heavy.body_mass[torso] == pytest.approx(1.5 * std.body_mass[torso])
    others = np.arange(std.nbody) != torso
    np.testing.assert_array_equal(heavy.body_mass[others], std.body_mass[others])
    np.testing.assert_array_equal(heavy.geom_friction, std.geom_friction)


def test_conditions_change_the_return(policy):
    task, net = policy
    norm = ObsNormalizer.identity(task.n_in)
    ret = {c: task.rollout(net, net.params(), [7], norm, condition=c).returns[0] for c in task.cfg.conditions}
    ret["standard"] = task.rollout(net, net.params(), [7], norm).returns[0]
    assert len({round(float(r), 9) for r in ret.values()}) == len(ret)


# --------------------------------------------------------------------------- plastic state
class _SpyNet(PlasticSNN):
    """Records the plastic state each episode starts from."""

    def __init__(self, spec, seed=0):
        super().__init__(spec, seed)
        self.starts: list = []

    def initial_state(self, batch):
        st = super().initial_state(batch)
        self.starts.append(st)
        return st


def test_plastic_state_is_reset_every_episode_and_kept_per_sample(policy):
    task, net0 = policy
    net = _SpyNet(net0.spec)
    net.load_state_dict(net0.state_dict())
    assert net.spec.input.plastic
    norm = ObsNormalizer.identity(task.n_in)
    params = net.params()
    first = task.rollout(net, params, [3], norm).returns
    second = task.rollout(net, params, [3], norm).returns
    # Every episode starts from H = 0 (one fresh state per episode), so a replay is identical.
    assert len(net.starts) == 2
    assert all(float(st.input.H.abs().max()) == 0.0 for st in net.starts)
    np.testing.assert_array_equal(first, second)
    # Per sample: episodes played side by side equal the same episodes played alone.
    both = task.rollout(net, params, [3, 4], norm).returns
    alone = task.rollout(net, params, [4], norm).returns
    np.testing.assert_allclose(both, [first[0], alone[0]], rtol=1e-6)
    assert net.starts[-2].input.H.shape[0] == 2


def test_plastic_state_changes_within_an_episode_and_differs_between_samples(policy):
    task, net = policy
    norm = ObsNormalizer.identity(task.n_in)
    envs = task.envs("standard", 2)
    state = net.initial_state(2)
    obs = np.stack([env.reset(seed=s)[0] for env, s in zip(envs, (1, 2))])
    params = net.params()
    with torch.inference_mode():
        for _ in range(task.cfg.episode_steps):
            x = torch.from_numpy(norm.normalize(obs, 5.0).astype(np.float32))
            y, _, state = net.step(x, state, params)
            action = task.decode(y).numpy()
            obs = np.stack([env.step(a)[0] for env, a in zip(envs, action)])
    H = state.input.H
    assert float(H.abs().max()) > 0.0
    assert not torch.equal(H[0], H[1])


# --------------------------------------------------------------------------- determinism
def test_evaluation_is_deterministic_for_a_fixed_seed(cfg, policy):
    task, net = policy
    norm = ObsNormalizer(np.zeros(task.n_in), np.full(task.n_in, 4.0), 1.0)
    a = evaluate_policy(task, net, norm, seed=0)
    task2, net2 = build_policy(cfg)
    b = evaluate_policy(task2, net2, norm, seed=0)
    assert a == b
    c = evaluate_policy(task, net, norm, seed=1)
    assert c["eval/return/standard"] != a["eval/return/standard"]
    assert set(a) >= {f"eval/{k}/{c}" for k in ("return", "degradation") for c in ("standard", *cfg.task.conditions)}


@pytest.mark.parametrize("fresh", [False, True], ids=["trained-weights", "fresh-weights"])
def test_a_population_played_side_by_side_equals_each_member_played_alone(fresh):
    from torch.utils._pytree import tree_map

    extra = ["task.fresh_weights=true", "plasticity.input.rule=abcd"] if fresh else []
    # the reference kernel: the compiled single step rounds differently, and an episode amplifies it
    cfg = load_config(SMOKE, ["network.kernel=reference", "task.conditions=[low_friction]", *extra])
    task, net = build_policy(cfg)
    norm = ObsNormalizer(np.zeros(task.n_in), np.full(task.n_in, 4.0), 1.0)
    gen = torch.Generator().manual_seed(1)

    def moved(t):
        return t + 0.05 * torch.randn(t.shape, generator=gen) if isinstance(t, torch.Tensor) else t

    members = [tree_map(moved, net.params()) for _ in range(3)]
    conditions = ["standard", "crippled_leg"]
    stats = [ObsStats.empty(task.n_in) for _ in members]
    returns = task.rollout_members(net, members, [3, 4], norm, conditions=conditions, stats=stats)
    assert returns.shape == (3, 2, 2)
    for k, params in enumerate(members):
        seen = ObsStats.empty(task.n_in)
        alone = [task.rollout(net, params, [3, 4], norm, condition=c, stats=seen).returns for c in conditions]
        np.testing.assert_allclose(returns[k], np.array(alone), rtol=1e-6)
        assert stats[k].count == seen.count == 2 * 2 * cfg.task.episode_steps
        np.testing.assert_allclose(stats[k].total, seen.total, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(stats[k].total_sq, seen.total_sq, rtol=1e-9, atol=1e-9)
    assert len({float(r.sum()) for r in returns}) == 3  # each member played its own parameters
    again = task.rollout_members(net, members[1:2], [3, 4], norm, conditions=conditions)
    np.testing.assert_array_equal(again[0], returns[1])  # nor does the rest of the population matter


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("task.crippled_leg=middle", "crippled_leg 'middle' is not a leg of HalfCheetah"),
        ("task.env_id=NoSuchRobot-v9", "unknown gymnasium environment"),
        ("task.conditions=[gravity]", "task.conditions.0"),
        ("es.popsize=5", "popsize must be even"),
        ("es.plastic_stdevv=0.1", "es.plastic_stdevv: unknown key"),
    ],
)
def test_bad_locomotion_config_is_one_clear_error(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(SMOKE, [override])
