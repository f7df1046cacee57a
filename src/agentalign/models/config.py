"""Model configuration and the presets of the paper (appendix C.1 and E) plus CPU sizes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class PolicyConfig:
    """The transformer policy of appendix C.1: ConvNeXt encoder -> GPT-2 -> MLP -> 16 heads."""

    image_size: int = 64  # square observations; the encoder halves it 6 times (stem /4, 4 stages /2)
    width: int = 128  # transformer width (d_model)
    layers: int = 4
    heads: int = 4
    ff_mult: int = 4  # feed-forward hidden = ff_mult * width (GPT-2's 4x)
    context: int = 32  # timesteps the transformer sees (paper: 32, ~3 s at 10 Hz)
    stem_channels: int = 16  # 8x8 stride-4 stem, then 4 ConvNeXt stages doubling the channels
    encoder_stages: int = 4
    head_hidden: int = 128  # the MLP after the transformer (paper: 1024 = width)
    prev_action: bool = True  # condition on a_{t-1} as the paper's pi(a_t | o_t, a_{t-1}, ...)
    dropout: float = 0.0  # the paper trains without; BC on 300 demos may want a little

    def __post_init__(self) -> None:
        for name in ("image_size", "width", "layers", "heads", "ff_mult", "context", "stem_channels", "head_hidden"):
            v = getattr(self, name)
            if v <= 0:
                raise ValueError(f"model.{name} must be positive, got {v!r}")
        if self.width % self.heads:
            raise ValueError(f"model.width ({self.width}) must be divisible by model.heads ({self.heads})")
        if self.image_size % (4 * 2**self.encoder_stages):
            raise ValueError(
                f"model.image_size {self.image_size} must be a multiple of {4 * 2**self.encoder_stages} "
                f"(the encoder's stride-4 stem and {self.encoder_stages} stride-2 stages)"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout must lie in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PolicyConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


MODEL_PRESETS: dict[str, PolicyConfig] = {
    # Appendix C.1: 8 layers, 1024 wide, 8 heads, FFN 4096, 128 px, MLP head 1024 -> ~103M parameters.
    "paper-103m": PolicyConfig(image_size=128, width=1024, layers=8, heads=8, head_hidden=1024),
    # Appendix E: the smaller models, otherwise identical.
    "25m": PolicyConfig(image_size=128, width=512, layers=8, heads=8, head_hidden=512),
    "4m": PolicyConfig(image_size=128, width=256, layers=4, heads=4, head_hidden=256),
    # Sized so the whole pipeline runs on 2 CPU cores: an 8-channel stem halves the encoder's cost,
    # which dominates training on a CPU (3.5k vs 1.9k frames/s forward+backward).
    "cpu": PolicyConfig(image_size=64, width=128, layers=4, heads=4, head_hidden=128, stem_channels=8),
    # For tests: seconds on one core.
    "tiny": PolicyConfig(image_size=64, width=32, layers=1, heads=2, head_hidden=32, stem_channels=4, context=8),
}


def model_preset(name: str, **overrides: Any) -> PolicyConfig:
    try:
        base = MODEL_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(MODEL_PRESETS)}") from None
    return replace(base, **overrides)
