"""The Helm chart renders with Helm's own engine and every manifest passes the Kubernetes schema.

Helm runs in-process through ``helm-python-sdk`` (the Helm v4 library compiled into the
wheel, no binary download); schemas come from ``kubernetes-validate``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip("helm_python")
kv = pytest.importorskip("kubernetes_validate")

CHART = Path(__file__).resolve().parents[1] / "deploy" / "helm" / "costroute"
K8S_VERSION = "1.30"

VALUE_SETS = {
    "defaults": {},
    "external-redis-artifact": {
        "redis": {"externalUrl": "redis://redis.example:6379/0", "enabled": False},
        "artifact": {"enabled": True, "persistentVolumeClaim": "router-artifact"},
        "providerKeys": {"OPENAI_API_KEY": "sk-test"},
        "autoscaling": {"enabled": False},
        "replicaCount": 3,
    },
    "existing-secret": {"existingSecret": "my-keys", "redis": {"enabled": False}},
}


def render(values: dict) -> list[dict]:
    rendered = helm.Chart.load(CHART).render(values, name="test", namespace="default")
    docs = []
    for path, text in rendered.items():
        if path.endswith(".txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def test_chart_lints_strict():
    report = helm.lint(CHART, strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_manifests_validate_against_kubernetes_schema(name):
    docs = render(VALUE_SETS[name])
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap"} <= kinds
    for doc in docs:
        kv.validate(doc, K8S_VERSION, strict=True)


def test_probes_config_and_state_wiring():
    docs = {d["kind"] + "/" + d["metadata"]["name"]: d for d in render(VALUE_SETS["defaults"])}
    dep = next(d for k, d in docs.items() if k.startswith("Deployment/"))
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["COSTROUTE_REDIS_URL"].startswith("redis://test-costroute-redis")
    assert any(k.startswith("HorizontalPodAutoscaler/") for k in docs)
    assert any(k.startswith("StatefulSet/") for k in docs)
    redis = next(d for k, d in docs.items() if k.startswith("StatefulSet/"))
    assert "--appendonly" in redis["spec"]["template"]["spec"]["containers"][0]["args"]
    config = next(d for k, d in docs.items() if k.startswith("ConfigMap/"))
    assert yaml.safe_load(config["data"]["config.yaml"])["routing"]["policy"] == "knn"


def test_schema_validation_catches_a_broken_manifest():
    dep = next(d for d in render(VALUE_SETS["defaults"]) if d["kind"] == "Deployment")
    dep["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, K8S_VERSION, strict=True)
