"""Augmentations: one transform per window (the same for all its frames), pixels actually change,
shifts and colour maps do what they say, and the generator alone decides the draw."""

from __future__ import annotations

import torch

from agentalign.train.augment import AugmentConfig, AugmentParams, apply, augment, colour_matrix, sample_params


def windows(b=4, t=5, size=16, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, size, size, 3), dtype=torch.uint8, generator=g)


def identity(b: int, shift=(0, 0)) -> AugmentParams:
    one = torch.ones(b)
    return AugmentParams(torch.tensor([shift] * b), one, one, one, torch.zeros(b))


def test_every_frame_of_a_window_gets_the_same_transform():
    frame = windows(b=4, t=1, size=32)  # (4, 1, 32, 32, 3)
    obs = frame.expand(4, 6, 32, 32, 3).contiguous()  # each window: one frame repeated 6 times
    out = augment(obs, torch.Generator().manual_seed(0))
    assert out.shape == obs.shape and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 255
    for b in range(4):
        for t in range(1, 6):
            assert torch.equal(out[b, t], out[b, 0])
    # ... and the windows got different transforms (relative to their input).
    assert not torch.allclose(out[0, 0] - frame[0, 0].float(), out[1, 0] - frame[1, 0].float())
    # The transform is frame-wise: frame t of the output depends on frame t of the input only.
    obs2 = obs.clone()
    obs2[:, 3] = 0
    out2 = augment(obs2, torch.Generator().manual_seed(0))
    assert torch.equal(out2[:, :3], out[:, :3]) and torch.equal(out2[:, 4:], out[:, 4:])


def test_augmentation_changes_pixels_and_the_generator_decides():
    obs = windows(b=8, size=64)
    a = augment(obs, torch.Generator().manual_seed(1))
    b = augment(obs, torch.Generator().manual_seed(1))
    c = augment(obs, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a - obs.float()).abs().mean() > 1.0


def test_identity_parameters_leave_the_frames_exactly_alone():
    obs = windows()
    assert torch.equal(apply(obs, identity(4)), obs.float())


def test_shift_moves_the_content_with_edges_replicated():
    obs = windows(b=1, t=2, size=8)
    out = apply(obs, identity(1, shift=(1, -2)))  # one row down, two columns left
    x = obs.float()
    assert torch.equal(out[:, :, 1:, :-2], x[:, :, :-1, 2:])
    assert torch.equal(out[:, :, 0, :-2], x[:, :, 0, 2:])  # top row replicated
    assert torch.equal(out[:, :, 1:, -1], x[:, :, :-1, -1])  # right column replicated
    p = sample_params(1000, (64, 64), torch.Generator().manual_seed(0), AugmentConfig(shift=0.03))
    assert p.shift_yx.abs().max() == 2 and p.shift_yx.min() == -2  # +-2 px at 64 px, both signs


def test_colour_matrix_keeps_grey_grey_and_desaturation_gives_grey():
    b = 3
    p = AugmentParams(torch.zeros(b, 2, dtype=torch.long), torch.ones(b), torch.ones(b),
                      torch.tensor([1.0, 1.2, 0.0]), torch.tensor([0.3, -0.2, 0.0]))  # fmt: skip
    m = colour_matrix(p)  # (3, 3, 3)
    grey = torch.full((3,), 100.0)
    assert torch.allclose(m @ grey, grey.expand(b, 3), atol=1e-4)  # hue and saturation fix the grey axis
    red = torch.tensor([200.0, 0.0, 0.0])
    out = m[2] @ red  # saturation 0: every channel the luma of the colour
    assert torch.allclose(out, torch.full((3,), 0.299 * 200), atol=1e-3)


def test_disabled_config_gives_the_identity():
    obs = windows()
    off = AugmentConfig(shift=0, brightness=0, contrast=0, saturation=0, hue=0)
    assert torch.equal(augment(obs, torch.Generator().manual_seed(0), off), obs.float())
