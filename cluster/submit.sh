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
ray_cli=$(command -v ray) || { echo "submit.sh: the ray command is not on PATH (activate partkd's environment: . .venv/bin/activate)" >&2; exit 2; }
python=$(dirname "$ray_cli")/python
[[ -x "$python" ]] || python=python3

# Before uploading anything: the job server answers at $address and accepts this token (one line if not). Then the
# runtime environment, as JSON written by json.dumps (a tracking URI may hold any character).
runtime_env=$("$python" - "$address" <<'PY'
import json, os, sys, urllib.error, urllib.request
from pathlib import Path

address = sys.argv[1].rstrip("/")
address = address if "://" in address else f"http://{address}"  # as `ray job submit` takes it
file = Path.home() / ".ray" / "auth_token"
token = os.environ.get("RAY_AUTH_TOKEN") or (file.read_text().strip() if file.exists() else "")
request = urllib.request.Request(f"{address}/api/jobs/", headers={"Authorization": f"Bearer {token}"} if token else {})
try:
    urllib.request.urlopen(request, timeout=10).close()
except urllib.error.HTTPError as err:
    if err.code in (401, 403):
        sys.exit(f"submit.sh: the Ray cluster at {address} refused the token {'given' if token else '(none given)'}: "
                 "set RAY_AUTH_TOKEN or ~/.ray/auth_token (on KubeRay: kubectl get secret partkd-ray-token "
                 "-o jsonpath='{.data.auth_token}' | base64 -d)")
    sys.exit(f"submit.sh: {address} is not a Ray job server (HTTP {err.code} from /api/jobs/)")
except (urllib.error.URLError, OSError) as err:
    reason = getattr(err, "reason", err)
    sys.exit(f"submit.sh: no Ray job server answers at {address} ({reason}); is the cluster up, and the dashboard port "
             "forwarded (kubectl port-forward svc/partkd-head-svc 8265:8265)?")
excludes = ["/data/", "/.venv/", "/runs/", "/mlruns/", "/mlartifacts/", "/mlflow.db", "/demo-data/", "/.whl/", "/.git/",
            "__pycache__/", ".pytest_cache/", ".ruff_cache/", "*.egg-info/"]
env = {k: os.environ[k] for k in ("MLFLOW_TRACKING_URI",) if os.environ.get(k)}
env["MLFLOW_DISABLE_TELEMETRY"] = os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true")  # see partkd/__init__.py
print(json.dumps({"excludes": excludes, "env_vars": env}))
PY
) || exit 2
exec "$ray_cli" job submit --address "$address" "${wait_flag[@]}" --working-dir . --runtime-env-json "$runtime_env" \
  -- python -m tuning.study "$@"
