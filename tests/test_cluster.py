"""The cluster files checked offline, no cluster needed, as written and (with kubectl) as each kustomization renders
them: the image, every manifest and pyproject.toml name one Ray version; every KubeRay object validates against the
KubeRay v1.7.0 CRD schemas (``../shared/k8s-schemas``) and every other object against Kubernetes' own schemas
(``kubernetes-validate``, the version we target); every container asks for and is limited to what it uses, runs as
non-root with no privilege escalation and no capability; GPUs are requested as they are limited; no secret value is
written in a manifest; only the install's own pods reach it; the RayJob resumes its study."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
SCHEMAS = REPO.parent / "shared" / "k8s-schemas"
CRDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
KUBERNETES = "1.32.0"  # the oldest Kubernetes we support: KubeRay 1.7's floor is lower, 1.32 is what clouds still run
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are 2 MB of YAML
SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|SECRET|ACCESS_KEY|CREDENTIAL)", re.I)
PART_OF = {"app.kubernetes.io/part-of": "partkd"}  # the label NetworkPolicy partkd-internal admits


def source_objects() -> list[tuple[str, dict]]:
    """Every object of every YAML file under cluster/k8s, with its file."""
    found = []
    for path in sorted((CLUSTER / "k8s").rglob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=LOADER):
            if doc and "kind" in doc and doc["kind"] != "Kustomization":
                found.append((str(path.relative_to(REPO)), doc))
    return found


def kustomizations() -> list[Path]:
    return sorted(p.parent for p in (CLUSTER / "k8s").rglob("kustomization.yaml"))


@cache
def rendered(folder: Path) -> tuple[str, list[dict]]:
    """``kubectl kustomize folder``: (stderr, objects)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (make test's set-up installs the Debian package kubectl where an apt "
                    "repository has it)")
    out = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True)
    return out.stderr.strip() if out.returncode else "", [d for d in yaml.load_all(out.stdout, Loader=LOADER) if d]


def rendered_objects() -> list[tuple[str, dict]]:
    return [(f"{folder.relative_to(REPO)} (rendered)", obj) for folder in kustomizations()
            for obj in rendered(folder)[1]]


@pytest.fixture(params=["files", "rendered"])
def objects(request) -> list[tuple[str, dict]]:
    """The objects as written, and as ``kubectl apply -k`` would send them (skipped without kubectl)."""
    return source_objects() if request.param == "files" else rendered_objects()


def ray_spec(obj: dict) -> dict | None:
    """A RayCluster's spec, or the cluster spec inside a RayJob; None for any other kind."""
    if obj["kind"] == "RayCluster":
        return obj["spec"]
    return obj["spec"].get("rayClusterSpec") if obj["kind"] == "RayJob" else None


def pod_templates(obj: dict) -> list[dict]:
    """The pod templates of a Ray object's groups (and a RayJob's submitter), or of a workload (Deployment,
    StatefulSet, Job)."""
    spec = ray_spec(obj)
    if spec is not None:
        templates = [group["template"] for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]]
        return templates + ([obj["spec"]["submitterPodTemplate"]] if "submitterPodTemplate" in obj["spec"] else [])
    template = obj.get("spec", {}).get("template")
    return [template] if template else []


def pod_specs(obj: dict) -> list[dict]:
    return [template["spec"] for template in pod_templates(obj)]


def ray_pin() -> str:
    """The one Ray version pyproject.toml allows (its pin is ``>=X.Y.Z,<X.Y+1``)."""
    text = (REPO / "pyproject.toml").read_text()
    spec = Requirement(re.search(r'"(ray\[[^"]*)"', text).group(1))
    lower = {s.operator: s.version for s in spec.specifier}
    assert set(lower) == {">=", "<"}, f"pyproject.toml: Ray pinned as {spec.specifier}, expected >=X.Y.Z,<X.Y+1"
    return lower[">="]


def test_one_ray_version_everywhere(objects):
    version = ray_pin()
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    image = re.search(r"^ARG RAY_VERSION=(\S+)", dockerfile, re.M).group(1)
    assert image == version, f"cluster/Dockerfile builds on Ray {image}, pyproject.toml pins {version}"
    checked = 0
    for path, obj in objects:
        spec = ray_spec(obj)
        if spec is None:
            continue
        assert spec["rayVersion"] == version, f"{path}: rayVersion {spec['rayVersion']}, pyproject.toml pins {version}"
        for pod in pod_specs(obj):
            for container in pod["containers"]:
                assert f"-ray{version}-" in container["image"], (
                    f"{path}: image {container['image']} is not partkd's image of Ray {version}")
        checked += 1
    assert checked, "no RayCluster or RayJob under cluster/k8s"


@pytest.mark.slow  # the CRDs' schemas
def test_kuberay_objects_validate_against_the_crds(objects):
    import jsonschema

    if not SCHEMAS.is_dir():
        pytest.skip("../shared/k8s-schemas is not present")
    validators = {}
    for kind, file in CRDS.items():
        crd = yaml.load((SCHEMAS / file).read_text(), Loader=LOADER)
        schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
        validators[kind] = jsonschema.Draft7Validator(schema)
    objects = [(path, obj) for path, obj in objects if obj["kind"] in CRDS]
    assert {obj["kind"] for _, obj in objects} == set(CRDS), "a RayCluster and a RayJob under cluster/k8s"
    for path, obj in objects:
        errors = [f"{e.json_path}: {e.message[:200]}" for e in validators[obj["kind"]].iter_errors(obj)]
        assert not errors, f"{path}: {obj['kind']} {obj['metadata']['name']}:\n" + "\n".join(errors)
    # the check can fail: a number where the CRD wants a string is refused
    path, obj = next((path, obj) for path, obj in objects if obj["kind"] == "RayCluster")
    broken = yaml.safe_load(yaml.safe_dump(obj))
    broken["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert list(validators["RayCluster"].iter_errors(broken))


def test_core_objects_validate_against_kubernetes_schemas(objects):
    import kubernetes_validate

    checked = set()
    for path, obj in objects:
        if obj["kind"] not in CRDS:
            try:
                kubernetes_validate.validate(obj, KUBERNETES, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(f"{path}: {obj['kind']} {obj['metadata']['name']}: {str(err).splitlines()[0]}")
            checked.add(obj["kind"])
    assert {"Deployment", "StatefulSet", "Service", "NetworkPolicy", "ConfigMap"} <= checked, checked
    broken = next(obj for _, obj in objects if obj["kind"] == "NetworkPolicy")  # the check can fail
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**broken, "spec": {**broken["spec"], "ingres": []}}, KUBERNETES, strict=True)


def test_every_container_is_bounded_and_unprivileged(objects):
    for path, obj in objects:
        for pod in pod_specs(obj):
            pod_context = pod.get("securityContext", {})
            for container in pod["containers"] + pod.get("initContainers", []):
                where = f"{path}: {obj['kind']} {obj['metadata']['name']}, container {container['name']}"
                resources = container.get("resources", {})
                assert resources.get("requests") and resources.get("limits"), f"{where}: requests and limits"
                gpus = [resources[k].get("nvidia.com/gpu") for k in ("requests", "limits")]
                assert gpus[0] == gpus[1], f"{where}: GPU requests {gpus[0]} and limits {gpus[1]} differ"
                context = {**pod_context, **container.get("securityContext", {})}
                assert context.get("runAsNonRoot") is True, f"{where}: not runAsNonRoot"
                assert context.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation allowed"
                assert context.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities not dropped"
        spec = ray_spec(obj)
        if spec is not None and spec.get("autoscalerOptions"):
            options = spec["autoscalerOptions"]
            assert options.get("resources", {}).get("limits"), f"{path}: the autoscaler container has no limits"


def test_no_secret_value_in_a_manifest(objects):
    for path, obj in objects:
        assert obj["kind"] != "Secret" or path.endswith(".example.yaml"), (
            f"{path}: a Secret with its values; reference Secrets by name (copy secrets.example.yaml)")
        for pod in pod_specs(obj):
            for container in pod["containers"]:
                for env in container.get("env", []):
                    assert not (SECRET_NAME.search(env["name"]) and "value" in env), (
                        f"{path}: {env['name']} written in the manifest; take it from a Secret (valueFrom)")


def test_every_kustomization_renders():
    for folder in kustomizations():
        error, objects = rendered(folder)
        assert not error, f"{folder}: {error}"
        kinds = {obj["kind"] for obj in objects}
        assert kinds & {"RayCluster", "RayJob"} and "Secret" not in kinds, f"{folder}: renders {sorted(kinds)}"
        assert {"Deployment", "StatefulSet", "NetworkPolicy"} <= kinds, f"{folder}: renders {sorted(kinds)}"


def test_only_the_installs_own_pods_reach_it():
    """Services are ClusterIP; the NetworkPolicy admits, to every pod of the install, only pods of the install (and
    the KubeRay operator, to the dashboard port); and every pod the install starts (Ray's, MLflow's, PostgreSQL's, the
    RayJob's submitter) carries its label."""
    for folder in kustomizations():
        objects = rendered(folder)[1]
        for obj in objects:
            assert obj["kind"] != "Service" or obj["spec"].get("type", "ClusterIP") == "ClusterIP", (
                f"{folder}: Service {obj['metadata']['name']} is {obj['spec']['type']}")
            spec = ray_spec(obj)
            assert spec is None or spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", folder
            for template in pod_templates(obj):
                labels = template.get("metadata", {}).get("labels", {})
                assert PART_OF.items() <= labels.items(), f"{folder}: a pod of {obj['kind']} {obj['metadata']['name']}"
        [policy] = [obj["spec"] for obj in objects if obj["kind"] == "NetworkPolicy"]
        assert policy["podSelector"] == {"matchLabels": PART_OF} and policy["policyTypes"] == ["Ingress"]
        own, operator = policy["ingress"]  # the install's pods anywhere; the KubeRay operator to the dashboard only
        assert own == {"from": [{"podSelector": {"matchLabels": PART_OF}}]}, folder
        assert operator["ports"] == [{"protocol": "TCP", "port": 8265}], folder
        assert operator["from"] == [{"namespaceSelector": {}, "podSelector": {
            "matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}], folder


def _bytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 1e3, "M": 1e6, "G": 1e9}
    unit = next((u for u in units if quantity.endswith(u)), "")
    return float(quantity.removesuffix(unit)) * units.get(unit, 1)


def test_every_ray_object_store_fits_its_shared_memory_volume():
    """Ray keeps its object store in /dev/shm, an in-memory volume: a store larger than the volume's sizeLimit gets
    the pod evicted once it fills (cached splits live there)."""
    for folder in kustomizations():
        for obj in rendered(folder)[1]:
            spec = ray_spec(obj)
            for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])] if spec else []:
                pod = group["template"]["spec"]
                mounts = {m["name"] for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/dev/shm"}
                [volume] = [v for v in pod["volumes"] if v["name"] in mounts]
                store = float(group["rayStartParams"]["object-store-memory"])
                assert store < _bytes(volume["emptyDir"]["sizeLimit"]), (folder, group.get("groupName", "head"))


def test_ray_pods_reach_the_tracking_server_by_a_name_it_accepts():
    """The Ray pods' MLFLOW_TRACKING_URI (ConfigMap partkd-env) is the tracking Service, and its host:port is one
    of the tracking server's --allowed-hosts (MLflow 3 answers 403 to any other Host header)."""
    objects = rendered(CLUSTER / "k8s" / "base")[1]
    by_kind = {(obj["kind"], obj["metadata"]["name"]): obj for obj in objects}
    uri = urlparse(by_kind["ConfigMap", "partkd-env"]["data"]["MLFLOW_TRACKING_URI"])
    service = by_kind["Service", uri.hostname]
    assert uri.port in [p["port"] for p in service["spec"]["ports"]]
    server = by_kind["Deployment", uri.hostname]["spec"]["template"]["spec"]["containers"][0]
    allowed = next(a.split("=", 1)[1] for a in server["args"] if a.startswith("--allowed-hosts=")).split(",")
    assert any(fnmatch.fnmatch(uri.netloc, pattern) for pattern in allowed), (uri.netloc, allowed)
    for hostile in ("evil.example:5000", "partkd-mlflow.attacker.example:5000"):  # DNS rebinding names
        assert not any(fnmatch.fnmatch(hostile, pattern) for pattern in allowed), hostile
    for pod in pod_specs(by_kind["RayCluster", "partkd"]):
        assert {"configMapRef": {"name": "partkd-env"}} in pod["containers"][0]["envFrom"]
    env = {e["name"] for e in server["env"]}  # read by `mlflow server` from its environment, not its arguments
    assert {"MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION"} <= env
    assert not any("store-uri" in a or "artifacts-destination" in a for a in server["args"])


def test_the_rayjob_runs_the_study_and_resumes_it_when_retried():
    [(path, job)] = [(p, o) for p, o in rendered_objects() if o["kind"] == "RayJob"]
    objects = rendered(REPO / path.removesuffix(" (rendered)"))[1]
    assert "RayCluster" not in {o["kind"] for o in objects}, path  # its own cluster only, no standing one beside it
    spec = job["spec"]
    config = re.search(r"python -m tuning.study --config (\S+) --resume$", spec["entrypoint"])
    assert config, f"{path}: {spec['entrypoint']}"  # --resume on every attempt: a retry continues the study
    assert spec["submissionMode"] == "K8sJobMode" and spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] >= 1
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]  # the study file is where it is read
    mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    name = next(n for n, mount in mounts.items() if config.group(1).startswith(mount + "/"))
    configmap = volumes[name]["configMap"]["name"]
    [data] = [o["data"] for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == configmap]
    assert 'storage = "s3://' in data[Path(config.group(1)).name]  # the study lives in the bucket: a retry finds it
