#!/usr/bin/env bash
# Submit a hyperparameter study to a running Ray cluster as a Ray job (DESIGN §10, §12).
#
#   cluster/submit.sh [--address URL] [--no-wait] -- --config tuning/configs/synthetic.toml [--resume] [--set k=v]
#
# The working tree is uploaded as the job's working directory, code only: datasets, virtual environments, runs,
# MLflow files and caches stay behind (the cluster reads data and writes runs on its shared storage, named in the
# study file). MLFLOW_TRACKING_URI is passed on to the job when it is set here; the cluster's nodes need partkd's
# dependencies installed (the container image), and a dashboard (ray[default]) on the head for job submission.
# With token authentication on the cluster (RAY_AUTH_MODE=token), the token must be here too: RAY_AUTH_TOKEN or
# ~/.ray/auth_token.
set -euo pipefail

address="${RAY_ADDRESS:-http://127.0.0.1:8265}"
wait_flag=()
while [[ $# -gt 0 && "$1" != "--" ]]; do
  case "$1" in
    --address) address="$2"; shift 2 ;;
    --no-wait) wait_flag=(--no-wait); shift ;;
    *) echo "submit.sh: unknown option $1 (study options go after --)" >&2; exit 2 ;;
  esac
done
[[ "${1:-}" == "--" ]] && shift

cd "$(dirname "$0")/.."
env_vars="{}"
if [[ -n "${MLFLOW_TRACKING_URI:-}" ]]; then
  env_vars="{\"MLFLOW_TRACKING_URI\": \"${MLFLOW_TRACKING_URI}\"}"
fi
runtime_env=$(cat <<JSON
{"excludes": ["/data/", "/.venv/", "/runs/", "/mlruns/", "/mlartifacts/", "/mlflow.db", "/demo-data/", "/.whl/",
              "/.git/", "__pycache__/", ".pytest_cache/", ".ruff_cache/", "*.egg-info/"],
 "env_vars": ${env_vars}}
JSON
)
exec ray job submit --address "$address" "${wait_flag[@]}" --working-dir . --runtime-env-json "$runtime_env" \
  -- python -m tuning.study "$@"
