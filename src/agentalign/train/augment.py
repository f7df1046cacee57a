"""Image augmentations for behaviour cloning, in the spirit of VPT's (Baker et al., 2022), which the
paper uses for pre-training and fine-tuning (appendix C.1, C.2).

Objective: make the policy robust to small changes of framing and colour that do not change the
right action. Each window of a batch draws ONE set of parameters and every frame of that window
gets exactly the same transform, so the motion between frames (what the transformer reads
actions from) is untouched: a per-frame jitter would look like camera shake the player never made.

Per window:
    shift       translate by an integer number of pixels in y and x (edges replicated)
    brightness  scale all channels by b                     b ~ U[1 - brightness, 1 + brightness]
    saturation  blend each pixel with its own grey level    s ~ U[1 - saturation, 1 + saturation]
    hue         rotate colours around the grey axis         angle ~ U[-hue, hue] turns
    contrast    blend with the window's mean grey level     c ~ U[1 - contrast, 1 + contrast]

The four colour changes compose into one 3x3 matrix and an offset per window, applied in one
batched matmul. Output is float32 in [0, 255] (not rounded back to uint8: the policy converts to
float anyway, so handing it floats makes the colour pass replace that conversion instead of adding
to it), laid out channel-first per frame so that the policy's reshape to (N, H, W, 3) and
permute to (N, 3, H, W) cost nothing.

Departures from VPT: no rotation, scaling or shear, only integer shifts. An affine resample
(grid_sample) of a 64x64 batch costs about a quarter of a CPU training step, and at 64 px a 2
degree rotation moves the image's edge by about one pixel, which the shift already covers.
Hue is a rotation in RGB around the grey axis (hence "hue-ish"), not an HSV round trip.
All functions are pure: randomness comes only from the `generator` argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# ITU-R BT.601 luma weights: the grey level saturation and contrast blend towards.
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the per-window augmentations; 0 turns one off."""

    shift: float = 0.03  # max translation as a fraction of the side: +-2 px at 64, +-4 at 128 (VPT: +-2 px)
    brightness: float = 0.1  # gain in [0.9, 1.1]
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.03  # turns: +-11 degrees around the grey axis

    def __post_init__(self) -> None:
        for name in ("shift", "brightness", "contrast", "saturation", "hue"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < 1:
                raise ValueError(f"augment.{name} must lie in [0, 1), got {v!r}")


@dataclass(frozen=True)
class AugmentParams:
    """One draw for a batch of B windows."""

    shift_yx: torch.Tensor  # (B, 2) int64 pixels; positive moves the content down / right
    brightness: torch.Tensor  # (B,) float32 gains
    contrast: torch.Tensor  # (B,)
    saturation: torch.Tensor  # (B,)
    hue: torch.Tensor  # (B,) radians


def sample_params(batch: int, image_size: tuple[int, int], generator: torch.Generator,
                  cfg: AugmentConfig = AugmentConfig()) -> AugmentParams:  # fmt: skip
    """Draw per-window parameters on the CPU from `generator` (so the draw is the same on any device)."""

    def uniform(half_width: float) -> torch.Tensor:  # (B,) in [-half_width, half_width]
        return (torch.rand(batch, generator=generator) * 2 - 1) * half_width

    h, w = image_size
    max_shift = torch.tensor([round(cfg.shift * h), round(cfg.shift * w)])  # (2,) pixels
    # Integers uniform in [-max, max]: floor of a uniform over [-max, max + 1).
    u = torch.rand(batch, 2, generator=generator)
    shift_yx = torch.floor(u * (2 * max_shift + 1)).long() - max_shift  # (B, 2)
    return AugmentParams(
        shift_yx=shift_yx,
        brightness=1 + uniform(cfg.brightness),
        contrast=1 + uniform(cfg.contrast),
        saturation=1 + uniform(cfg.saturation),
        hue=uniform(cfg.hue) * 2 * math.pi,
    )


def colour_matrix(p: AugmentParams) -> torch.Tensor:
    """(B, 3, 3) colour matrix: hue rotation, then saturation, scaled by brightness (contrast is
    applied in `apply` because it needs the window's mean)."""
    b = p.brightness.shape[0]
    eye = torch.eye(3).expand(b, 3, 3)
    luma = torch.tensor(LUMA)
    # Saturation: s * x + (1 - s) * (luma . x) in every channel.
    s = p.saturation[:, None, None]
    sat = s * eye + (1 - s) * luma.expand(b, 3, 3)
    # Hue: rotation by angle a around the unit grey axis (1, 1, 1) / sqrt(3) (Rodrigues' formula).
    a = p.hue[:, None, None]
    cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3)
    rot = torch.cos(a) * eye + (1 - torch.cos(a)) / 3 * torch.ones(b, 3, 3) + torch.sin(a) * cross
    return p.brightness[:, None, None] * (sat @ rot)


def _shift_index(p: AugmentParams, h: int, w: int) -> torch.Tensor:
    """(B, H*W) source pixel of every output pixel, edges replicated."""
    dy, dx = p.shift_yx[:, :1], p.shift_yx[:, 1:]  # (B, 1)
    rows = (torch.arange(h)[None] - dy).clamp_(0, h - 1)  # (B, H)
    cols = (torch.arange(w)[None] - dx).clamp_(0, w - 1)  # (B, W)
    return (rows[:, :, None] * w + cols[:, None, :]).reshape(-1, h * w)


def apply(obs_bthwc: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """Augment a batch of windows: (B, T, H, W, 3) uint8 -> (B, T, H, W, 3) float32 in [0, 255].

    Every frame of window b gets window b's transform. The result is a view of a (B, T, 3, H, W)
    tensor, so it is channel-first per frame."""
    b, t, h, w, c = obs_bthwc.shape
    if c != 3:
        raise ValueError(f"frames must have 3 channels, got {c}")
    dev = obs_bthwc.device
    # 1. shift: gather every frame's pixels from the shifted grid (on uint8: 4x less memory traffic)
    flat = obs_bthwc.reshape(b, t, h * w, 3)
    if bool((p.shift_yx != 0).any()):
        idx = _shift_index(p, h, w).to(dev)  # (B, HW)
        flat = torch.gather(flat, 2, idx[:, None, :, None].expand(b, t, h * w, 3))  # (B, T, HW, 3) uint8
    x = flat.transpose(2, 3).contiguous().float()  # (B, T, 3, HW)
    # 2. colour: y = c * M x + (1 - c) * mean grey of M x over the window, in every channel.
    m = colour_matrix(p).to(dev)  # (B, 3, 3)
    # The window's mean colour, estimated on every 4th frame, row and column: the exact mean would
    # cost a full pass over the batch for a number that barely moves.
    mean_rgb = obs_bthwc[:, ::4, ::4, ::4].float().mean(dim=(1, 2, 3))  # (B, 3)
    grey = (m @ mean_rgb[:, :, None])[:, :, 0] @ torch.tensor(LUMA, device=dev)  # (B,)
    con = p.contrast.to(dev)
    offset = ((1 - con) * grey)[:, None, None, None]  # (B, 1, 1, 1)
    y = torch.matmul((con[:, None, None] * m)[:, None], x).add_(offset).clamp_(0, 255)  # (B, T, 3, HW)
    return y.view(b, t, 3, h, w).permute(0, 1, 3, 4, 2)


def augment(obs_bthwc: torch.Tensor, generator: torch.Generator, cfg: AugmentConfig = AugmentConfig()) -> torch.Tensor:
    """Draw parameters from `generator` and apply them: (B, T, H, W, 3) uint8 -> float32 in [0, 255]."""
    p = sample_params(obs_bthwc.shape[0], (obs_bthwc.shape[2], obs_bthwc.shape[3]), generator, cfg)
    return apply(obs_bthwc, p)
