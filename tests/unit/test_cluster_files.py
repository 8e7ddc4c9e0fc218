"""cluster/: the launcher YAML validates against Ray's own schema; versions and entrypoints agree
with pyproject and the CLI."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

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
