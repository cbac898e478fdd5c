#!/usr/bin/env bash
# The GPU benchmark rows issue 23 needs, as one device call (about 5 minutes on the H200, start not counted).
#
#     bash scripts/gpu_bench.sh [--dry-run]
#
# On the lent GPU machine (no network): first `bash scripts/gpu_wheels.sh` here, then have the device tool run
# `bash scripts/gpu_bench.sh` with carry [".whl"] and timeout_s 420. The wheels in .whl/ are installed into /tmp/site
# and put on PYTHONPATH, as scripts/gpu_check.sh does. Two benchmark runs, in the llama-3.2-1b-random profile on
# conversations up to 2048 tokens:
#   1. QLoRA's course row (embedding and norms in bf16, float32 adapters) and the course with PEFT's float32 upcast,
#      each method's "course, gradient checkpointing", and notebook 1's low-memory plan, merged into the GPU run of
#      benchmark.json (is QLoRA's course 1.5x naive; what does the memory plans' checkpointing cost in speed and save
#      in memory; how fast is full fine-tuning where only its low-memory plan fits?);
#   2. QLoRA at Unsloth's settings (no upcast), with expandable segments and --memory-snapshot, into
#      memory-snapshot.json: its reserved peak against Unsloth's published 2.16 GiB, and what is live at the peak.
# With $OUT set, benchmark.json (a copy of results/benchmark.json, updated), memory-snapshot.json and gpu_bench.log
# go there; without it, results/. Copy benchmark.json back over results/benchmark.json, print README's tables
# from it (python scripts/benchmark.py --readme; a test fails until they match) and commit both.
# Interpreter: $PYTHON, default python3. Exit status: 0 when both runs measured every row.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
PY=${PYTHON:-python3}
DEST=${OUT:-results}
SITE=${GPU_BENCH_SITE:-/tmp/site}
COMMON=(--profile llama-3.2-1b-random --rows gpu --long --max-length 2048 --eval-examples 32)
ROWS="qlora:course;qlora:course, PEFT's float32 embedding and norms;qlora:course, gradient checkpointing"
ROWS="$ROWS;lora:course, gradient checkpointing;full:course, gradient checkpointing"
ROWS="$ROWS;full:course, low-memory plan"
SNAPSHOT_ROW='qlora:unsloth settings'

if [ "${1:-}" = "--dry-run" ]; then
    echo "WHEELS $(ls .whl/*.whl 2>/dev/null | wc -l) in .whl/ -> $SITE"
    echo "RUN $PY scripts/benchmark.py ${COMMON[*]} --steps 16 --merge --budget-s 230 --only \"$ROWS\" --out $DEST/benchmark.json"
    echo "RUN PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True $PY scripts/benchmark.py ${COMMON[*]} --steps 4" \
        "--memory-snapshot --only '$SNAPSHOT_ROW' --out $DEST/memory-snapshot.json"
    exit 0
fi

mkdir -p "$DEST"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the course's helpers package, without installing it
exec > >(tee -a "$DEST/gpu_bench.log") 2>&1
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        || { echo "wheel install FAILED: nothing measured"; exit 1; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1 COURSE_CACHE_DIR=${COURSE_CACHE_DIR:-/tmp/course-gpu/cache}
if [ "$DEST" != results ]; then
    cp results/benchmark.json "$DEST/benchmark.json"
fi
status=0
"$PY" scripts/benchmark.py "${COMMON[@]}" --steps 16 --merge --budget-s 230 --only "$ROWS" \
    --out "$DEST/benchmark.json" || status=1
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "$PY" scripts/benchmark.py "${COMMON[@]}" --steps 4 \
    --memory-snapshot --only "$SNAPSHOT_ROW" --out "$DEST/memory-snapshot.json" || status=1
exit $status
