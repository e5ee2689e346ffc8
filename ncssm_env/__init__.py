"""The MuJoCo body and the tracking task; importing this registers ``NCSSM-Track-v0``.

>>> import gymnasium, ncssm_env
>>> env = gymnasium.make("NCSSM-Track-v0", body="rodent")
"""

import os

# Headless rendering: with no display and no choice made, use EGL (set before mujoco loads).
if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"

import gymnasium  # noqa: E402

ENV_ID = "NCSSM-Track-v0"
MAX_EPISODE_STEPS = 1000  # 20 s at 50 Hz; episodes also end at the clip's last frame


def register_envs() -> None:
    """Register ``NCSSM-Track-v0`` with Gymnasium (done on import; safe to call again)."""
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(
            ENV_ID,
            entry_point="ncssm_env.gym_env:TrackEnv",
            vector_entry_point="ncssm_env.vector:make_vector_env",
            max_episode_steps=MAX_EPISODE_STEPS,
        )


register_envs()

from ncssm_env.body import BODIES, build_model  # noqa: E402
from ncssm_env.task import TaskConfig  # noqa: E402

__all__ = ["BODIES", "ENV_ID", "TaskConfig", "build_model", "register_envs"]
