"""Shared fixtures: small synthetic datasets written through the real writer into real Parquet files, one local Ray,
and the one dataset every training test shares."""

import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# The session's Ray cluster (ray_cluster) runs with token authentication, as Ray 2.59+ clusters do. Ray reads the
# mode and token once per process, when it is first imported: they are set here, before any test module imports it,
# and reach every process the tests start (drivers joining the cluster, the cluster's nodes).
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.pop("RAY_ADDRESS", None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The tests' S3-compatible server (s3_server: moto on loopback) is named here for the same reason: the cluster's nodes,
# the drivers and the tracking server find an object store through the standard AWS variables, as on KubeRay.
os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}", AWS_ACCESS_KEY_ID="partkd-tests",
                  AWS_SECRET_ACCESS_KEY="partkd-tests", AWS_DEFAULT_REGION="us-east-1")
os.environ["MLFLOW_S3_ENDPOINT_URL"] = os.environ["AWS_ENDPOINT_URL"]  # MLflow's artifact store reads this one

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from partkd.data.schema import Sample  # noqa: E402
from partkd.data.synth import SynthConfig, write_synthetic  # noqa: E402
from partkd.train.config import JobConfig, load_config  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_sample(sample_id: str, label: int = 0, frames: int = 5, persons: int = 1, hq: bool = True, lq: bool = True,
                seed: int = 0, lq_joints: int = 17) -> Sample:
    """A hand-made sample with random values: ntu25 3D on the HQ side, coco17 2D on the LQ side."""
    rng = np.random.default_rng(seed)
    return Sample(
        sample_id=sample_id, label=label, frames=frames,
        hq=rng.normal(size=(persons, frames, 25, 3)).astype(np.float32) if hq else None,
        hq_score=rng.uniform(0, 1, size=(persons, frames, 25)).astype(np.float32) if hq else None,
        lq=rng.normal(size=(persons, frames, lq_joints, 2)).astype(np.float32) if lq else None,
        lq_score=rng.uniform(0, 1, size=(persons, frames, lq_joints)).astype(np.float32) if lq else None,
        subject=1 + seed % 40, camera=1 + seed % 3, setup=None if seed % 2 else 1 + seed % 32, replication=1,
        split=("train", "test", None)[seed % 3],
    )


@pytest.fixture(autouse=True)
def one_ray(request):
    """A test that runs Ray without the ``ray_session`` fixture would start a second, local Ray in this process, or
    join the session's cluster unannounced (the tests without Ray run before this process joins it: see
    ``pytest_collection_modifyitems``): it fails here, naming itself."""
    yield
    ray = sys.modules.get("ray")
    if "ray_session" not in request.fixturenames and ray is not None and ray.is_initialized():
        ray.shutdown()
        pytest.fail(f"{request.node.nodeid} started Ray without the ray_session fixture")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


# The session cluster's head runs no work (0 CPUs, as on a KubeRay cluster): drivers, the dashboard and job server
# live there, every task and actor that needs a CPU runs on the second node. As many logical CPUs as the machine has
# cores: more would only start more processes on them (a Ray Train job on 5 logical CPUs here took twice as long).
HEAD_CPUS, NODE_CPUS = 0, 2


@dataclass(frozen=True)
class RayCluster:
    dashboard: str  # http://127.0.0.1:PORT, for `ray job submit`
    gcs: str  # 127.0.0.1:PORT, for ray.init and RAY_ADDRESS
    env: dict  # the environment that reaches it: token, PATH to the venv's `ray`
    node_ids: list[str]  # the head's first


def head_first(node_ids: list[str], address: str, env: dict) -> list[str]:
    ray_cli = str(Path(sys.executable).with_name("ray"))
    nodes = json.loads(subprocess.run([ray_cli, "list", "nodes", "--address", address, "--format", "json",
                                       "--detail"], env=env, capture_output=True, text=True, check=True).stdout)
    head = next(n["node_id"] for n in nodes if n.get("is_head_node"))
    return [head] + [n for n in node_ids if n != head]


class StartingCluster:
    """The session's two ``ray start --block`` processes, from the moment they are launched: ``ray start --head`` and
    a second node joined over loopback, as a user's cluster of two machines, with token authentication on (the default
    since Ray 2.59). Each node has a temporary folder of its own (a shared one lets one node's runtime-env agent delete
    a job's working directory under the other); the head has no CPU (``HEAD_CPUS``)."""

    def __init__(self):
        self.ray_cli = str(Path(sys.executable).with_name("ray"))
        self.temps = [tempfile.mkdtemp(prefix="rayc", dir="/tmp") for _ in range(2)]  # short: socket paths live there
        self.gcs, self.dashboard = free_port(), free_port()
        self.env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
                    # Ray Train's controller polls its workers every 2 s by default: each job would wait for it at
                    # start and end
                    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
                    # no node is ever drained here: no job needs its own process watching for preemption
                    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
        self.nodes: list[subprocess.Popen] = []
        self.logs = [Path(temp) / "ray-start.log" for temp in self.temps]  # what each `ray start` says
        try:
            self._launch(["--head", f"--port={self.gcs}", f"--dashboard-port={self.dashboard}",
                          "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--temp-dir={self.temps[0]}",
                          f"--ray-client-server-port={free_port()}"], HEAD_CPUS)
            self._launch_worker()
        except BaseException:
            self.stop()
            raise

    def _launch_worker(self) -> None:
        self._launch([f"--address=127.0.0.1:{self.gcs}", f"--temp-dir={self.temps[-1]}",
                      *(f"--{name}={free_port()}" for name in (  # its agents beside the head's
                          "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
                          "runtime-env-agent-port", "node-manager-port", "object-manager-port"))], NODE_CPUS)

    def _launch(self, flags: list[str], cpus: int) -> None:
        with open(self.logs[len(self.nodes)], "a") as log:
            self.nodes.append(subprocess.Popen(
                [self.ray_cli, "start", *flags, "--block", f"--num-cpus={cpus}", "--node-ip-address=127.0.0.1",
                 "--disable-usage-stats"], env=self.env, start_new_session=True, stdout=log, stderr=log))

    def wait_up(self) -> RayCluster:
        """Both nodes alive, seen through the dashboard."""
        address = f"http://127.0.0.1:{self.dashboard}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            check = subprocess.run([self.ray_cli, "list", "nodes", "--address", address, "--format", "json"],
                                   env=self.env, capture_output=True, text=True)
            alive = [n["node_id"] for n in json.loads(check.stdout) if n["state"] == "ALIVE"] if (
                check.returncode == 0 and check.stdout.startswith("[")) else []  # or "No resource in the cluster"
            if len(alive) == 2:
                return RayCluster(address, f"127.0.0.1:{self.gcs}", self.env, head_first(alive, address, self.env))
            if self.nodes[1].poll() is not None and len(self.temps) == 2:  # the second node gave up (once, in CI,
                self.nodes.pop()  # it never joined): started once more, on fresh ports in a fresh folder
                self.temps.append(tempfile.mkdtemp(prefix="rayc", dir="/tmp"))
                self._launch_worker()
            time.sleep(1)
        said = " | ".join(f"node {i} (exit code {node.poll()}): {log.read_text()[-800:]!r}"
                          for i, (node, log) in enumerate(zip(self.nodes, self.logs)))
        pytest.fail(f"the two-node cluster did not come up: {check.stdout[-1000:]} {check.stderr[-1000:]} {said}")

    def stop(self) -> None:
        """The two ``ray start --block`` processes get a few seconds to stop what they started, then their process
        groups are killed."""
        for node in reversed(self.nodes):  # the worker first; each `ray start --block` stops what it started
            node.send_signal(signal.SIGTERM)
        for node in reversed(self.nodes):
            try:
                node.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
        self.nodes = []
        for temp in self.temps:
            shutil.rmtree(temp, ignore_errors=True)


# The session's servers, by the fixture that serves each (filled in below, once their classes exist): launched at
# collection when a collected test needs them, in the background, so they come up while the tests without them run.
BACKGROUND: dict[str, type] = {}
LAUNCHED = pytest.StashKey[dict]()  # fixture name -> its Starting... object, until stopped


# The tiers (pytest -m): a test is marked by the fixtures it uses, so no test can use Ray or a server unmarked.
# ``browser`` (headless Chromium) and ``slow`` (a non-Ray test of more than a few seconds) are marked in the test file.
MARKED_BY_FIXTURE = {"ray": ("ray_session", "ray_cluster"), "cluster": ("s3_server", "tracking_server")}
# their time limit, unless they set one: a Ray Train job spends ~30 s of the 2-core machine starting its controller,
# workers and data actors, and the first such test also waits for the session's cluster and teacher
RAY_TIMEOUT_S = 300


def pytest_addoption(parser):
    parser.addoption("--budget", type=float, default=0.0, metavar="SECONDS",
                     help="fail the run, naming its slowest tests, when it takes longer than this (0: no budget)")


STARTED = pytest.StashKey[float]()  # when the run began, for --budget
OVER_BUDGET = pytest.StashKey[float]()  # how long a run over its budget took


def pytest_configure(config):
    config.stash[STARTED] = time.monotonic()


def pytest_collection_modifyitems(config, items):
    """The tests that use Ray run last: everything else first, in this process without Ray, and the tests that need
    the session's cluster after it (the order within each group is kept). Each test gets the tier markers of the
    fixtures it uses (:data:`MARKED_BY_FIXTURE`). The servers the collected tests need start now
    (:data:`BACKGROUND`)."""
    for item in items:
        for marker, fixtures in MARKED_BY_FIXTURE.items():
            if set(fixtures) & set(getattr(item, "fixturenames", ())):
                item.add_marker(marker)
        if (item.get_closest_marker("ray") or item.get_closest_marker("cluster")) and not item.get_closest_marker(
                "timeout"):
            item.add_marker(pytest.mark.timeout(RAY_TIMEOUT_S))
    items.sort(key=lambda item: "ray_session" in getattr(item, "fixturenames", ()))
    needed = set().union(*(getattr(item, "fixturenames", ()) for item in items)) if items else set()
    launched = config.stash.setdefault(LAUNCHED, {})
    for fixture, start in BACKGROUND.items():
        if fixture in needed and not config.option.collectonly:
            launched[fixture] = start()


def pytest_sessionfinish(session):
    for starting in session.config.stash.get(LAUNCHED, {}).values():  # those no test got as far as (-x, Ctrl-C)
        starting.stop()
    budget, took = session.config.getoption("--budget"), time.monotonic() - session.config.stash[STARTED]
    if budget and took > budget:  # the run fails, whatever its tests said
        session.config.stash[OVER_BUDGET] = took
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """``--budget``: a run over it fails (:func:`pytest_sessionfinish`), naming its ten slowest tests here (set-up,
    call and tear-down added up)."""
    took = config.stash.get(OVER_BUDGET, None)
    if took is None:
        return
    spent: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) in ("setup", "call", "teardown"):
                spent[report.nodeid] = spent.get(report.nodeid, 0.0) + report.duration
    terminalreporter.section("time budget exceeded", red=True)
    terminalreporter.line(f"FAILED: the run took {took:.0f} s, over its budget of "
                          f"{config.getoption('--budget'):.0f} s; its slowest tests:")
    for nodeid, seconds in sorted(spent.items(), key=lambda item: -item[1])[:10]:
        terminalreporter.line(f"  {seconds:7.1f} s  {nodeid}")


def serve(request, fixture: str):
    """The body of a session fixture in :data:`BACKGROUND`: its server as collection launched it (or launched now),
    once up; stopped at the end of the session."""
    launched = request.config.stash.setdefault(LAUNCHED, {})
    starting = launched.get(fixture) or BACKGROUND[fixture]()
    launched[fixture] = starting
    try:
        yield starting.wait_up()
    finally:
        starting.stop()
        launched.pop(fixture, None)


@pytest.fixture(scope="session")
def ray_cluster(request):
    """The one Ray of the test session (one Ray per machine): the :class:`StartingCluster` collection started, once
    both its nodes are up; stopped at the end of the session."""
    yield from serve(request, "ray_cluster")


@pytest.fixture(scope="session")
def ray_session(ray_cluster):
    """This process as a driver of the session's cluster; subprocesses (a demo, a study) join it through
    RAY_ADDRESS and the token in the environment."""
    import ray

    ray.init(address=ray_cluster.gcs, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    log: Path  # its request log: a line per request, e.g. "GET /bucket/key HTTP/1.1" 200

    def bucket(self, name: str) -> str:
        """A new, empty bucket: its ``s3://`` URI."""
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint).create_bucket(Bucket=name)
        return f"s3://{name}"


class StartingS3:
    """moto's S3 server on the port ``AWS_ENDPOINT_URL`` names, launched at collection (the port is chosen when this
    file is imported: the sooner it is bound, the less likely another process takes it)."""

    def __init__(self):
        self.endpoint = os.environ["AWS_ENDPOINT_URL"]
        self.log = Path(tempfile.mkdtemp(prefix="partkd-s3-")) / "requests.log"
        with open(self.log, "w") as out:
            self.server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1",
                                            "-p", self.endpoint.rsplit(":", 1)[1]], stdout=out,
                                           stderr=subprocess.STDOUT)

    def wait_up(self) -> S3Server:
        import urllib.request

        wait_for_http(f"{self.endpoint}/moto-api/data.json", self.server, self.log)
        try:  # moto answers there with its state, as JSON; another server on the port would not
            json.load(urllib.request.urlopen(f"{self.endpoint}/moto-api/data.json", timeout=10))
        except (OSError, ValueError) as err:
            pytest.fail(f"{self.endpoint} is not the tests' moto server ({err}): {self.log.read_text()[-1000:]}")
        return S3Server(self.endpoint, self.log)

    def stop(self) -> None:
        self.server.terminate()
        self.server.wait(timeout=10)
        shutil.rmtree(self.log.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server(request):
    """An S3-compatible server (moto's, in server mode) on loopback at ``AWS_ENDPOINT_URL``, for the session."""
    yield from serve(request, "s3_server")


def wait_for_http(url: str, process: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    """Until ``url`` answers (any HTTP status); fails with the end of ``log`` if ``process`` exits first."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args[0]} exited ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer in {seconds:.0f} s: {log.read_text()[-2000:]}")


class Postgres:
    """An unprivileged PostgreSQL instance of Debian's package on loopback, its data in a temporary folder: run as
    the ``postgres`` user when the tests run as root (CI), as the tests' user otherwise."""

    def __init__(self):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            pytest.skip("PostgreSQL is not installed (make test installs Debian's postgresql as root)")
        self.bin, self.port = Path(found[-1]).parent, free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="partkd-pg", dir="/tmp"))
        self.as_user = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", f"{self.folder}/data", "-U", "mlflow", "--auth=trust", "-E", "UTF8")
        self._run("pg_ctl", "-D", f"{self.folder}/data", "-l", f"{self.folder}/server.log", "-w", "-o",
                  f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder}", "start")
        try:
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "mlflow", "mlflow")
        except RuntimeError:
            self.stop()
            raise
        self.uri = f"postgresql+psycopg://mlflow@127.0.0.1:{self.port}/mlflow"

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run([*self.as_user, str(self.bin / program), *args], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{program}: {done.stdout[-1000:]} {done.stderr[-1000:]}")

    def query(self, sql: str, *params) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.uri.replace("+psycopg", "")) as connection:
            return connection.execute(sql, params).fetchall()

    def stop(self) -> None:
        self._run("pg_ctl", "-D", f"{self.folder}/data", "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


TRACKING_BUCKET = "partkd-tracking"  # the tracking server's artifact store


@dataclass(frozen=True)
class TrackingServer:
    uri: str  # http://127.0.0.1:PORT, as its clients name it
    database: Postgres
    artifacts: str  # s3://...


class StartingTracking:
    """PostgreSQL and ``mlflow server`` on it, as a KubeRay install runs them (cluster/k8s/base/mlflow.yaml): artifacts
    proxied to the S3 server, only the names its clients use allowed, no GenAI job runner. Launched in a thread at
    collection, like the cluster, so they come up while the tests without them run."""

    def __init__(self):
        self.port, self.log = free_port(), Path(tempfile.mkdtemp(prefix="partkd-mlflow-")) / "server.log"
        self.artifacts = f"s3://{TRACKING_BUCKET}/mlflow"
        self.database, self.server, self.error = None, None, None
        self.thread = threading.Thread(target=self._launch, daemon=True)
        self.thread.start()

    def _launch(self) -> None:
        try:
            self.database = Postgres()
            with open(self.log, "w") as out:
                self.server = subprocess.Popen(
                    [str(Path(sys.executable).with_name("mlflow")), "server", "--serve-artifacts", "--host",
                     "127.0.0.1", "--port", str(self.port), "--workers", "1", "--allowed-hosts",
                     f"127.0.0.1:{self.port},localhost:{self.port}"],
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                    env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                         "MLFLOW_BACKEND_STORE_URI": self.database.uri,
                         "MLFLOW_ARTIFACTS_DESTINATION": self.artifacts})
        except BaseException as err:  # pytest.skip included: raised again where the fixture waits
            self.error = err

    def wait_up(self) -> TrackingServer:
        self.thread.join()
        if self.error is not None:
            raise self.error
        wait_for_http(f"http://127.0.0.1:{self.port}/health", self.server, self.log)
        return TrackingServer(f"http://127.0.0.1:{self.port}", self.database, self.artifacts)

    def stop(self) -> None:
        self.thread.join()
        if self.server is not None:
            os.killpg(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(timeout=3)
            except subprocess.TimeoutExpired:  # uvicorn waits for its clients' keep-alive connections
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait()
        if self.database is not None:
            self.database.stop()


@pytest.fixture(scope="session")
def tracking_server(request, s3_server):
    """The session's MLflow tracking server on PostgreSQL with its artifacts in ``s3_server``."""
    s3_server.bucket(TRACKING_BUCKET)
    yield from serve(request, "tracking_server")


BACKGROUND.update(ray_cluster=StartingCluster, s3_server=StartingS3, tracking_server=StartingTracking)


# The training tests' dataset: small enough for seconds-long jobs, with solitary samples (a quarter) and enough
# training rows for a validation slice of a quarter of them.
TRAIN_SYNTH = SynthConfig(samples=192, classes=4, frames=16, seed=3, paired_fraction=0.75)
VAL_FRACTION = 0.25  # the slice the shared teacher and the study validate on


@pytest.fixture(scope="session")
def train_data(tmp_path_factory) -> Path:
    """The dataset of every training test, written once per test run."""
    path = tmp_path_factory.mktemp("shared") / "data"
    write_synthetic(path, TRAIN_SYNTH)
    return path


def tiny_sets(root: Path, data: Path, name: str, *sets: str) -> list[str]:
    """The settings of a job of tiny models (seconds per epoch on a CPU) on ``data``, 2 workers, 2 epochs; runs and
    MLflow under ``root``; then ``sets``."""
    return [
        f"data.path={data}", "data.frames=16", "data.persons=1", "data.batch_size=16",
        "model.base_channels=8", "model.stage_blocks=1,1", "model.dropout=0.1", "train.epochs=2",
        "train.milestones=1", "train.lr=0.05", "train.num_workers=2", "train.cpus_per_worker=0.5",
        f"train.storage_path={root / 'ray'}", f"train.name={name}", f"tracking_uri=sqlite:///{root / 'mlflow.db'}",
        *sets,
    ]


def tiny_job(root: Path, data: Path, name: str, *sets: str) -> JobConfig:
    return load_config(sets=tiny_sets(root, data, name, *sets))


@pytest.fixture(scope="session")
def ray_teacher(ray_session, train_data):
    """The one Ray Train teacher of the test run: 2-worker DDP, 2 epochs, validated on the slice a study uses (so a
    study may reuse it). Its run is in ``<train_data>/../mlflow.db``, its checkpoints under ``../ray/teacher``."""
    from partkd.train.jobs import train_teacher

    job = tiny_job(train_data.parent, train_data, "teacher", f"data.val_fraction={VAL_FRACTION}")
    return train_teacher(job, say=lambda line: None)


def cli_student(root: Path, data: Path, teacher, name: str, epochs: int, capsys, *sets: str, backend: str = "ray"):
    """``partkd train student`` of a tiny job on ``data`` (the validation slice held out), E computed on the fly from
    ``teacher``, checked as a user reads it: E of the training rows less the slice, a FINISHED MLflow run under the
    teacher's, each epoch's PMSC term positive and its total the CE plus it (alpha 1), E logged beside the student, and
    the checkpoint's data settings. Returns the MLflow run."""
    import re

    from mlflow.tracking import MlflowClient

    from partkd.cli import main
    from partkd.train.checkpoint import load_meta

    args = [arg for item in tiny_sets(root, data, name, f"data.val_fraction={VAL_FRACTION}", *sets)
            for arg in ("--set", item)]
    code = main(["train", "student", "--teacher", str(teacher.checkpoint), "--backend", backend, *args])
    out = capsys.readouterr().out
    assert code == 0, out
    matrix = re.search(r"part matrix: (\S+)", out).group(1)  # computed on the fly: the job's training rows
    assert f"xsub+val{VAL_FRACTION:g}-0" in matrix  # ... less its validation slice
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    run = client.get_run(re.search(r"mlflow run +(\w+)", out).group(1))
    assert run.info.status == "FINISHED" and run.data.tags["teacher_run_id"] == teacher.run_id
    ce, pmsc, total = ([m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
                       for key in ("loss/ce", "loss/pmsc", "loss/total"))
    assert len(pmsc) == epochs and all(np.isfinite(v) and v > 0 for v in pmsc)
    assert total == pytest.approx([c + p for c, p in zip(ce, pmsc)], rel=1e-5)
    assert f"part_matrix/{Path(matrix).name}" in {a.path for a in client.list_artifacts(run.info.run_id, "part_matrix")}
    meta = load_meta(root / "ray" / name / "final")
    assert (meta.side, meta.model.layout, meta.data.val_fraction) == ("lq", "coco17", VAL_FRACTION)
    return run
