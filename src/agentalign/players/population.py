"""The synthetic player population that stands in for 10k hours of human play (paper §3.2).

Each `Player` has a character, a skill (steering noise, reaction delay, how it handles the camera,
how often it glances around, how often it drifts off its line), button habits (dashing, harmless
buttons) and its own preference over the three pads, drawn around a human-like, middle-biased
prior. Each episode a player either heads for a pad or falls into one of the undesirable modes
an unfiltered set contains:

    wander       ambles about at random, sometimes ending up at a pad late
    idle         stands near the spawn fiddling with the camera, then sets off (often too late)
    wall         runs into a wall and keeps pushing, then turns round and heads for a pad (a recovery)
    spin         spins the camera the whole way while trying to walk to a pad
    change_mind  heads for one pad, then turns to another half way
    grief        runs in circles and never goes anywhere useful

Drifting players (most of the less skilled ones) veer off their line for a few steps, hit walls or
overshoot, and come back: the recoveries that the clean fine-tuning set lacks (paper §3.3, fig. 6).
After reaching a pad a player mills about for a few steps before the recording stops, so
pre-training episodes are not cut at the pad.

`PlayerDriver` runs one episode plan per world of a vector env and answers gamepad actions from
privileged state, through the path-planning navigator. Every episode is determined by its own seed:
the same seed gives the same plan, noise and (with the env seeded alike) the same frames, whatever
batch slot it runs in — which is what makes generation resumable.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from agentalign.envs import gamepad
from agentalign.envs.skygarden import world as W
from agentalign.players.navigator import SUB, planning_tables

MODES = ("wander", "idle", "wall", "spin", "change_mind", "grief")


@dataclass(frozen=True)
class PopulationConfig:
    """How the population is drawn. Defaults give the paper's multi-modal, middle-biased picture."""

    num_players: int = 300
    # Humans favour the middle pad (paper fig. 3: base agent left 12 %, middle 37 %, right 7.5 %).
    pad_prior: tuple[float, float, float] = (0.28, 0.50, 0.22)
    pad_prior_concentration: float = 6.0  # Dirichlet concentration: how alike players' tastes are
    # Mean chance that a player's episode is an undesirable mode (a tenth of episodes then reach no
    # pad); much more and the actions are too weakly tied to the pixels for the cpu model to learn.
    undesirable_share: float = 0.15
    mode_weights: tuple[float, ...] = (0.3, 0.1, 0.2, 0.1, 0.15, 0.15)  # over MODES
    characters: tuple[str, ...] = W.CHARACTER_NAMES  # all characters appear, as in the paper's data
    max_length: int = 200  # steps; recordings run past the 100-step evaluation limit

    def __post_init__(self) -> None:
        if self.num_players <= 0:
            raise ValueError(f"num_players must be positive, got {self.num_players}")
        if len(self.pad_prior) != 3 or min(self.pad_prior) < 0 or not np.isclose(sum(self.pad_prior), 1):
            raise ValueError(f"pad_prior must be 3 non-negative numbers summing to 1, got {self.pad_prior}")
        if len(self.mode_weights) != len(MODES):
            raise ValueError(f"mode_weights needs one weight per mode {MODES}, got {len(self.mode_weights)}")
        if not 0 <= self.undesirable_share <= 1:
            raise ValueError(f"undesirable_share must lie in [0, 1], got {self.undesirable_share}")
        for c in self.characters:
            W.character_index(c)


@dataclass(frozen=True)
class Player:
    player_id: int
    character: str
    skill: float  # 0 (novice) .. 1 (expert)
    steer_noise: float  # rad, std of heading error per step
    reaction_delay: int  # steps between seeing the world and acting on it
    camera_gain: float
    camera_deadzone: float
    look_around_prob: float
    dash_prob: float
    button_prob: float
    drift_prob: float  # chance per step to start veering off the line
    pad_prior: tuple[float, float, float]
    undesirable: float  # chance that an episode is an undesirable mode


def sample_population(cfg: PopulationConfig, rng: np.random.Generator) -> list[Player]:
    players = []
    for pid in range(cfg.num_players):
        skill = float(rng.beta(2.0, 2.0))
        novice = 1.0 - skill
        prior = rng.dirichlet(np.asarray(cfg.pad_prior) * cfg.pad_prior_concentration + 1e-3)
        players.append(
            Player(
                player_id=pid,
                character=str(rng.choice(cfg.characters)),
                skill=skill,
                steer_noise=0.02 + 0.12 * novice,  # rad; the error's std (it drifts slowly, see _ERR_RHO)
                reaction_delay=int(rng.integers(0, 1 + round(3 * novice))),
                camera_gain=float(rng.uniform(0.8, 2.0)),
                camera_deadzone=float(rng.uniform(0.05, 0.4)),
                look_around_prob=float(rng.uniform(0.0, 0.04)),
                dash_prob=float(rng.uniform(0.0, 0.15)),
                button_prob=float(rng.uniform(0.0, 0.1)),
                drift_prob=float(0.03 * novice * rng.uniform(0.3, 1.0)),
                pad_prior=tuple(float(p) for p in prior),
                undesirable=float(np.clip(rng.beta(2.0, 2.0 * (1 - cfg.undesirable_share) / max(cfg.undesirable_share, 1e-6)), 0, 1)),
            )
        )
    return players


def demonstrator(player_id: int = 0, character: str = W.DEFAULT_CHARACTER) -> Player:
    """A skilled, clean player for the curated fine-tuning set: no drift, no detours, no habits."""
    return Player(player_id, character, 1.0, 0.05, 0, 1.5, 0.15, 0.0, 0.0, 0.0, 0.0, (1 / 3, 1 / 3, 1 / 3), 0.0)


@dataclass
class EpisodePlan:
    """What one player does in one episode, drawn from the episode's own RNG."""

    player: Player
    intent: str  # a pad name or one of MODES
    pad: int  # the pad it heads for (now or eventually); -1 for none
    second_pad: int = -1  # change_mind: the pad it turns to
    switch_step: int = 0  # change_mind / idle / wander / wall: when the plan changes
    linger: int = 0  # steps it mills about after reaching a pad
    length: int = 200  # the recording stops here at the latest
    spin_dir: float = 1.0  # spin / grief: which way round
    wander_to_pad: bool = False
    wander_speed: float = 1.0


def plan_episode(player: Player, rng: np.random.Generator, max_length: int, intent: str | None = None) -> EpisodePlan:
    """Draw an episode plan; `intent` forces a pad or a mode (the curated set forces the pad)."""
    if intent is None:
        if rng.random() < player.undesirable:
            intent = MODES[int(rng.choice(len(MODES), p=_MODE_P))]
        else:
            intent = W.PAD_NAMES[int(rng.choice(3, p=np.asarray(player.pad_prior) / sum(player.pad_prior)))]
    pad = W.pad_index(intent) if intent in W.PAD_NAMES else int(rng.choice(3, p=np.asarray(player.pad_prior) / sum(player.pad_prior)))
    plan = EpisodePlan(player, intent, pad, linger=int(rng.integers(3, 16)), length=max_length)
    if intent == "change_mind":
        plan.second_pad = int(rng.choice([k for k in range(3) if k != pad]))
        plan.switch_step = int(rng.integers(12, 40))
    elif intent == "idle":
        # Short: long idling at the spawn teaches a pixel policy that the spawn view means "wait",
        # a state it never leaves once in it (measured: the base agent stayed at the spawns).
        plan.switch_step = int(rng.integers(5, 40))
    elif intent == "wander":
        plan.switch_step = int(rng.integers(30, 120))
        plan.wander_to_pad = bool(rng.random() < 0.5)
        plan.wander_speed = float(rng.uniform(0.5, 1.0))
    elif intent == "wall":
        plan.switch_step = int(rng.integers(4, 15))  # steps of pushing against the wall
    elif intent in ("spin", "grief"):
        plan.spin_dir = float(rng.choice([-1.0, 1.0]))
        if intent == "grief":
            plan.pad = -1
    if intent not in W.PAD_NAMES:
        # People give up on an aimless episode: long ones made half the set's steps aimless.
        plan.length = int(rng.integers(min(60, max_length), min(130, max_length) + 1))
    return plan


_ERR_RHO = 0.9
_ERR_INNOV = math.sqrt(1 - _ERR_RHO**2)  # keeps the error's stationary std at the player's steer_noise
_MODE_P = np.asarray(PopulationConfig().mode_weights) / sum(PopulationConfig().mode_weights)


@dataclass
class _Slot:
    """Per-world state of the driver while an episode runs."""

    plan: EpisodePlan
    rng: np.random.Generator
    history: deque = field(default_factory=deque)  # past positions, for the reaction delay
    prev_pos: tuple[float, float] = (0.0, 0.0)
    heading: float = 0.0
    drift_left: int = 0
    drift_bias: float = 0.0
    look_left: int = 0
    look_dir: float = 0.0
    wall_heading: float = 0.0
    pushed: int = 0  # steps spent pushing into the wall
    recovered: bool = False
    after_pad: int = -1  # steps since the pad was reached, -1 before
    steer_err: float = 0.0  # rad, the slowly wandering error of the player's hand (AR(1))
    segment_left: int = 0  # wander: steps until the next change of direction
    done: bool = False


class PlayerDriver:
    """Answers gamepad actions for N worlds, each running its own `EpisodePlan`."""

    def __init__(self, n: int):
        self.n = n
        self.slots: list[_Slot | None] = [None] * n
        self._target = planning_tables()[1]

    def start(self, i: int, plan: EpisodePlan, rng: np.random.Generator, pos: np.ndarray, yaw: float) -> None:
        s = _Slot(plan, rng)
        s.heading = yaw
        s.prev_pos = (float(pos[0]), float(pos[1]))
        s.wall_heading = float(rng.choice([0.0, np.pi, -np.pi / 2]) + rng.normal(0, 0.2))
        self.slots[i] = s

    def _pad_heading(self, x: float, y: float, pad: int) -> float:
        j = min(max(int(y * SUB), 0), self._target.shape[1] - 1)
        i = min(max(int(x * SUB), 0), self._target.shape[2] - 1)
        tx, ty = self._target[pad, j, i]
        return math.atan2(ty - y, tx - x)

    def act(self, pos: np.ndarray, yaw: np.ndarray, t: np.ndarray, pad: np.ndarray) -> np.ndarray:
        """Privileged state of the N worlds -> (N, 16) int64 actions. A slot whose plan is over is
        marked done (its action is a no-op and belongs to no episode)."""
        actions = gamepad.noop_action(self.n)
        for i, s in enumerate(self.slots):
            if s is None or s.done:
                continue
            a = self._act_one(s, pos[i], float(yaw[i]), int(t[i]), int(pad[i]))
            if not s.done:
                actions[i] = a
        return actions

    def _act_one(self, s: _Slot, pos: np.ndarray, yaw: float, t: int, reached: int) -> list[int]:
        # Plain floats and `math` here: this runs once per world per step, and NumPy scalar calls
        # would cost more than rendering the frame.
        p, plan, rng = s.plan.player, s.plan, s.rng
        x, y = float(pos[0]), float(pos[1])
        s.history.append((x, y))
        while len(s.history) > p.reaction_delay + 1:
            s.history.popleft()
        seen_x, seen_y = s.history[0]  # where the player saw itself `reaction_delay` steps ago
        moved = math.hypot(x - s.prev_pos[0], y - s.prev_pos[1])
        s.prev_pos = (x, y)
        u = rng.random(8)  # this step's uniforms, drawn at once
        g = rng.standard_normal(2)

        if t >= plan.length:
            s.done = True
        mag, turn_override = 1.0, None
        intent = plan.intent
        if reached >= 0:  # after the pad: mill about, then the recording stops
            s.after_pad += 1
            if s.after_pad >= plan.linger:
                s.done = True
            if s.after_pad == 0:
                s.heading += math.pi * (2 * u[0] - 1)  # one aimless direction, not a new one each step
            mag = 0.6
        else:
            target_pad = plan.pad
            if intent == "change_mind" and t >= plan.switch_step:
                target_pad = plan.second_pad
            if intent == "idle" and t < plan.switch_step:
                mag = 0.0 if u[0] < 0.85 else 0.4
                if u[1] < 0.1 and s.look_left == 0:
                    s.look_left, s.look_dir = 2 + int(u[2] * 6), (1.0 if u[3] < 0.5 else -1.0)
                target_pad = -1
                s.heading = yaw + 0.5 * g[0]
            elif intent == "wander" and (t < plan.switch_step or not plan.wander_to_pad):
                # Straight legs in a new direction every so often, as a person strolls; a direction
                # redrawn every step would make the actions white noise no frame can explain.
                if s.segment_left <= 0 or (moved < 0.05 and t > 0):
                    s.heading += (1.0 if u[0] < 0.5 else -1.0) * (math.pi / 4 + u[1] * math.pi * 0.75)
                    s.segment_left = 8 + int(u[2] * 20)
                s.segment_left -= 1
                mag = plan.wander_speed
                target_pad = -1
            elif intent == "wall" and not s.recovered:
                s.heading = s.wall_heading
                if moved < 0.05 and t > 0:
                    s.pushed += 1
                if s.pushed >= plan.switch_step:
                    s.recovered = True  # turns round and heads for its pad
                target_pad = -1
            elif intent == "grief":
                s.heading += plan.spin_dir * 0.3  # running in circles
                if moved < 0.05 and t > 0:
                    s.heading += math.pi / 2
                target_pad = -1
            if target_pad >= 0:
                s.heading = self._pad_heading(seen_x, seen_y, target_pad)
                if s.drift_left > 0:
                    s.heading += s.drift_bias
                    s.drift_left -= 1
                elif u[4] < p.drift_prob:
                    s.drift_left = 4 + int(u[5] * 10)
                    s.drift_bias = (1.0 if u[6] < 0.5 else -1.0) * (0.6 + 0.7 * u[7])
            if intent == "spin":
                turn_override = plan.spin_dir
        # The hand's error drifts slowly (AR(1), ~10-step memory) rather than jumping each step.
        s.steer_err = _ERR_RHO * s.steer_err + _ERR_INNOV * p.steer_noise * g[1]
        heading = s.heading + s.steer_err
        rel = (heading - yaw + math.pi) % (2 * math.pi) - math.pi  # +: heading left of the camera

        u2 = rng.random(6)
        a = [0] * gamepad.N_BUTTONS + [gamepad.STICK_REST_BIN] * gamepad.N_STICK_AXES
        a[12] = gamepad.stick_bin(-math.sin(rel) * mag)
        a[13] = gamepad.stick_bin(math.cos(rel) * mag)
        turn = -p.camera_gain * rel if abs(rel) > p.camera_deadzone else 0.0
        if s.look_left == 0 and u2[0] < p.look_around_prob:
            s.look_left, s.look_dir = 2 + int(u2[1] * 4), (1.0 if u2[2] < 0.5 else -1.0)
        if s.look_left > 0:
            turn = s.look_dir
            s.look_left -= 1
        if turn_override is not None:
            turn = turn_override
        a[14] = gamepad.stick_bin(min(1.0, max(-1.0, turn)))
        if mag > 0 and abs(rel) < 0.3 and u2[3] < p.dash_prob:
            a[gamepad.DASH] = 1
        if u2[4] < p.button_prob:
            a[gamepad.JUMP + int(u2[5] * (gamepad.N_BUTTONS - 2))] = 1  # any but dash and 'menu'
        return a
