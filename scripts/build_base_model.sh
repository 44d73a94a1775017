#!/usr/bin/env bash
# Build the course base model once (dsnb.model.pretrain.base_model_path; cached afterwards), with two
# process settings that change how fast the CPU gets through it, not what it computes (same weights):
# - jemalloc (apt-packages.txt), told to keep the memory it frees. Each step's logits are 32 x 128 x
#   4096 floats (64 MB); glibc's malloc returns blocks that large to the kernel when they are freed
#   and page-faults them in again on the next step, which cost a fifth of the build's CPU time
#   (benchmarks/pretrain_speed.py measures it). PyTorch's CPU tuning guide recommends jemalloc too.
# - OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning. On a busy machine a
#   spinning thread waits for a peer the OS has descheduled, and 2 threads then cost several times
#   the CPU of 1.
# Either is skipped when unavailable (no jemalloc, or OMP_WAIT_POLICY already set by you).
# Usage: scripts/build_base_model.sh [PYTHON]   (default .venv/bin/python)
set -euo pipefail
PY="${1:-.venv/bin/python}"
JEMALLOC="$(ls /usr/lib/*-linux-gnu/libjemalloc.so.2 /usr/lib64/libjemalloc.so.2 2>/dev/null | head -n 1 || true)"
exec env OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}" \
    ${JEMALLOC:+LD_PRELOAD="$JEMALLOC${LD_PRELOAD:+:$LD_PRELOAD}" MALLOC_CONF="dirty_decay_ms:-1,muzzy_decay_ms:-1"} \
    "$PY" -c "from dsnb.model.pretrain import base_model_path; print(base_model_path())"
