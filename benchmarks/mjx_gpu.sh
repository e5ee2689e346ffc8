#!/usr/bin/env bash
# The rodent under MJX on a GPU machine whose Python has jax but not MuJoCo, MJX, brax or
# gymnasium: they travel as wheels in .whl/ (pip download --no-deps of mujoco, mujoco-core,
# mujoco-mjx, brax, gymnasium, farama-notifications, jaxopt, trimesh, pyopengl, glfw,
# ml_collections), and .whl/site/dm_control holds only dm-control's rodent.xml and its skin.
# Generates 8 rodent clips, then times MJXTrackEnv at 4096 and 16384 envs, with MuJoCo's own
# solver iterations and capped at 4/8. Output also goes to $OUT/gpu.log when $OUT is set.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.whl/site:$PWD PYTHONUNBUFFERED=1
log=${OUT:-/tmp}/gpu.log
nvidia-smi -L | tee "$log"
python3 -c "import jax, mujoco; print('jax', jax.__version__, jax.devices(), 'mujoco', mujoco.__version__)" | tee -a "$log"
[ -d /tmp/clips ] || python3 -m ncssm_env.cli generate --body rodent --clips 8 --frames 300 --out /tmp/clips 2>&1 | tee -a "$log"
python3 benchmarks/vector_env.py --no-cpu --mjx-body rodent --mjx ${MJX_N:-4096,16384} --mjx-iterations 4,8 \
    --steps ${MJX_STEPS:-50} --repeats 3 --clip-dir /tmp/clips 2>&1 | grep -v -i warp | tee -a "$log"
