"""Schemas and facts the cluster-file tests check against (tests/unit/test_cluster_files.py).

- Kubernetes objects: the OpenAPI schemas that the kubernetes-validate package ships, strict
  (unknown fields rejected), for Kubernetes 1.31, the minor version of the kubectl the reindex
  CronJob pins.
- KubeRay objects: KUBERAY_SCHEMA below, the RayCluster and RayJob spec fields of KubeRay v1.5
  that these manifests may use, with unknown fields rejected; every pod template inside is
  checked strictly against Kubernetes' PodTemplateSpec (the CRD embeds core/v1's). This is a
  hand-written subset, not the CRD (ray.io_rayclusters.yaml / ray.io_rayjobs.yaml are over 1 MB
  each): a field missing here fails the test, and is added here once checked against the Go types.
- KubeRay's JobDeploymentStatus values, and the node types' allocatable resources.

What the KubeRay parts were checked against: github.com/ray-project/kuberay, files
ray-operator/apis/ray/v1/rayjob_types.go and raycluster_types.go, read in a stored mirror of the
repository that lists 140 and 241 versions of them but names the commit of only some. No copy at
the v1.5.1 tag (PR #4220, "update KubeRay version to v1.5.1") could be located there, so no
v1.5.1 commit hash is quoted; the version was pinned down from the contents instead:
- rayjob_types.go, a v1.5-line copy (commit not exposed by the mirror): DeletionStrategy has
  deletionRules, added in v1.5.0, and its doc says onSuccess/onFailure are "deprecated; removal
  planned for 1.6.0". Every RayJobSpec field and type below, the JobSubmissionMode consts and the
  JobDeploymentStatus const block match it. A v1.4-line copy (DeletionStrategy with onSuccess/
  onFailure only) has the same ten statuses and four modes; older copies at commits
  f6ef3f7b32639dc6555797512d7cb784bd436901 (v1.3: deletionPolicy) and
  0057210ed5a94e830c864af372577328c3542b44 have the same RayJobSpec fields used here but lack
  SidecarMode and ValidationFailed, so they are not what this file follows.
- raycluster_types.go, two copies that bracket v1.5.1, neither with an exposed commit: a v1.4 one
  (AutoscalerOptions.version, `+optional` on rayStartParams, no upgradeStrategy/authOptions) and a
  master one later than v1.5.1 (upgradeStrategy, authOptions, networkPolicy, tlsOptions,
  historyServerOptions; a worker-group priority documented for "Ray >= 2.56"). Every
  RayClusterSpec / HeadGroupSpec / WorkerGroupSpec field used below has the same JSON name, Go
  type and markers in both, so v1.5.1, between them, has them too. (The v1.3-era copy at commit
  3275ee09f6a6c899c37e82ea6349785536de6bd4 agrees too, except that rayStartParams is required.)
`required` follows controller-gen's rule (doc.go of ray.io/v1 sets no package-wide Optional
marker): a field is required when its json tag has no omitempty and it has no `+optional`
marker; `+kubebuilder:default` does not change that. Go types map as int32/*int32 -> integer
(int32 range), float32 -> number, bool/*bool -> boolean, map[string]string -> object of strings,
corev1.ServiceType -> string (no enum in the CRD).
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

# rayjob_types.go (v1.5 line), the const block of JobDeploymentStatus, exactly (the v1.4-line copy
# has the same ten).
JOB_DEPLOYMENT_STATUSES = frozenset({"", "Initializing", "Running", "Complete", "Failed", "ValidationFailed",
                                     "Suspending", "Suspended", "Retrying", "Waiting"})
# The states the RayJob controller leaves a RayJob in for good (with backoffLimit 0 and no suspend):
# IsJobDeploymentTerminal's Complete and Failed (rayjob_types.go), plus ValidationFailed. The
# controller (rayjob_controller.go, v1.5 line) has no switch case for ValidationFailed: every
# reconcile first re-runs validateRayJob and, while it fails, sets ValidationFailed and returns
# without a requeue; were it to pass, the switch's default case only logs "Unknown
# JobDeploymentStatus" and requeues. Either way the RayJob never moves on (recreate it).
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


_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}  # map[string]string
_INT = {"type": "integer", "minimum": -2**31, "maximum": 2**31 - 1}  # int32 / *int32 (format: int32)
_TEMPLATE = {"type": "object"}  # checked by validate_pod_template


def _strict(properties: dict, required: tuple[str, ...] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


# HeadGroupSpec: template has no omitempty (required); rayStartParams has none either but is
# `+optional` since KubeRay 1.4 (required before); serviceType and enableIngress are omitempty.
_HEAD_GROUP = _strict({"rayStartParams": _STR_MAP, "template": _TEMPLATE, "serviceType": {"type": "string"},
                       "enableIngress": {"type": "boolean"}}, ("template",))
# WorkerGroupSpec: groupName and template have no omitempty; minReplicas and maxReplicas
# (*int32, `json:"minReplicas"` / `json:"maxReplicas"`) have neither omitempty nor `+optional`,
# so the CRD lists them as required even though they carry `+kubebuilder:default` (0 and
# 2147483647) that the API server applies before validating; required here as in the CRD.
# replicas, numOfHosts (int32, default 1), idleTimeoutSeconds, suspend: `+optional`.
_WORKER_GROUP = _strict({"groupName": {"type": "string"}, "replicas": _INT, "minReplicas": _INT, "maxReplicas": _INT,
                         "numOfHosts": _INT, "idleTimeoutSeconds": _INT, "suspend": {"type": "boolean"},
                         "rayStartParams": _STR_MAP, "template": _TEMPLATE},
                        ("groupName", "minReplicas", "maxReplicas", "template"))
# RayClusterSpec: only headGroupSpec lacks omitempty.
RAY_CLUSTER_SPEC = _strict({"rayVersion": {"type": "string"}, "enableInTreeAutoscaling": {"type": "boolean"},
                            "suspend": {"type": "boolean"}, "headGroupSpec": _HEAD_GROUP,
                            "workerGroupSpecs": {"type": "array", "items": _WORKER_GROUP}}, ("headGroupSpec",))
# RayJobSpec: every field is omitempty/`+optional`, so none is required. submissionMode's type,
# JobSubmissionMode, has no `+kubebuilder:validation:Enum` marker (the CRD takes any string); the
# enum here is its const block (K8sJobMode is the `+kubebuilder:default`), stricter than the CRD.
# ttlSecondsAfterFinished is a plain int32, the others *int32; entrypointNumCpus/Gpus float32;
# entrypointResources a string (a JSON object in a string); metadata and clusterSelector
# map[string]string.
RAY_JOB_SPEC = _strict({
    "entrypoint": {"type": "string"}, "runtimeEnvYAML": {"type": "string"}, "jobId": {"type": "string"},
    "shutdownAfterJobFinishes": {"type": "boolean"}, "ttlSecondsAfterFinished": _INT,
    "activeDeadlineSeconds": _INT, "backoffLimit": _INT, "suspend": {"type": "boolean"},
    "submissionMode": {"type": "string", "enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
    "clusterSelector": _STR_MAP, "metadata": _STR_MAP, "entrypointNumCpus": {"type": "number"},
    "entrypointNumGpus": {"type": "number"}, "entrypointResources": {"type": "string"},
    "rayClusterSpec": RAY_CLUSTER_SPEC, "submitterPodTemplate": _TEMPLATE,
})
_META = _strict({"name": {"type": "string"}, "generateName": {"type": "string"}, "namespace": {"type": "string"},
                 "labels": _STR_MAP, "annotations": _STR_MAP})
# Top level: this project requires apiVersion, kind, metadata and spec in every manifest; in the
# CRD itself spec (`json:"spec,omitempty"`) is optional.
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
