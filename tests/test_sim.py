"""The tabletop task: determinism, expert quality, instructions, termination, speed and rendering."""

from __future__ import annotations

import time

import numpy as np
import pytest

from vlaedge.sim import (
    BLOCKS,
    TEMPLATES,
    VOCABULARY,
    ZONES,
    ScriptedExpert,
    TabletopEnv,
    Task,
    chance_success_rate,
    expert_chunk,
    instruction_for,
    parse_instruction,
    record_episodes,
    record_on_policy,
    render,
    sample_task,
)
from vlaedge.sim.render import BLOCK_RGB


def _rollout(seed: int, image_size: int = 64) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
    env, expert = TabletopEnv(image_size=image_size), ScriptedExpert()
    obs, info = env.reset(seed=seed)
    images, states, done = [obs["image"]], [obs["state"]], False
    while not done:
        obs, _, terminated, truncated, info = env.step(expert.act(env))
        images.append(obs["image"])
        states.append(obs["state"])
        done = terminated or truncated
    return images, states, info["success"]


def _step_to(env: TabletopEnv, goal: np.ndarray, grip: float) -> tuple[bool, bool, dict]:
    """Drive the end effector onto `goal` with the gripper held at `grip`; return the last step's flags."""
    for _ in range(env.max_steps):
        move = np.clip((goal - env.sim_state.ee) / 0.07, -1, 1)
        _, _, terminated, truncated, info = env.step(np.array([move[0], move[1], grip], np.float32))
        if terminated or truncated or np.allclose(env.sim_state.ee, goal):
            return terminated, truncated, info
    raise AssertionError("goal not reached")


def test_same_seed_is_bit_identical_and_seeds_differ():
    images_a, states_a, success_a = _rollout(7)
    images_b, states_b, success_b = _rollout(7)
    assert success_a == success_b
    assert len(images_a) == len(images_b)
    assert all(np.array_equal(a, b) for a, b in zip(images_a, images_b, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(states_a, states_b, strict=True))
    assert not np.array_equal(_rollout(8)[0][0], images_a[0])


def test_recorded_episodes_are_deterministic():
    first, second = record_episodes(3, seed=5), record_episodes(3, seed=5)
    for a, b in zip(first, second, strict=True):
        assert a.instruction == b.instruction and a.success == b.success
        assert np.array_equal(a.images, b.images) and np.array_equal(a.action, b.action)


def test_expert_succeeds():
    env, expert = TabletopEnv(image_size=32), ScriptedExpert()
    successes = 0
    for seed in range(200):
        env.reset(seed=seed)
        done = False
        while not done:
            _, _, terminated, truncated, info = env.step(expert.act(env))
            done = terminated or truncated
        successes += info["success"]
    assert successes / 200 >= 0.95


def test_recorded_episodes_with_dart_noise():
    episodes = record_episodes(60, seed=0, image_size=32, action_noise=0.3, noise_prob=0.3)
    assert sum(e.success for e in episodes) / len(episodes) >= 0.9
    for e in episodes:
        assert e.images.shape == (len(e), 32, 32, 3) and e.images.dtype == np.uint8
        assert e.state.shape == (len(e), 4) and e.action.shape == (len(e), 3)
        assert e.action.dtype == np.float32 and np.abs(e.action).max() <= 1.0
        assert parse_instruction(e.instruction)


def test_expert_chunk_is_the_expert_rollout_and_leaves_the_env_alone():
    env, expert = TabletopEnv(image_size=32), ScriptedExpert()
    env.reset(seed=3)
    for _ in range(2):
        env.step(np.array([0.4, -0.3, -1.0], np.float32))  # somewhere the expert would not have gone
    before = env.sim_state
    chunk = expert_chunk(env, horizon=6)
    assert env.sim_state is before  # looked ahead on a copy
    for label in chunk:  # the same actions as stepping the expert for real (until the episode ends)
        assert np.array_equal(label, expert.act(env))
        _, _, terminated, truncated, _ = env.step(label)
        if terminated or truncated:
            break


def test_expert_chunk_repeats_the_last_action_after_the_episode_ends():
    env, expert = TabletopEnv(image_size=32), ScriptedExpert()
    env.reset(seed=0)
    for _ in range(30):  # walk the expert to one step before success
        if expert_chunk(env, 40)[1:].std(0).max() == 0:
            break
        env.step(expert.act(env))
    chunk = expert_chunk(env, 5)
    assert (chunk[1:] == chunk[1]).all() and len(chunk) == 5


def test_record_on_policy_labels_the_states_the_policy_visits():
    def stand_still(frames):  # a policy that never moves: every state it visits is a start state
        return np.zeros((len(frames["instruction"]), 4, 3), np.float32)

    frames, chunks = record_on_policy(stand_still, 3, seed=1, horizon=4, image_size=32, max_steps=6)
    assert len(frames["image"]) == len(frames["state"]) == len(chunks) == 3 * 6  # no episode ends early
    assert chunks.shape == (18, 4, 3) and chunks.dtype == np.float32
    starts, counts = np.unique(frames["state"], axis=0, return_counts=True)
    assert len(starts) == 3 and (counts == 6).all()  # each episode's start state, six times
    assert (np.abs(chunks[:, 0, :2]).max(1) > 0).all()  # the expert always says: move to the block


def test_chance_is_well_below_expert():
    assert chance_success_rate(200, seed=0) < 0.5


@pytest.mark.parametrize("verb", sorted(TEMPLATES))
def test_every_template_round_trips(verb):
    for template in TEMPLATES[verb]:
        for block in BLOCKS:
            for zone in ZONES if verb == "place" else (None,):
                text = template.format(block=block, zone=zone)
                assert parse_instruction(text) == Task(verb, block, zone)
                assert parse_instruction(f"  {text.capitalize()}. ") == Task(verb, block, zone)
                assert set(text.split()) <= set(VOCABULARY)


def test_sampled_instructions_parse_and_stay_in_vocabulary():
    rng = np.random.default_rng(0)
    verbs = []
    for _ in range(300):
        task = sample_task(rng)
        text = instruction_for(task, rng)
        assert parse_instruction(text) == task
        assert set(text.split()) <= set(VOCABULARY)
        verbs.append(task.verb)
    assert 0.4 < verbs.count("pick") / len(verbs) < 0.6
    assert list(VOCABULARY) == sorted(set(VOCABULARY)) and all(w == w.lower() for w in VOCABULARY)


@pytest.mark.parametrize(
    "text", ["", "pick up the purple block", "put the red block on the green square", "dance", "grab the red"]
)
def test_unparseable_instruction_raises(text):
    with pytest.raises(ValueError, match="matches no template"):
        parse_instruction(text)


def test_invalid_task_raises():
    with pytest.raises(ValueError, match="zone"):
        Task("place", "red")
    with pytest.raises(ValueError, match="block"):
        Task("pick", "black")


def test_wrong_block_grasp_fails():
    env = TabletopEnv()
    env.reset(seed=3, task=Task("pick", "red"))
    _step_to(env, env.sim_state.block_pos[BLOCKS.index("green")], -1.0)
    _, reward, terminated, truncated, info = env.step(np.array([0, 0, 1], np.float32))
    assert terminated and not truncated and not info["success"] and reward == 0.0
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(3, np.float32))


def test_place_needs_release_inside_the_named_zone():
    env = TabletopEnv()
    env.reset(seed=4, task=Task("place", "blue", "yellow"))
    state = env.sim_state
    _step_to(env, state.block_pos[BLOCKS.index("blue")], -1.0)
    _, reward, terminated, _, _ = env.step(np.array([0, 0, 1], np.float32))
    assert not terminated and env.sim_state.held == BLOCKS.index("blue")
    _step_to(env, state.zone_pos[ZONES.index("purple")], 1.0)
    _, reward, terminated, _, info = env.step(np.array([0, 0, -1], np.float32))
    assert not terminated and reward == 0.0 and env.sim_state.held is None
    _step_to(env, env.sim_state.block_pos[BLOCKS.index("blue")], -1.0)
    env.step(np.array([0, 0, 1], np.float32))
    _step_to(env, state.zone_pos[ZONES.index("yellow")], 1.0)
    _, reward, terminated, _, info = env.step(np.array([0, 0, -1], np.float32))
    assert terminated and reward == 1.0 and info["success"]
    assert info["task"] == Task("place", "blue", "yellow")


def test_truncation_at_max_steps():
    env = TabletopEnv(max_steps=5)
    obs, _ = env.reset(seed=0)
    for step in range(5):
        obs, reward, terminated, truncated, info = env.step(np.zeros(3, np.float32))
        assert not terminated and truncated == (step == 4) and reward == 0.0 and not info["success"]
    assert obs["state"].dtype == np.float32 and obs["state"].tolist()[2:] == [-1.0, -1.0]


def test_actions_are_clipped_and_validated():
    env = TabletopEnv()
    env.reset(seed=0)
    start = env.sim_state.ee.copy()
    env.step(np.array([5.0, -5.0, 0.0]))
    assert np.allclose(env.sim_state.ee, np.clip(start + [0.07, -0.07], 0.05, 0.95))
    with pytest.raises(ValueError, match="action"):
        env.step(np.array([np.nan, 0, 0]))
    with pytest.raises(ValueError, match="action"):
        env.step(np.zeros(2))


def test_sim_state_is_read_only():
    env = TabletopEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError):
        env.sim_state.block_pos[0, 0] = 0.5


def test_step_rate():
    env = TabletopEnv(image_size=64)
    env.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (2000, 3)).astype(np.float32)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    assert len(actions) / (time.perf_counter() - start) > 1000


@pytest.mark.parametrize("size", [32, 64, 96])
def test_render_shapes_and_block_colours(size):
    env = TabletopEnv(image_size=size)
    obs, _ = env.reset(seed=11)
    image = obs["image"]
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert np.array_equal(render(env.sim_state, size), image)
    for i in range(len(BLOCKS)):
        assert (image == BLOCK_RGB[i]).all(axis=-1).any()
    named = BLOCK_RGB[BLOCKS.index(env.task.block)]
    assert (image == named).all(axis=-1).sum() >= (0.1 * size) ** 2 // 2


def test_render_rejects_tiny_images():
    with pytest.raises(ValueError, match="image_size"):
        TabletopEnv(image_size=16)
