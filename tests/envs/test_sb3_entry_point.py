"""The registered id through Gymnasium's and Stable-Baselines3's own entry points, as a user builds it."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.env_util import make_vec_env

from amc.errors import ConfigError
from envs import ENV_ID

pytestmark = pytest.mark.usefixtures("cache_env")  # the session's trained cnn, never ~/.cache

BUDGET = 0.3
ENV_KWARGS = dict(model="cnn", dataset="digits", budget=BUDGET, val_limit=64, bn_batches=1)


def test_gymnasium_make_accepts_render_mode_none() -> None:
    env = gymnasium.make(ENV_ID, render_mode=None, **ENV_KWARGS)
    assert env.unwrapped.render_mode is None
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


def test_an_unsupported_render_mode_is_one_line_naming_the_supported_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        gymnasium.make(ENV_ID, render_mode="human", **ENV_KWARGS)
    message = str(caught.value)
    assert "\n" not in message and "'human'" in message and "supported: [None, 'rgb_array']" in message


def test_rgb_array_draws_the_decided_keep_ratios() -> None:
    env = gymnasium.make(ENV_ID, render_mode="rgb_array", **ENV_KWARGS)
    env.reset(seed=0)
    n = env.unwrapped.n_layers
    blank = env.render()
    assert blank.shape == (64, 16 * n, 3) and blank.dtype == np.uint8
    env.step(np.array([1.0], dtype=np.float32))  # keep 1.0 in the first layer
    env.step(np.array([-1.0], dtype=np.float32))  # keep min_keep in the second
    image = env.render()
    blue = (image == (31, 119, 180)).all(axis=2)  # (H, W)
    red = (image == (214, 39, 40)).all(axis=2)  # the min_keep line, drawn over the bars
    full, low = (blue | red)[:, 2:14].all(axis=1), (blue | red)[:, 18:30].all(axis=1)
    assert full.sum() == 64 and low.sum() == round(0.2 * 64)  # bar heights are the keep ratios
    assert red[64 - round(0.2 * 64)].all()
    assert not blue[:, 32:].any()  # undecided layers are not drawn as decided


@pytest.mark.parametrize("algo", [PPO, A2C], ids=["ppo", "a2c"])
def test_sb3_learns_on_the_registered_id_through_make_vec_env(algo) -> None:
    vec = make_vec_env(ENV_ID, n_envs=2, seed=0, env_kwargs=ENV_KWARGS)
    steps_per_episode = vec.get_attr("n_layers")[0]
    rollout = dict(n_steps=steps_per_episode * 4) | (dict(batch_size=steps_per_episode * 4) if algo is PPO else {})
    model = algo("MlpPolicy", vec, seed=0, device="cpu", **rollout)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(total_timesteps=300)
    assert model.num_timesteps >= 300
    # Gradient updates ran: the policy's weights moved.
    moved = sum(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))
    assert moved >= len(before) // 2
    # Whole episodes ended with the evaluated accuracy as reward (VecMonitor's records).
    episodes = list(model.ep_info_buffer)
    assert len(episodes) >= 300 // steps_per_episode - 2
    assert all(ep["l"] == steps_per_episode and 0.0 < ep["r"] <= 1.0 for ep in episodes)
    # Every finished episode is feasible: AMC's clipping holds under SB3's own loop.
    obs = vec.reset()
    for _ in range(steps_per_episode):
        action, _ = model.predict(obs, deterministic=True)
        obs, rewards, dones, infos = vec.step(action)
    assert dones.all()
    assert all(info["cost_ratio"] <= BUDGET + 1e-9 for info in infos)
    assert np.all((rewards > 0) & (rewards <= 1))
    vec.close()
