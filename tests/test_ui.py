"""``partkd ui``: the MLflow UI on a real SQLite store, started as a user starts it, without MLflow's GenAI job runner,
printing each experiment's runs page in the model-training view."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port

from partkd import tracking


def descendants(pid: int) -> dict[int, str]:
    """The command line of every process under ``pid``, by process id, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # not a process, or gone
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                found[child] = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            todo.append(child)
    return found


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ui_serves_the_store_without_the_job_runner_and_prints_the_runs_page(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking.run(store, "partkd/ui-test", "a-run", {"train.lr": 0.1}, {"kind": "test"}) as run_id:
        tracking.log_metrics(store, run_id, {"val/top1": 0.5})
    experiment = tracking.experiment_id(store, "partkd/ui-test")
    port = free_port()
    ui = subprocess.Popen([str(Path(sys.executable).with_name("partkd")), "ui", "--store", store, "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    processes: dict[int, str] = {}
    try:
        lines = []
        while not any("partkd/ui-test:" in line for line in lines):  # the server is up when it prints the pages
            line = ui.stdout.readline()
            assert line, "partkd ui ended early:\n" + "".join(lines)
            lines.append(line)
        page = re.search(r"partkd/ui-test: (\S+)", "".join(lines)).group(1)
        assert page == f"http://127.0.0.1:{port}/#/experiments/{experiment}?workflowType=machine_learning"
        with urllib.request.urlopen(page.split("#")[0], timeout=10) as response:  # the UI's page itself
            assert response.status == 200 and b"<html" in response.read().lower()
        processes = descendants(ui.pid)
        assert any("mlflow" in p and "server" in p for p in processes.values()), processes
        assert not [p for p in processes.values() if "huey" in p or "jobs" in p], processes  # no GenAI job runner
    finally:
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=30)
    for pid in processes:  # the server went with it
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(), pid


def test_ui_refuses_a_missing_store_in_one_line(tmp_path, capsys):
    from partkd.cli import main

    assert main(["ui", "--store", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("partkd: error: no MLflow store at") and "\n" not in err
