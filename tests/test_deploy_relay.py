"""deploy/components/relay-sidecar (issue 24): the relay added to a labelled workload by kustomize,
as an application's kustomization uses it; the sidecar runs the command the CLI parses and mounts
the Secret where that command reads it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from reconciler.cli import build_parser
from tests.kube_fixtures import render

COMPONENT = Path(__file__).resolve().parent.parent / "deploy" / "components" / "relay-sidecar"


def _workload(name: str, kind: str = "Deployment", relay: bool = True) -> dict[str, Any]:
    labels = {"email.reconciler.io/relay": "enabled"} if relay else {}
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "labels": labels},
            "spec": {"selector": {"matchLabels": {"app": name}}, **(
                {"serviceName": name} if kind == "StatefulSet" else {}),
                "template": {"metadata": {"labels": {"app": name}}, "spec": {
                    "containers": [{"name": name, "image": "example/app:1",
                                    "envFrom": [{"secretRef": {"name": "email-relay"}}]}]}}}}


def _rendered(tmp_path: Path) -> dict[str, dict[str, Any]]:
    docs = [_workload("alertmanager"), _workload("grafana", "StatefulSet"),
            _workload("web", relay=False)]
    (tmp_path / "app.yaml").write_text(yaml.safe_dump_all(docs))
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": ["app.yaml"], "components": [os.path.relpath(COMPONENT, tmp_path)]}))
    return {d["metadata"]["name"]: d for d in render(tmp_path)}


def test_the_sidecar_goes_to_labelled_workloads_only(tmp_path: Path) -> None:
    out = _rendered(tmp_path)
    for name in ("alertmanager", "grafana"):
        spec = out[name]["spec"]["template"]["spec"]
        [sidecar] = spec["initContainers"]
        assert sidecar["name"] == "email-relay" and sidecar["restartPolicy"] == "Always"
        assert {"name": "email-relay", "secret": {"secretName": "email-relay"}} in spec["volumes"]
        assert spec["containers"][0]["name"] == name  # the application is untouched
    assert "initContainers" not in out["web"]["spec"]["template"]["spec"]


def test_the_sidecar_runs_the_relay_command_on_the_mounted_secret(tmp_path: Path) -> None:
    [sidecar] = _rendered(tmp_path)["alertmanager"]["spec"]["template"]["spec"]["initContainers"]
    args = build_parser().parse_args(sidecar["args"])
    assert args.command == "relay"
    [mount] = sidecar["volumeMounts"]
    assert mount["readOnly"] and mount["mountPath"] == args.secret_dir
    ctx = sidecar["securityContext"]
    assert ctx["runAsNonRoot"] and ctx["readOnlyRootFilesystem"]
    assert not ctx["allowPrivilegeEscalation"] and ctx["capabilities"]["drop"] == ["ALL"]
    assert "memory" in sidecar["resources"]["limits"]
