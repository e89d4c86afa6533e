"""Typed options of each command: what the CLI parses its arguments into before it builds and runs.

The parser (`reconciler.cli`) owns the flags, their help and their defaults; these dataclasses own
the names and types the commands read, so a command never reaches into an `argparse.Namespace`.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


#: Parsed arguments the CLI itself consumes before a command runs (logging, the politeness
#: limits it configures once, the dispatch) or that change nothing (`reconcile --once`).
CLI_ONLY = frozenset({"func", "command", "log_level", "log_format", "max_sessions_per_server",
                      "max_auth_failures_per_minute", "once"})


def options_from(cls: type[T], args: argparse.Namespace) -> T:
    """An options object of `cls` from parsed arguments (each field from the flag of its name).

    A flag with no field is a bug, reported at once rather than lost on the way to the command.
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(vars(args)) - names - CLI_ONLY)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field for {', '.join(unknown)}: add it in "
                        "reconciler/run/options.py")
    values: dict[str, Any] = {k: v for k, v in vars(args).items() if k in names}
    return cls(**values)


@dataclass(frozen=True)
class StoreOptions:
    """Where status and Secrets live (`--store`, `--context`, `--namespace`)."""

    store: str | None = None
    context: str | None = None
    namespace: str | None = None


@dataclass(frozen=True)
class PolicyOptions:
    """The admin's policy (`--allowed-endpoints`, `--allowed-hosts`,
    `--allow-publish-annotations`)."""

    allowed_endpoints: list[str] | None = None
    allowed_hosts: list[str] | None = None
    allow_publish_annotations: list[str] | None = None


@dataclass(frozen=True)
class ProbeOptions(PolicyOptions):
    """`probe PATH...`"""

    paths: list[str] = dataclasses.field(default_factory=list)
    secrets_dir: str | None = None
    concurrency: int = 32
    output: str = "table"
    name: list[str] | None = None
    send_test_to: str | None = None
    secrets_from_cluster: bool = False
    context: str | None = None


@dataclass(frozen=True)
class ReconcileOptions(PolicyOptions, StoreOptions):
    """`reconcile PATH...`"""

    paths: list[str] = dataclasses.field(default_factory=list)
    secrets_dir: str | None = None
    concurrency: int = 32
    output: str = "table"
    dry_run: bool = False
    no_prune: bool = False
    inventory: str | None = None  # the source's inventory name (default: derived from the paths)
    apply_only: bool = False
    force: bool = False
    lock_timeout: float = 30.0


@dataclass(frozen=True)
class GetOptions(StoreOptions):
    """`get [NAME...]`"""

    names: list[str] = dataclasses.field(default_factory=list)
    output: str = "table"


@dataclass(frozen=True)
class DescribeOptions(StoreOptions):
    """`describe NAME`"""

    name: str = ""
    events: int = 10


@dataclass(frozen=True)
class RequestOptions(StoreOptions):
    """`request NAME`"""

    name: str = ""


@dataclass(frozen=True)
class ControllerOptions(PolicyOptions):
    """`controller`"""

    context: str | None = None
    namespace: str | None = None
    namespaces: list[str] | None = None  # --namespaces a,b (repeatable): exactly these
    namespace_selector: str | None = None  # the Namespaces matching it, as labels change
    workers: int = 4
    interval: str = "10m"
    metrics_addr: str = ":8080"
    health_addr: str = ":8081"
    leader_elect: bool = False
    lease_name: str = "email-reconciler"
    lease_namespace: str | None = None
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    shards: str = "off"
    shard_lease_prefix: str = "email-reconciler-shard"
    shard_selector: str | None = None


@dataclass(frozen=True)
class RelayOptions:
    """`relay`"""

    secret_dir: str = ""
    listen_host: str | None = None
    port: int | None = None
    metrics_port: int | None = None


@dataclass(frozen=True)
class ExplainOptions:
    """`explain [REASON...]`"""

    reasons: list[str] = dataclasses.field(default_factory=list)
