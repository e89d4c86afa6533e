"""Where status and Secrets live: local files or the Kubernetes API."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from reconciler.errors import UsageError

DEFAULT_LOCAL_DIR = ".email-reconciler"


def cluster_configured() -> bool:
    """True when a kubeconfig or an in-cluster service account is present."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return True
    paths = os.environ.get("KUBECONFIG")
    if paths:
        return any(Path(p).is_file() for p in paths.split(os.pathsep) if p)
    return (Path.home() / ".kube" / "config").is_file()


def open_store(spec: str | None, *, context: str | None = None,
               namespace: str | None = None) -> Any:
    """Build the store named by --store: `local:DIR`, `kube`, or the default for this machine."""
    if spec is None:
        spec = "kube" if cluster_configured() else f"local:{DEFAULT_LOCAL_DIR}"
    if spec.startswith("local:") or spec == "local":
        from reconciler.store.local import LocalStore

        root = spec.partition(":")[2] or DEFAULT_LOCAL_DIR
        return LocalStore(root, namespace=namespace)
    if spec == "kube":
        from reconciler.store.kube import KubeStore

        try:
            return KubeStore.from_config(context=context, namespace=namespace)
        except UsageError as exc:  # the commands with --store have the local one too
            raise UsageError(f"{exc}, or use --store local:DIR") from exc
    raise UsageError(f"--store must be local:DIR or kube, not {spec!r}")
