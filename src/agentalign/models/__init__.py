"""Models: the transformer policy (appendix C.1), its action distribution, and presets."""

from agentalign.models.config import MODEL_PRESETS, PolicyConfig, model_preset
from agentalign.models.distribution import ActionDistribution
from agentalign.models.policy import Policy

__all__ = ["MODEL_PRESETS", "ActionDistribution", "Policy", "PolicyConfig", "model_preset"]
