"""agentalign: train game agents the way large language models are trained.

Imitation pre-training on messy gameplay, supervised fine-tuning on clean demonstrations,
preferences over the agent's own trajectories, a Bradley–Terry reward model on the agent's
frozen embeddings, preference fine-tuning and online REINFORCE (or offline DPO) — after
Jelley et al., "Aligning Agents like Large Language Models".

Importing the package registers the built-in environment `agentalign/SkyGarden-v0`.
"""

from agentalign import envs as envs  # registers the Gymnasium ids

__version__ = "0.1.0"
