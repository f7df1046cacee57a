"""Environments: the built-in SkyGarden island and the gamepad action codec.

Torch-free on purpose: a studio can use the environment and the data layer without PyTorch.
Importing this package registers `agentalign/SkyGarden-v0` with Gymnasium, with the native
batched `SkyGardenVectorEnv` as its `vector_entry_point`.
"""

import gymnasium as gym

from agentalign.envs.skygarden import SkyGardenEnv, SkyGardenVectorEnv

ENV_ID = "agentalign/SkyGarden-v0"


def register_envs() -> None:
    if ENV_ID not in gym.registry:
        gym.register(
            id=ENV_ID,
            entry_point="agentalign.envs.skygarden.env:SkyGardenEnv",
            vector_entry_point="agentalign.envs.skygarden.env:SkyGardenVectorEnv",
        )


register_envs()

__all__ = ["ENV_ID", "SkyGardenEnv", "SkyGardenVectorEnv", "register_envs"]
