"""pydantic's validation report, turned into the config's one-line error.

pydantic reports every problem it met, each with a location made of its own names (a union's
members appear as ``int``, ``literal['auto']`` ...). A user wants one line: the key path as they
wrote it (``sources[0].reconnect.jitter``), what was expected there and what they gave.
:class:`ErrorWords` walks the config classes (their type hints) alongside the raw mapping to say
that. The words for a bound come from the field's ``FieldInfo.description`` (``config._range``
writes them); a rule's words are its ``ValueError`` text (``config._rule``).

Which problem wins when there are several: an unknown key, then a wrong type, a missing key, a bad
value (:data:`_RANK`).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from pydantic import ValidationError
from pydantic.fields import FieldInfo

_BAD_VALUE = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_short", "too_long",
              "string_too_short", "string_too_long", "value_error"}
_UNKNOWN_KEY = {"unexpected_keyword_argument", "invalid_key"}  # invalid_key: a key that is not a string
_RANK = {**dict.fromkeys(_UNKNOWN_KEY, 0), "missing": 2, **dict.fromkeys(_BAD_VALUE, 3)}


def _bare(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _members(tp: Any) -> tuple[Any, ...]:
    """The types of a union, or the type itself."""
    tp = _bare(tp)
    return get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)


def _type_name(tp: Any) -> str:
    tp = _bare(tp)
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


def _expected_value(tp: Any) -> str | None:
    """The words a bound on ``tp`` gives (see ``config._range``), looking inside unions."""
    if get_origin(tp) is Annotated:
        for meta in get_args(tp)[1:]:
            if isinstance(meta, FieldInfo) and meta.description:
                return meta.description
    members = _members(tp)
    if len(members) > 1:
        return next((d for d in map(_expected_value, members) if d), None)
    return None


def _as_held(tp: Any, value: Any) -> Any:
    """``value`` as the config holds it once valid: an integer given for a number is a float."""
    members = [_bare(m) for m in _members(tp)]
    if float in members and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    lists = [m for m in members if get_origin(m) is list]
    if lists and isinstance(value, list):
        return [_as_held(get_args(lists[0])[0], v) for v in value]
    return value


class ErrorWords:
    """One-line errors for the config classes under ``root`` (a dataclass). ``hidden`` names fields
    of ``root`` that are not YAML keys (such as the file the config came from)."""

    def __init__(self, root: type, hidden: frozenset[str] = frozenset()) -> None:
        self.root = root
        self.hidden = hidden
        self._key_cache: dict[type, dict[str, Any]] = {}

    def keys(self, cls: type) -> dict[str, Any]:
        """A config class's keys and their declared types (bounds included)."""
        if cls not in self._key_cache:
            self._key_cache[cls] = {k: v for k, v in get_type_hints(cls, include_extras=True).items()
                                    if not (cls is self.root and k in self.hidden)}
        return self._key_cache[cls]

    def unknown_key(self, path: str, key: object, cls: type) -> str:
        cls = next((m for m in _members(cls) if dataclasses.is_dataclass(m)), cls)  # ``X | None``
        return f"{path}: unknown key {str(key)!r}; expected one of {', '.join(self.keys(cls))}"

    def _locate(self, loc: tuple, data: Any) -> tuple[str, Any, Any]:
        """Follow a pydantic error location through the config classes and the raw mapping: the key
        path as users write it (``sources[0].reconnect.jitter``), the type declared there and the
        value given there."""
        tp, path, value = self.root, "", data
        for key in loc:
            members = _members(tp)
            cls = next((m for m in members if dataclasses.is_dataclass(m)), None)
            seq = next((m for m in members if get_origin(m) is list), None)
            if cls is not None and isinstance(key, str) and key in self.keys(cls):
                tp, path = self.keys(cls)[key], f"{path}.{key}" if path else key
                value = value.get(key) if isinstance(value, dict) else None
            elif seq is not None and isinstance(key, int):
                tp, path = get_args(seq)[0], f"{path}[{key}]"
                value = value[key] if isinstance(value, list) and 0 <= key < len(value) else None
            else:  # an unknown key, a missing one, or pydantic's name for a member of a union
                break
        return path, tp, value

    def one_line(self, exc: ValidationError, data: dict) -> str:
        """pydantic's report as our one line: the key path of the first problem and what was expected.
        A union reports each member's complaint; where one member took the type but not the value
        (``cluster.workers: 0``), the others' type complaints are dropped."""
        errors = [(e, *self._locate(e["loc"][:-1] if e["type"] in _UNKNOWN_KEY | {"missing"} else e["loc"], data))
                  for e in exc.errors(include_url=False)]
        bad_values = {path for e, path, *_ in errors if e["type"] in _BAD_VALUE}
        errors = [item for item in errors if item[1] not in bad_values or item[0]["type"] in _BAD_VALUE]
        err, path, tp, value = min(errors, key=lambda item: _RANK.get(item[0]["type"], 1))
        kind = err["type"]
        if kind in _UNKNOWN_KEY:
            return self.unknown_key(path, err["loc"][-1], _bare(tp))
        if kind == "missing":
            return f"{path}: missing required key {err['loc'][-1]!r}"
        value = _as_held(tp, value) if kind in _BAD_VALUE else value
        if kind == "value_error":
            return f"{path}: expected {err['ctx']['error']}, got {value!r}"
        if kind in _BAD_VALUE and _expected_value(tp):
            return f"{path}: expected {_expected_value(tp)}, got {value!r}"
        return f"{path}: expected {_type_name(tp)}, got {value!r}" + _quote_hint(_type_name(tp), value)


def _quote_hint(expected: str, value: Any) -> str:
    """Where a string was expected and YAML made the unquoted word something else (``off`` is
    false, ``null`` None, ``::`` a mapping, ``1e3`` a number), say to quote it."""
    if "a string" not in expected or isinstance(value, str):
        return ""
    if isinstance(value, bool):
        return " (YAML reads an unquoted yes/no/on/off/true/false as true/false: quote it, e.g. \"off\")"
    if isinstance(value, dict):
        return " (YAML reads an unquoted value with ':' as a mapping: quote it, e.g. \"::\")"
    if value is None or isinstance(value, (int, float)):
        return " (an unquoted YAML word read as that: quote it)"
    return ""

