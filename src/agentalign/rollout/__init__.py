"""Batched rollouts of a policy (or a baseline) in SkyGarden, and their recording into the store.

    from agentalign.rollout import RolloutConfig, rollout, RandomActor, record_rollouts
    trajs = rollout(policy, RolloutConfig(episodes=1000, seed=0))     # list[Trajectory]

See `engine` (the loop, waves, seeding), `actors` (the embedding cache, sampling, the random
baseline) and `recording` (trajectories into the dataset store, resumable).
"""

from agentalign.rollout.actors import (
    UNIFORM_LOG_PROB,
    Actor,
    ActorStep,
    PolicyActor,
    RandomActor,
    sample_from_uniforms,
)
from agentalign.rollout.engine import (
    RolloutConfig,
    RolloutStats,
    Trajectory,
    as_actor,
    episode_seeds,
    iter_waves,
    rollout,
)
from agentalign.rollout.recording import (
    RANDOM,
    load_actor,
    load_trajectories,
    policy_fingerprint,
    record_rollouts,
    save_trajectories,
    to_episode,
)

__all__ = [
    "Actor",
    "ActorStep",
    "PolicyActor",
    "RANDOM",
    "RandomActor",
    "RolloutConfig",
    "RolloutStats",
    "Trajectory",
    "UNIFORM_LOG_PROB",
    "as_actor",
    "episode_seeds",
    "iter_waves",
    "load_actor",
    "load_trajectories",
    "policy_fingerprint",
    "record_rollouts",
    "rollout",
    "sample_from_uniforms",
    "save_trajectories",
    "to_episode",
]
