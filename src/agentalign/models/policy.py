"""The transformer policy of appendix C.1, from pixels to gamepad actions.

    o_t (H, W, 3) uint8 -> /255 -> ConvNeXt encoder -> LayerNorm -> linear to width   z_t
    token_t = z_t + embed(a_{t-1}) + pos_t           (a learned BOS stands for a_{-1})
    GPT-2 pre-LN causal transformer over the last `context` tokens -> LayerNorm      h_t
    MLP (one hidden layer, GELU) -> 68 logits -> 16 categorical heads              pi(a_t | ...)

`embed` gives h_t, the "layer-normed transformer output" the reward model of appendix C.3 uses as
the agent encoder. For rollouts, `encode` and `forward_embedded` let a caller encode each frame
once and keep the embeddings of the context window (see agentalign.rollout).

Departure from the paper: the previous action is added to each step's token (the paper's
pi(a_t | o_t, a_{t-1}, ..., o_{t-H}) does not say how it enters); `prev_action=False` turns it off.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from agentalign.io import atomic_save_safetensors, atomic_write_json
from agentalign.models.config import PolicyConfig
from agentalign.models.distribution import N_LOGITS, OFFSETS, ActionDistribution

CHECKPOINT_SCHEMA = 1


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 -> LayerNorm -> 1x1 (4x) -> GELU -> 1x1, residual (Liu et al., 2022)."""

    def __init__(self, c: int):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1 = nn.Linear(c, 4 * c)
        self.pw2 = nn.Linear(4 * c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        y = self.dw(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.pw2(F.gelu(self.pw1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtEncoder(nn.Module):
    """8x8 stride-4 stem to `stem` channels, then per stage a ConvNeXt block and a 3x3 stride-2
    downsampling that doubles the channels; LayerNorm on the flattened output (appendix C.1)."""

    def __init__(self, image_size: int, stem: int, stages: int):
        super().__init__()
        self.stem = nn.Conv2d(3, stem, 8, stride=4, padding=3)
        blocks: list[nn.Module] = []
        c = stem
        for _ in range(stages):
            blocks += [ConvNeXtBlock(c), LayerNorm2d(c), nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)]
            c *= 2
        self.blocks = nn.Sequential(*blocks)
        side = image_size // 4 // 2**stages
        self.out_dim = c * side * side
        self.norm = nn.LayerNorm(self.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) float in [0, 1] -> (B, out_dim)
        return self.norm(self.blocks(self.stem(x)).flatten(1))


class Block(nn.Module):
    """GPT-2 pre-LN block: x + attn(ln(x)), then x + mlp(ln(x)); causal SDPA."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.heads = cfg.heads
        self.ln1 = nn.LayerNorm(cfg.width)
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.ln2 = nn.LayerNorm(cfg.width)
        self.fc = nn.Linear(cfg.width, cfg.ff_mult * cfg.width)
        self.fc_out = nn.Linear(cfg.ff_mult * cfg.width, cfg.width)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(B, T, D) -> (B, T, D), or (B, 1, D) for the last position alone with `last_only`: its
        query attends to every key, and the MLP runs on one token instead of T."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        if last_only:  # the last query sees the whole window, so no causal mask is needed
            q, x, t = q[:, :, -1:], x[:, -1:], 1
        y = F.scaled_dot_product_attention(q, k, v, is_causal=not last_only, dropout_p=p)  # (B, heads, T, D/heads)
        x = x + F.dropout(self.proj(y.transpose(1, 2).reshape(b, t, d)), p, self.training)
        return x + F.dropout(self.fc_out(F.gelu(self.fc(self.ln2(x)))), p, self.training)


class Policy(nn.Module):
    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ConvNeXtEncoder(cfg.image_size, cfg.stem_channels, cfg.encoder_stages)
        self.obs_proj = nn.Linear(self.encoder.out_dim, cfg.width)
        self.action_embed = nn.Embedding(N_LOGITS, cfg.width)  # one row per (component, value)
        self.bos = nn.Parameter(torch.zeros(cfg.width))
        self.pos = nn.Parameter(torch.zeros(cfg.context, cfg.width))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.width)
        self.head = nn.Sequential(nn.Linear(cfg.width, cfg.head_hidden), nn.GELU(), nn.Linear(cfg.head_hidden, N_LOGITS))
        self.register_buffer("offsets", torch.tensor(OFFSETS), persistent=False)
        self.apply(self._init)
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.bos, std=0.02)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    # -- the pieces ---------------------------------------------------------------------------

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """(..., H, W, 3) uint8 frames -> (..., width) per-frame embeddings z_t."""
        lead = obs.shape[:-3]
        h, w = obs.shape[-3:-1]
        if (h, w) != (self.cfg.image_size, self.cfg.image_size):
            raise ValueError(f"frames are {h}x{w} but the model takes {self.cfg.image_size}x{self.cfg.image_size}")
        x = obs.reshape(-1, h, w, 3).permute(0, 3, 1, 2).float().div_(255.0)
        z = self.obs_proj(self.encoder(x))
        return z.reshape(*lead, -1)

    def embed_prev_actions(self, prev_actions: torch.Tensor, first_is_bos: bool = True) -> torch.Tensor:
        """(B, T, 16) int actions a_{t-1} -> (B, T, width); position 0 gets the BOS embedding."""
        e = self.action_embed(prev_actions + self.offsets).sum(-2)  # (B, T, width)
        if first_is_bos:
            e = torch.cat([self.bos.expand(e.shape[0], 1, -1), e[:, 1:]], 1)
        return e

    def forward_embedded(self, z: torch.Tensor, prev_actions: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Per-frame embeddings (B, T, width) and previous actions (B, T, 16) -> h (B, T, width),
        or h of the last step alone (B, 1, width) with `last_only`, which a rollout or a sliding
        window needs: the last block then works on one token (a fifth less work with 4 layers).

        prev_actions[:, t] is a_{t-1}; prev_actions[:, 0] is ignored (BOS)."""
        t = z.shape[1]
        if t > self.cfg.context:
            raise ValueError(f"context of {t} steps is longer than the model's {self.cfg.context}")
        x = z + self.pos[:t]
        if self.cfg.prev_action:
            x = x + self.embed_prev_actions(prev_actions)
        for i, blk in enumerate(self.blocks):
            x = blk(x, last_only=last_only and i == len(self.blocks) - 1)
        return self.ln_f(x)

    # -- what callers use ---------------------------------------------------------------------

    def embed(self, obs: torch.Tensor, prev_actions: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W, 3) uint8, (B, T, 16) a_{t-1} -> (B, T, width) layer-normed transformer output."""
        return self.forward_embedded(self.encode(obs), prev_actions)

    def forward(self, obs: torch.Tensor, prev_actions: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W, 3) uint8, (B, T, 16) a_{t-1} -> (B, T, 68) action logits."""
        return self.head(self.embed(obs, prev_actions))

    def distribution(self, logits: torch.Tensor, temperature: float = 1.0) -> ActionDistribution:
        return ActionDistribution(logits, temperature)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- checkpoints --------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, **info) -> Path:
        """Write model.safetensors + config.json atomically into `directory`.

        `info` (stage, parent checkpoint, dataset id, ...) is stored in config.json beside the
        model config."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_save_safetensors({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                                d / "model.safetensors")  # fmt: skip
        atomic_write_json(d / "config.json", {"schema": CHECKPOINT_SCHEMA, "kind": "policy",
                                              "model": self.cfg.to_dict(), **info})  # fmt: skip
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu") -> "Policy":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        d = Path(directory)
        meta = read_checkpoint_config(d, kind="policy")
        path = d / "model.safetensors"
        if not isinstance(meta.get("model"), dict):
            raise ValueError(f"{d / 'config.json'} is damaged (no model settings); {RERUN}")
        try:
            model = cls(PolicyConfig.from_dict(meta["model"]))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{d / 'config.json'} is damaged (model: {e}); {RERUN}") from None
        try:
            state = load_file(path, device=map_location)
        except SafetensorError as e:  # truncated, or not a safetensors file at all
            raise ValueError(f"{path} is damaged ({e}); {RERUN}") from None
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # tensors of other shapes
            raise ValueError(f"{path} does not match its config.json ({str(e).splitlines()[-1].strip()}); {RERUN}") from None
        if missing or unexpected:
            raise ValueError(f"{path} does not match its config.json: "
                             f"missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]}")  # fmt: skip
        return model


RERUN = "rerun the stage that made it"


def read_checkpoint_config(directory: str | Path, kind: str) -> dict:
    """config.json of a checkpoint directory, checked for presence, schema and kind; a garbled one
    is a ValueError naming it."""
    d = Path(directory)
    path = d / "config.json"
    if not path.is_file():
        if (d / "model.safetensors").is_file():  # a checkpoint cut short
            raise ValueError(f"{path} is missing beside model.safetensors; {RERUN}")
        raise ValueError(f"{d}: not a checkpoint (no config.json)")
    if not (d / "model.safetensors").is_file():
        raise ValueError(f"{d}: not a checkpoint (no model.safetensors)")
    try:
        meta = json.loads(path.read_bytes())
    except ValueError as e:  # not JSON, or not text (UnicodeDecodeError is a ValueError)
        raise ValueError(f"{path} is damaged ({e}); {RERUN}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is damaged (a JSON {type(meta).__name__}, not an object); {RERUN}")
    if meta.get("schema") != CHECKPOINT_SCHEMA:
        raise ValueError(f"{path}: checkpoint schema {meta.get('schema')!r}, this version reads {CHECKPOINT_SCHEMA}")
    if meta.get("kind") != kind:
        raise ValueError(f"{path}: a {meta.get('kind')!r} checkpoint, expected {kind!r}")
    return meta
