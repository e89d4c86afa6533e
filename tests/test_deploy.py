"""deploy/ and the Dockerfile (issue 8): kustomize renders, the objects are hardened, the RBAC is
least privilege (checked against the requests the controller really sends), and the commands in
the manifests parse with the real CLI. Issue 22 item 6 and issue 26 item 1: the controller is
cluster-wide by default with a one-namespace overlay, the served namespace is set in one place,
the NetworkPolicy is generated from the provider table, and nothing names a file that is not there."""

from __future__ import annotations

import base64
import re
import shlex
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli import build_parser
from reconciler.manifest import providers
from reconciler.manifest.networkpolicy import render_network_policy, smtp_ports
from reconciler.run.controller import Controller
from reconciler.run.leader import LeaderConfig
from tests.kube_fixtures import TEST_NAMESPACES, email_account_crd, render
from tests.kubeapi import KubeAPIServer

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SERVED = "mail"
OWN = "email-reconciler"
CONTROLLER_SECRET_VERBS = {"get", "list", "watch", "create", "patch", "delete"}


MODES = ("controller", "controller-one-namespace", "gitops", "both")
CLUSTER_SCOPED = ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding")
__all__ = ["render"]  # tests/test_rbac_replay.py imports it from here


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    """What the default install puts in a cluster: the base and both modes (cluster-wide controller)."""
    return render() + render(DEPLOY / "both")


@pytest.fixture(scope="module")
def modes() -> dict[str, list[dict[str, Any]]]:
    return {"base": render(), **{m: render(DEPLOY / m) for m in MODES}}


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


# --------------------------------------------------------------------------- rendering


def test_kustomize_renders_every_object_and_each_parses(objects: list[dict[str, Any]]) -> None:
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == sorted({"CustomResourceDefinition", "Namespace", "ServiceAccount", "Role",
                            "RoleBinding", "ClusterRole", "ClusterRoleBinding", "Deployment",
                            "Service", "CronJob", "NetworkPolicy"})
    for obj in objects:
        assert obj["apiVersion"] and obj["metadata"]["name"], obj
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in obj["metadata"], obj["metadata"]
        else:
            assert obj["metadata"]["namespace"] in (OWN, SERVED), obj["metadata"]
    assert sorted(o["metadata"]["name"] for o in by_kind(objects, "Namespace")) == [OWN, SERVED]
    crd = one(objects, "CustomResourceDefinition", "emailaccounts.email.reconciler.io")
    assert crd == yaml.safe_load((DEPLOY / "crd.yaml").read_text())
    for folder in (DEPLOY, *(DEPLOY / m for m in MODES), DEPLOY / "served-namespace"):
        listed = yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]
        files = [f for f in listed if not f.startswith("..")]
        assert sorted(files) == sorted(p.name for p in folder.glob("*.yaml")
                                       if p.name != "kustomization.yaml"), folder


def _workloads(objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((o["kind"], o["metadata"]["name"]) for o in objects
                  if o["kind"] in ("Deployment", "CronJob", "Job", "StatefulSet", "DaemonSet"))


def _cronjob_args(objects: list[dict[str, Any]]) -> list[str]:
    cron = one(objects, "CronJob", "email-reconciler-gitops")
    return list(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"])


def test_the_base_has_no_writer_and_each_mode_has_one(
        modes: dict[str, list[dict[str, Any]]]) -> None:
    assert _workloads(modes["base"]) == []
    assert _workloads(modes["controller"]) == [("Deployment", "email-reconciler-controller")]
    assert _workloads(modes["controller-one-namespace"]) == [("Deployment", "email-reconciler-controller")]
    assert _workloads(modes["gitops"]) == [("CronJob", "email-reconciler-gitops")]
    assert "--apply-only" not in _cronjob_args(modes["gitops"])
    # both: the CronJob applies and prunes only, the controller alone writes status and Secrets
    assert _workloads(modes["both"]) == [("CronJob", "email-reconciler-gitops"),
                                         ("Deployment", "email-reconciler-controller")]
    args = build_parser().parse_args(_cronjob_args(modes["both"]))
    assert args.apply_only and args.namespace == SERVED
    for mode in MODES:  # each mode is complete on top of the base: its identity and rules
        kinds = {o["kind"] for o in modes[mode]}
        assert {"ServiceAccount", "ClusterRole"} <= kinds and kinds & {"RoleBinding", "ClusterRoleBinding"}, mode
        assert "CustomResourceDefinition" not in kinds, mode
        # the only Namespace a mode brings is the served one (the base has email-reconciler)
        served = [o["metadata"]["name"] for o in modes[mode] if o["kind"] == "Namespace"]
        assert served == ([] if mode == "controller" else [SERVED]), mode
    sas = {o["metadata"]["name"] for o in modes["controller"] if o["kind"] == "ServiceAccount"}
    assert sas == {"email-reconciler-controller"}


# --------------------------------------------------------------------------- RBAC


def rules_for(objects: list[dict[str, Any]], service_account: str) -> dict[str, list[dict[str, Any]]]:
    """namespace ("*" for cluster-wide) -> rules bound to the service account."""
    out: dict[str, list[dict[str, Any]]] = {}
    for binding in by_kind(objects, "RoleBinding") + by_kind(objects, "ClusterRoleBinding"):
        if not any(s.get("kind") == "ServiceAccount" and s["name"] == service_account
                   for s in binding.get("subjects") or []):
            continue
        ref = binding["roleRef"]
        role_ns = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        role = next(o for o in objects if o["kind"] == ref["kind"]
                    and o["metadata"]["name"] == ref["name"]
                    and o["metadata"].get("namespace") == role_ns)
        scope = binding["metadata"].get("namespace") or "*"
        out.setdefault(scope, []).extend(role["rules"])
    return out


def allowed(rules: dict[str, list[dict[str, Any]]], namespace: str, group: str, resource: str,
            verb: str) -> bool:
    for scope in (namespace, "*"):
        for rule in rules.get(scope, []):
            if (group in rule["apiGroups"] and resource in rule["resources"]
                    and verb in rule["verbs"]):
                return True
    return False


def test_no_wildcards_and_only_the_controller_is_cluster_wide(
        modes: dict[str, list[dict[str, Any]]]) -> None:
    bindings = {m: [(b["metadata"]["name"], [s["name"] for s in b["subjects"]])
                    for b in by_kind(modes[m], "ClusterRoleBinding")] for m in MODES}
    controller = [("email-reconciler-controller", ["email-reconciler-controller"])]
    assert bindings == {"controller": controller, "both": controller,
                        "controller-one-namespace": [], "gitops": []}
    for role in by_kind(modes["both"] + modes["controller-one-namespace"], "Role") + by_kind(
            modes["both"], "ClusterRole"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (role["metadata"]["name"], rule)
            assert "resourceNames" not in rule or rule["resourceNames"]


@pytest.mark.parametrize(("mode", "scope"), [("controller", "*"), ("controller-one-namespace", SERVED)])
def test_secrets_only_where_served_with_the_verbs_the_controller_needs(
        modes: dict[str, list[dict[str, Any]]], mode: str, scope: str) -> None:
    gitops = rules_for(modes["gitops"], "email-reconciler-gitops")
    assert [s for s, rules in gitops.items() if any("secrets" in r["resources"] for r in rules)] == [SERVED]
    controller = rules_for(modes[mode], "email-reconciler-controller")
    assert sorted(controller) == sorted({OWN, scope})  # the Lease in its own namespace, the rest where served
    verbs = {v for r in controller[scope] if "secrets" in r["resources"] for v in r["verbs"]}
    # get: a name the label-selected watch cache misses (a publish conflict, issue 18)
    assert verbs == CONTROLLER_SECRET_VERBS
    leases = [r for r in controller[OWN] if "leases" in r["resources"]]
    # leader election: get, create, update; --shards auto: list the replicas' Leases, delete a
    # dead replica's
    assert leases and all(set(r["verbs"]) <= {"get", "list", "create", "update", "delete"}
                          for r in leases)
    assert not any("leases" in r["resources"] for r in controller[scope])
    assert not any("secrets" in r["resources"] for r in controller[OWN]) or scope == "*"
    assert not allowed(controller, SERVED, "email.reconciler.io", "emailaccounts", "delete")
    assert allowed(controller, "team", "", "secrets", "list") == (scope == "*")


@pytest.fixture
def api() -> Iterator[KubeAPIServer]:
    with KubeAPIServer(crds=[email_account_crd()], namespaces=TEST_NAMESPACES) as server:
        yield server


@pytest.mark.parametrize("mode", ["controller", "controller-one-namespace"])
def test_rbac_covers_every_request_the_controller_sends(modes: dict[str, list[dict[str, Any]]],
                                                         api: KubeAPIServer, mode: str) -> None:
    """Run the controller with the namespace its mode's Deployment passes (none: every namespace)
    and check each request against that mode's rules."""
    dep = one(modes[mode], "Deployment", "email-reconciler-controller")
    namespace = build_parser().parse_args(dep["spec"]["template"]["spec"]["containers"][0]["args"]).namespace
    assert namespace == (None if mode == "controller" else SERVED)
    from reconciler.demo.smtp_servers import ServerLoop, SmtpServerOptions

    api.add_object("secrets", {"apiVersion": "v1", "kind": "Secret",
                               "metadata": {"name": "app-smtp", "namespace": SERVED,
                                            "labels": {"email.reconciler.io/credential": "true"}},
                               "data": {"password": base64.b64encode(b"pw-123456").decode()}})
    with ServerLoop() as loop:
        server = loop.smtp(SmtpServerOptions(mode="plain", users={"app@example.com": "pw-123456"}))
        api.add_object("emailaccounts", {
            "apiVersion": "email.reconciler.io/v1alpha1", "kind": "EmailAccount",
            "metadata": {"name": "app", "namespace": SERVED},
            "spec": {"provider": "custom", "smtp": {
                "identity": {"emailAddress": "app@example.com"},
                "connection": {"host": "127.0.0.1", "port": server.port, "security": "None",
                               "allowInsecureAuth": True, "timeoutSeconds": 2},
                "authentication": {"method": "Password",
                                   "passwordSecretRef": {"name": "app-smtp", "key": "password"}}}}})
        with api.api_client() as client:
            ctl = Controller(client, namespace=namespace, workers=1, watch_seconds=2,
                             leader=LeaderConfig(namespace=OWN, identity="rbac-test",
                                                 lease_duration=1.0, renew_deadline=0.7,
                                                 retry_period=0.2))
            ctl.start()
            try:
                deadline = time.monotonic() + 8
                while api.get_object("secrets", SERVED, "app-sender") is None:
                    assert time.monotonic() < deadline, "the controller did not publish"
                    time.sleep(0.05)
                api.add_object("secrets", {"apiVersion": "v1", "kind": "Secret",
                                           "metadata": {"name": "unrelated", "namespace": SERVED}})
                time.sleep(0.3)
            finally:
                ctl.stop()
    rules = rules_for(modes[mode], "email-reconciler-controller")
    sent = {(r.namespace, r.group, r.resource + (f"/{r.subresource}" if r.subresource else ""),
             r.verb) for r in api.requests if r.resource is not None}
    # the first publish of a name the label-selected cache does not hold is a create (no read)
    assert ("mail", "", "secrets", "create") in sent and ("email-reconciler", "coordination.k8s.io",
                                                           "leases", "update") in sent
    denied = [s for s in sent if not allowed(rules, s[0] or "", s[1], s[2], s[3])]
    assert not denied, f"requests the controller Roles do not allow: {sorted(denied)}"
    # every LIST and WATCH of Secrets is label-selected (issue 18); get is allowed for the
    # credential Secrets and a create that finds the name taken (tests/test_controller_publish.py)
    assert ("mail", "", "secrets", "get") not in sent
    secret_reads = [r for r in api.requests if r.resource == "secrets" and r.verb in ("list", "watch")]
    assert secret_reads and all(r.query.get("labelSelector") for r in secret_reads)
    cm_reads = [r for r in api.requests if r.resource == "configmaps" and r.verb in ("list", "watch")]
    assert cm_reads and all(r.query.get("labelSelector") for r in cm_reads)  # issue 13 item 6


# --------------------------------------------------------------------------- workloads


def container_hardened(container: dict[str, Any]) -> None:
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_controller_deployment_is_hardened_and_probes_its_endpoints(
        objects: list[dict[str, Any]]) -> None:
    dep = one(objects, "Deployment", "email-reconciler-controller")
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "email-reconciler-controller"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    container_hardened(container)
    args = build_parser().parse_args(container["args"])
    assert args.command == "controller" and args.shards == "auto" and not args.leader_elect
    assert args.namespace is None  # every namespace, by default
    port = int(args.metrics_addr.rpartition(":")[2])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # the lease must be released before the kubelet kills the pod
    assert pod["terminationGracePeriodSeconds"] > args.lease_duration


def test_cronjob_checks_out_git_into_an_emptydir_and_reconciles_it(
        objects: list[dict[str, Any]]) -> None:
    cron = one(objects, "CronJob", "email-reconciler-gitops")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    (sync,) = pod["initContainers"]
    (main,) = pod["containers"]
    assert "git-sync" in sync["image"] and "--one-time" in sync["args"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in sync["volumeMounts"] if m["mountPath"] == "/git")
    assert "emptyDir" in volumes[mount["name"]]
    for c in (sync, main):
        container_hardened(c)
    args = build_parser().parse_args(main["args"])
    assert args.command == "reconcile" and args.once and args.store == "kube"
    root = next(a for a in sync["args"] if a.startswith("--root="))[len("--root="):]
    link = next(a for a in sync["args"] if a.startswith("--link="))[len("--link="):]
    assert all(p.startswith(f"{root}/{link}/") for p in args.paths)


def test_network_policy_limits_egress_to_dns_api_and_mail(objects: list[dict[str, Any]]) -> None:
    (policy,) = by_kind(objects, "NetworkPolicy")
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for workload in (one(objects, "Deployment", "email-reconciler-controller")["spec"]["template"],
                     one(objects, "CronJob", "email-reconciler-gitops")["spec"]["jobTemplate"]
                     ["spec"]["template"]):
        labels = workload["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in selector.items())
    ports = {(p["port"], p["protocol"]) for rule in policy["spec"]["egress"]
             for p in rule["ports"]}
    assert ports == {(53, "UDP"), (53, "TCP"), (443, "TCP"), (6443, "TCP"),
                     *((port, "TCP") for port in smtp_ports())}
    assert all(rule.get("ports") for rule in policy["spec"]["egress"])  # no allow-all rule


def test_network_policy_allows_every_port_of_the_provider_table(objects: list[dict[str, Any]]) -> None:
    """SES, Resend and Scaleway's 2587 and 2465 (issue 22): an account on a preset's documented
    port must not time out in a cluster. The committed file is the generated one."""
    assert (DEPLOY / "networkpolicy.yaml").read_text() == render_network_policy(), (
        "deploy/networkpolicy.yaml is stale: run `python -m reconciler.manifest.networkpolicy "
        "> deploy/networkpolicy.yaml`")
    (policy,) = by_kind(objects, "NetworkPolicy")
    egress = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"] if p["protocol"] == "TCP"}
    table = {port for p in providers.PRESET_LIST for port in (p.port, *(o for o, _s in p.other_ports))}
    assert table - egress == set()
    assert {2465, 2587, 2525, 25, 465, 587} <= egress


# --------------------------------------------------------------------------- one namespace, set once


def _served_namespaces(objects: list[dict[str, Any]]) -> set[str]:
    """Every namespace the objects name for the served side: bindings outside email-reconciler,
    the Namespace objects, the workloads' --namespace arguments."""
    found = {o["metadata"]["namespace"] for o in objects
             if o["kind"] == "RoleBinding" and o["metadata"]["namespace"] != OWN}
    found |= {o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"}
    for o in objects:
        if o["kind"] in ("Deployment", "CronJob"):
            pod = (o["spec"]["jobTemplate"]["spec"]["template"] if o["kind"] == "CronJob"
                   else o["spec"]["template"])["spec"]
            found |= {a.partition("=")[2] for c in pod["containers"] for a in c["args"]
                      if a.startswith("--namespace=")}
    return found


def test_the_served_namespace_is_set_in_one_place(tmp_path: Path) -> None:
    """deploy/served-namespace/kustomization.yaml's `namespace:` is the only place: changed there,
    every mode follows (Namespace, RoleBindings, --namespace), and no file names `mail` otherwise."""
    for path in DEPLOY.rglob("*.yaml"):
        if path.name != "crd.yaml":
            assert not re.search(r"\bnamespace[:=] *mail\b", path.read_text()) or path == (
                DEPLOY / "served-namespace" / "kustomization.yaml"), path
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy)
    setting = copy / "served-namespace" / "kustomization.yaml"
    setting.write_text(setting.read_text().replace("namespace: mail\n", "namespace: shop\n"))
    for mode in ("controller-one-namespace", "gitops", "both"):
        assert _served_namespaces(render(DEPLOY / mode)) == {SERVED}, mode
        rendered = render(copy / mode)
        assert _served_namespaces(rendered) == {"shop"}, mode
        assert "SERVED_NAMESPACE" not in yaml.safe_dump_all(rendered), mode
    assert _served_namespaces(render(copy / "controller")) == set()


def test_dockerfile_is_multistage_slim_and_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = [line.split() for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) == 2 and all("-slim" in s[1] for s in stages)
    final = text[text.rindex("\nFROM "):]
    assert "COPY --from=build /opt/venv /opt/venv" in final
    for tool in ("gcc", "build-essential", "apt-get install", "pip install"):
        assert tool not in final, tool
    user = [shlex.split(line)[1] for line in final.splitlines() if line.startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert 'ENTRYPOINT ["email-reconciler"]' in final


def test_readme_commands_match_deploy(objects: list[dict[str, Any]]) -> None:
    readme = (ROOT / "README.md").read_text()
    assert "## Install on a cluster" in readme
    section = readme[readme.index("## Install on a cluster"):]
    assert "kubectl apply -k deploy/" in section
    for mode in MODES:
        assert f"kubectl apply -k deploy/{mode}" in section, mode
    for kind, name in (("Deployment", "email-reconciler-controller"),
                       ("CronJob", "email-reconciler-gitops")):
        one(objects, kind, name)
        assert name in section
    # build, push and point deploy/ at the image; upgrade; uninstall and what it deletes
    for words in ("docker build", "docker push", "kustomize edit set image", "**Upgrade.**",
                  "**Uninstall.**", "deletionPolicy", "every EmailAccount in every namespace",
                  "deploy/served-namespace/kustomization.yaml", "CHANGELOG.md"):
        assert words in section, words
    image = one(objects, "Deployment", "email-reconciler-controller")["spec"]["template"]["spec"][
        "containers"][0]["image"]
    assert f"{image.rpartition(':')[0]}=" in section  # the name `kustomize edit set image` replaces


def test_uninstall_by_label_keeps_the_served_namespace(modes: dict[str, list[dict[str, Any]]]) -> None:
    """README: `kubectl delete -k deploy/<mode> -l app.kubernetes.io/name=email-reconciler` removes
    every object of the mode but the served Namespace (and what the users keep in it)."""
    for mode in MODES:
        for obj in modes[mode]:
            labelled = (obj["metadata"].get("labels") or {}).get("app.kubernetes.io/name") == OWN
            assert labelled == (obj["kind"] != "Namespace"), (mode, obj["kind"], obj["metadata"]["name"])


_PATH = re.compile(r"(?<![\w./-])(?:deploy|accounts|reconciler|tests|schemas|bench)/[\w./*<>-]*[\w/*>]")


@pytest.mark.parametrize("doc", ["README.md", "CHANGELOG.md", "Dockerfile",
                                 *sorted(str(p.relative_to(ROOT)) for p in DEPLOY.rglob("*.yaml"))])
def test_no_dangling_file_names_or_private_references(doc: str) -> None:
    """Every path a reader is pointed at exists (deploy/namespace.yaml named a role-served.yaml that
    did not), and nothing cites DESIGN, which readers do not have."""
    text = (ROOT / doc).read_text()
    if doc.endswith("crd.yaml"):
        return
    for path in set(_PATH.findall(text)):
        if "<" not in path:  # deploy/<mode>: a placeholder
            assert list(ROOT.glob(path)) if "*" in path else (ROOT / path).exists(), f"{doc} names {path}"
    if doc.startswith("deploy/"):
        names = {p.name for p in ROOT.rglob("*.yaml")}
        for name in set(re.findall(r"[\w-]+\.yaml\b", text)):
            assert name in names, f"{doc} names {name}"
    assert "DESIGN" not in text, doc


def test_license_and_changelog() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'license = { text = "Apache-2.0" }' in pyproject
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text and len(license_text) > 10000
    changelog = (ROOT / "CHANGELOG.md").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.M)
    assert version and f"## [{version.group(1)}]" in changelog and "## [Unreleased]" in changelog
