"""Locomotion: a plastic SNN controls a gymnasium MuJoCo robot (``HalfCheetah-v5``, ``Ant-v5``, ...).

One control step, with observation ``o_t`` and the network's readout ``y_t`` (``B x n_act``)::

    x_t = obs_gain * clip((o_t - mu) / sqrt(var + 1e-8), -obs_clip, obs_clip)   input currents
    y_t, s_t, state = network.step(x_t, state)                                  plasticity runs online
    a_t = low + (tanh(y_t) + 1) / 2 * (high - low)                              squashed into the bounds

``mu``/``var`` are running statistics of the observations seen in training
(:class:`ObsNormalizer`), frozen while a policy is evaluated.  The readout ``y`` is the
network's leaky integrator of the hidden spikes, so actions are decoded from filtered spikes.
Every episode starts from ``network.initial_state(B)``: resting neurons and ``H = 0`` for
each of the ``B`` episodes played side by side (plastic state is per episode and per sample).

Conditions modify the MuJoCo model of a fresh environment; they are declared in one table,
:mod:`hybridopt.tasks.conditions` (``standard``, ``crippled:<leg>``, ``weak:<leg>:<f>``,
``reversed:<leg>``, ``short:<leg>:<f>``, ``friction:<f>``, ``mass:<f>`` and the old ``crippled_leg``,
``low_friction``, ``heavy_body``).  The task trains in ``task.train_conditions`` and holds out
``task.conditions``; :data:`LEGS` names the legs of the known robots.  Same network, same
normaliser, same seeds: same returns (MuJoCo and the network are deterministic).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Optional

import gymnasium as gym
import mujoco
import numpy as np
import torch

from hybridopt.snn.catalogue import PROJECTIONS
from hybridopt.snn.step import MembersStep, stack_members
from hybridopt.tasks.base import EVAL_SEED_OFFSET, ObsNormalizer, ObsStats, Rollout, eval_seeds
from hybridopt.tasks.conditions import (
    CONDITIONS,
    LEGS,
    Condition,
    apply_condition,
    check_env_and_leg,
    leg_actuators,
    parse_condition,
)

__all__ = [
    "CONDITIONS",
    "EVAL_SEED_OFFSET",
    "Condition",
    "LEGS",
    "Locomotion",
    "ObsNormalizer",
    "ObsStats",
    "Rollout",
    "check_env_and_leg",
    "eval_seeds",
    "leg_actuators",
]


@contextmanager
def _compiler_warnings_as_python_warnings() -> Iterator[None]:
    """MuJoCo prints every compiler warning to stderr *and* appends it to ``MUJOCO_LOG.TXT`` in
    the working directory; while a model compiles, route them to :mod:`warnings` instead,
    dropping the deprecation notice the gymnasium XMLs trigger on every load (``settotalmass``)."""
    previous = mujoco.get_mju_user_warning()

    def handler(msg: str) -> None:
        if "settotalmass" not in msg:
            warnings.warn(f"MuJoCo: {msg}", RuntimeWarning, stacklevel=2)

    mujoco.set_mju_user_warning(handler)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


# --------------------------------------------------------------------------- episodes


class Locomotion:
    """The locomotion task (see the module docstring); environments are made lazily and kept,
    one list per condition, so a worker builds them once."""

    name = "locomotion"
    chance = math.nan  # a return has no chance level

    def __init__(self, cfg) -> None:
        check_env_and_leg(cfg.env_id, cfg.crippled_leg)
        self.cfg = cfg
        self._envs: dict[str, list[gym.Env]] = {}
        self._conditions: dict[str, Condition] = {}
        probe = self.envs("standard", 1)[0]
        self.n_in = int(np.prod(probe.observation_space.shape))
        self.n_out = int(np.prod(probe.action_space.shape))
        self.low = torch.as_tensor(probe.action_space.low, dtype=torch.float32)
        self.high = torch.as_tensor(probe.action_space.high, dtype=torch.float32)
        for c in (*cfg.train_conditions, *cfg.conditions):  # a bad leg fails here, not after training
            self.envs(c, 1)

    def condition(self, name: str) -> Condition:
        """The condition ``name`` stands for (an alias takes its argument from the config)."""
        if name not in self._conditions:
            self._conditions[name] = parse_condition(name, self.cfg, self.cfg.env_id)
        return self._conditions[name]

    def make_env(self, condition: str) -> gym.Env:
        """A fresh environment whose MuJoCo model is modified for ``condition`` (a name of
        :mod:`hybridopt.tasks.conditions`)."""
        cond = self.condition(condition)
        with _compiler_warnings_as_python_warnings():
            env = gym.make(
                self.cfg.env_id,
                max_episode_steps=self.cfg.episode_steps,
                disable_env_checker=True,
                **self.cfg.env_kwargs,
            )
        apply_condition(env.unwrapped.model, cond, self.cfg.env_id)
        return env

    def envs(self, condition: str, n: int) -> list[gym.Env]:
        have = self._envs.setdefault(condition, [])
        while len(have) < n:
            have.append(self.make_env(condition))
        return have[:n]

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        """Readout -> action in the bounds: ``low + (tanh(y) + 1) / 2 * (high - low)``."""
        return self.low + (torch.tanh(y) + 1.0) * 0.5 * (self.high - self.low)

    @torch.inference_mode()
    def rollout(
        self,
        net,
        params,
        seeds: Sequence[int],
        normalizer: ObsNormalizer,
        *,
        condition: str = "standard",
        stats: Optional[ObsStats] = None,
    ) -> Rollout:
        """Play ``len(seeds)`` episodes side by side (one per seed, batch ``B``) with the
        network's parameters ``params``; the normaliser is frozen, and with ``stats`` the
        observations seen are added to it.  With ``fresh_weights`` each episode plays alone, on
        weights drawn from its own seed (:meth:`PlasticSNN.fresh_weights`)."""
        if not self.cfg.fresh_weights:
            return self._episodes(net, params, seeds, normalizer, condition, stats)
        scale = {"readout": self.cfg.readout_scale}
        played = [
            self._episodes(net, net.fresh_weights(params, s, scale), [s], normalizer, condition, stats) for s in seeds
        ]
        saturation = [r.h_saturation for r in played]
        return Rollout(
            np.concatenate([r.returns for r in played]),
            sum(r.steps for r in played),
            float(np.mean(saturation)) if saturation else math.nan,
        )

    def _episodes(
        self,
        net,
        params,
        seeds: Sequence[int],
        normalizer: ObsNormalizer,
        condition: str,
        stats: Optional[ObsStats],
    ) -> Rollout:
        c = self.cfg
        B = len(seeds)
        envs = self.envs(condition, B)
        state = net.initial_state(B)  # resting neurons, H = 0: every episode starts here
        obs = np.stack([env.reset(seed=int(s))[0] for env, s in zip(envs, seeds)]).astype(np.float64)
        returns = np.zeros(B)
        alive = np.ones(B, dtype=bool)
        steps = 0
        for _ in range(c.episode_steps):
            if stats is not None:
                stats.add(obs[alive])
            x = torch.from_numpy(normalizer.normalize(obs, c.obs_clip).astype(np.float32))
            if c.obs_gain != 1.0:
                x = x * c.obs_gain
            y, _, state = net.step(x, state, params)
            action = self.decode(y).numpy()
            for i in np.flatnonzero(alive):
                o, r, terminated, truncated, _ = envs[i].step(action[i])
                obs[i] = o
                returns[i] += r
                steps += 1
                if terminated or truncated:
                    alive[i] = False
            if not alive.any():
                break
        return Rollout(returns, steps, _h_saturation(net, state))

    @torch.inference_mode()
    def rollout_members(
        self,
        net,
        members: Sequence,
        seeds: Sequence[int],
        normalizer: ObsNormalizer,
        *,
        conditions: Sequence[str],
        stats: Optional[Sequence[ObsStats]] = None,
    ) -> np.ndarray:
        """Returns (``P x C x E``) of ``P`` parameter sets (``members``, one network structure:
        ``net``'s), each played on the ``E`` ``seeds`` in each of the ``C`` ``conditions``, all
        ``P C E`` episodes side by side: one network step per control step for the whole
        population (:class:`~hybridopt.snn.step.MembersStep`), then one MuJoCo step per episode.
        Member ``k``'s returns are ``rollout(net, members[k], seeds, ..., condition=c)``'s for
        each ``c`` with the reference kernel, up to the float rounding of a batched product
        (which a long episode can amplify), and do not depend on the other members.  With
        ``stats`` (one per member) the observations member ``k`` saw, in every condition, are
        added to ``stats[k]``.  With ``fresh_weights`` episode ``e`` plays on the weights drawn
        from ``seeds[e]``, as :meth:`rollout` does."""
        c = self.cfg
        P, C, E = len(members), len(conditions), len(seeds)
        scale = {"readout": c.readout_scale}
        episodes = []  # episode m = (k C + j) E + e: member k, condition j, seed e
        for params in members:
            drawn = [net.fresh_weights(params, s, scale) if c.fresh_weights else params for s in seeds]
            episodes += drawn * C
        params = stack_members(episodes)
        M = P * C * E
        state = stack_members([net.initial_state(1)] * M)
        envs_of = {cond: self.envs(cond, P * E) for cond in conditions}
        envs = [envs_of[conditions[j]][k * E + e] for k in range(P) for j in range(C) for e in range(E)]
        obs = np.stack([env.reset(seed=int(seeds[m % E]))[0] for m, env in enumerate(envs)]).astype(np.float64)
        returns = np.zeros(M)
        alive = np.ones(M, dtype=bool)
        seen = np.zeros(M)
        total = np.zeros_like(obs)
        total_sq = np.zeros_like(obs)
        step = MembersStep(params, net.spec)
        for _ in range(c.episode_steps):
            if stats is not None:
                seen += alive
                total[alive] += obs[alive]
                total_sq[alive] += np.square(obs[alive])
            x = torch.from_numpy(normalizer.normalize(obs, c.obs_clip).astype(np.float32))
            if c.obs_gain != 1.0:
                x = x * c.obs_gain
            y, _, state = step(x.unsqueeze(1), state)
            action = self.decode(y[:, 0]).numpy()
            for m in np.flatnonzero(alive):
                o, r, terminated, truncated, _ = envs[m].step(action[m])
                obs[m] = o
                returns[m] += r
                if terminated or truncated:
                    alive[m] = False
            if not alive.any():
                break
        if stats is not None:
            per = C * E
            for k, st in enumerate(stats):
                st.count += float(seen[k * per : (k + 1) * per].sum())
                st.total += total[k * per : (k + 1) * per].sum(0)
                st.total_sq += total_sq[k * per : (k + 1) * per].sum(0)
        return returns.reshape(P, C, E)


def _h_saturation(net, state) -> float:
    fractions = []
    for name in PROJECTIONS:
        st = getattr(state, name)
        if st is not None:
            h_max = net.spec.projection(name).h_max
            fractions.append((st.H.abs() >= 0.999 * h_max).float().mean().item())
    return sum(fractions) / len(fractions) if fractions else math.nan
