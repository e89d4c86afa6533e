"""What one account costs in the controller's informer caches (issue 26: memory per account).

    .venv/bin/python bench/cache_memory.py [--accounts 300]

The controller in process against tests/kubeapi and two STARTTLS/SMTPS stand-ins (as in
tests/test_controller.py): N accounts created, all Ready with their Secret published; then the
caches are walked: every object reachable from an informer's cache counted once (`sys.getsizeof`,
interned strings and other objects shared with the rest of the process included once), over N.
Also: what a `get()`, `peek()` of each kind costs in CPU (µs), and tracemalloc's view of the
same caches (the allocations made while they filled that are still alive, by file).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import uuid
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]


def deep_size(roots: list[Any], seen: set[int]) -> int:
    """Bytes of every object reachable from `roots` (dicts, lists, tuples, leaves) not in `seen`."""
    total = 0
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif hasattr(obj, "__slots__"):
            stack.extend(getattr(obj, s) for s in obj.__slots__ if hasattr(obj, s))
    return total


def by_field(objs: list[Any]) -> list[tuple[str, int]]:
    """Bytes per field over every object (the object's own dicts under "(shells)")."""
    seen: set[int] = set()
    deep_size([obj.get("metadata") for obj in objs if isinstance(obj, dict)], set())
    out: dict[str, int] = {}
    shells = 0
    for obj in objs:
        seen.add(id(obj))
        shells += sys.getsizeof(obj)
        for field, value in obj.items():
            if field == "metadata" and isinstance(value, dict):
                seen.add(id(value))
                shells += sys.getsizeof(value)
                for sub, v in value.items():
                    out[f"metadata.{sub}"] = out.get(f"metadata.{sub}", 0) + deep_size([sub, v], seen)
            else:
                out[field] = out.get(field, 0) + deep_size([field, value], seen)
    return [("(shells)", shells), *sorted(out.items(), key=lambda kv: -kv[1])]


def by_file(start: Any, end: Any, n: int, detail: int = 0) -> None:
    """What grew while the accounts came up, per account, by the innermost frame of ours that
    allocated it (the in-process API server's and stand-ins' own allocations left out)."""
    import tracemalloc

    ours = [tracemalloc.Filter(True, "*/reconciler/*", all_frames=True),
            tracemalloc.Filter(False, "*/tests/*", all_frames=True)]
    diff = end.filter_traces(ours).compare_to(start.filter_traces(ours), "traceback")
    grown: dict[str, int] = {}
    for d in diff:
        frames = list(d.traceback)  # innermost last
        frame = next((f for f in reversed(frames) if "/reconciler/" in f.filename), frames[-1])
        inner = frames[-1]
        where = (f"{frame.filename.split('/reconciler/')[-1]}:{frame.lineno} "
                 f"({inner.filename.split('/')[-1]}:{inner.lineno})")
        grown[where] = grown.get(where, 0) + d.size_diff
    print(f"tracemalloc, the controller: {sum(grown.values()) / n:.0f} B per account "
          "still allocated, by where in reconciler/:")
    for where, size in sorted(grown.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {size / n:8.0f} B  {where}")
    if detail:
        for d in sorted(diff, key=lambda d: -d.size_diff)[:detail]:
            chain = " < ".join(f"{f.filename.split('/')[-1]}:{f.lineno}"
                               for f in reversed(list(d.traceback))
                               if "/reconciler/" in f.filename or f is d.traceback[-1])
            print(f"  {d.size_diff / n:8.0f} B  {chain}")


def traced(api: Any, ns: str, n: int) -> None:
    """tracemalloc's bytes per object of a cache built from the API server's objects (as a
    watch event decodes them) in each form: as json.loads made it, `slim` (before issue 26's
    packing), and as the informers keep them now."""
    import json
    import tracemalloc

    from reconciler.store.cacheform import Packer, slim
    from reconciler.store.informers import _has_conditions, published_packer, published_secret

    kinds = {"EmailAccount": [f"a{i:05d}" for i in range(n)],
             "published Secret": [f"a{i:05d}-sender" for i in range(n)]}
    for kind, names in kinds.items():
        plural = "emailaccounts" if kind == "EmailAccount" else "secrets"
        texts = [json.dumps(api.get_object(plural, ns, name)) for name in names]
        packer = Packer(sample=_has_conditions) if kind == "EmailAccount" else published_packer()
        cut = (functools.partial(slim, intern=False) if kind == "EmailAccount"
               else published_secret)
        forms: dict[str, Any] = {"decoded": lambda o: o, "slim": slim,
                                 "packed": functools.partial(_pack, packer, cut)}
        sizes = []
        for form, fn in forms.items():
            fn(json.loads(texts[0]))  # the dictionary, interned keys: not counted
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            kept = {i: fn(json.loads(t)) for i, t in enumerate(texts)}
            after = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            sizes.append(f"{form} {(after - before) / n:.0f} B")
            del kept
        print(f"  tracemalloc, a cache of {n} {kind}s, per object: " + ", ".join(sizes))


def _pack(packer: Any, cut: Any, obj: dict[str, Any]) -> bytes:
    packed: bytes = packer.pack(cut(obj))
    return packed


def per_call_us(fn: Any, keys: list[Any], rounds: int = 3) -> float:
    start = time.process_time()
    for _ in range(rounds):
        for key in keys:
            fn(key)
    return (time.process_time() - start) / (rounds * len(keys)) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=300)
    parser.add_argument("--trace", action="store_true",
                        help="also tracemalloc the whole process while the accounts come up")
    parser.add_argument("--detail", type=int, default=0,
                        help="with --trace: the largest N allocation sites, their frames of ours")
    args = parser.parse_args()
    n = args.accounts

    from reconciler.model import status_condition
    from reconciler.run.controller import Controller
    from tests.kube_fixtures import TEST_NAMESPACES, email_account_crd
    from tests.kubeapi import KubeAPIServer
    from tests.manifests_factory import loopback_account, loopback_servers

    ns, label = "shop", {"email.reconciler.io/credential": "true"}
    with loopback_servers() as servers, KubeAPIServer(crds=[email_account_crd()],
                                                      namespaces=TEST_NAMESPACES) as api:
        api.keep_request_log = False
        api.add_object("configmaps", {"metadata": {"name": "ca", "namespace": ns, "labels": label},
                                      "data": {"ca.crt": servers.ca.ca_pem}})
        api.add_object("secrets", {"metadata": {"name": "smtp", "namespace": ns, "labels": label},
                                   "stringData": {"password": "bench-pass-123"}})
        client = api.api_client()
        ctl = Controller(client, namespace=ns, workers=8, interval=3600.0, watch_seconds=300)
        ctl.start()
        try:
            assert ctl.wait_synced(60)
            if args.trace:
                import gc
                import tracemalloc

                tracemalloc.start(30)
                gc.collect()
                start = tracemalloc.take_snapshot()
            for i in range(n):
                name = f"a{i:05d}"
                servers.users[f"{name}@example.com"] = "bench-pass-123"
                # Not all alike (they would pack better than real ones): a display name and
                # a description of their own.
                doc = loopback_account(name, ns, servers.starttls.port, timeout=30,
                                       password_secret="smtp",
                                       display_name=f"Team {uuid.uuid4().hex[:12]}",
                                       description=f"mail of {uuid.uuid4()} ({i})")
                doc["spec"]["probe"] = {"interval": "1h"}
                api.add_object("emailaccounts", doc)
            deadline = time.monotonic() + 60 + n
            while time.monotonic() < deadline:
                accounts = ctl.accounts.items()
                ready = sum(1 for a in accounts if status_condition(
                    a.get("status") or {}, "Ready").get("status") == "True")
                del accounts  # not to be counted
                if ready == n and len(ctl.secrets) >= n + 1:
                    break
                time.sleep(0.5)
            time.sleep(2)  # the last watch events in
            if args.trace:
                gc.collect()
                end = tracemalloc.take_snapshot()
                tracemalloc.stop()
                by_file(start, end, n, args.detail)
            report(ctl, n)
            traced(api, ns, n)
        finally:
            ctl.stop()
            client.close()
    return 0


def report(ctl: Any, n: int) -> None:
    seen: set[int] = set()
    deep_size([ctl], set())  # warm: nothing counted
    parts = ctl.secrets.parts
    accounts = ctl.accounts
    # Count the published Secrets first, then the accounts: each kind's own bytes.
    published = next(p for p in parts if "managed-by" in str(p._list_fn.keywords))
    sizes = {
        "EmailAccount": deep_size(list(accounts._cache.values()), seen),
        "published Secret": deep_size(list(published._cache.values()), seen),
    }
    keys = list(accounts._cache)
    skeys = list(published._cache)
    print(f"{n} accounts, {len(accounts)} cached, {len(published)} published Secrets cached")
    for kind, size in sizes.items():
        print(f"  {kind}: {size / n / 1024:.2f} KiB each (objects reachable from the cache, "
              "each counted once)")
    for kind, cache in (("EmailAccount", accounts._cache), ("published Secret", published._cache)):
        if any(not isinstance(v, dict) for v in cache.values()):
            print(f"  {kind}: packed, {sum(map(len, cache.values())) / n:.0f} bytes of it on "
                  "average")
            continue
        print(f"  {kind}, by field: " + ", ".join(
            f"{field} {size / n:.0f} B" for field, size in by_field(list(cache.values()))))
    print(f"  get() of an EmailAccount: {per_call_us(accounts.get, keys):.1f} µs; "
          f"peek(): {per_call_us(lambda k: accounts.peek(*k), keys):.2f} µs")
    print(f"  peek() of a published Secret: "
          f"{per_call_us(lambda k: published.peek(*k), skeys):.2f} µs")


if __name__ == "__main__":
    raise SystemExit(main())
