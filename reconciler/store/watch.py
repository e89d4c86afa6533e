"""List+watch caches (informers) over the official client, for the controller.

An `Informer` lists one kind, then follows a watch from the list's resourceVersion, resuming from
the last resourceVersion it saw when a watch ends, and relisting when the server answers 410 Gone
(the history it would replay is gone). Every change of the cache is handed to one callback as
`(event_type, object, previous)`, with `previous` None for ADDED. A relist turns into the same
callbacks (objects that vanished meanwhile come out as DELETED), so a consumer never sees a gap.

The informers of each kind the controller watches are built in `reconciler.store.informers`.
Also here, because only `reconciler.store` may import `kubernetes`:
`instrument_client` (API request counts by verb and HTTP code, for /metrics) and
`prime_store` (serve a KubeStore's per-run reads from the informer caches instead of LISTs).
"""

from __future__ import annotations

import copy
import functools
import json
import random
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from reconciler.log import get_logger
from reconciler.store import bounded
from reconciler.store.base import Key, object_key
from reconciler.store.cacheform import INTERN_UP_TO, Packer, shared_strings, slim

__all__ = ["INTERN_UP_TO", "Informer", "shared_strings", "slim"]

log = get_logger("reconciler.watch")

#: Objects per LIST page of a relist (kubectl and client-go page by 500).
LIST_PAGE = 500
#: The size bound of one watch event (bounded.py), not of the whole watch: a watch answer lasts
#: `watch_seconds` and is as long as the changes in that time. Bounded as a whole at 64 MiB, the
#: published Secrets' watch (9.5 KB of events per account) failed after about 7,000 accounts
#: created in one watch, twice in a row, and the informer relisted every Secret (issue 26).
EVENT_LIMIT = bounded.DEFAULT_LIMIT
Lookup = Callable[[str, str], "dict[str, Any] | None"]
Handler = Callable[[str, dict[str, Any], dict[str, Any] | None], None]
#: Whether an object belongs in the cache (run/scope.py: its namespace is served); None: all do.
Keep = Callable[[dict[str, Any]], bool]
#: The object as the cache keeps it (`slim`, or more: informers.py digests published Secrets).
Transform = Callable[[dict[str, Any]], dict[str, Any]]
ListFn = Callable[..., Any]


class Informer:
    """A cache of one kind kept current by list+watch in a background thread."""

    def __init__(self, kind: str, list_fn: ListFn, list_args: tuple[Any, ...],
                 handler: Handler, *, watch_seconds: int = 300,
                 retry_delay: float = 1.0, keep: Keep | None = None,
                 transform: Transform | None = None, packer: Packer | None = None,
                 event_limit: int = EVENT_LIMIT) -> None:
        """`keep`: objects it refuses are neither cached nor handed to `handler`; when it comes
        to admit more, `request_relist()` fetches what it refused. `transform`: what of an
        object is cached and handed to `handler` (`slim` unless given; client-go's
        SetTransform). `packer`: the cache holds objects packed (store/cacheform.py), each read
        unpacks a fresh one. `event_limit`: the size bound of one watch event."""
        self.kind = kind
        self.event_limit = event_limit
        self._keep = keep
        self._packer = packer
        self._transform = transform or (
            slim if packer is None else functools.partial(slim, intern=False))
        self._list_fn = list_fn
        self._list_args = list_args
        self._handler = handler
        self.watch_seconds = max(1, int(watch_seconds))
        self.retry_delay = retry_delay
        self._lock = threading.Lock()
        self._cache: dict[Key, Any] = {}  # the objects, or their packed bytes
        self.synced = threading.Event()
        self._stopping = threading.Event()
        self._relist_wanted = threading.Event()
        self._watch: Any = None
        self._thread: threading.Thread | None = None
        self.resource_version: str | None = None
        self.relists = 0  # how often the cache was rebuilt from a LIST (410 Gone, errors)

    # ------------------------------------------------------------------ reading the cache
    def get(self, key: Key) -> dict[str, Any] | None:
        """A copy of the cached object, or None."""
        with self._lock:
            obj = self._cache.get(key)
            if obj is None or self._packer is not None:
                return self._unpacked(obj)
            return copy.deepcopy(obj)

    def peek(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The cached object itself (shared: do not modify), or None; no copy (packed: a
        fresh one)."""
        return self._unpacked(self._cache.get((namespace, name)))

    def _unpacked(self, cached: Any) -> dict[str, Any] | None:
        if cached is None or self._packer is None:
            return cached  # type: ignore[no-any-return]
        return self._packer.unpack(cached)

    def _packed(self, obj: dict[str, Any]) -> Any:
        return obj if self._packer is None else self._packer.pack(obj)

    def __len__(self) -> int:
        return len(self._cache)

    def cached_keys(self) -> list[Key]:
        """Every cached key, sorted (a whole-cache copy: not for a per-event path)."""
        with self._lock:
            return sorted(self._cache)

    def items(self) -> list[dict[str, Any]]:
        """The cached objects (shared, do not modify)."""
        with self._lock:
            cached = list(self._cache.values())
        return [obj for obj in map(self._unpacked, cached) if obj is not None]

    def forget_namespace(self, namespace: str) -> list[Key]:
        """Drop the cached objects of `namespace` without handling them (no longer served: not
        deleted); their keys."""
        with self._lock:
            gone = [key for key in self._cache if key[0] == namespace]
            for key in gone:
                del self._cache[key]
        return gone

    def request_relist(self) -> None:
        """Rebuild the cache from a fresh LIST now (`keep` admits more than before): the open
        watch is cut, and the objects the LIST adds come out as ADDED."""
        self._relist_wanted.set()  # before reading _watch: _follow sets it, then checks this
        w = self._watch
        if w is not None:
            w.stop()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.kind}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop watching (the open watch connection is shut down at once) and join the thread."""
        self._stopping.set()
        w = self._watch
        if w is not None:
            w.stop()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        need_list = True
        failures = 0
        while not self._stopping.is_set():
            try:
                if need_list or self._relist_wanted.is_set():
                    self._relist_wanted.clear()
                    self._relist()
                    need_list = False
                self._follow()
                failures = 0
            except ApiException as exc:
                if self._stopping.is_set():
                    break
                if self._relist_wanted.is_set():
                    continue  # we cut the watch ourselves
                if exc.status == 410:
                    log.info("watch expired; relisting", kind=self.kind)
                    need_list = True
                    continue
                failures += 1
                need_list = need_list or failures > 1
                log.warning("watch failed", kind=self.kind, status=exc.status,
                            error=str(exc.reason))
                self._stopping.wait(self._delay(failures))
            except Exception as exc:  # connection errors: back off, resume, relist if it persists
                if self._stopping.is_set():
                    break
                if self._relist_wanted.is_set():
                    continue  # we cut the watch ourselves
                failures += 1
                need_list = need_list or failures > 1
                log.warning("watch failed", kind=self.kind, error=f"{type(exc).__name__}: {exc}")
                self._stopping.wait(self._delay(failures))

    def _delay(self, failures: int) -> float:
        ceiling = min(30.0, self.retry_delay * 2 ** min(failures - 1, 10))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _list_page(self, token: str | None) -> dict[str, Any]:
        # Bounded like every call (bounded.py): a dripped or endless page is a failed relist.
        with bounded.bounded(bounded.Bounds(60.0)):
            response = self._list_fn(*self._list_args, limit=LIST_PAGE, _continue=token,
                                     _preload_content=False, _request_timeout=(5, 60))
            try:
                body: dict[str, Any] = json.loads(response.data or b"{}")
            finally:
                response.release_conn()
        return body

    def _relist(self) -> None:
        """LIST in pages of LIST_PAGE objects, as client-go's reflector does: one answer holding
        every object of a large cluster (10,000 EmailAccounts) broke the size bound or the
        deadline of one call, and the informer relisted forever. The pages are one snapshot
        (the continue token carries it); an expired token (410) restarts the LIST.

        Each page's objects are packed as they come, so a relist holds the old cache and the new
        one packed, not every object as a dict beside them (a relist of 100,000 Secrets was
        about 1 GB of dicts at its peak, and left the heap that much larger, issue 26); the
        handler gets each changed object unpacked, after the new cache is in place."""
        keep = self._keep
        fresh: dict[Key, Any] = {}
        token: str | None = None
        while True:
            body = self._list_page(token)
            for o in body.get("items") or []:
                if keep is None or keep(o):
                    fresh[object_key(o)] = self._packed(self._transform(o))
            meta = body.get("metadata") or {}
            token = meta.get("continue") or None
            del body
            if token is None:
                break
        with self._lock:
            old = self._cache
            self._cache = fresh
            self.resource_version = meta.get("resourceVersion")
            self.relists += 1
        for key, cached in fresh.items():
            before = old.get(key)
            if before is not None and self._packer is not None and before == cached:
                continue  # the same bytes: the same object, resourceVersion and all
            obj = self._unpacked(cached)
            prev = self._unpacked(before)
            assert obj is not None
            if prev is None:
                self._handler("ADDED", obj, None)
            elif (prev.get("metadata") or {}).get("resourceVersion") != (
                    obj.get("metadata") or {}).get("resourceVersion"):
                self._handler("MODIFIED", obj, prev)
        for key, gone in old.items():
            if key not in fresh:
                prev = self._unpacked(gone)
                self._handler("DELETED", prev, prev)  # type: ignore[arg-type]
        self.synced.set()

    def _follow(self) -> None:
        """One watch request, from the last resourceVersion, until the server ends it."""
        w = _raw_watch()
        self._watch = w
        try:
            if self._stopping.is_set() or self._relist_wanted.is_set():
                return

            def opened(*args: Any, **kwargs: Any) -> Any:
                # A relist or stop asked for while the request was on its way found no answer
                # to cut (Watch.stop() shuts the answer's socket once it has one), and waited
                # for the next event or the watch's end (up to watch_seconds): check again now.
                response = self._list_fn(*args, **kwargs)
                w._resp = response
                if self._stopping.is_set() or self._relist_wanted.is_set():
                    w.stop()
                return response

            stream = w.stream(opened, *self._list_args,
                              resource_version=self.resource_version,
                              timeout_seconds=self.watch_seconds,
                              allow_watch_bookmarks=True,
                              _request_timeout=(5, self.watch_seconds + 10))
            # The server ends a watch after timeout_seconds; one that drips past the deadline
            # or sends an event larger than event_limit ends with an error, and the next watch
            # resumes from resource_version. The size is counted afresh after each event.
            bounds = bounded.Bounds(self.watch_seconds + 10.0, self.event_limit)
            with bounded.bounded(bounds):
                for event in stream:
                    bounds.read = 0
                    self._apply(str(event.get("type")), event.get("raw_object") or {})
                    if self._stopping.is_set() or self._relist_wanted.is_set():
                        w.stop()
        finally:
            self._watch = None
            w._api_client.close()

    def _apply(self, etype: str, obj: dict[str, Any]) -> None:
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if etype == "BOOKMARK":
            self.resource_version = rv or self.resource_version
            return
        key = object_key(obj)
        if self._keep is not None and not self._keep(obj):
            with self._lock:  # not served (any more): no handler, it was not deleted
                self._cache.pop(key, None)
                if rv:
                    self.resource_version = rv
            return
        obj = self._transform(obj)
        packed = self._packed(obj) if etype != "DELETED" else None
        with self._lock:
            cached = self._cache.get(key)
            if etype == "DELETED":
                self._cache.pop(key, None)
            else:
                self._cache[key] = packed
            if rv:
                self.resource_version = rv
        prev = self._unpacked(cached)
        if etype == "DELETED":
            self._handler("DELETED", obj, prev)
        else:
            self._handler("ADDED" if prev is None else "MODIFIED", obj, prev)


_RAW_WATCH: list[Any] = []  # the class, made on first use (kubernetes is imported lazily)


def _raw_watch() -> Any:
    """A `kubernetes.watch.Watch` whose events are decoded once: the official one, given a
    return type ("object" for dicts), decodes each line, encodes its object again and decodes
    that (47 µs for an 8.5 KB published Secret, 10 µs for the decode alone). ERROR events
    (410 Gone) are raised by its stream as before; BOOKMARKs come through as events."""
    if not _RAW_WATCH:
        from kubernetes import watch

        class RawWatch(watch.Watch):  # type: ignore[misc]
            def unmarshal_event(self, data: str, return_type: Any) -> Any:
                if not data or data.isspace():
                    return None
                try:
                    event = json.loads(data)
                except json.JSONDecodeError:
                    return None
                event["raw_object"] = event.get("object")
                return event

        _RAW_WATCH.append(RawWatch)
    return _RAW_WATCH[0](return_type="object")


def request_verb(method: str, url: str) -> str:
    """The Kubernetes verb of a request, from its HTTP method and URL."""
    method = method.upper()
    if method != "GET":
        return {"POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete"}.get(method, method.lower())
    parts = urlsplit(url)
    if "watch=true" in parts.query.lower():
        return "watch"
    segments = [s for s in parts.path.split("/") if s]
    # /api/v1/... or /apis/<group>/<version>/...
    rest = segments[2:] if segments[:1] == ["api"] else segments[3:]
    if len(rest) >= 2 and rest[0] == "namespaces":
        rest = rest[2:] if len(rest) > 2 else rest[:1]
    return "list" if len(rest) <= 1 else "get"


def instrument_client(api_client: Any, record: Callable[[str, str], None]) -> None:
    """Call `record(verb, code)` for every request the client sends (code "error": no answer)."""
    rest = api_client.rest_client
    original = rest.request

    def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        verb = request_verb(method, url)
        try:
            response = original(method, url, *args, **kwargs)
        except Exception as exc:
            status = getattr(exc, "status", None)
            record(verb, str(status) if status else "error")
            raise
        record(verb, str(getattr(response, "status", "error")))
        return response

    rest.request = request


# --------------------------------------------------------------------------- store priming


def prime_store(store: Any, account: Mapping[str, Any], secrets: Lookup,
                configmaps: Lookup | None = None) -> None:
    """Start a KubeStore run over cached objects: the account as last seen, and the informers'
    Secrets and ConfigMaps looked up by (namespace, name), so one reconcile sends no LIST and
    copies only what it reads."""
    store.prime([account], secrets, configmaps)


def stored_account(store: Any, key: Key) -> dict[str, Any] | None:
    """The account as the KubeStore last saw it (after its own writes), or None."""
    cached: dict[str, Any] | None = store.cached_account(key)
    return cached


def newest(*objects: dict[str, Any] | None) -> dict[str, Any] | None:
    """The object with the highest resourceVersion (an informer may lag behind our own write).

    resourceVersions are opaque in general; they compare as integers on every API server we
    target (etcd revisions), and when one does not parse the informer's copy (first) wins.
    """
    best: dict[str, Any] | None = None
    best_rv = -1
    for obj in objects:
        if obj is None:
            continue
        try:
            rv = int((obj.get("metadata") or {}).get("resourceVersion") or -1)
        except ValueError:
            return objects[0] if objects[0] is not None else obj
        if best is None or rv > best_rv:
            best, best_rv = obj, rv
    return best
