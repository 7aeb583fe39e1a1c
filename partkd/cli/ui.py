"""``partkd ui``: the MLflow tracking UI on partkd's store, opened on the runs page.

``mlflow ui`` as it ships starts MLflow 3's GenAI job runner beside the UI (a Huey consumer and its workers: eight more
Python processes and about 50 s of CPU on a 2-core machine) and opens an experiment in its GenAI view. partkd's runs
are model training: this starts the same server with the job runner off and prints the link to each experiment's runs
page in the model-training view (``?workflowType=machine_learning``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from partkd import tracking


def ui_environment() -> dict:
    """The server's environment: MLflow's GenAI job runner off (partkd submits no GenAI jobs)."""
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def wait_until_up(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    """Until the server answers ``url``/health; an error saying so if it exits or does not answer in time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ConnectionError(f"the MLflow server exited with code {server.returncode} (its output is above)")
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).close()
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise ConnectionError(f"the MLflow server did not answer at {url} in {seconds:.0f} s")


def runs_pages(store: str, base_url: str) -> list[tuple[str, str]]:
    """(experiment name, runs-page URL) of every experiment in ``store`` but MLflow's empty "Default", the most
    recently updated first."""
    from mlflow.tracking import MlflowClient

    experiments = [e for e in MlflowClient(tracking_uri=store).search_experiments() if e.name != "Default"]
    experiments.sort(key=lambda e: -(e.last_update_time or 0))
    return [(e.name, tracking.experiment_url(base_url, e.experiment_id)) for e in experiments]


def cmd_ui(args) -> int:
    store = args.store or tracking.tracking_uri()
    if store.startswith(("http://", "https://")):
        raise ValueError(f"the tracking store {store} is a server already: open it in a browser")
    if store.startswith("sqlite:///") and not Path(store.removeprefix("sqlite:///")).exists():
        raise ValueError(f"no MLflow store at {store.removeprefix('sqlite:///')}: run `partkd demo` (or a training) "
                         "in this folder first, or give --store")
    url = f"http://{args.host}:{args.port}"
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", store, "--host",
               args.host, "--port", str(args.port), "--workers", "1"]
    artifacts = tracking.default_artifact_root(store)
    if artifacts:
        command += ["--default-artifact-root", artifacts]
    server = subprocess.Popen(command, env=ui_environment())
    try:
        wait_until_up(url, server)
        pages = runs_pages(store, url)
        print(f"MLflow UI at {url} (store {store}); Ctrl-C stops it", flush=True)
        for name, page in pages:
            print(f"  {name}: {page}", flush=True)
        if not pages:
            print("  no experiment yet: run `partkd demo`", flush=True)
        return server.wait()
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()


def register(commands) -> None:
    p = commands.add_parser("ui", help="the MLflow UI on partkd's runs (no GenAI job runner); prints the runs pages")
    p.add_argument("--store", help="tracking store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)
