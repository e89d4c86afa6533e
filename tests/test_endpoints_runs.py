# ruff: noqa: F811  (pytest fixtures imported from tests.world are used as arguments)
"""Shared endpoint checks in a whole run (issue 26 item 2): `reconcile` with an injected clock on
the local store (the controller's: tests/test_endpoints_controller.py). Accounts on one endpoint
share its check (the stand-in counts connections); a changed credential or a forced probe is
still a full probe, AUTH included, of each account it concerns and of no other."""

from __future__ import annotations

import datetime as dt

from reconciler.manifest.load import load_paths
from reconciler.model import status_condition as condition
from reconciler.probe.credentials import DirSecretReader
from reconciler.run.reconcile import Reconciler, RunOptions
from reconciler.store.local import LocalStore
from tests.world import World, servers, world  # noqa: F401

T0 = dt.datetime.now(dt.UTC).replace(microsecond=0)  # TLS checks certificates on the wall clock
NAMES = [f"a{i}" for i in range(6)]


def _run(w: World, minutes: float, **options: object) -> None:
    now = T0 + dt.timedelta(minutes=minutes)
    store = LocalStore(w.store)
    report = Reconciler(store, DirSecretReader(w.secrets),
                        RunOptions(clock=lambda: now, **options)  # type: ignore[arg-type]
                        ).run(load_paths([str(w.accounts)]))
    assert report.all_ready, [(a.name, condition(a.status, "Ready")) for a in report.accounts]


def _auths(w: World) -> list[str]:
    return [a.login for a in w.starttls.auth_attempts]


def test_a_run_checks_each_endpoint_once_and_authenticates_only_what_changed(
        world: World) -> None:
    docs = {name: world.account(name) for name in NAMES}  # interval 10m, authInterval 24h
    _run(world, 0)  # new accounts: a full probe each
    assert world.starttls.connections == 6 and len(_auths(world)) == 6

    world.users["a2@example.com"] = "n3w-p@ss"  # a2's credential changes
    world.secret("a2-smtp", "password", "n3w-p@ss")
    _run(world, 1)  # a2 alone: its own full session (the others are not due)
    assert world.starttls.connections == 7
    assert _auths(world)[6:] == ["a2@example.com"]
    assert world.published_data("a2-sender")["SMTP_PASSWORD"] == "n3w-p@ss"

    docs["a4"]["metadata"]["annotations"] = {"email.reconciler.io/requested-at": "now please"}
    world.write(docs["a4"])
    _run(world, 2)  # a probe requested for a4: a4 alone, AUTH included
    assert world.starttls.connections == 8
    assert _auths(world)[7:] == ["a4@example.com"]

    _run(world, 14)  # all due on the clock (10 min +-10 %), none needs AUTH: one session for six
    assert world.starttls.connections == 9 and len(_auths(world)) == 8
    assert all(world.status(n)["tlsVersion"].startswith("TLSv1.") for n in NAMES)

    _run(world, 15, force=True)  # --force: a full probe of every account, AUTH included
    assert world.starttls.connections == 15
    assert sorted(_auths(world)[8:]) == sorted(f"{n}@example.com" for n in NAMES)
