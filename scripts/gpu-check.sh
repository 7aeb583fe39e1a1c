#!/usr/bin/env bash
# The whole GPU check of the fast path, as one script for a lent GPU machine (its minutes are scarce: run it once).
#   scripts/gpu-check.sh [OUT]     # figures and logs go to OUT (default $OUT, else runs/gpu-check)
# Its Python: $PY, else .venv/bin/python, else python3 (a lent machine's image has torch, no Ray, no MLflow).
# 1. correctness first: tests/test_fastpath.py on cuda (bf16 against fp32, the device-side bank set, compile);
# 2. the reference ST-GCN and partkd side by side (bench_vs_reference.py, from $ANCHORS, else shared/anchors or
#    ../shared/anchors), the default path (eager, bf16);
# 3. partkd's teacher and bank-student steps, compile off and on, bf16, at the ntu shape, and the data path per CPU
#    count where Ray is;
# 4. where Ray is: 1, 2 and 4 single-worker teacher jobs sharing the GPU (train.gpus_per_worker = 1/K), their
#    combined samples/s (each job's last epoch): how many study trials one GPU should run at once.
# Each step has a time limit, all of them together under 10 minutes where there is no Ray (a lent machine's call);
# a failing or skipped step is reported and the next one runs. OUT gets summary.txt, the JSON files and logs.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-runs/gpu-check}}"
work="$(mktemp -d /tmp/partkd-gpu-check.XXXXXX)"  # datasets, Ray storage, logs: not in OUT
mkdir -p "$out"
if [ -n "${PY:-}" ]; then py=$PY; elif [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
anchors="${ANCHORS:-}"
for candidate in shared/anchors ../shared/anchors; do
    [ -z "$anchors" ] && [ -f "$candidate/bench_vs_reference.py" ] && anchors=$candidate
done
summary="$out/summary.txt"
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }
step() {  # step NAME SECONDS COMMAND...: run it under a time limit, keep its output, go on after a failure
    local name=$1 limit=$2; shift 2
    say "== $name: $*"
    if timeout "$limit" "$@" >"$work/$name.log" 2>&1; then say "   ok"
    else say "   FAILED (exit $?): see $name.log in logs.tar.gz"; status=1; fi
    tail -n 30 "$work/$name.log" | tee -a "$summary"
}
finish() { tar -czf "$out/logs.tar.gz" -C "$work" --exclude='synth*' --exclude='ray' . 2>/dev/null; exit "$status"; }
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$summary"
if ! "$py" -c "import torch; assert torch.cuda.is_available(); print('torch', torch.__version__, torch.cuda.get_device_name(0))" \
        2>&1 | tee -a "$summary"; then
    say "no CUDA device visible to $py: nothing measured"; status=1; finish
fi
has_ray=0
"$py" -c "import ray, mlflow" 2>/dev/null && has_ray=1
bench="$py -m partkd.bench.train"

step correctness 120 "$py" -m pytest -q -p no:cacheprovider tests/test_fastpath.py
if [ -n "$anchors" ]; then
    step reference 240 "$py" "$anchors/bench_vs_reference.py" \
        --partkd "$bench --shapes {shape} --no-data-path --json {json}"
    grep -h '^{' "$work/reference.log" >"$out/reference.json" 2>/dev/null
else
    say "== reference: skipped, bench_vs_reference.py not found (set ANCHORS, or copy the anchors to shared/anchors)"
fi
data_path=--no-data-path
[ "$has_ray" = 1 ] && data_path=""
[ "$has_ray" = 1 ] || say "(no Ray or MLflow for $py: the data path and the concurrency step are left out)"
step compile 200 $bench --shapes ntu --dtypes bf16 --compile off,on --kinds teacher_step,student_kd_bank \
    --steps 10 --warmup 3 $data_path --json "$out/partkd-ntu.json"

cat >"$work/concurrency.sh" <<'SCRIPT'
set -u
data="$work/synth-ntu"
"$py" -m partkd.cli data synth --out "$data" --samples 1024 --frames 300 --two-person || exit 1
"$py" -m ray.scripts.scripts start --head --num-gpus=1 --disable-usage-stats >/dev/null || exit 1
for k in 1 2 4; do
    for i in $(seq "$k"); do
        RAY_ADDRESS=auto MLFLOW_TRACKING_URI="sqlite:///$work/mlflow-$k-$i.db" "$py" -m partkd.cli train teacher \
            --data "$data" --set train.use_gpu=true --set "train.gpus_per_worker=$("$py" -c "print(1 / $k)")" \
            --set train.epochs=2 --set "train.name=concurrency-$k-$i-$$" --set "train.storage_path=$work/ray" \
            >"$work/concurrency-$k-$i.log" 2>&1 &
    done
    wait
    grep -ho "samples_per_s=[0-9.e+]*" "$work"/concurrency-"$k"-*.log | cut -d= -f2 | "$py" -c "import sys
r = [float(x) for x in sys.stdin]
print(f'$k job(s) on one GPU: {len(r)} finished, combined {sum(r):.0f} samples/s, each {[round(x) for x in r]}')"
done
"$py" -m ray.scripts.scripts stop --force >/dev/null
SCRIPT
export py work
[ "$has_ray" = 1 ] && step concurrency 540 bash "$work/concurrency.sh"
finish
