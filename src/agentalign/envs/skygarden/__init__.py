"""SkyGarden: the built-in launch island (4 spawns, 3 jump pads), rendered from pixels."""

from agentalign.envs.skygarden.env import IslandBatch, SkyGardenEnv, SkyGardenVectorEnv

__all__ = ["IslandBatch", "SkyGardenEnv", "SkyGardenVectorEnv"]
