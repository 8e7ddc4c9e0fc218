"""Schemas and facts the cluster-file tests check against (tests/unit/test_cluster_files.py).

- Kubernetes objects: the OpenAPI schemas that the kubernetes-validate package ships, strict
  (unknown fields rejected), for Kubernetes 1.31, the minor version of the kubectl the reindex
  CronJob pins.
- KubeRay objects: KUBERAY_SPEC_SCHEMA below, the RayCluster and RayJob spec fields of KubeRay
  v1.5.1 that these manifests may use, with unknown fields rejected; every pod template inside
  is checked strictly against Kubernetes' PodTemplateSpec (the CRD embeds core/v1's). This is a
  subset written from ray-operator/apis/ray/v1/{raycluster,rayjob}_types.go, not the CRD
  itself: a field missing here fails the test, and is added here once checked against v1.5.1.
- KubeRay v1.5.1's JobDeploymentStatus values, and the node types' allocatable resources.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

import jsonschema
import kubernetes_validate
from referencing import Registry, Resource

K8S_VERSION = "1.31"

# ray-operator/apis/ray/v1/rayjob_types.go (KubeRay v1.5.x), const block of JobDeploymentStatus.
JOB_DEPLOYMENT_STATUSES = frozenset({"", "Initializing", "Running", "Complete", "Failed", "ValidationFailed",
                                     "Suspending", "Suspended", "Retrying", "Waiting"})
# The states the RayJob controller leaves a RayJob in for good (with backoffLimit 0 and no suspend):
# IsJobDeploymentTerminal's Complete and Failed, plus ValidationFailed, whose reconcile case does
# nothing more (the spec must be fixed and the RayJob recreated).
TERMINAL_JOB_DEPLOYMENT_STATUSES = frozenset({"Complete", "Failed", "ValidationFailed"})


def validate_k8s(doc: dict) -> None:
    """Raises kubernetes_validate.ValidationError for a field unknown to (or invalid in) Kubernetes 1.31."""
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@cache
def _pod_template_validator() -> jsonschema.protocols.Validator:
    root = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{K8S_VERSION}.0-local-strict"
    schema = json.loads((root / "podtemplatespec-v1.json").read_text())
    definitions = json.loads((root / "_definitions.json").read_text())
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate_pod_template(template: dict) -> None:
    _pod_template_validator().validate(template)


_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_INT = {"type": "integer"}
_TEMPLATE = {"type": "object"}  # checked by validate_pod_template


def _strict(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


_HEAD_GROUP = _strict({"rayStartParams": _STR_MAP, "template": _TEMPLATE, "serviceType": {"type": "string"},
                       "enableIngress": {"type": "boolean"}}, ("template",))
_WORKER_GROUP = _strict({"groupName": {"type": "string"}, "replicas": _INT, "minReplicas": _INT, "maxReplicas": _INT,
                         "numOfHosts": _INT, "idleTimeoutSeconds": _INT, "suspend": {"type": "boolean"},
                         "rayStartParams": _STR_MAP, "template": _TEMPLATE}, ("groupName", "template"))
RAY_CLUSTER_SPEC = _strict({"rayVersion": {"type": "string"}, "enableInTreeAutoscaling": {"type": "boolean"},
                            "suspend": {"type": "boolean"}, "headGroupSpec": _HEAD_GROUP,
                            "workerGroupSpecs": {"type": "array", "items": _WORKER_GROUP}}, ("headGroupSpec",))
RAY_JOB_SPEC = _strict({
    "entrypoint": {"type": "string"}, "runtimeEnvYAML": {"type": "string"}, "jobId": {"type": "string"},
    "shutdownAfterJobFinishes": {"type": "boolean"}, "ttlSecondsAfterFinished": _INT,
    "activeDeadlineSeconds": _INT, "backoffLimit": _INT, "suspend": {"type": "boolean"},
    "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
    "clusterSelector": _STR_MAP, "metadata": _STR_MAP, "entrypointNumCpus": {"type": "number"},
    "entrypointNumGpus": {"type": "number"}, "entrypointResources": {"type": "string"},
    "rayClusterSpec": RAY_CLUSTER_SPEC, "submitterPodTemplate": _TEMPLATE,
})
_META = _strict({"name": {"type": "string"}, "generateName": {"type": "string"}, "namespace": {"type": "string"},
                 "labels": _STR_MAP, "annotations": _STR_MAP})
KUBERAY_SCHEMA = {
    "RayCluster": _strict({"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayCluster"}, "metadata": _META,
                           "spec": RAY_CLUSTER_SPEC}, ("apiVersion", "kind", "metadata", "spec")),
    "RayJob": _strict({"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"}, "metadata": _META,
                       "spec": RAY_JOB_SPEC}, ("apiVersion", "kind", "metadata", "spec")),
}


def pod_templates(doc: dict) -> list[dict]:
    """Every pod template of a RayCluster, RayJob or CronJob document."""
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]]
    cluster = spec["rayClusterSpec"] if doc["kind"] == "RayJob" else spec
    found = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster.get("workerGroupSpecs", [])]
    return found + ([spec["submitterPodTemplate"]] if "submitterPodTemplate" in spec else [])


def validate_kuberay(doc: dict) -> None:
    jsonschema.validate(doc, KUBERAY_SCHEMA[doc["kind"]])
    for template in pod_templates(doc):
        validate_pod_template(template)


@dataclass(frozen=True)
class NodeType:
    """An EC2 instance type as an EKS node: what the kubelet leaves to pods (EKS AMI defaults)."""

    vcpus: int
    memory_gib: float
    max_pods: int  # ENIs x (IPv4 addresses per ENI - 1) + 2
    gpus: int = 0

    @property
    def kube_reserved_cpu(self) -> float:
        # 6% of the first core, 1% of the second, 0.5% of the next two, 0.25% of the rest
        shares = [0.06, 0.01, 0.005, 0.005] + [0.0025] * max(0, self.vcpus - 4)
        return sum(shares[: self.vcpus])

    @property
    def allocatable_cpu(self) -> float:
        return self.vcpus - self.kube_reserved_cpu

    @property
    def allocatable_memory_gib(self) -> float:
        kernel_and_firmware = 1.0  # capacity the kubelet sees is ~1 GiB under the nominal size
        kube_reserved = (255 + 11 * self.max_pods) / 1024
        eviction_hard = 100 / 1024
        return self.memory_gib - kernel_and_firmware - kube_reserved - eviction_hard


NODE_TYPES = {
    "g5.2xlarge": NodeType(vcpus=8, memory_gib=32, max_pods=58, gpus=1),   # 4 ENIs x 15 addresses
    "m6i.2xlarge": NodeType(vcpus=8, memory_gib=32, max_pods=58),
}
DAEMONSET_CPU = 0.5  # aws-node, kube-proxy, ebs-csi-node, nvidia-device-plugin, with room to spare
DAEMONSET_MEMORY_GIB = 1.0
