"""The built-in tasks' config sections, registered as any task is (:func:`register_task`).

Declared here rather than in the tasks' own modules (which import torch, and a simulator), so
that a config is validated before any of those load; each task's class is named by its path and
imported when a task is first made.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator

from hybridopt.tasks.conditions import check_name
from hybridopt.tasks.registry import Distinct, Fraction, Positive, TaskSection, register_task

__all__ = ["CueAssociationConfig", "LocomotionConfig", "PatternMemoryConfig"]


class CueAssociationConfig(TaskSection):
    """Meta-learning: which of ``n_cues`` fresh random cues is the target?  See ``tasks.cue_association``."""

    kind: ClassVar[str] = "gradient"
    n_cues: Annotated[int, Field(ge=2)] = 4
    cue_bits: Annotated[int, Field(ge=2)] = 16
    trials: Annotated[int, Field(ge=2)] = 12
    cue_steps: Annotated[int, Field(ge=1)] = 10
    response_steps: Annotated[int, Field(ge=1)] = 5
    feedback_steps: Annotated[int, Field(ge=1)] = 5
    hold_cue: bool = True
    rate_on: Fraction = 0.5
    rate_off: Fraction = 0.0
    feedback_rate: Fraction = 0.8
    noise: Fraction = 0.0
    noise_on: Distinct[Literal["cue", "feedback", "marker"]] = ["cue", "feedback", "marker"]

    def input_positions(self) -> tuple[list[list[int]], list[int]]:
        """The two cue banks are the positions; the marker and the feedback channels are shared."""
        nb = self.cue_bits
        return [list(range(nb)), list(range(nb, 2 * nb))], [2 * nb, 2 * nb + 1, 2 * nb + 2]


class PatternMemoryConfig(TaskSection):
    """Store ``n_patterns`` random binary patterns, then complete a half-erased one."""

    kind: ClassVar[str] = "gradient"
    n_patterns: Annotated[int, Field(ge=1)] = 3
    pattern_bits: Annotated[int, Field(ge=2)] = 16
    repeats: Annotated[int, Field(ge=1)] = 3
    show_steps: Annotated[int, Field(ge=1)] = 6
    gap_steps: Annotated[int, Field(ge=0)] = 2
    recall_steps: Annotated[int, Field(ge=1)] = 8
    rate_on: Fraction = 0.5
    rate_off: Fraction = 0.0
    noise: Fraction = 0.0


ConditionName = Annotated[str, AfterValidator(check_name)]  # a name of ``tasks.conditions``' table


class LocomotionConfig(TaskSection):
    """Control a gymnasium MuJoCo robot; see ``tasks.locomotion`` (trained by the ES inner loop, ``es``).

    Observations are normalised by running mean/std, clipped to ``obs_clip`` and fed as input
    currents times ``obs_gain``; actions are ``tanh`` of the readout, mapped into the action
    bounds; the readout weights start ``readout_scale`` times their usual size.

    Conditions are named as in ``tasks.conditions`` (``standard``, ``crippled:back``,
    ``weak:back:0.5``, ``short:front:0.6``, ``friction:0.25``, ``mass:1.5``).  Training plays
    every sample in each of ``train_conditions``, its fitness the mean return over them;
    ``conditions`` are held out, only evaluated (``eval_seeds`` seeded episodes in each, and in
    ``standard``).  The old names stay: ``crippled_leg`` zeroes the actuators of
    ``crippled_leg``, ``low_friction`` scales friction by ``friction_scale``, ``heavy_body``
    scales the torso's mass by ``torso_mass_scale``.

    ``fresh_weights``: every episode starts from weights drawn anew, ``W ~ N(0, gain^2 / n_pre)``
    for each projection (the readout's times ``readout_scale``), seeded by the episode's seed, so
    that only plasticity (``W + alpha ⊙ H``) can make a controller of them within the episode; the
    search then leaves ``W`` out and learns the rest (the rule's coefficients, ``alpha``, the
    modulation, the biases).
    """

    kind: ClassVar[str] = "control"  # played in a simulator: no gradient, trained by search gradient
    env_id: str = "HalfCheetah-v5"
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    episode_steps: Annotated[int, Field(ge=1)] = 500
    obs_gain: Positive = 1.0
    obs_clip: Positive = 5.0
    readout_scale: Positive = 0.1
    fresh_weights: bool = False
    train_conditions: Annotated[Distinct[ConditionName], Field(min_length=1)] = ["standard"]
    conditions: Distinct[ConditionName] = ["crippled_leg", "low_friction", "heavy_body"]  # pydantic copies defaults
    crippled_leg: str = "back"
    friction_scale: Positive = 0.25
    torso_mass_scale: Positive = 1.5
    eval_seeds: Annotated[int, Field(ge=1)] = 3

    @model_validator(mode="after")
    def _known_env_and_leg(self) -> LocomotionConfig:
        from hybridopt.tasks.conditions import check_env_and_leg, parse_condition

        check_env_and_leg(self.env_id, self.crippled_leg)
        seen: dict[tuple[str, Any, float], tuple[str, str]] = {}
        for field in ("train_conditions", "conditions"):
            for name in getattr(self, field):
                try:
                    damage = parse_condition(name, self, self.env_id).damage
                except ValueError as e:
                    raise ValueError(f"{field}: {e}") from None
                if damage in seen:
                    held = field == "conditions" and seen[damage][0] == "train_conditions"
                    why = "is trained on, so it cannot be held out" if held else "names the same condition twice"
                    raise ValueError(f"{field}: {name!r} {why} (as {seen[damage][1]!r})")
                seen[damage] = (field, name)
        return self


register_task("cue_association", CueAssociationConfig, "hybridopt.tasks.cue_association:CueAssociation")
register_task("pattern_memory", PatternMemoryConfig, "hybridopt.tasks.pattern_memory:PatternMemory")
register_task("locomotion", LocomotionConfig, "hybridopt.tasks.locomotion:Locomotion")
