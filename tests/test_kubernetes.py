"""deploy/kubernetes: every manifest valid, and the pieces fit each other.

Core kinds are validated with kubernetes-validate (strict: an unknown field is
an error, as kubectl's default server-side validation makes it); KEDA's
ScaledObject against deploy/kubernetes/schemas/keda.sh/ (KEDA's CRD schema,
kept in the repo: schemas/derive_keda_schemas.py says where it comes from).
There is no kustomize here, so the example overlay is rendered by the small
subset of kustomize it uses (namespace, images, a generated Secret, merge
patches), and the test fails if the overlay starts using anything else.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from forwarder import constants as C
from forwarder.constants import DEFAULT_SHUTDOWN_TIMEOUT

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="pip install -e '.[dev]' brings kubernetes-validate")

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
SCHEMAS = K8S / "schemas" / "keda.sh"
#: The oldest Kubernetes still commonly run, and the newest kubernetes-validate knows.
VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]
#: What the measured worker needs: 124 MB peak RSS plus a 36 MB probe process.
WORKER_MEMORY_MIB = 124 + 36
NAMESPACED = {"ConfigMap", "Secret", "Deployment", "StatefulSet", "Service",
              "PodDisruptionBudget", "NetworkPolicy", "ScaledObject"}


Obj = dict[str, Any]


def load(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization(directory: Path) -> Obj:
    data = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert isinstance(data, dict)
    return data


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: kustomize's strategic merge for these objects."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def render(directory: Path) -> list[Obj]:
    """``kustomize build`` for the features this repo's kustomizations use."""
    spec = kustomization(directory)
    allowed = {"apiVersion", "kind", "namespace", "resources", "images", "secretGenerator",
               "generatorOptions", "patches"}
    assert set(spec) <= allowed, f"{directory}: uses {set(spec) - allowed}; extend render()"
    objects: list[Obj] = []
    for resource in spec.get("resources", []):
        path = directory / resource
        objects += render(path) if path.is_dir() else load(path)
    for generator in spec.get("secretGenerator", []):
        data: dict[str, str] = {}
        for env in generator["envs"]:
            # The committed example stands in for the secret.env an operator writes.
            lines = (directory / f"{env}.example").read_text().splitlines()
            data.update(line.split("=", 1) for line in lines
                        if line.strip() and not line.startswith("#"))
        assert spec.get("generatorOptions", {}).get("disableNameSuffixHash") is True
        objects.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                        "metadata": {"name": generator["name"]}, "stringData": data})
    for patch in spec.get("patches", []):
        (body,) = load(directory / patch["path"])
        matches = [o for o in objects if (o["kind"], o["metadata"]["name"])
                   == (body["kind"], body["metadata"]["name"])]
        assert len(matches) == 1, f"patch {patch['path']} matches {len(matches)} objects"
        objects[objects.index(matches[0])] = merge_patch(matches[0], body)
    for image in spec.get("images", []):
        for container in containers(objects):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = (f"{image.get('newName', name)}:"
                                      f"{image.get('newTag', tag)}").rstrip(":")
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] in NAMESPACED:
                obj["metadata"]["namespace"] = spec["namespace"]
    return objects


def containers(objects: list[Obj]) -> list[Obj]:
    return [c for o in objects if o["kind"] in ("Deployment", "StatefulSet")
            for c in o["spec"]["template"]["spec"]["containers"]]


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


@pytest.fixture(scope="module")
def base() -> list[Obj]:
    return render(BASE)


@pytest.fixture(scope="module")
def example() -> list[Obj]:
    return render(OVERLAY)


def keda_schema(kind: str) -> Obj:
    return json.loads((SCHEMAS / f"{kind.lower()}_v1alpha1.json").read_text())


def validate(obj: Obj) -> None:
    if obj["apiVersion"].startswith("keda.sh/"):
        jsonschema.validate(obj, keda_schema(obj["kind"]),
                            format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
        return
    for version in VERSIONS:
        kubernetes_validate.validate(copy.deepcopy(obj), version, strict=True)


# --- validity ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted([*BASE.glob("*.yaml"), *OVERLAY.glob("*.yaml")]),
                         ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_file_is_valid(path: Path) -> None:
    if path.name == "kustomization.yaml" or path.name in (
            p["path"] for p in kustomization(path.parent).get("patches", [])):
        return  # a patch is checked once applied (test_rendered_overlay_is_valid)
    for obj in load(path):
        validate(obj)


def test_rendered_overlay_is_valid(example: list[Obj]) -> None:
    kinds = sorted(o["kind"] for o in example)
    assert kinds == sorted(["Namespace", "ConfigMap", "Secret", "Deployment", "Deployment",
                            "Service", "Service", "Service", "PodDisruptionBudget",
                            "PodDisruptionBudget", "ScaledObject", "NetworkPolicy",
                            "NetworkPolicy", "NetworkPolicy", "NetworkPolicy", "StatefulSet"])
    for obj in example:
        validate(obj)
        if obj["kind"] in NAMESPACED:
            assert obj["metadata"]["namespace"] == "distinct-forwarder"
    assert {c["image"] for c in containers(example)} == {
        "registry.example.com/distinct-forwarder:0.2.0", "redis:7"}
    assert find(example, "ScaledObject", "distinct-forwarder-worker")["spec"][
        "maxReplicaCount"] == 4


def test_keda_schema_rejects_what_keda_would(base: list[Obj]) -> None:
    """The kept schema is not a formality: it catches a missing or misspelt field."""
    scaled = find(base, "ScaledObject", "distinct-forwarder-worker")
    broken = [merge_patch(scaled, {"spec": {"triggers": None}}),
              merge_patch(scaled, {"spec": {"minReplicas": 1}}),
              merge_patch(scaled, {"spec": {"minReplicaCount": "one"}}),
              merge_patch(scaled, {"spec": {"advanced": {"scalingModifier": {}}}}),
              merge_patch(scaled, {"spec": {"scaleTargetRef": {"name": None}}})]
    for obj in broken:
        with pytest.raises(jsonschema.ValidationError):
            validate(obj)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(merge_patch(find(base, "Deployment", "distinct-forwarder-worker"),
                             {"spec": {"template": {"spec": {"gracePeriod": 30}}}}))


# --- the pieces fit ------------------------------------------------------------------------
def pod_spec(objects: list[Obj], name: str) -> Obj:
    spec = find(objects, "Deployment", name)["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def mib(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * (1024 if unit == "Gi" else 1)


def test_worker_stops_gracefully_and_is_probed_for_wedging(base: list[Obj]) -> None:
    deployment = find(base, "Deployment", "distinct-forwarder-worker")
    assert "replicas" not in deployment["spec"]  # KEDA owns the count
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1,
                                                               "maxUnavailable": 0}
    spec = pod_spec(base, "distinct-forwarder-worker")
    assert spec["terminationGracePeriodSeconds"] >= DEFAULT_SHUTDOWN_TIMEOUT + 10
    (worker,) = spec["containers"]
    assert worker["args"] == ["worker"]
    for probe in ("startupProbe", "livenessProbe"):
        assert worker[probe]["exec"]["command"][:4] == [
            "distinct-forwarder", "health", "worker", "--quiet"]
    # Liveness fails after the heartbeat timeout plus a few misses, not on one slow probe.
    live = worker["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 2 * C.WORKER_DEAD_AFTER_SECONDS
    resources = worker["resources"]
    assert mib(resources["requests"]["memory"]) >= WORKER_MEMORY_MIB
    assert mib(resources["limits"]["memory"]) >= 1.5 * WORKER_MEMORY_MIB
    # The probe's state file and Python's temporary files need a writable /tmp.
    assert {"name": "tmp", "mountPath": "/tmp"} in worker["volumeMounts"]


def test_relay_is_probed_on_its_endpoints(base: list[Obj]) -> None:
    (relay,) = pod_spec(base, "distinct-forwarder-relay")["containers"]
    assert relay["args"] == ["relay"]
    assert relay["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert relay["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port = relay["ports"][0]
    config = find(base, "ConfigMap", "distinct-forwarder")["data"]
    assert config["FORWARDER_RELAY_BIND"] == f"0.0.0.0:{port['containerPort']}"
    assert pod_spec(base, "distinct-forwarder-relay")["terminationGracePeriodSeconds"] > 5 + 20


def test_every_pod_meets_the_restricted_pod_security_standard(example: list[Obj]) -> None:
    for obj in example:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        spec = obj["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert "memory" in container["resources"]["limits"]


def test_selectors_and_references_resolve(example: list[Obj]) -> None:
    pods = {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
            for o in example if o["kind"] in ("Deployment", "StatefulSet")}

    def selects(selector: dict[str, str]) -> list[str]:
        return [n for n, labels in pods.items() if selector.items() <= labels.items()]

    for obj in example:
        kind, spec = obj["kind"], obj.get("spec", {})
        if kind == "Service":
            assert len(selects(spec["selector"])) == 1, obj["metadata"]["name"]
        elif kind == "PodDisruptionBudget":
            assert len(selects(spec["selector"]["matchLabels"])) == 1
        elif kind in ("Deployment", "StatefulSet"):
            assert spec["selector"]["matchLabels"].items() <= \
                spec["template"]["metadata"]["labels"].items()
    names = {(o["kind"], o["metadata"]["name"]) for o in example}
    for container in containers(example):
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef") or source.get("secretRef")
            kind = "ConfigMap" if "configMapRef" in source else "Secret"
            assert (kind, ref["name"]) in names


def test_autoscaling_reads_the_queue_and_the_due_retries(example: list[Obj]) -> None:
    from workers import metrics

    scaled = find(example, "ScaledObject", "distinct-forwarder-worker")["spec"]
    config = find(example, "ConfigMap", "distinct-forwarder")["data"]
    secret = find(example, "Secret", "distinct-forwarder")["stringData"]
    assert scaled["scaleTargetRef"]["name"] == "distinct-forwarder-worker"
    assert scaled["minReplicaCount"] >= 1  # the promoter lives in the workers
    triggers = {t["name"]: t for t in scaled["triggers"]}
    assert set(triggers) == {"queue", "retries_due"}
    assert scaled["advanced"]["scalingModifiers"]["formula"] == "queue + retries_due"
    queue = triggers["queue"]
    assert queue["type"] == "redis"
    assert queue["metadata"]["listName"] == C.key(config["FORWARDER_NAMESPACE"], C.QUEUE)
    # KEDA resolves these from the worker container's environment.
    env = {**config, **secret}
    assert queue["metadata"]["addressFromEnv"] in env
    assert queue["metadata"]["passwordFromEnv"] in env
    host = env[queue["metadata"]["addressFromEnv"]].split(":")[0]
    assert host in env["REDIS_URL"]  # KEDA and the pods read the same Redis
    due = triggers["retries_due"]
    assert due["type"] == "metrics-api" and due["metadata"]["format"] == "prometheus"
    assert due["metadata"]["valueLocation"] == metrics.RETRY_DUE.describe()[0].name
    service = find(example, "Service", "distinct-forwarder-worker-metrics")
    url = due["metadata"]["url"]
    assert url == (f"http://{service['metadata']['name']}.{service['metadata']['namespace']}"
                   f".svc.cluster.local:{service['spec']['ports'][0]['port']}/metrics")
    assert config["FORWARDER_METRICS_PORT"] == str(service["spec"]["ports"][0]["port"])
    assert config["FORWARDER_METRICS_BIND"] == "0.0.0.0"


def _egress_ports(policy: Obj) -> set[int]:
    return {p["port"] for rule in policy["spec"].get("egress", []) for p in rule["ports"]}


def test_only_workers_reach_distinct(example: list[Obj]) -> None:
    policies = {o["metadata"]["name"]: o for o in example if o["kind"] == "NetworkPolicy"}
    deny = policies["distinct-forwarder-default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert "egress" not in deny and "ingress" not in deny
    app_pods = [o["spec"]["template"]["metadata"]["labels"] for o in example
                if o["kind"] == "Deployment"]
    assert all(deny["podSelector"]["matchLabels"].items() <= labels.items()
               for labels in app_pods)
    assert 443 in _egress_ports(policies["distinct-forwarder-worker"])
    assert _egress_ports(policies["distinct-forwarder-relay"]) == {53, 6379}
    (https,) = [r for r in policies["distinct-forwarder-worker"]["spec"]["egress"]
                if r["ports"][0]["port"] == 443]
    block = https["to"][0]["ipBlock"]
    assert ipaddress.ip_network("10.0.0.0/8") in [ipaddress.ip_network(c)
                                                 for c in block["except"]]


def test_example_redis_has_the_settings_of_deploy_redis_conf(example: list[Obj]) -> None:
    (redis_container,) = find(example, "StatefulSet", "redis")["spec"]["template"]["spec"][
        "containers"]
    args = redis_container["args"]
    given = {args[i].removeprefix("--"): args[i + 1] for i in range(1, len(args) - 1, 2)}
    conf = ROOT / "deploy" / "redis.conf"
    for line in conf.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            directive, _, value = line.partition(" ")
            assert given.get(directive) == value.strip('"'), directive
    assert given["requirepass"] == "$(REDIS_PASSWORD)"


def test_secrets_stay_out_of_the_repository() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "secret.env" in ignored
    assert not (OVERLAY / "secret.env").exists() or "secret.env" in ignored
    for path in [*BASE.glob("*.yaml"), *OVERLAY.glob("*.yaml")]:
        for obj in load(path):
            assert obj["kind"] != "Secret", f"{path}: a Secret belongs in secret.env"
    for line in (OVERLAY / "secret.env.example").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            assert "replace-with" in line, line
