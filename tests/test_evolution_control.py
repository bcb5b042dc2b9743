"""gym:ENV_ID tasks: batched dynamics equal gymnasium's own envs bit for bit, fitness bits do
not depend on the batch, bad ids fail with clear messages, short evolutions give templates
that verify and export."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import onnxruntime as ort
import pytest

from qudag.evolution import control
from qudag.evolution.engine import Evolution, default_config
from qudag.evolution.export import export_onnx
from qudag.evolution.genome import Genome
from qudag.evolution.synthesis import synthesize
from qudag.evolution.tasks import TaskError, get_task, list_tasks
from qudag.evolution.template import Template, from_genome
from qudag.evolution.verify import claim_holds

Policy = Callable[[np.ndarray, np.random.Generator, int], object]


def _pendulum(obs: np.ndarray, rng: np.random.Generator, t: int) -> object:
    # Mostly in range, sometimes beyond the torque limit (exercises the clip).
    scale = 3.0 if t % 5 == 0 else 2.0
    return np.array([rng.uniform(-scale, scale)], dtype=np.float32)


def _mcc(obs: np.ndarray, rng: np.random.Generator, t: int) -> object:
    # Push with the velocity (reaches the goal: exercises termination), out-of-range pushes
    # every 5th step (Python-float branch of the clip) and noise otherwise.
    if t % 5 == 0:
        return np.array([1.7 if obs[1] >= 0 else -2.5], dtype=np.float32)
    if t % 3 == 0:
        return np.array([rng.uniform(-1.0, 1.0)], dtype=np.float32)
    return np.array([1.0 if obs[1] >= 0 else -0.8], dtype=np.float32)


def _mountain_car(obs: np.ndarray, rng: np.random.Generator, t: int) -> object:
    if t % 4 == 0:
        return int(rng.integers(3))
    return 2 if obs[1] >= 0 else 0


def _acrobot(obs: np.ndarray, rng: np.random.Generator, t: int) -> object:
    # Torque with the second joint's velocity pumps energy: swings up and terminates.
    if t % 6 == 0:
        return int(rng.integers(3))
    return 2 if obs[5] >= 0 else 0


POLICIES: dict[str, tuple[Policy, bool]] = {
    # env id -> (policy, whether some episode must terminate before the time limit)
    "Pendulum-v1": (_pendulum, False),
    "MountainCarContinuous-v0": (_mcc, True),
    "MountainCar-v0": (_mountain_car, True),
    "Acrobot-v1": (_acrobot, True),
}


@pytest.mark.parametrize("env_id", sorted(control.BATCHED))
def test_batched_dynamics_equal_gymnasium_step_for_step(env_id: str) -> None:
    policy, must_terminate = POLICIES[env_id]
    # Many episodes: a last-bit slip (e.g. a vectorised x**2 instead of libm pow) shows up in
    # about 1 of 1,000 values, so a few thousand steps are needed to catch it.
    seeds = list(range(30)) if env_id == "Pendulum-v1" else [0, 3, 1001, *range(10, 17)]
    max_steps = gym.spec(env_id).max_episode_steps
    assert max_steps is not None
    refs = [gym.make(env_id) for _ in seeds]
    ref_obs = [e.reset(seed=s)[0] for e, s in zip(refs, seeds, strict=True)]
    batch = control.BATCHED[env_id](seeds)
    obs = batch.observe()
    assert obs.dtype == np.float32 and obs.tobytes() == np.stack(ref_obs).tobytes()
    rngs = [np.random.default_rng(s) for s in seeds]
    alive = np.ones(len(seeds), dtype=bool)
    terminated_early = False
    for t in range(max_steps):
        actions = [policy(ref_obs[i], rngs[i], t) for i in range(len(seeds))]
        reward, terminated = batch.step(np.array(actions), alive.copy())
        obs = batch.observe()
        for i, env in enumerate(refs):
            if not alive[i]:
                continue
            o, r, term, trunc, _ = env.step(actions[i])
            assert o.tobytes() == obs[i].tobytes(), (t, i, o, obs[i])
            assert float(r) == float(reward[i]), (t, i)
            assert bool(term) == bool(terminated[i]), (t, i)
            assert bool(trunc) == (t + 1 >= max_steps and not term), (t, i)
            ref_obs[i] = o
            if term or trunc:
                alive[i] = False
                terminated_early |= bool(term)
        if not alive.any():
            break
    assert not alive.any()
    assert terminated_early == must_terminate


def _genomes(task_spec: str, n: int, seed: int = 0) -> list[Genome]:
    task = get_task(task_spec)
    rng = np.random.default_rng(seed)
    out = [Genome.random(rng, task.n_inputs, (6,), task.n_outputs, "tanh") for _ in range(n)]
    out.append(Genome.random(rng, task.n_inputs, (3, 5), task.n_outputs, "relu"))
    bad = Genome.random(rng, task.n_inputs, (6,), task.n_outputs, "tanh")
    bad.weights[0][0, 0] = np.float32(np.inf)  # non-finite outputs: fixed fallback action
    out.append(bad)
    return out


@pytest.mark.parametrize("spec", ["gym:Pendulum-v1", "gym:MountainCar-v0", "gym:LunarLander-v3"])
def test_fitness_bits_do_not_depend_on_the_batch(spec: str) -> None:
    task = get_task(spec)
    genomes = _genomes(spec, 4)
    together = task.fitness(genomes)
    alone = np.array([task.fitness([g])[0] for g in genomes])
    reversed_ = task.fitness(genomes[::-1])[::-1]
    assert together.tobytes() == alone.tobytes() == reversed_.tobytes()
    assert np.all(np.isfinite(together))
    assert task.score(genomes[0], "test") == float(task.fitness([genomes[0]], "test")[0])


@pytest.mark.parametrize("spec", ["gym:Pendulum-v1", "gym:MountainCarContinuous-v0"])
def test_batched_dynamics_give_the_same_fitness_as_gymnasium_envs(
    spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = get_task(spec)
    genomes = _genomes(spec, 3, seed=5)
    batched = task.fitness(genomes)
    monkeypatch.setattr(control, "BATCHED", {})  # every env through LockstepEnvs
    lockstep = task.fitness(genomes)
    assert batched.tobytes() == lockstep.tobytes()


def test_spec_definitions() -> None:
    p = get_task("gym:Pendulum-v1")
    assert (p.kind, p.n_inputs, p.n_outputs, p.solved_fitness) == ("control", 3, 1, None)
    assert p.input_mean.tolist() == [0.0, 0.0, 0.0] and p.input_scale.tolist() == [1.0, 1.0, 8.0]
    assert p.template_output == "values"
    ll = get_task("gym:LunarLander-v3")
    assert (ll.n_inputs, ll.n_outputs, ll.solved_fitness) == (8, 4, 200.0)
    mc = get_task("gym:MountainCarContinuous-v0")
    assert mc.solved_fitness == 90.0
    assert np.allclose(mc.input_mean, [-0.3, 0.0]) and np.allclose(mc.input_scale, [0.9, 0.07])
    cp = get_task("gym:CartPole-v1")  # infinite velocity bounds: fixed scale 1
    assert cp.input_scale[1] == 1.0 and cp.input_mean[1] == 0.0
    assert control.GYM_SEEDS["val"] == (0, 1, 2, 3, 4) and len(control.GYM_SEEDS["test"]) == 20
    assert any(s.startswith("gym:") for s in list_tasks())


def test_version_and_digest_cover_the_gymnasium_release(monkeypatch: pytest.MonkeyPatch) -> None:
    a = control.resolve("Pendulum-v1")
    monkeypatch.setattr(gym, "__version__", "0.0.0-other")
    b = control.resolve("Pendulum-v1")
    assert a.version != b.version and a.digest_bytes() != b.digest_bytes()
    assert 0 < a.version < 2**48
    assert control.resolve("Acrobot-v1").version != a.version


def test_action_maps() -> None:
    box = control.resolve("Pendulum-v1")
    out = np.array([[0.0], [50.0], [-50.0], [np.nan], [np.inf]], dtype=np.float32)
    assert box.actions(out)[:, 0].tolist() == [0.0, 2.0, -2.0, 0.0, 0.0]
    assert box.actions(out).dtype == np.float32
    disc = control.resolve("Acrobot-v1")
    logits = np.array([[0, 1, 0], [3, 3, 1], [np.nan, 5, 0]], dtype=np.float32)
    assert disc.actions(logits).tolist() == [1, 0, 0]


@pytest.mark.parametrize(
    "spec,message",
    [
        ("gym:", "bad gymnasium environment id"),
        ("gym:Nope-v0", "unknown gymnasium environment"),
        ("gym:os:system-v0", "bad gymnasium environment id"),  # would import a module
        ("gym:Blackjack-v1", "unsupported observation space"),
        ("gym:FrozenLake-v1", "unsupported observation space"),
        ("gym:CarRacing-v3", "unsupported observation space"),
    ],
)
def test_bad_gym_specs(spec: str, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        get_task(spec)


def _run_onnx(model: bytes, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x})[0])


@pytest.mark.parametrize("spec", ["gym:Pendulum-v1", "gym:MountainCarContinuous-v0"])
def test_short_evolution_gives_a_template_that_verifies_and_exports(spec: str) -> None:
    task = get_task(spec)
    evo = Evolution(task, default_config(task, population=8), seed=1)
    first = evo.best.task_fitness
    for _ in range(3):
        evo.step()
    best = evo.best
    assert best.task_fitness >= first  # elitist: never worse
    t = from_genome(best.genome, task, best.task_fitness, latency_repeats=3)
    t2 = Template.from_bytes(t.to_bytes())
    assert t2.task == spec and t2.task_version == task.version and t2.output == "values"
    ok, measured = claim_holds(t2)
    assert ok and measured == best.task_fitness
    x = (task.input_mean + task.input_scale * np.linspace(-1, 1, 7)[:, None]).astype(np.float32)
    np.testing.assert_allclose(_run_onnx(export_onnx(t2), x), synthesize(t2)(x), 1e-5, 1e-5)


@pytest.mark.parametrize(
    "spec,output",
    [
        ("gym:LunarLander-v3", "logits"),
        ("gym:LunarLanderContinuous-v3", "values"),
        ("gym:MountainCar-v0", "logits"),
        ("gym:Acrobot-v1", "logits"),
    ],
)
def test_evolution_runs_and_gives_a_valid_template(spec: str, output: str) -> None:
    task = get_task(spec)
    evo = Evolution(task, default_config(task, population=4), seed=0)
    evo.step()
    t = from_genome(evo.best.genome, task, evo.best.task_fitness, latency_repeats=3)
    assert t.output == output and claim_holds(Template.from_bytes(t.to_bytes()))[0]


def test_stacked_policy_equals_forward_many() -> None:
    from qudag.evolution import evaluate as ev

    genomes = _genomes("gym:LunarLander-v3", 7, seed=3)
    x = np.random.default_rng(0).standard_normal((len(genomes), 5, 8)).astype(np.float32)
    ours = control.StackedPolicy(genomes, 5)(x)
    ref = np.stack(ev.forward_many(genomes, lambda idx: x[np.asarray(idx)]))
    assert ours.tobytes() == ref.tobytes()
