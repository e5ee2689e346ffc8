#!/usr/bin/env bash
# The rodent under MJX on a GPU machine (the device figure of the README's "Speed" section).
#
# That machine's Python (3.12, jax 0.11 with CUDA 13) lacks MuJoCo, MJX, MuJoCo Warp, brax and
# gymnasium, and nothing can be downloaded there, so they travel with the working tree. Warp
# alone is a 149 MB wheel and one call carries at most 64 MiB, so the packages go as one
# xz-compressed tar of an unpacked site-packages folder, cut into parts of 58 MB:
#
#   bash benchmarks/mjx_gpu.sh prepare      # here, once (about 5 minutes of CPU): .whl/1, .whl/2, ...
#   device run, carry [".whl/1"]:  bash benchmarks/mjx_gpu.sh stage      # each part but the last
#   device run, carry [".whl/2"]:  bash benchmarks/mjx_gpu.sh run        # at once (the machine
#                                                                        # stays warm for 30 s)
#
# "run" prints as it goes and tees to $OUT/gpu.log. Every compile is capped by a timeout. It
# measures, for the rodent with impl warp (MuJoCo Warp) and the solver at 5/5 iterations
# (talmolab's setting; benchmarks/solver_drift.py says how far it drifts):
#   1. N 1024, 4096, 8192: compile (cold at the first: fresh JAX and Warp caches), env-only
#      control steps/s, policy + env control steps/s (the quickstart S5 in evaluate's scan);
#   2. N 1024 again in a new process: the warm compile (JAX's persistent cache, Warp's kernels);
#   3. brax PPO at N 4096 (2 epochs; steps/s of the second);
#   4. impl jax at N 1024, capped at 150 s.
# Each step has its own cap, and all share BUDGET (330 s). Sizes: MJX_N ("1024 4096 8192"),
# PPO_N (4096), STEPS (100), JAX_CAP (150).
set -o pipefail
cd "$(dirname "$0")/.."
stage=/tmp/ncssm-stage
part_mb=58  # a part and the working tree (under 1 MB) fit in one call's 64 MiB

prepare() {
    local work plat site
    work=$(mktemp -d) site=$work/site
    plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
    python3 -m pip download -q --no-deps "${plat[@]}" -d "$work/wheels" \
        mujoco==4.0.0 mujoco-core==4.0.0 mujoco-mjx==3.17.0 warp-lang==1.18.0 brax==0.14.2 \
        gymnasium==1.4.0 farama-notifications jaxopt trimesh ml_collections pyopengl glfw || return 1
    mkdir -p "$site"
    for w in "$work"/wheels/*.whl; do python3 -m zipfile -e "$w" "$site" || return 1; done
    rm -rf "$site"/warp/{examples,tests} "$site"/mujoco/mjx/{test_data,integration_test}
    # dm-control only for the rodent's MJCF and what it includes (ncssm_env.body reads it).
    local dmc
    dmc=$(python3 -c "import importlib.resources as r; print(r.files('dm_control'))") || return 1
    mkdir -p "$site/dm_control/locomotion/walkers"
    cp -r "$dmc/locomotion/walkers/assets" "$site/dm_control/locomotion/walkers/"
    rm -rf .whl && mkdir -p .whl
    echo "compressing $(du -sh "$site" | cut -f1) of packages ..."
    tar -C "$work" -cf - site | xz -T0 -9 | split -b ${part_mb}M -d -a 1 - "$work/part."
    local i=1
    for p in "$work"/part.*; do mkdir -p ".whl/$i" && mv "$p" ".whl/$i/"; i=$((i + 1)); done
    rm -rf "$work"
    du -sh .whl/*
    echo "device calls: 'bash benchmarks/mjx_gpu.sh stage' carrying .whl/1 (and so on for each part but the last),"
    echo "then at once 'bash benchmarks/mjx_gpu.sh run' carrying .whl/$((i - 1))."
}

unpack() {
    mkdir -p "$stage" && cp .whl/*/part.* "$stage/" || return 1
    if [ "$1" = run ]; then
        rm -rf /tmp/site && cat "$stage"/part.* | xz -d | tar -C /tmp -xf - || return 1
    fi
    ls "$stage"
}

# capped CAP TITLE CMD...: run CMD under a timeout of CAP seconds, or of what is left of
# BUDGET (default 330 s, so that both calls fit in 8 minutes of device time with the start).
capped() {
    local cap=$1 title=$2 left=$(( ${BUDGET:-330} - SECONDS ))
    shift 2
    [ "$left" -lt "$cap" ] && cap=$left
    echo "== $title (at ${SECONDS} s, cap ${cap} s)"
    if [ "$cap" -lt 10 ]; then echo "   skipped: the budget is spent"; return; fi
    timeout "$cap" "$@" || echo "   no result within ${cap} s (exit $?)"
}

run() {
    unpack run || exit 1
    # ncssm is not pip-installed there: its entry point (the built-in policies) goes in by hand.
    mkdir -p /tmp/site/ncssm-0.0.dist-info
    printf 'Metadata-Version: 2.1\nName: ncssm\nVersion: 0.0\n' >/tmp/site/ncssm-0.0.dist-info/METADATA
    printf '[ncssm]\nbuiltin = ncssm_policies.builtin\n' >/tmp/site/ncssm-0.0.dist-info/entry_points.txt
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MUJOCO_GL=disable
    export NCSSM_JAX_CACHE=/tmp/ncssm-jax-cache WARP_CACHE_PATH=/tmp/ncssm-warp-cache
    export XLA_FLAGS="--xla_gpu_triton_gemm_any=True ${XLA_FLAGS:-}"
    rm -rf "$NCSSM_JAX_CACHE" "$WARP_CACHE_PATH"
    local log=${OUT:-/tmp}/gpu.log steps=${STEPS:-100} solver="--iterations 5 --ls-iterations 5"
    local bench="python3 benchmarks/vector_env.py --no-cpu --mjx-body rodent --clip-dir /tmp/clips"
    {
        nvidia-smi -L
        python3 -c "import jax, mujoco, warp; print('jax', jax.__version__, jax.devices(), 'mujoco', mujoco.__version__, 'warp', warp.__version__)"
        [ -d /tmp/clips ] || python3 -m ncssm_policies.data_cli generate --body rodent --clips 8 --frames 300 --out /tmp/clips
        local first=1 n0
        n0=$(echo ${MJX_N:-1024} | cut -d' ' -f1)
        for n in ${MJX_N:-1024 4096 8192}; do
            capped $((first ? 200 : 90)) "impl warp, N $n, env and policy + env$([ $first = 1 ] && echo ', cold caches')" \
                $bench --impl warp --mjx "$n" --steps "$steps" --policy $solver
            first=0
        done
        capped 45 "impl warp, N $n0, a new process: the warm compile" \
            $bench --impl warp --mjx "$n0" --steps "$steps" $solver
        capped 120 "brax PPO, impl warp, N ${PPO_N:-4096}" \
            $bench --impl warp --mjx "${PPO_N:-4096}" --steps "$steps" --ppo $solver
        capped "${JAX_CAP:-150}" "impl jax, N $n0, capped at ${JAX_CAP:-150} s" \
            $bench --impl jax --mjx "$n0" --steps "$steps" $solver
        echo "== done in $SECONDS s"
    } 2>&1 | grep -v -E "^(W|E)[0-9]{4} |Warp CUDA warning" | tee "$log"
}

case "${1:-}" in
    prepare) prepare ;;
    stage) unpack stage ;;
    run) run ;;
    *) echo "usage: bash benchmarks/mjx_gpu.sh prepare|stage|run" >&2; exit 2 ;;
esac
