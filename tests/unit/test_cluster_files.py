"""cluster/: the launcher YAML validates against Ray's own schema; versions and entrypoints agree
with pyproject and the CLI; the KubeRay manifests validate strictly (tests/cluster_schemas.py) and
run as an operator would run them: clusters released, least privilege, pods that fit their nodes."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

import cluster_schemas as cs
from xai_pipeline.cli import build_parser

REPO = Path(__file__).parents[2]
CLUSTER = REPO / "cluster"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
RAY_VERSION = next(re.search(r"==([\d.]+)", d).group(1) for d in PYPROJECT["project"]["dependencies"] if d.startswith("ray["))


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _images(node: object) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image" and isinstance(v, str)] + [i for v in node.values() for i in _images(v)]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


def _check_entrypoint(entrypoint: str) -> None:
    words = shlex.split(entrypoint)
    if words[:2] == ["python", "jobs/index_figures.py"]:
        assert (REPO / words[1]).is_file()
        words = ["index", *words[2:]]
    elif words[:1] == ["xai-pipeline"]:
        words = words[1:]
    else:
        pytest.fail(f"unexpected entrypoint {entrypoint}")
    build_parser().parse_args(words)  # exits (fails the test) on a bad flag


def test_cluster_launcher_config_matches_rays_schema() -> None:
    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"]["CPU"] == 0
    gpu = [n for n in nodes.values() if n.get("resources", {}).get("GPU")]
    assert gpu and all(n["min_workers"] <= n["max_workers"] <= config["max_workers"] for n in gpu)
    assert config["docker"]["image"].endswith(f":{VERSION}-gpu")


def test_dockerfile_uses_the_pinned_ray() -> None:
    text = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{RAY_VERSION}-py311-gpu" in text
    assert "pip install" in text and "COPY" in text


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob-index.yaml", "reindex-cronjob.yaml"])
def test_kuberay_manifests_agree_with_pyproject(name: str) -> None:
    docs = _docs(CLUSTER / "kuberay" / name)
    text = (CLUSTER / "kuberay" / name).read_text()
    for found in re.findall(r'rayVersion: "([\d.]+)"', text):
        assert found == RAY_VERSION
    images = [i for d in docs for i in _images(d)] + re.findall(r"image: (\S+)", text)
    assert all(i.endswith(f":{VERSION}-gpu") for i in images if "xai-pipeline" in i)
    for doc in docs:
        if doc["kind"] == "RayJob":
            _check_entrypoint(doc["spec"]["entrypoint"])


def test_scheduled_reindex_never_overlaps_and_creates_a_valid_rayjob() -> None:
    docs = {d["kind"]: d for d in _docs(CLUSTER / "kuberay" / "reindex-cronjob.yaml")}
    cron = docs["CronJob"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    rayjob = yaml.safe_load(docs["ConfigMap"]["data"]["rayjob.yaml"])
    assert rayjob["kind"] == "RayJob" and rayjob["spec"]["entrypoint"].startswith("xai-pipeline reindex ")
    _check_entrypoint(rayjob["spec"]["entrypoint"])
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == RAY_VERSION
    assert "rayjobs" in docs["Role"]["rules"][0]["resources"]


KUBERAY = CLUSTER / "kuberay"
MANIFESTS = sorted(p.name for p in KUBERAY.glob("*.yaml") if p.name != "kustomization.yaml")
KUSTOMIZATION = yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())


def _all_docs() -> list[tuple[str, dict]]:
    """(where, document) for every object in cluster/kuberay/, the ConfigMap's RayJob included."""
    found = []
    for name in MANIFESTS:
        for doc in _docs(KUBERAY / name):
            found.append((name, doc))
            for key, text in (doc.get("data") or {}).items() if doc["kind"] == "ConfigMap" else []:
                found += [(f"{name}:{key}", d) for d in yaml.safe_load_all(text) if d]
    return found


DOCS = _all_docs()
RAY_DOCS = [(w, d) for w, d in DOCS if d["apiVersion"].startswith("ray.io/")]
K8S_DOCS = [(w, d) for w, d in DOCS if not d["apiVersion"].startswith("ray.io/")]
RAYJOBS = [d for _, d in RAY_DOCS if d["kind"] == "RayJob"]


def _pods(doc: dict) -> list[tuple[str, dict]]:
    """(role, pod spec) for every pod template of a document: head, worker or other."""
    templates = cs.pod_templates(doc)
    roles = ["other"] if doc["kind"] == "CronJob" else ["head"] + ["worker"] * (len(templates) - 1)
    return [(role, t["spec"]) for role, t in zip(roles, templates)]


def test_manifests_include_the_embedded_rayjob() -> None:
    assert {d["kind"] for _, d in RAY_DOCS} == {"RayCluster", "RayJob"} and len(RAYJOBS) == 2


@pytest.mark.parametrize(("where", "doc"), RAY_DOCS, ids=[w for w, _ in RAY_DOCS])
def test_kuberay_documents_validate_strictly(where: str, doc: dict) -> None:
    cs.validate_kuberay(doc)


@pytest.mark.parametrize(("where", "doc"), K8S_DOCS, ids=[f"{w}:{d['kind']}" for w, d in K8S_DOCS])
def test_kubernetes_objects_validate_strictly(where: str, doc: dict) -> None:
    cs.validate_k8s(doc)


def test_the_schema_checks_reject_unknown_fields() -> None:
    job = json.loads(json.dumps(RAYJOBS[0]))
    job["spec"]["ttlSecondAfterFinished"] = 60
    with pytest.raises(jsonschema.ValidationError, match="ttlSecondAfterFinished"):
        cs.validate_kuberay(job)
    job = json.loads(json.dumps(RAYJOBS[0]))
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["toleration"] = []
    with pytest.raises(jsonschema.ValidationError, match="toleration"):
        cs.validate_kuberay(job)
    cron = json.loads(json.dumps(next(d for _, d in K8S_DOCS if d["kind"] == "CronJob")))
    cron["spec"]["concurrency"] = "Forbid"
    with pytest.raises(jsonschema.ValidationError, match="concurrency"):
        cs.validate_k8s(cron)


def test_finished_rayjobs_release_their_cluster() -> None:
    for job in RAYJOBS:
        assert job["spec"]["shutdownAfterJobFinishes"] is True
        assert 0 <= job["spec"]["ttlSecondsAfterFinished"] <= 300


def test_every_gpu_pod_tolerates_the_gpu_taint() -> None:
    gpu_pods = [spec for _, d in DOCS if d["kind"] in ("RayCluster", "RayJob") for _, spec in _pods(d)
                if any("nvidia.com/gpu" in c.get("resources", {}).get("requests", {}) for c in spec["containers"])]
    assert len(gpu_pods) == 3
    for spec in gpu_pods:
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec.get("tolerations", [])


def test_accounts_are_defined_by_the_kustomization_and_least_privileged() -> None:
    in_set = [d for name in KUSTOMIZATION["resources"] for d in _docs(KUBERAY / name)]
    accounts = {d["metadata"]["name"]: d for d in in_set if d["kind"] == "ServiceAccount"}
    used = {spec.get("serviceAccountName") for _, d in DOCS for _, spec in _pods_or_none(d)}
    assert None not in used and used <= set(accounts), f"undefined accounts: {used - set(accounts)}"
    bindings = [d for _, d in DOCS if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    bound = {s["name"] for b in bindings for s in b["subjects"]}
    ray_accounts = {spec["serviceAccountName"] for _, d in RAY_DOCS for _, spec in _pods(d)}
    assert not bound & ray_accounts, "a Ray pod's account is bound to a Role"
    assert bound == {"xai-pipeline-reindex-scheduler"}
    (role,) = [d for _, d in DOCS if d["kind"] in ("Role", "ClusterRole")]
    assert role["kind"] == "Role" and role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create", "get"]}]
    assert accounts["xai-pipeline-ray"]["automountServiceAccountToken"] is False
    for name in ray_accounts:
        assert accounts[name]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    for job in RAYJOBS:
        assert all(spec["automountServiceAccountToken"] is False for _, spec in _pods(job))


def _pods_or_none(doc: dict) -> list[tuple[str, dict]]:
    return _pods(doc) if doc["kind"] in ("RayCluster", "RayJob", "CronJob") else []


def _quantity(value: str) -> float:
    """CPU in cores or memory in GiB."""
    units = {"m": 1e-3, "Mi": 1 / 1024, "Gi": 1.0}
    for suffix, scale in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * scale
    return float(value)


def test_heads_are_guaranteed_and_pods_fit_the_launchers_node_types() -> None:
    launcher = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())["available_node_types"]
    node = {"head": cs.NODE_TYPES[launcher["head"]["node_config"]["InstanceType"]],
            "worker": cs.NODE_TYPES[launcher["gpu_worker"]["node_config"]["InstanceType"]]}
    assert node["worker"].allocatable_cpu == pytest.approx(7.91)
    assert 29.5 < node["worker"].allocatable_memory_gib < 30.5
    for _, doc in RAY_DOCS:
        for role, spec in _pods(doc):
            (ray,) = [c for c in spec["containers"] if c["name"].startswith("ray-")]
            requests, limits = ray["resources"]["requests"], ray["resources"]["limits"]
            assert requests == limits, f"{role}: requests {requests} != limits {limits}"
            assert _quantity(requests["cpu"]) <= node[role].allocatable_cpu - cs.DAEMONSET_CPU
            assert _quantity(requests["memory"]) <= node[role].allocatable_memory_gib - cs.DAEMONSET_MEMORY_GIB
            assert int(requests.get("nvidia.com/gpu", 0)) <= node[role].gpus
    assert "g5.2xlarge" in (KUBERAY / "raycluster.yaml").read_text()


def test_images_are_pinned_and_published() -> None:
    images = [i for p in KUBERAY.glob("*.yaml") for i in re.findall(r"image: (\S+)", p.read_text())]
    assert images
    for image in images:
        assert re.search(r":[\w.-]+$", image) and not image.endswith(":latest") and "bitnami/" not in image


def _wait_loop() -> str:
    cron = next(d for _, d in K8S_DOCS if d["kind"] == "CronJob")
    return cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0]


def test_the_wait_loop_ends_on_kuberays_terminal_states() -> None:
    (pattern,) = re.findall(r"^\s*([\w|]+)\) break ;;", _wait_loop(), re.M)
    ends = set(pattern.split("|"))
    assert ends <= cs.JOB_DEPLOYMENT_STATUSES and ends == cs.TERMINAL_JOB_DEPLOYMENT_STATUSES


@pytest.mark.parametrize(("states", "job_status", "code"), [
    (["", "Initializing", "Running", "Complete"], "SUCCEEDED", 0),
    (["Initializing", "Complete"], "STOPPED", 1),
    (["Initializing", "Failed"], "FAILED", 1),
    (["ValidationFailed"], "", 1),
    (["Suspended", "Retrying", "Waiting", "Complete"], "SUCCEEDED", 0),
])
def test_the_wait_loop_exits_with_the_jobs_outcome(tmp_path: Path, states: list[str], job_status: str, code: int) -> None:
    (tmp_path / "states").write_text("".join(f"{s}\n" for s in states))
    kubectl = f"""#!/bin/sh
case "$*" in
  create*) echo rayjob.ray.io/xai-pipeline-reindex-abc ;;
  *jobDeploymentStatus*) head -n1 {tmp_path}/states; sed -i 1d {tmp_path}/states ;;
  *jobStatus*) printf %s {job_status} ;;
esac
"""
    for name, text in {"kubectl": kubectl, "sleep": "#!/bin/sh\n"}.items():
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    done = subprocess.run(["sh", "-c", _wait_loop()], env=env, capture_output=True, text=True, timeout=20)
    assert done.returncode == code, done.stdout + done.stderr


def test_nothing_sets_unsafe_rename() -> None:
    paths = [*CLUSTER.rglob("*"), *(REPO / "xai_pipeline").rglob("*.py"), *(REPO / "jobs").rglob("*.py")]
    assert [p for p in paths if p.is_file() and "AWS_S3_ALLOW_UNSAFE_RENAME" in p.read_text(errors="ignore")] == []
