#!/usr/bin/env bash
# The whole GPU check of the fast path, as one script for a lent GPU machine (minutes are scarce: run it once).
#   scripts/gpu-check.sh [OUT]        # OUT: where the figures go (default $OUT, else runs/gpu-check)
# 1. correctness first: the bf16 step against fp32 and the CUDA tests of the suite that need no Ray;
# 2. the benchmark side by side with the reference ST-GCN (../shared/anchors/bench_vs_reference.py), eager;
# 3. partkd's own rows with train.compile off and on, fp32 and bf16, at the ntu shape (what the default should be);
# 4. the data path: Ray Data to the GPU per CPU count (how many CPUs a GPU worker needs);
# 5. concurrency: K single-worker teacher jobs sharing the GPU (train.gpus_per_worker = 1/K), K = 1, 2, 4, and their
#    combined samples/s (the last epoch of each): how many study trials one GPU should run at once.
# Each step's output goes to OUT; a failing step is reported and the next one still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-runs/gpu-check}}"
mkdir -p "$out"
py=.venv/bin/python
[ -x "$py" ] || py=python
status=0
step() {  # step NAME COMMAND...: run it, keep its output, go on after a failure
    local name=$1; shift
    echo "== $name: $*" | tee -a "$out/summary.txt"
    if "$@" >"$out/$name.log" 2>&1; then echo "   ok" | tee -a "$out/summary.txt"
    else echo "   FAILED (exit $?): see $name.log" | tee -a "$out/summary.txt"; status=1; fi
    tail -n 25 "$out/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1
$py -c "import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0))" \
    >>"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
step correctness $py -m pytest -q -p no:cacheprovider tests/test_models.py tests/test_losses.py tests/test_part_matrix.py \
    -k "bf16 or cuda or part_matrix"
step reference $py ../shared/anchors/bench_vs_reference.py \
    --partkd "partkd bench train --shapes {shape} --no-data-path --json {json}"
step compile $py -m partkd.bench.train --shapes ntu --dtypes bf16,fp32 --compile off,on --no-data-path \
    --steps 10 --warmup 3 --json "$out/partkd-ntu.json"
step data_path $py -m partkd.bench.train --shapes ntu --dtypes bf16 --steps 3 --warmup 1 --json "$out/data-path.json"
concurrency() {
    local data="$out/synth-ntu" k i
    .venv/bin/partkd data synth --out "$data" --samples 1024 --frames 300 --two-person --overwrite || return 1
    .venv/bin/ray start --head --num-gpus=1 --disable-usage-stats >/dev/null || return 1
    for k in 1 2 4; do
        for i in $(seq "$k"); do
            RAY_ADDRESS=auto .venv/bin/partkd train teacher --data "$data" --set train.use_gpu=true \
                --set "train.gpus_per_worker=$($py -c "print(1 / $k)")" --set train.epochs=2 \
                --set "train.name=concurrency-$k-$i" --set train.storage_path="$out/ray" \
                >"$out/concurrency-$k-$i.log" 2>&1 &
        done
        wait
        grep -ho "samples_per_s=[0-9.e+]*" "$out"/concurrency-"$k"-*.log | cut -d= -f2 \
            | $py -c "import sys; r = [float(x) for x in sys.stdin]; print(f'{$k} jobs on one GPU: {len(r)} finished, '
                      f'combined {sum(r):.0f} samples/s, each {[round(x) for x in r]}')"
    done
    .venv/bin/ray stop --force >/dev/null
}
step concurrency concurrency
exit $status
