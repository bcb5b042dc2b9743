"""Gymnasium control tasks `gym:ENV_ID`: fixed seeded episodes, mean return as fitness.

Why: cartpole saturates (500 is reached in a few generations); real control environments with
continuous actions (Pendulum, MountainCarContinuous, LunarLander) leave headroom. Any
registered gymnasium environment with a 1-D Box observation space and a Discrete or 1-D Box
action space works; nothing is downloaded.

Definitions (docs/tasks.md repeats them with measured costs):

- Episodes: the split's fixed seeds `GYM_SEEDS` (val 0..4, test 1000..1019, train 2000..2004);
  each episode starts from exactly the state `env.reset(seed=s)` gives and runs until the
  environment terminates or `max_steps` steps (the env spec's `max_episode_steps`, else
  `DEFAULT_MAX_STEPS`) have passed.
- fitness = mean over the split's episodes of the undiscounted return (float64 sum of the
  rewards in step order); `solved_fitness` = the spec's `reward_threshold` (None if it has none).
- Discrete(n, start): the net emits n logits, action = start + argmax (first maximum); a row
  with any non-finite output takes action `start`.
- Box(low, high, (k,)): the net emits k values, action = low + (tanh(out) + 1) / 2 * (high - low)
  in float64, clipped to [low, high], cast to the space's float32; a row with any non-finite
  output takes the midpoint (low + high) / 2.
- Input preprocessing: per observation dimension, mean = (low + high) / 2 and
  scale = (high - low) / 2 where both bounds are finite (scale 1 where they are equal), else
  mean 0 and scale 1 (a fixed scale, never estimated from samples).
- Task version: the first 6 bytes (big-endian) of BLAKE3 over (format, env id, seeds, max steps,
  gymnasium version), so peers running different gymnasium releases (possibly different
  dynamics) refuse each other's claims instead of disagreeing about fitness bits.

Evaluation: every (genome, episode) pair is one row; each step runs one stacked forward pass
over all rows (`evaluate.forward_many`) and then steps all environments. Pendulum-v1,
MountainCarContinuous-v0, MountainCar-v0 and Acrobot-v1 have numpy re-implementations of
gymnasium's equations (`BATCHED`) stepping every row in one array; the tests check them step for
step, bit for bit, against gymnasium's own environments. Every other environment runs one
gymnasium env per row in lockstep (`LockstepEnvs`). All per-row arithmetic is elementwise (or a
per-genome matmul slice, see evaluate.py), so a genome's fitness bits do not depend on which
other genomes share its batch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import blake3
import numpy as np

from qudag.evolution import evaluate as ev
from qudag.evolution.genome import Genome

GYM_PREFIX = "gym:"
GYM_TASK_FORMAT = 1
GYM_SEEDS: dict[str, tuple[int, ...]] = {
    "train": tuple(range(2000, 2005)),
    "val": tuple(range(5)),
    "test": tuple(range(1000, 1020)),
}
# Episode length cap for environments whose spec has no `max_episode_steps`.
DEFAULT_MAX_STEPS = 1000
MAX_STEPS_LIMIT = 10_000
MAX_DISCRETE_ACTIONS = 256
MAX_OBS_DIM = 1024
# Registered ids only ("Name-vN" or "namespace/Name-vN"). No ':' - gymnasium would import the
# module named before it, and task names arrive from the network.
_ENV_ID = re.compile(r"(?:[A-Za-z0-9_-]{1,64}/)?[A-Za-z0-9_.-]{1,96}")


class ControlError(ValueError):
    """An environment id that cannot be a task (tasks.py re-raises it as `TaskError`)."""


class BatchedEnv(Protocol):
    """B episodes of one environment stepped together (rows are independent)."""

    def observe(self) -> np.ndarray:
        """(B, obs_dim) float32 observations, as the gymnasium env returns them."""
        ...

    def step(self, actions: np.ndarray, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance the rows where `alive`; return (reward float64 (B,), terminated bool (B,))."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, eq=False)
class GymSpec:
    """What fitness depends on for one environment (see the module doc)."""

    env_id: str
    obs_dim: int
    discrete: bool
    n_outputs: int
    action_start: int
    act_low: np.ndarray  # float64 (k,) for Box actions, empty for Discrete
    act_high: np.ndarray
    act_dtype: str
    max_steps: int
    reward_threshold: float | None
    obs_mean: np.ndarray  # float32
    obs_scale: np.ndarray  # float32
    gym_version: str

    def __post_init__(self) -> None:
        # Shared through the task cache and fitness depends on them: freeze the arrays.
        for arr in (self.act_low, self.act_high, self.obs_mean, self.obs_scale):
            arr.setflags(write=False)

    @property
    def batched(self) -> bool:
        return self.env_id in BATCHED

    def seeds(self, split: str) -> tuple[int, ...]:
        if split not in GYM_SEEDS:
            raise ControlError(f"unknown split {split!r} (train, val, test)")
        return GYM_SEEDS[split]

    def identity(self) -> bytes:
        """The bytes the version and digest cover."""
        return (
            f"gym-task|{GYM_TASK_FORMAT}|{self.env_id}|{sorted(GYM_SEEDS.items())!r}|"
            f"{self.max_steps}|gymnasium {self.gym_version}"
        ).encode()

    @property
    def version(self) -> int:
        return int.from_bytes(blake3.blake3(self.identity()).digest()[:6], "big")

    def digest_bytes(self) -> bytes:
        return self.identity() + self.obs_mean.tobytes() + self.obs_scale.tobytes()

    def actions(self, out: np.ndarray) -> np.ndarray:
        """Map (B, n_outputs) float32 net outputs to gymnasium actions (see the module doc)."""
        finite = np.all(np.isfinite(out), axis=1)
        if self.discrete:
            idx = np.where(finite, np.argmax(out, axis=1), 0).astype(np.int64)
            return idx + self.action_start
        with np.errstate(all="ignore"):
            o = out.astype(np.float64)
            a = self.act_low + (np.tanh(o) + 1.0) * 0.5 * (self.act_high - self.act_low)
            a = np.clip(a, self.act_low, self.act_high)
        mid = (self.act_low + self.act_high) * 0.5
        a = np.where(finite[:, None], a, mid[None, :])
        actions: np.ndarray = a.astype(self.act_dtype)
        return actions

    def make_envs(self, seeds: Sequence[int]) -> BatchedEnv:
        """A batch of episodes starting from `reset(seed=s)` for each s in `seeds`."""
        factory = BATCHED.get(self.env_id)
        if factory is not None:
            return factory(seeds)
        return LockstepEnvs(self.env_id, seeds)

    def mean_returns(self, genomes: Sequence[Genome], split: str, task: Any) -> np.ndarray:
        """Mean return of each genome over the split's episodes (float64, deterministic bits).

        `task` supplies `standardize` (tasks.Task). Cost: one stacked forward pass and one
        batched environment step per time step, for all genomes x episodes at once.
        """
        return run_episodes(self, genomes, self.seeds(split), task.standardize)


def run_episodes(
    spec: GymSpec,
    genomes: Sequence[Genome],
    seeds: Sequence[int],
    standardize: Callable[[np.ndarray], np.ndarray],
    stats: dict[str, int] | None = None,
) -> np.ndarray:
    """Mean return per genome; row k = genome k // len(seeds), episode k % len(seeds).

    `stats`, if given, receives 'steps' (time steps run) and 'row_steps' (episode steps taken).
    """
    if not genomes:
        return np.zeros(0, dtype=np.float64)
    return run_policy_episodes(
        spec, len(genomes), StackedPolicy(genomes, len(seeds)), seeds, standardize, stats
    )


def episode_returns(
    spec: GymSpec,
    genomes: Sequence[Genome],
    seeds: Sequence[int],
    standardize: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Return of each genome on each episode of `seeds`, (n_genomes, n_episodes): the
    per-episode figures behind `run_episodes` (the held-out check's spread needs them)."""
    policy = StackedPolicy(genomes, len(seeds))
    return _policy_episodes(spec, len(genomes), policy, seeds, standardize)


def run_policy_episodes(
    spec: GymSpec,
    n_policies: int,
    policy: Callable[[np.ndarray], np.ndarray],
    seeds: Sequence[int],
    standardize: Callable[[np.ndarray], np.ndarray],
    stats: dict[str, int] | None = None,
) -> np.ndarray:
    """`run_episodes` for any batch of `n_policies` policies: `policy` maps standardised
    observations (n_policies, n_episodes, obs_dim) to outputs (n_policies, n_episodes,
    n_outputs), which the task's action map turns into actions. Our nets go through
    `StackedPolicy`; other nets (the NEAT baseline, simulations/neat_baseline.py) bring
    their own, and are scored by the same episodes, action map and returns.
    """
    per = _policy_episodes(spec, n_policies, policy, seeds, standardize, stats)
    return np.array([math.fsum(r.tolist()) / len(seeds) for r in per], dtype=np.float64)


def _policy_episodes(
    spec: GymSpec,
    n_policies: int,
    policy: Callable[[np.ndarray], np.ndarray],
    seeds: Sequence[int],
    standardize: Callable[[np.ndarray], np.ndarray],
    stats: dict[str, int] | None = None,
) -> np.ndarray:
    """Return of each policy on each episode, (n_policies, n_episodes) float64."""
    n_gen, n_ep = n_policies, len(seeds)
    if n_gen == 0:
        return np.zeros((0, n_ep), dtype=np.float64)
    envs = spec.make_envs(list(seeds) * n_gen)
    try:
        rows = n_gen * n_ep
        alive = np.ones(rows, dtype=bool)
        returns = np.zeros(rows, dtype=np.float64)
        obs = envs.observe()
        for t in range(spec.max_steps):
            x = standardize(obs).reshape(n_gen, n_ep, spec.obs_dim)
            out = policy(x).reshape(rows, spec.n_outputs)
            reward, terminated = envs.step(spec.actions(out), alive)
            if stats is not None:
                stats["steps"] = t + 1
                stats["row_steps"] = stats.get("row_steps", 0) + int(alive.sum())
            returns = np.where(alive, returns + reward, returns)
            alive &= ~terminated
            if t + 1 >= spec.max_steps or not alive.any():
                break
            # Finished rows keep their last observation (their outputs are ignored).
            obs = np.where(alive[:, None], envs.observe(), obs)
    finally:
        envs.close()
    return returns.reshape(n_gen, n_ep)


class StackedPolicy:
    """All genomes' nets, stacked once per evaluation, run on (n_genomes, n_episodes, obs).

    Same chunks and arithmetic as `evaluate.forward_many` (genomes grouped by `shape_key`,
    `evaluate.forward_stacked` per chunk, each genome its own matmul slice, so its outputs do
    not depend on the other genomes), but the weights are stacked once, not at every step.
    """

    def __init__(self, genomes: Sequence[Genome], n_rows: int) -> None:
        self.n_genomes = len(genomes)
        self.n_outputs = genomes[0].n_outputs
        self.chunks: list[tuple[np.ndarray, list[np.ndarray], list[np.ndarray], list[str]]] = []
        for indices in ev.group_by_shape(genomes).values():
            members = [genomes[i] for i in indices]
            step = ev._chunk_size(members, n_rows)
            for start in range(0, len(indices), step):
                idx = indices[start : start + step]
                chunk = [genomes[i] for i in idx]
                ws = [
                    np.stack([g.weights[li] for g in chunk]) for li in range(len(chunk[0].weights))
                ]
                bs = [np.stack([g.biases[li] for g in chunk]) for li in range(len(chunk[0].biases))]
                self.chunks.append((np.asarray(idx), ws, bs, list(chunk[0].activations)))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(n_genomes, n_rows, n_outputs) float32 outputs for inputs (n_genomes, n_rows, in)."""
        out = np.empty((self.n_genomes, x.shape[1], self.n_outputs), dtype=np.float32)
        for idx, ws, bs, acts in self.chunks:
            out[idx] = ev.forward_stacked(ws, bs, acts, x[idx])
        return out


# --- the generic fallback ----------------------------------------------------------------
class LockstepEnvs:
    """One gymnasium env per row, stepped in lockstep (any environment, slower)."""

    def __init__(self, env_id: str, seeds: Sequence[int]) -> None:
        import gymnasium as gym

        self.envs = [gym.make(env_id, disable_env_checker=True) for _ in seeds]
        pairs = zip(self.envs, seeds, strict=True)
        self.obs = np.stack([np.asarray(e.reset(seed=int(s))[0], np.float32) for e, s in pairs])

    def observe(self) -> np.ndarray:
        return self.obs

    def step(self, actions: np.ndarray, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        reward = np.zeros(len(self.envs), dtype=np.float64)
        done = np.zeros(len(self.envs), dtype=bool)
        obs = self.obs.copy()
        for i in np.flatnonzero(alive).tolist():
            o, r, term, trunc, _ = self.envs[i].step(actions[i])
            obs[i] = np.asarray(o, dtype=np.float32)
            reward[i] = float(r)
            # The runner truncates at max_steps itself; an env's own truncation also ends it.
            done[i] = bool(term) or bool(trunc)
        self.obs = obs
        return reward, done

    def close(self) -> None:
        for e in self.envs:
            e.close()


# --- batched numpy re-implementations of gymnasium's classic-control equations ------------
# Each mirrors gymnasium 1.x's scalar code operation for operation, in the same dtypes
# (NumPy 2 promotion: a Python float next to a float32 array is float32), so every row equals
# the scalar env bit for bit. Squares are computed with libm `pow` per element, as the scalar
# code's `x**2` on a numpy scalar does (numpy's vectorised square/power round differently).
_INIT: dict[tuple[str, int], np.ndarray] = {}


def _initial_state(env_id: str, seed: int) -> np.ndarray:
    """The unwrapped env's `state` right after `reset(seed=seed)` (copied, dtype kept)."""
    key = (env_id, int(seed))
    if key not in _INIT:
        import gymnasium as gym

        env = gym.make(env_id, disable_env_checker=True)
        env.reset(seed=int(seed))
        _INIT[key] = np.array(env.unwrapped.state, copy=True)  # type: ignore[attr-defined]
        env.close()
    return _INIT[key]


def _pow2_f64(x: np.ndarray) -> np.ndarray:
    return np.array([math.pow(v, 2.0) for v in x.tolist()], dtype=np.float64).reshape(x.shape)


def _pow2_f32(x: np.ndarray) -> np.ndarray:
    return np.array([np.float32(v) ** 2 for v in x.tolist()], dtype=np.float32).reshape(x.shape)


class PendulumBatch:
    """Pendulum-v1 (gymnasium.envs.classic_control.pendulum), g = 10."""

    max_speed, max_torque, dt, g, m, l = 8, 2.0, 0.05, 10.0, 1.0, 1.0  # noqa: E741

    def __init__(self, seeds: Sequence[int]) -> None:
        init = np.stack([_initial_state("Pendulum-v1", s) for s in seeds]).astype(np.float64)
        self.th = init[:, 0].copy()
        self.thdot = init[:, 1].copy()

    def observe(self) -> np.ndarray:
        return np.stack([np.cos(self.th), np.sin(self.th), self.thdot], axis=1).astype(np.float32)

    def step(self, actions: np.ndarray, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        th, thdot = self.th, self.thdot
        g, m, l, dt = self.g, self.m, self.l, self.dt  # noqa: E741
        u = np.clip(np.asarray(actions), -self.max_torque, self.max_torque)[:, 0]
        norm = ((th + np.pi) % (2 * np.pi)) - np.pi
        costs = _pow2_f64(norm) + 0.1 * _pow2_f64(thdot) + 0.001 * (_pow2_f32(u))
        newthdot = thdot + (3 * g / (2 * l) * np.sin(th) + 3.0 / (m * l**2) * u) * dt
        newthdot = np.clip(newthdot, -self.max_speed, self.max_speed)
        newth = th + newthdot * dt
        self.th, self.thdot = newth, newthdot
        return -costs, np.zeros(len(th), dtype=bool)

    def close(self) -> None:
        pass


class ContinuousMountainCarBatch:
    """MountainCarContinuous-v0 (continuous_mountain_car.py).

    The scalar code's state is float64 after `reset` and float32 after every step, so the first
    step runs in float64 and later ones in float32; `force` is a Python float only when the
    action was clipped (then the velocity update is computed in float64 and rounded once).
    """

    min_action, max_action = -1.0, 1.0
    min_position, max_position, max_speed = -1.2, 0.6, 0.07
    goal_position, goal_velocity, power = 0.45, 0, 0.0015

    def __init__(self, seeds: Sequence[int]) -> None:
        init = np.stack([_initial_state("MountainCarContinuous-v0", s) for s in seeds])
        self.pos = init[:, 0].astype(np.float64)
        self.vel = init[:, 1].astype(np.float64)

    def observe(self) -> np.ndarray:
        return np.stack([self.pos, self.vel], axis=1).astype(np.float32)

    def step(self, actions: np.ndarray, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = np.asarray(actions, dtype=np.float32)[:, 0]
        pos, vel = self.pos, self.vel
        dtype = pos.dtype.type
        clipped = (a < self.min_action) | (a > self.max_action)
        cos_term = 0.0025 * np.cos((3 * pos).astype(np.float64))
        rhs_f32 = a * self.power - cos_term.astype(np.float32)
        forced = np.where(a > self.max_action, self.max_action, self.min_action)
        rhs_py = forced * self.power - cos_term
        rhs = np.where(clipped, rhs_py, rhs_f32.astype(np.float64))
        vel = vel + rhs.astype(dtype)
        vel = np.where(vel > self.max_speed, dtype(self.max_speed), vel)
        vel = np.where(vel < -self.max_speed, dtype(-self.max_speed), vel)
        pos = pos + vel
        pos = np.where(pos > self.max_position, dtype(self.max_position), pos)
        pos = np.where(pos < self.min_position, dtype(self.min_position), pos)
        vel = np.where((pos == self.min_position) & (vel < 0), dtype(0), vel)
        terminated = (pos >= self.goal_position) & (vel >= self.goal_velocity)
        a64 = a.astype(np.float64)
        reward = np.where(terminated, 100.0, 0.0) - _pow2_f64(a64) * 0.1
        self.pos, self.vel = pos.astype(np.float32), vel.astype(np.float32)
        return reward, terminated

    def close(self) -> None:
        pass


class MountainCarBatch:
    """MountainCar-v0 (mountain_car.py): float64 state throughout."""

    min_position, max_position, max_speed = -1.2, 0.6, 0.07
    goal_position, goal_velocity, force, gravity = 0.5, 0, 0.001, 0.0025

    def __init__(self, seeds: Sequence[int]) -> None:
        init = np.stack([_initial_state("MountainCar-v0", s) for s in seeds]).astype(np.float64)
        self.pos = init[:, 0].copy()
        self.vel = init[:, 1].copy()

    def observe(self) -> np.ndarray:
        return np.stack([self.pos, self.vel], axis=1).astype(np.float32)

    def step(self, actions: np.ndarray, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = np.asarray(actions, dtype=np.int64)
        pos, vel = self.pos, self.vel
        vel = vel + ((a - 1) * self.force + np.cos(3 * pos) * (-self.gravity))
        vel = np.clip(vel, -self.max_speed, self.max_speed)
        pos = pos + vel
        pos = np.clip(pos, self.min_position, self.max_position)
        vel = np.where((pos == self.min_position) & (vel < 0), 0.0, vel)
        terminated = (pos >= self.goal_position) & (vel >= self.goal_velocity)
        self.pos, self.vel = pos, vel
        return np.full(len(a), -1.0), terminated

    def close(self) -> None:
        pass


class AcrobotBatch:
    """Acrobot-v1 (acrobot.py, 'book' dynamics, dt = 0.2, one RK4 step, no torque noise)."""

    dt = 0.2
    LINK_LENGTH_1, LINK_MASS_1, LINK_MASS_2 = 1.0, 1.0, 1.0
    LINK_COM_POS_1, LINK_COM_POS_2, LINK_MOI = 0.5, 0.5, 1.0
    MAX_VEL_1, MAX_VEL_2 = 4 * math.pi, 9 * math.pi
    AVAIL_TORQUE = np.array([-1.0, 0.0, 1.0])

    def __init__(self, seeds: Sequence[int]) -> None:
        init = np.stack([_initial_state("Acrobot-v1", s) for s in seeds])
        self.s = init.T.astype(np.float64)  # (4, B); float32 values widened exactly

    def observe(self) -> np.ndarray:
        s = self.s
        return np.stack(
            [np.cos(s[0]), np.sin(s[0]), np.cos(s[1]), np.sin(s[1]), s[2], s[3]], axis=1
        ).astype(np.float32)

    def _dsdt(self, y: np.ndarray) -> np.ndarray:
        m1, m2 = self.LINK_MASS_1, self.LINK_MASS_2
        l1, lc1, lc2 = self.LINK_LENGTH_1, self.LINK_COM_POS_1, self.LINK_COM_POS_2
        I1 = I2 = self.LINK_MOI  # noqa: N806
        g = 9.8
        pi = math.pi
        a = y[4]
        theta1, theta2, dtheta1, dtheta2 = y[0], y[1], y[2], y[3]
        cos, sin = np.cos, np.sin
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * cos(theta2)) + I1 + I2
        d2 = m2 * (lc2**2 + l1 * lc2 * cos(theta2)) + I2
        phi2 = m2 * lc2 * g * cos(theta1 + theta2 - pi / 2.0)
        phi1 = (
            -m2 * l1 * lc2 * _pow2_f64(dtheta2) * sin(theta2)
            - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * sin(theta2)
            + (m1 * lc1 + m2 * l1) * g * cos(theta1 - pi / 2)
            + phi2
        )
        ddtheta2 = (
            a + d2 / d1 * phi1 - m2 * l1 * lc2 * _pow2_f64(dtheta1) * sin(theta2) - phi2
        ) / (m2 * lc2**2 + I2 - _pow2_f64(d2) / d1)
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return np.stack([dtheta1, dtheta2, ddtheta1, ddtheta2, np.zeros_like(a)])

    def step(self, actions: np.ndarray, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torque = self.AVAIL_TORQUE[np.asarray(actions, dtype=np.int64)]
        y0 = np.concatenate([self.s, torque[None, :]])
        dt = self.dt - 0
        dt2 = dt / 2.0
        k1 = self._dsdt(y0)
        k2 = self._dsdt(y0 + dt2 * k1)
        k3 = self._dsdt(y0 + dt2 * k2)
        k4 = self._dsdt(y0 + dt * k3)
        ns = (y0 + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4))[:4].copy()
        pi = math.pi
        for i in (0, 1):  # wrap(x, -pi, pi): repeated +-2 pi, as the scalar while loops
            while True:
                over = ns[i] > pi
                if not over.any():
                    break
                ns[i] = np.where(over, ns[i] - 2 * pi, ns[i])
            while True:
                under = ns[i] < -pi
                if not under.any():
                    break
                ns[i] = np.where(under, ns[i] + 2 * pi, ns[i])
        ns[2] = np.minimum(np.maximum(ns[2], -self.MAX_VEL_1), self.MAX_VEL_1)
        ns[3] = np.minimum(np.maximum(ns[3], -self.MAX_VEL_2), self.MAX_VEL_2)
        self.s = ns
        terminated = -np.cos(ns[0]) - np.cos(ns[1] + ns[0]) > 1.0
        return np.where(terminated, 0.0, -1.0), terminated

    def close(self) -> None:
        pass


BATCHED: dict[str, Callable[[Sequence[int]], BatchedEnv]] = {
    "Pendulum-v1": PendulumBatch,
    "MountainCarContinuous-v0": ContinuousMountainCarBatch,
    "MountainCar-v0": MountainCarBatch,
    "Acrobot-v1": AcrobotBatch,
}


# --- spec resolution ---------------------------------------------------------------------
def _obs_preprocessing(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = low.astype(np.float64)
    hi = high.astype(np.float64)
    finite = np.isfinite(lo) & np.isfinite(hi)
    with np.errstate(all="ignore"):
        mean = np.where(finite, (lo + hi) / 2.0, 0.0)
        scale = np.where(finite, (hi - lo) / 2.0, 1.0)
    scale = np.where(scale > 0.0, scale, 1.0)
    return mean.astype(np.float32), scale.astype(np.float32)


def resolve(env_id: str) -> GymSpec:
    """The `GymSpec` of a registered gymnasium environment; `ControlError` says why not."""
    if not _ENV_ID.fullmatch(env_id):
        raise ControlError(
            f"bad gymnasium environment id {env_id!r} (expected e.g. gym:Pendulum-v1)"
        )
    import gymnasium as gym
    from gymnasium import spaces

    if env_id not in gym.registry:
        raise ControlError(
            f"unknown gymnasium environment {env_id!r} (not registered in gymnasium "
            f"{gym.__version__}; e.g. gym:Pendulum-v1, gym:LunarLander-v3)"
        )
    env_spec = gym.registry[env_id]
    try:
        env = gym.make(env_id, disable_env_checker=True)
    except Exception as exc:  # noqa: BLE001 - any failure to build the env is a bad task
        raise ControlError(f"cannot create gymnasium environment {env_id!r}: {exc}") from None
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    if not (isinstance(obs_space, spaces.Box) and len(obs_space.shape) == 1):
        raise ControlError(f"{env_id}: unsupported observation space {obs_space} (need a 1-D Box)")
    obs_dim = int(obs_space.shape[0])
    if not 1 <= obs_dim <= MAX_OBS_DIM:
        raise ControlError(f"{env_id}: observation size {obs_dim} outside 1..{MAX_OBS_DIM}")
    empty = np.zeros(0, dtype=np.float64)
    if isinstance(act_space, spaces.Discrete):
        n = int(act_space.n)
        if not 1 <= n <= MAX_DISCRETE_ACTIONS:
            raise ControlError(f"{env_id}: {n} discrete actions outside 1..{MAX_DISCRETE_ACTIONS}")
        discrete, n_out, start, low, high, dtype = True, n, int(act_space.start), empty, empty, "i8"
    elif isinstance(act_space, spaces.Box) and len(act_space.shape) == 1:
        low = act_space.low.astype(np.float64)
        high = act_space.high.astype(np.float64)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ControlError(f"{env_id}: Box action space with infinite bounds {act_space}")
        discrete, n_out, start, dtype = False, int(act_space.shape[0]), 0, act_space.dtype.str
    else:
        raise ControlError(
            f"{env_id}: unsupported action space {act_space} (need Discrete or a 1-D Box)"
        )
    max_steps = env_spec.max_episode_steps or DEFAULT_MAX_STEPS
    if not 1 <= max_steps <= MAX_STEPS_LIMIT:
        raise ControlError(f"{env_id}: max_episode_steps {max_steps} outside 1..{MAX_STEPS_LIMIT}")
    threshold = env_spec.reward_threshold
    mean, scale = _obs_preprocessing(obs_space.low, obs_space.high)
    return GymSpec(
        env_id=env_id,
        obs_dim=obs_dim,
        discrete=discrete,
        n_outputs=n_out,
        action_start=start,
        act_low=low,
        act_high=high,
        act_dtype=dtype,
        max_steps=int(max_steps),
        reward_threshold=None if threshold is None else float(threshold),
        obs_mean=mean,
        obs_scale=scale,
        gym_version=str(gym.__version__),
    )


def gym_task(spec: str) -> Any:
    """The `tasks.Task` for `gym:ENV_ID` (tasks.get_task calls this and caches the result)."""
    from qudag.evolution.tasks import Task

    env_id = spec[len(GYM_PREFIX) :]
    gs = resolve(env_id)
    kind = "discrete" if gs.discrete else "continuous"
    hidden = (16,) if gs.obs_dim > 4 else (8,)
    return Task(
        name=spec,
        version=gs.version,
        kind="control",
        n_inputs=gs.obs_dim,
        n_outputs=gs.n_outputs,
        input_mean=gs.obs_mean,
        input_scale=gs.obs_scale,
        x_train=None,
        y_train=None,
        x_val=None,
        y_val=None,
        x_test=None,
        y_test=None,
        description=(
            f"gymnasium {env_id} ({kind} actions), mean return over fixed episode seeds, "
            f"max {gs.max_steps} steps{' (batched numpy dynamics)' if gs.batched else ''}"
        ),
        solved_fitness=gs.reward_threshold,
        default_hidden=hidden,
        episodes=gs,
        template_output=None if gs.discrete else "values",
    )


def measure(
    spec: str, n_genomes: int = 1, split: str = "val", repeats: int = 3
) -> dict[str, float]:
    """Cost of one `Task.fitness` call on random genomes (the task's default hidden layers).

    Returns the best of `repeats` wall times in seconds, the steps run and the episode steps
    taken (random nets often end episodes early: cost scales with `row_steps`). Used for the
    figures in docs/tasks.md: `python -m qudag.evolution.control gym:Pendulum-v1 ...`.
    """
    import time

    from qudag.evolution.tasks import get_task

    task = get_task(spec)
    rng = np.random.default_rng(0)
    genomes = [
        Genome.random(rng, task.n_inputs, task.default_hidden, task.n_outputs, "tanh")
        for _ in range(n_genomes)
    ]
    task.fitness(genomes, split)  # warm-up (initial-state cache, imports)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fit = task.fitness(genomes, split)
        best = min(best, time.perf_counter() - t0)
    stats: dict[str, int] = {}
    if isinstance(task.episodes, GymSpec):
        run_episodes(task.episodes, genomes, task.episodes.seeds(split), task.standardize, stats)
    return {
        "seconds": best,
        "steps": float(stats.get("steps", 0)),
        "row_steps": float(stats.get("row_steps", 0)),
        "mean_fitness": float(np.mean(fit)),
    }


if __name__ == "__main__":
    import sys

    from qudag.evolution.control import measure as _measure  # GymSpec of the package module

    for arg in sys.argv[1:] or ["gym:Pendulum-v1"]:
        for n in (1, 40):
            m = _measure(arg, n_genomes=n)
            print(
                f"{arg:32s} genomes {n:3d}: {m['seconds'] * 1e3:8.1f} ms  steps {m['steps']:5.0f}"
                f"  episode-steps {m['row_steps']:7.0f}"
                f"  ({m['seconds'] / max(m['row_steps'], 1) * 1e6:6.1f} us each)",
                flush=True,
            )
