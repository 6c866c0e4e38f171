"""The Helm chart, rendered by Helm's own engine (helm-python-sdk) and checked offline.

Every mode is rendered, linted strictly and each manifest validated against the Kubernetes
schemas (kubernetes-validate, strict: unknown fields fail) for the oldest Kubernetes the chart
supports and the newest the validator knows. Then what a reviewer would check by hand: the
restricted Pod Security Standard for the operator, least-privilege RBAC (no wildcards, no
Secrets), values.schema.json refusing wrong values with a clear message, and CRDs identical to
the generated ones.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from conftest import ROOT

helm = pytest.importorskip("helm_python", reason="needs helm-python-sdk (the dev extra)")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate (the dev extra)")

CHART = ROOT / "charts" / "kubetune"
NAMESPACE = "kubetune-system"
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())  # Chart.yaml: kubeVersion >=1.25
PROMETHEUS_OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor"}

MODES: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"watchNamespaces": ["ml", "research"], "prometheus": {"url": "http://prometheus.monitoring:9090"}},
    "prometheus-operator": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
                            "podMonitor": {"enabled": True}, "metrics": {"scrapeAnnotations": False}},
    "minimal": {"dashboards": {"enabled": False}, "rbac": {"aggregateToDefaultRoles": False},
                "serviceAccount": {"create": True, "name": "tuner"}, "extraArgs": ["--verbose"],
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]},
}

# What the operator does with the API (kubetune/cluster/kube.py, kubetune/operator/handlers.py,
# and kopf's own needs), as (apiGroup, resource) -> verbs.
OPERATOR_NAMESPACED_RULES = {
    ("kubetune.io", "hyperparameterstudies"): {"get", "list", "watch", "patch"},
    ("kubetune.io", "hyperparameterstudies/status"): {"get", "patch"},
    ("kubetune.io", "hyperparametertrials"): {"get", "list", "watch", "create", "patch"},
    ("kubetune.io", "hyperparametertrials/status"): {"get", "patch"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "events"): {"create"},
    ("events.k8s.io", "events"): {"create"},
}
KOPF_DISCOVERY_RULES = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
KOPF_NAMESPACE_RULES = {("", "namespaces"): {"list", "watch"}}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    chart = helm.Chart.load(str(CHART))
    try:
        rendered = chart.render(values or {}, name="kubetune", namespace=NAMESPACE, is_install=True)
    finally:
        chart.close()
    return [doc for path, text in sorted(rendered.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def by_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


def rules_of(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    rules: dict[tuple[str, str], set[str]] = {}
    for rule in role.get("rules", []):
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                rules.setdefault((group, resource), set()).update(rule["verbs"])
    return rules


def short(error: Exception) -> str:
    return f"{'.'.join(map(str, getattr(error, 'path', [])))}: {getattr(error, 'message', error)}"


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_lints_strictly_and_validates_against_kubernetes_schemas(mode):
    report = helm.lint(str(CHART), MODES[mode], strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems
    manifests = render(MODES[mode])
    assert manifests
    for manifest in manifests:
        if manifest["kind"] in PROMETHEUS_OPERATOR_KINDS:
            continue  # not a built-in kind: checked against the trial and operator ports below
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(manifest, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']} on Kubernetes {version}: {short(error)}")


def test_the_charts_crds_are_the_generated_ones_and_valid():
    generated = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == generated, "run `make crds`"
    for name in generated:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), f"{name} differs: run `make crds`"
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(yaml.safe_load((CHART / "crds" / name).read_text()), version, strict=True)


def test_the_operator_pod_meets_the_restricted_pod_security_standard():
    for mode, values in MODES.items():
        (deployment,) = by_kind(render(values), "Deployment")
        assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, mode
        assert pod["securityContext"]["seccompProfile"]["type"] in ("RuntimeDefault", "Localhost"), mode
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), mode
        assert all("hostPath" not in v for v in pod.get("volumes", [])), mode
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, mode
            assert security["readOnlyRootFilesystem"] is True, mode
            assert security.get("privileged", False) is False, mode
            assert security["capabilities"]["drop"] == ["ALL"] and not security["capabilities"].get("add"), mode
            assert security.get("runAsUser", pod["securityContext"].get("runAsUser", 1)) != 0, mode
            assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
            assert container["resources"]["limits"]["memory"]
            probe = container["livenessProbe"]["httpGet"]
            assert probe["path"] == "/healthz"
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports == {"metrics": 8080, "health": 8081} and probe["port"] == "health"
            assert "--metrics-port=8080" in container["args"] and "--health-port=8081" in container["args"]


def test_rbac_has_no_wildcards_no_secrets_and_exactly_what_the_operator_needs():
    for mode, values in MODES.items():
        manifests = render(values)
        roles = by_kind(manifests, "ClusterRole") + by_kind(manifests, "Role")
        for role in roles:
            for rule in role["rules"]:
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[field], f"{mode}: wildcard in {role['metadata']['name']}: {rule}"
                assert not {"secrets", "configmaps"} & set(rule["resources"]), f"{mode}: {role['metadata']['name']}: {rule}"
                assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
        bound = {b["roleRef"]["name"] for b in by_kind(manifests, "ClusterRoleBinding") + by_kind(manifests, "RoleBinding")}
        for binding in by_kind(manifests, "ClusterRoleBinding") + by_kind(manifests, "RoleBinding"):
            sa = values.get("serviceAccount", {}).get("name") or "kubetune"
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
        operator_roles = [r for r in roles if r["metadata"]["name"] in bound]
        if not values.get("watchNamespaces"):
            (cluster_role,) = operator_roles
            assert rules_of(cluster_role) == {**OPERATOR_NAMESPACED_RULES, **KOPF_DISCOVERY_RULES}, mode


def test_namespaced_mode_grants_only_in_the_listed_namespaces():
    manifests = render(MODES["namespaced"])
    (cluster_role,) = [r for r in by_kind(manifests, "ClusterRole") if r["metadata"]["name"] == "kubetune"]
    assert rules_of(cluster_role) == {**KOPF_NAMESPACE_RULES, **KOPF_DISCOVERY_RULES}
    roles = by_kind(manifests, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml", "research"]
    assert all(rules_of(r) == OPERATOR_NAMESPACED_RULES for r in roles)
    assert sorted((b["metadata"]["namespace"], b["roleRef"]["kind"]) for b in by_kind(manifests, "RoleBinding")) == [
        ("ml", "Role"), ("research", "Role")]
    (deployment,) = by_kind(manifests, "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["operator", "--namespace=ml", "--namespace=research"]
    assert "--prometheus-url=http://prometheus.monitoring:9090" in args and "--all-namespaces" not in args
    (pod_monitor,) = by_kind(render({**MODES["namespaced"], "podMonitor": {"enabled": True}}), "PodMonitor")
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": ["ml", "research"]}


def test_users_who_can_edit_a_namespace_manage_studies_and_viewers_read_them():
    roles = {r["metadata"]["name"]: r for r in by_kind(render(), "ClusterRole")}
    edit, view = roles["kubetune-edit"], roles["kubetune-view"]
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert {"create", "update", "patch", "delete"} <= rules_of(edit)[("kubetune.io", "hyperparameterstudies")]
    assert "create" not in rules_of(edit)[("kubetune.io", "hyperparametertrials")]  # the operator's job
    assert all(verbs == {"get", "list", "watch"} for verbs in rules_of(view).values())
    assert {"hyperparameterstudies", "hyperparametertrials"} <= {r for _, r in rules_of(view)}
    assert not by_kind(render(MODES["minimal"]), "ClusterRole")[1:], "aggregation off leaves only the operator's role"


def test_monitors_scrape_the_operator_service_and_the_trial_pods():
    manifests = render(MODES["prometheus-operator"])
    (service,) = by_kind(manifests, "Service")
    (deployment,) = by_kind(manifests, "Deployment")
    (service_monitor,) = by_kind(manifests, "ServiceMonitor")
    (pod_monitor,) = by_kind(manifests, "PodMonitor")
    assert service_monitor["apiVersion"] == pod_monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert service_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service_monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    # Trial pods: labels and port name as kubetune/cluster/builders.py writes them.
    from kubetune.cluster.builders import STUDY_LABEL, TRIAL_LABEL
    keys = {e["key"] for e in pod_monitor["spec"]["selector"]["matchExpressions"] if e["operator"] == "Exists"}
    assert keys == {STUDY_LABEL, TRIAL_LABEL}
    endpoint = pod_monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "metrics" and endpoint["honorLabels"] is True
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    assert "annotations" not in deployment["spec"]["template"]["metadata"]
    # Without the Prometheus Operator: annotations on the operator's pod instead.
    (plain,) = by_kind(render(), "Deployment")
    assert plain["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "8080"
    assert not by_kind(render(), "ServiceMonitor") and not by_kind(render(), "PodMonitor")


def test_dashboards_ship_as_configmaps_for_the_grafana_sidecar():
    config_maps = by_kind(render(), "ConfigMap")
    files = sorted(p.name for p in (CHART / "dashboards").glob("*.json"))
    assert sorted(name for cm in config_maps for name in cm["data"]) == files
    for cm in config_maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        for name, text in cm["data"].items():
            assert json.loads(text) == json.loads((CHART / "dashboards" / name).read_text())
    relabelled = by_kind(render({"dashboards": {"label": "grafana", "labelValue": "yes", "namespace": "monitoring"}}), "ConfigMap")
    assert all(cm["metadata"]["labels"]["grafana"] == "yes" and cm["metadata"]["namespace"] == "monitoring" for cm in relabelled)


@pytest.mark.parametrize("values, message", [
    ({"watchNamespaces": "ml"}, "at '/watchNamespaces': got string, want array"),
    ({"watchNamespaces": ["Not_A_Namespace"]}, "/watchNamespaces/0"),
    ({"replicaCount": 2}, "additional properties 'replicaCount' not allowed"),
    ({"image": {"repository": "kubetune-operator", "pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"prometheus": {"url": "prometheus:9090"}}, "/prometheus/url"),
    ({"metrics": {"port": 80800}}, "/metrics/port"),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
    ({"securityContext": {"allowPrivilegeEscalation": True}}, "/securityContext/allowPrivilegeEscalation"),
    ({"serviceMonitor": {"enabled": "yes"}}, "/serviceMonitor/enabled"),
    ({"extraArgs": ["verbose"]}, "/extraArgs/0"),
])
def test_wrong_values_fail_at_install_with_a_message_naming_the_field(values, message):
    with pytest.raises(helm.HelmValuesError) as raised:
        render(values)
    assert "values don't meet the specifications of the schema" in str(raised.value)
    assert message in str(raised.value), str(raised.value)


def test_notes_tell_the_user_what_to_do_next():
    def notes(values: dict[str, Any]) -> str:
        chart = helm.Chart.load(str(CHART))
        try:
            return chart.render(values, name="kubetune", namespace=NAMESPACE, is_install=True)["kubetune/templates/NOTES.txt"]
        finally:
            chart.close()

    default = notes({})
    assert "rollout status deployment/kubetune" in default and "kubectl apply -n default" in default
    assert "No prometheus.url is set" in default and "grafana_dashboard=1" in default
    namespaced = notes(MODES["namespaced"])
    assert "the namespaces ml, research" in namespaced and "kubectl apply -n ml" in namespaced
    assert "read from http://prometheus.monitoring:9090" in namespaced
