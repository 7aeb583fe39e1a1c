"""The cluster files checked offline, no cluster needed: the image, every manifest and pyproject.toml name one Ray
version; every KubeRay object validates against the KubeRay v1.7.0 CRD schemas (``../shared/k8s-schemas``); every
container asks for and is limited to what it uses, runs as non-root with no privilege escalation and no capability;
GPUs are requested as they are limited; no secret value is written in a manifest."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
SCHEMAS = REPO.parent / "shared" / "k8s-schemas"
CRDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are 2 MB of YAML
SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|SECRET|ACCESS_KEY|CREDENTIAL)", re.I)


def manifests() -> list[tuple[Path, dict]]:
    """Every object of every YAML file under cluster/k8s, with its file."""
    found = []
    for path in sorted((CLUSTER / "k8s").rglob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=LOADER):
            if doc and "kind" in doc and doc["kind"] != "Kustomization":
                found.append((path, doc))
    return found


def ray_spec(obj: dict) -> dict | None:
    """A RayCluster's spec, or the cluster spec inside a RayJob; None for any other kind."""
    if obj["kind"] == "RayCluster":
        return obj["spec"]
    return obj["spec"].get("rayClusterSpec") if obj["kind"] == "RayJob" else None


def pod_specs(obj: dict) -> list[dict]:
    """The pod specs of a Ray object's groups, or of a workload's pod template (Deployment, StatefulSet, Job)."""
    spec = ray_spec(obj)
    if spec is not None:
        return [group["template"]["spec"] for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]]
    template = obj.get("spec", {}).get("template")
    return [template["spec"]] if template else []


def ray_pin() -> str:
    """The one Ray version pyproject.toml allows (its pin is ``>=X.Y.Z,<X.Y+1``)."""
    text = (REPO / "pyproject.toml").read_text()
    spec = Requirement(re.search(r'"(ray\[[^"]*)"', text).group(1))
    lower = {s.operator: s.version for s in spec.specifier}
    assert set(lower) == {">=", "<"}, f"pyproject.toml: Ray pinned as {spec.specifier}, expected >=X.Y.Z,<X.Y+1"
    return lower[">="]


def test_one_ray_version_everywhere():
    version = ray_pin()
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    image = re.search(r"^ARG RAY_VERSION=(\S+)", dockerfile, re.M).group(1)
    assert image == version, f"cluster/Dockerfile builds on Ray {image}, pyproject.toml pins {version}"
    checked = 0
    for path, obj in manifests():
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


def test_kuberay_objects_validate_against_the_crds():
    import jsonschema

    if not SCHEMAS.is_dir():
        pytest.skip("../shared/k8s-schemas is not present")
    validators = {}
    for kind, file in CRDS.items():
        crd = yaml.load((SCHEMAS / file).read_text(), Loader=LOADER)
        schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
        validators[kind] = jsonschema.Draft7Validator(schema)
    objects = [(path, obj) for path, obj in manifests() if obj["kind"] in CRDS]
    assert any(obj["kind"] == "RayCluster" for _, obj in objects), "no RayCluster under cluster/k8s"
    for path, obj in objects:
        errors = [f"{e.json_path}: {e.message[:200]}" for e in validators[obj["kind"]].iter_errors(obj)]
        assert not errors, f"{path}: {obj['kind']} {obj['metadata']['name']}:\n" + "\n".join(errors)
    # the check can fail: a number where the CRD wants a string is refused
    path, obj = next((path, obj) for path, obj in objects if obj["kind"] == "RayCluster")
    broken = yaml.safe_load(yaml.safe_dump(obj))
    broken["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert list(validators["RayCluster"].iter_errors(broken))


def test_every_container_is_bounded_and_unprivileged():
    for path, obj in manifests():
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


def test_no_secret_value_in_a_manifest():
    for path, obj in manifests():
        assert obj["kind"] != "Secret" or path.name.endswith(".example.yaml"), (
            f"{path}: a Secret with its values; reference Secrets by name (copy secrets.example.yaml)")
        for pod in pod_specs(obj):
            for container in pod["containers"]:
                for env in container.get("env", []):
                    assert not (SECRET_NAME.search(env["name"]) and "value" in env), (
                        f"{path}: {env['name']} written in the manifest; take it from a Secret (valueFrom)")


def test_every_kustomization_renders():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the Debian package kubectl, or kubernetes-client)")
    folders = sorted(p.parent for p in (CLUSTER / "k8s").rglob("kustomization.yaml"))
    assert folders, "no kustomization under cluster/k8s"
    for folder in folders:
        rendered = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True)
        assert rendered.returncode == 0, f"{folder}: {rendered.stderr.strip()}"
        kinds = [doc["kind"] for doc in yaml.load_all(rendered.stdout, Loader=LOADER) if doc]
        assert "RayCluster" in kinds and "Secret" not in kinds, f"{folder}: renders {kinds}"
