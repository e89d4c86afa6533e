"""The HTTP side: parse the Kubernetes URL space, call the server, answer errors as Status objects."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from tests.kubeapi.fields import default_manager
from tests.kubeapi.model import DEFAULT_WATCH_SECONDS, JSON, ApiError, RequestRecord, ResourceType
from tests.kubeapi.rbac import PUBLIC_PATHS, Attributes, User, non_resource_forbidden
from tests.kubeapi.selectors import accepts_table

if TYPE_CHECKING:
    from tests.kubeapi.server import KubeAPIServer


class _Handler(BaseHTTPRequestHandler):
    """Parses the Kubernetes URL space and turns ApiError into Status responses."""

    api: KubeAPIServer
    protocol_version = "HTTP/1.1"
    timeout = 120  # a forgotten keep-alive connection must not pin a thread forever
    _request: tuple[str, str, dict[str, str], str, JSON]
    _logged = False

    def setup(self) -> None:
        super().setup()
        # headers and body go out as separate writes; without this, delayed ACKs cost 40 ms each
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.api._store.lock:
            self.api._connections.add(self.connection)

    def finish(self) -> None:
        with self.api._store.lock:
            self.api._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Quiet: the request log is ``KubeAPIServer.requests``."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ----------------------------------------------------------------- plumbing

    def _send_json(self, code: int, body: JSON, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self._log(code)
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        for warning in getattr(self.api._local, "warnings", None) or []:
            self.send_header("Warning", '299 - "' + warning.replace('"', '\\"') + '"')
        self.end_headers()
        self.wfile.write(data)

    def _log(self, status: int) -> None:
        """Record this request; called before the answer goes out, so a client never outruns it."""
        if self._logged:
            return
        self._logged = True
        method, path, query, verb, route = self._request
        record = RequestRecord(
            method,
            path,
            query,
            verb,
            route.get("resource"),
            route.get("subresource"),
            route.get("namespace"),
            route.get("name"),
            status,
            route.get("group", ""),
            self.headers.get("User-Agent", ""),
            self._started,
            time.monotonic(),
        )
        with self.api._store.lock:
            self.api.request_counts[(verb, record.resource)] += 1
            if self.api.keep_request_log:
                self.api.requests.append(record)

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        route = self._route(path)
        verb = self._verb(method, route, query)
        self._request, self._logged = (method, path, query, verb, route), False
        self._started = time.monotonic()
        self.api._local.field_validation = query.get("fieldValidation", "Warn")
        self.api._local.manager = query.get("fieldManager") or default_manager(self.headers.get("User-Agent", ""))
        self.api._local.warnings = []
        try:
            user = self.api._local.user = self.api.authenticate(self.headers.get("Authorization"))
            if route.get("resource") is None:
                if path not in PUBLIC_PATHS and "system:authenticated" not in user.groups:
                    raise non_resource_forbidden(user, path)
                if method != "GET":
                    raise ApiError(405, f"{method} is not allowed on {path}")
                self._send_json(200, self.api.discovery(path))
                return
            self.api.authorize(self._attributes(user, verb, route, query))
            fault = self.api._take_fault(verb, route["resource"])
            if fault is not None and fault.status == "drop":
                self._log(0)
                self.close_connection = True
                return
            if fault is not None:
                raise self._injected(int(fault.status), verb, route)
            status, result = self._serve(method, verb, route, query, body)
            if result is not None:
                self._send_json(status, result)
        except ApiError as error:
            self._send_json(error.code, error.status(), error.headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug in this package: answer 500 as a real server would, with the cause
            if not self._logged:
                self._send_json(500, ApiError(500, f"kubeapi bug: {exc!r}").status())
            raise
        finally:
            self._log(500)  # only if nothing was answered

    @staticmethod
    def _attributes(user: User, verb: str, route: JSON, query: dict[str, str]) -> Attributes:
        name = route.get("name")
        if name is None and verb in ("list", "watch"):  # a single-object list/watch names its object
            selector = query.get("fieldSelector", "")
            if selector.startswith("metadata.name=") and "," not in selector:
                name = selector.removeprefix("metadata.name=")
        return Attributes(
            user, verb, route.get("group", ""), route["resource"], route.get("subresource"), route.get("namespace"),
            name,
        )

    @staticmethod
    def _injected(code: int, verb: str, route: JSON) -> ApiError:
        resource, ns = route["resource"], route.get("namespace")
        group = route.get("group", "")
        where = f' in the namespace "{ns}"' if ns else ""
        user, name = "system:serviceaccount:default:test", route.get("name") or ""
        message = {
            403: f'{resource} is forbidden: User "{user}" cannot {verb} '
            f'resource "{resource}" in API group "{group}"{where}',
            409: f'Operation cannot be fulfilled on {resource} "{name}": the object '
            "has been modified; please apply your changes to the latest version and try again",
            429: "Too many requests, please try again later.",
        }.get(code, f"injected failure {code}")
        headers = {"Retry-After": "1"} if code == 429 else None
        details = {"name": route.get("name") or "", "group": group, "kind": resource}
        if code == 429:
            details["retryAfterSeconds"] = 1
        return ApiError(code, message, details=details, headers=headers)

    def _route(self, path: str) -> JSON:
        """Split a resource path into group/version/namespace/resource/name/subresource."""
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "v1"] and len(parts) > 2:
            group, version, rest = "", "v1", parts[2:]
        elif parts[0] == "apis" and len(parts) > 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return {}
        namespace = None
        namespaced_plurals = {t.plural for t in self.api.types if t.namespaced and t.group == group}
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] in namespaced_plurals:
            namespace, rest = rest[1], rest[2:]
        return {
            "group": group,
            "version": version,
            "namespace": namespace,
            "resource": rest[0],
            "name": rest[1] if len(rest) > 1 else None,
            "subresource": "/".join(rest[2:]) or None,
        }

    @staticmethod
    def _verb(method: str, route: JSON, query: dict[str, str]) -> str:
        named = route.get("name") is not None
        if method == "GET":
            if named:
                return "get"
            return "watch" if query.get("watch") in ("true", "1") else "list"
        return {
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if named else "deletecollection",
        }.get(method, method.lower())

    def _serve(
        self, method: str, verb: str, route: JSON, query: dict[str, str], body: bytes
    ) -> tuple[int, JSON | None]:
        api = self.api
        rtype = api._type_at(route["group"], route["version"], route["resource"])
        version, ns, name, sub = (
            route["version"],
            route["namespace"],
            route["name"],
            route["subresource"],
        )
        if rtype.namespaced and ns is None and verb not in ("list", "watch"):
            raise ApiError(404, "the server could not find the requested resource")
        if not rtype.namespaced and ns is not None:
            raise ApiError(404, "the server could not find the requested resource")
        if sub is not None and not (sub == "status" and (rtype.status_subresource or rtype.plural == "namespaces")):
            raise ApiError(404, "the server could not find the requested resource")
        if verb == "get":
            with api._store.lock:
                obj = api._out(rtype, version, api._current(rtype, ns, name))
            return 200, self._maybe_table(rtype, [obj], query, obj["metadata"]["resourceVersion"])
        if verb == "list":
            return 200, self._list_response(rtype, version, ns, query)
        if verb == "watch":
            self._stream_watch(rtype, version, ns, query)
            return 200, None
        if verb == "create":
            if name is not None:
                raise ApiError(405, "POST is not allowed on a named resource")
            return 201, api._create(rtype, version, ns, self._json(body))
        if verb == "update":
            return 200, api._out(rtype, version, api._replace(rtype, ns, name, self._json(body), sub))
        if verb == "patch":
            code, obj = api._patch(rtype, version, ns, name, sub, self.headers.get("Content-Type", ""), body, query)
            return code, api._out(rtype, version, obj)
        options = self._json(body) if body else {}
        if "propagationPolicy" in query:
            options["propagationPolicy"] = query["propagationPolicy"]
        if verb == "delete":
            gone, deleted = api._delete(rtype, ns, name, options)
            if rtype.custom or not deleted:  # 202: finalizers or foreground deletion keep it for now
                return (200 if deleted else 202), api._out(rtype, version, gone)
            return 200, {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": name,
                    "group": rtype.group,
                    "kind": rtype.plural,
                    "uid": gone["metadata"]["uid"],
                },
            }
        deleted = []
        for obj in api._list(rtype, ns, query):
            with contextlib.suppress(ApiError):  # a cascade may have taken it already
                meta = obj["metadata"]
                deleted.append(api._delete(rtype, meta.get("namespace"), meta["name"], options)[0])
        return 200, self._list_body(rtype, version, deleted, api.resource_version)

    @staticmethod
    def _json(body: bytes) -> JSON:
        try:
            value = json.loads(body)
        except ValueError as exc:
            raise ApiError(400, f"the request body is not JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return value

    def _list_body(self, rtype: ResourceType, version: str, items: list[JSON], rv: str, cont: str = "") -> JSON:
        if not rtype.custom:  # typed lists of built-in kinds carry no kind/apiVersion per item
            items = [{k: v for k, v in o.items() if k not in ("apiVersion", "kind")} for o in items]
        else:
            items = [self.api._out(rtype, version, o) for o in items]
        meta: JSON = {"resourceVersion": rv}
        if cont:
            meta["continue"] = cont
        return {
            "kind": f"{rtype.kind}List",
            "apiVersion": rtype.api_version(version),
            "metadata": meta,
            "items": items,
        }

    def _list_response(self, rtype: ResourceType, version: str, ns: str | None, query: dict[str, str]) -> JSON:
        store = self.api._store
        after: tuple[str, ...] = ()
        with store.lock:
            rv, compacted = self.api.resource_version, store.compacted
        if query.get("continue"):
            try:
                token = json.loads(base64.b64decode(query["continue"]))
                after, rv = tuple(token["start"].split("/", 1)), str(token["rv"])
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ApiError(400, f"continue key is not valid: {exc}") from exc
            if int(rv) <= compacted:
                raise ApiError(
                    410,
                    "The provided continue parameter is too old to display a consistent list result. You can "
                    "start a new list without the continue parameter, or use the continue token in this "
                    "response to retrieve the remainder of the results. Continuing with the provided token "
                    "results in an inconsistent list - objects that were created, modified, or deleted between "
                    "the time the first chunk was returned and now may show up in the list.",
                    "Expired",
                )
        limit = int(query.get("limit") or 0)
        with store.lock:  # only the page is copied: a paged LIST of N objects is O(N) in all, not O(N^2)
            items, more = self.api._list_page(rtype, ns, query, after, limit)
            if not query.get("continue"):
                rv = self.api.resource_version
        cont = ""
        if more:
            last = items[-1]["metadata"]
            start = f"{last.get('namespace', '')}/{last['name']}"
            token = {"v": "meta.k8s.io/v1", "rv": int(rv), "start": start}
            cont = base64.b64encode(json.dumps(token).encode()).decode()
        if accepts_table(self.headers.get("Accept", "")):
            return self._maybe_table(rtype, items, query, rv)
        return self._list_body(rtype, version, items, rv, cont)

    def _maybe_table(self, rtype: ResourceType, items: list[JSON], query: dict[str, str], rv: str) -> JSON:
        if accepts_table(self.headers.get("Accept", "")):
            return self.api._table(rtype, items, rv, query.get("includeObject", "Metadata"))
        return items[0]

    def _stream_watch(self, rtype: ResourceType, version: str, ns: str | None, query: dict[str, str]) -> None:
        timeout = float(query.get("timeoutSeconds") or DEFAULT_WATCH_SECONDS)
        events = self.api._watch_events(rtype, ns, query, time.monotonic() + timeout)
        self._log(200)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        try:
            for event in events:
                if event["type"] != "ERROR":
                    event = {
                        "type": event["type"],
                        "object": self.api._out(rtype, version, event["object"]),
                    }
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            events.close()
