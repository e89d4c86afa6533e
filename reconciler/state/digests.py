"""A published Secret's data as the controller's cache keeps it: digests, not values (issue 26).

The controller reads back only a few values of a Secret it published (the relay password, the
signing keystore and its password: `READ_BACK`); every other key it compares, with what it would
publish (`render.secret_diff`) and with the previous version (an edit by someone else). A cached
published Secret therefore keeps, for those keys, a 16-byte digest of the base64 text instead of
the text (a rendered file, a CA certificate: 12 KB a Secret at 1,000 accounts).

A `Digest` is neither `str` nor `bytes`: JSON encoding, base64 decoding or string formatting of
it fails or shows nothing (`repr` is `<digest>`), so no code path can publish it or read it as a
value. It compares equal to the base64 text it was made from, so a comparison of cached data
with desired data (`!=` per key, or whole dicts) needs no special case.

`DigestedData` also carries whether the data still matched the Secret's hash annotation when
it was digested: ours always does (our writes set both together), an edit by someone else
leaves the annotation as it was, and the controller puts the Secret back (`edited`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from reconciler.model import HASH_ANNOTATION
from reconciler.state import relay
from reconciler.state.render import data_hash

#: The keys of a published Secret whose values the controller reads back (account_writer.py:
#: the relay password is kept across runs, and so is a PKCS#12 whose contents did not change).
READ_BACK = frozenset({relay.PASSWORD_KEY, "signing.p12", "SIGNING_P12_PASSWORD"})
DIGEST_SIZE = 16


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"),
                           digest_size=DIGEST_SIZE).digest()


class Digest:
    """Stands for one base64 value of a cached published Secret; equal to that value."""

    __slots__ = ("_d",)
    _d: bytes

    def __init__(self, digest: bytes) -> None:
        object.__setattr__(self, "_d", digest)

    @classmethod
    def of(cls, value: str) -> Digest:
        return cls(_digest(value))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Digest):
            return self._d == other._d
        if isinstance(other, str):
            return self._d == _digest(other)
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        same = self.__eq__(other)
        return same if same is NotImplemented else not same

    __hash__ = None  # type: ignore[assignment]  # equal to a str: not a dict key

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a Digest is immutable")

    def __repr__(self) -> str:
        return "<digest>"  # not even the digest of a credential in a log (DESIGN §8)

    __str__ = __repr__

    def packed(self) -> str:
        """The digest as text, for the informer's packed cache only (`to_json`)."""
        return self._d.hex()

    def __copy__(self) -> Digest:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Digest:
        return self

    def __reduce__(self) -> Any:
        raise TypeError("a Digest is not a value: it is not serialised")


class DigestedData(dict[str, Any]):
    """A published Secret's `data` as cached: `READ_BACK` keys as values, the rest as Digests;
    `intact`: the data matched the Secret's hash annotation."""

    __slots__ = ("intact",)
    intact: bool

    def __deepcopy__(self, memo: dict[int, Any]) -> DigestedData:
        out = DigestedData(self)  # values are immutable: str or Digest
        out.intact = self.intact
        return out


def digested_data(data: Mapping[str, Any], annotated_hash: Any) -> DigestedData:
    """`data` (base64 values) as a cached published Secret keeps it; `annotated_hash` is the
    Secret's hash annotation, checked against the data (render.data_hash)."""
    out = DigestedData({k: v if k in READ_BACK or not isinstance(v, str) else Digest.of(v)
                        for k, v in data.items()})
    out.intact = annotated_hash is not None and data_hash(data) == annotated_hash
    return out


def digested_secret(secret: dict[str, Any]) -> dict[str, Any]:
    """The Secret with its `data` digested (`digested_data`); a Secret without data as it is."""
    data = secret.get("data")
    if not isinstance(data, Mapping):
        return secret
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    return {**secret, "data": digested_data(data, annotations.get(HASH_ANNOTATION))}


def edited(secret: Mapping[str, Any] | None) -> bool:
    """Whether a cached published Secret's data no longer matched its hash annotation when
    cached: someone else edited it (False for a Secret not cached in digested form)."""
    data = (secret or {}).get("data")
    return isinstance(data, DigestedData) and not data.intact


#: The top-level field a packed cached Secret keeps `DigestedData.intact` in (no Kubernetes
#: object has a field of that name).
_INTACT = "~intact"


def to_json(secret: dict[str, Any]) -> dict[str, Any]:
    """A cached published Secret as JSON can hold it (the informer packs it): each Digest as its
    hex text, `intact` beside the data; `from_json` undoes it."""
    data = secret.get("data")
    if not isinstance(data, DigestedData):
        return secret
    return {**secret, _INTACT: data.intact,
            "data": {k: v.packed() if isinstance(v, Digest) else v for k, v in data.items()}}


def from_json(obj: dict[str, Any]) -> dict[str, Any]:
    """The cached published Secret `to_json` made JSON of."""
    if _INTACT not in obj:
        return obj
    intact = obj.pop(_INTACT)
    data = DigestedData({k: v if k in READ_BACK else Digest(bytes.fromhex(v))
                         for k, v in (obj.get("data") or {}).items()})
    data.intact = bool(intact)
    obj["data"] = data
    return obj
