#!/usr/bin/env bash
# Run notebooks 1-4 on a CUDA GPU in the llama-3.2-1b-random profile with the smoke budget, twice: regime
# "native" (the GPU's own precision) and regime "t4" (fp16, memory capped at a T4's 15 GiB), and write
# results/gpu/<gpu>/<regime>/check.json. Without CUDA, or with --dry-run, print what it would run and exit 0.
# With --full: the same runs at the notebooks' real budget (no COURSE_SMOKE), deadline 520 s, into
# results/gpu/<gpu>/full/<regime>/, recording per training notebook its wall time, train tokens/s, train peaks
# (allocated, reserved) and MFU.
#
#     bash scripts/gpu_check.sh [--full] [--dry-run]
#
# On the lent GPU machine (no network): first `bash scripts/gpu_wheels.sh` here, then have the device tool run
# `bash scripts/gpu_check.sh` with carry [".whl"]. The wheels in .whl/ are installed into /tmp/site and put on
# PYTHONPATH. If $OUT is set, the log is written to $OUT/gpu_check.log as it runs, and at the end results/gpu/
# is packed into $OUT/gpu_results.tar.gz, with the executed notebooks of up to 4 failed runs beside it.
# The work is done by scripts/gpu_check.py (its docstring lists the settings); this wrapper keeps the log.
# Interpreter: $PYTHON, default python3.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the course's helpers package, without installing it
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    "$PY" scripts/gpu_check.py "$@" 2>&1 | tee -a "$OUT/gpu_check.log"
    exit "${PIPESTATUS[0]}"
fi
exec "$PY" scripts/gpu_check.py "$@"
