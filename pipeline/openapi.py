"""The service's API as an OpenAPI 3.1 document (``GET /api/openapi.json``), for client
generators, API consoles and contract tests.

The request bodies' schemas are the config's own: pydantic writes them from the dataclasses that
validate a YAML deployment (:mod:`pipeline.config`), so ``POST /api/streams`` documents exactly
the ``sources[]`` entry it accepts and ``PATCH /api/config`` the sections a partial config may
hold; they cannot drift from the code. The answers' schemas are written here, beside the routes
(:mod:`pipeline.service`); ``tests/test_openapi.py`` checks every answer of a real service against
them, and that the document's paths and methods are exactly the ones the service answers.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import html
import inspect
import io
import json
import re
import tokenize
from typing import Any
from urllib.parse import urlencode

STATES = ["starting", "up", "reconnecting", "down", "ended"]

_COUNTS = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
_MS = {"type": ["number", "null"], "description": "milliseconds (null: no frame delivered)"}

# The answers (dicts the service builds), by name under components.schemas.
ANSWERS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {"type": "string", "description": "one line: what was wrong and where"}},
    },
    "RestartRequired": {
        "type": "object", "required": ["error", "restart_keys"], "additionalProperties": False,
        "properties": {"error": {"type": "string"},
                       "restart_keys": {"type": "array", "items": {"type": "string"},
                                        "description": "the dotted keys that only a restart applies"}},
    },
    "Health": {
        "type": "object", "required": ["status"], "additionalProperties": False,
        "properties": {"status": {"const": "ok"}},
    },
    "Ready": {
        "oneOf": [
            {"type": "object", "required": ["ready", "streams"], "additionalProperties": False,
             "properties": {"ready": {"const": True}, "streams": {"type": "integer", "minimum": 0}}},
            {"type": "object", "required": ["ready", "not_up"], "additionalProperties": False,
             "properties": {"ready": {"const": False},
                            "not_up": {"type": "array", "items": {
                                "type": "object", "required": ["id", "state"], "additionalProperties": False,
                                "properties": {"id": {"type": "string"}, "state": {"enum": STATES}}}}}},
        ],
    },
    "Stream": {
        "type": "object", "additionalProperties": False,
        "required": ["id", "uri", "state", "live", "fps", "frames_in", "frames_out", "drops"],
        "properties": {
            "id": {"type": "string"},
            "uri": {"type": "string", "description": "credentials redacted"},
            "state": {"enum": STATES},
            "live": {"type": "boolean", "description": "a camera or a file played in real time"},
            "fps": {"type": "number", "minimum": 0, "description": "frames delivered per second, last 5 s"},
            "frames_in": {"type": "integer", "minimum": 0},
            "frames_out": {"type": "integer", "minimum": 0},
            "drops": {**_COUNTS, "description": "frames dropped, by reason (late@<stage>, queue_full@<queue>, ...)"},
            "worker": {"type": ["string", "null"],
                       "description": "cluster.engine ray: the worker that runs it (null while it is removed)"},
        },
    },
    "StreamSummary": {
        "type": "object", "additionalProperties": False,
        "required": ["id", "uri", "live", "frames_in", "frames_out", "claimed_frames", "drops", "events",
                     "detections", "fps", "e2e_ms", "error", "never_connected", "outputs"],
        "properties": {
            "id": {"type": "string"},
            "uri": {"type": "string", "description": "credentials redacted"},
            "live": {"type": "boolean"},
            "frames_in": {"type": "integer", "minimum": 0},
            "frames_out": {"type": "integer", "minimum": 0},
            "claimed_frames": {"type": "integer", "minimum": 0,
                               "description": "a file's frame count as its header claims (0: unknown or live)"},
            "drops": _COUNTS,
            "events": {**_COUNTS, "description": "reconnects, line crossings, ... by name"},
            "detections": {**_COUNTS, "description": "detections delivered, by class name"},
            "fps": {"type": "number", "minimum": 0},
            "e2e_ms": {"type": "object", "required": ["p50", "p95", "p99"], "additionalProperties": False,
                       "properties": {"p50": _MS, "p95": _MS, "p99": _MS}},
            "error": {"type": ["string", "null"]},
            "never_connected": {"type": "boolean"},
            "outputs": {"type": "array", "items": {"type": "string"}, "description": "the files it wrote, closed"},
            "tracking": {"type": "object", "description": "tracking on: tracks and counts"},
            "canary": {"type": "object", "description": "an INT8/FP16 model: the FP32 canary's agreement"},
        },
    },
    "Changed": {
        "type": "object", "required": ["changed"], "additionalProperties": False,
        "properties": {"changed": {"type": "array", "items": {"type": "string"},
                                   "description": "the dotted keys applied (empty: nothing changed)"}},
    },
    "OpenAPI": {"type": "object", "description": "this document"},
}


def _answer(description: str, schema: str | None = None) -> dict:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}
    return out


def _errors(*codes: int) -> dict[str, dict]:
    words = {400: "a bad request: the body, a field or a value (the config's one-line message)",
             401: "the token is missing or wrong (a service bound to a non-local address)",
             404: "no stream with that id",
             405: "a method this path does not take",
             409: "a stream with that id is already running",
             411: "a chunked body (send a Content-Length)",
             413: "a body over 64 KiB",
             422: "the request was understood but cannot be carried out (a model or backend error)",
             500: "a bug: the service log has the details; the service goes on",
             503: "the service is starting or stopping",
             504: "a worker did not answer in time"}
    return {str(c): _answer(words[c], "Error") for c in codes}


def _op(summary: str, ok: tuple[str, str, str | None], *errors: int, body: str | None = None,
        body_text: str = "", api: bool = True, **extra: dict) -> dict:
    code, description, schema = ok
    op: dict[str, Any] = {"summary": summary, "responses": {code: _answer(description, schema)}}
    if body is not None:
        op["requestBody"] = {"required": True, "description": body_text,
                             "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}}
    common = (401, 405, 500) if api else (405, 500)
    op["responses"].update(_errors(*sorted(set(errors) | set(common))))
    for code, answer in extra.items():
        op["responses"][code.lstrip("_")] = answer
    if not api:
        op["security"] = []  # the probes need no token
    return op


def field_notes(cls: type) -> dict[str, str]:
    """What each field of a config dataclass means, from the comments beside it in its source
    (a field's own trailing comment, after the comment lines just above it): the config's
    documentation is written there once, and the API's schemas carry it."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):  # no source (a frozen build): the schemas keep pydantic's words
        return {}
    notes: dict[str, str] = {}
    above: list[str] = []
    for line in lines[1:]:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if indent == 4 and stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        field = re.match(r" {4}(\w+)\s*:", line)
        if field:
            text = " ".join(above + [c for c in (_trailing_comment(stripped),) if c])
            if text:
                notes[field.group(1)] = text
        if indent <= 4 and stripped:
            above = []
    return notes


def _trailing_comment(code: str) -> str:
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code + "\n").readline):
            if tok.type == tokenize.COMMENT:
                return tok.string.lstrip("#").strip()
    except (tokenize.TokenError, SyntaxError):  # a field written over several lines: no comment on its first
        return ""
    return ""


def _describe(schemas: dict[str, dict]) -> None:
    """Each config schema's fields get their meaning (:func:`field_notes`), before pydantic's words
    for what is expected (kept in brackets)."""
    import pipeline.config as config

    for name, schema in schemas.items():
        cls = getattr(config, name, None)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            continue
        for field, note in field_notes(cls).items():
            spec = schema.get("properties", {}).get(field)
            if spec is not None:
                expected = spec.get("description")
                spec["description"] = note + (f" (expected: {expected})" if expected else "")


def _config_schemas() -> dict[str, dict]:
    """The config's JSON schemas (pydantic's, validation mode), hoisted into components."""
    from pydantic import TypeAdapter

    from pipeline.config import Config
    from pipeline.runtime.live import LIVE_KEYS, LIVE_SOURCE_KEYS

    schema = TypeAdapter(Config).json_schema(mode="validation", ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs")
    _describe({**defs, "Config": schema})
    schema["properties"].pop("path", None)  # where the YAML came from: not a key
    patch = copy.deepcopy(schema)
    # sources[] in a partial config edit running streams by id (their latency budget, their weight)
    edit = copy.deepcopy(defs["SourceConfig"])
    edit.update(title="SourceEdit", required=["id"],
                description=f"A running stream's live keys, by its id ({', '.join(LIVE_SOURCE_KEYS)}).")
    edit["properties"]["id"] = {"type": "string", "minLength": 1, "description": "the running stream's id"}
    patch["properties"]["sources"]["items"] = {"$ref": "#/components/schemas/SourceEdit"}
    patch["title"] = "ConfigPatch"
    patch["description"] = ("A partial config: any of the deployment file's sections, each with any of its keys. "
                            f"Live keys ({', '.join(LIVE_KEYS)}, and sources[]'s {', '.join(LIVE_SOURCE_KEYS)} by "
                            "id) apply from the next frame; any other key changed is refused (409) and nothing "
                            "is applied.")
    schema["title"] = "Config"
    schema["description"] = "The running config, credentials redacted; sources are the streams running now."
    source = {"anyOf": [{"$ref": "#/components/schemas/SourceConfig"},
                        {"type": "string", "minLength": 1, "description": "a path or URI alone (an id is made from it)"}],
              "description": "One sources[] entry of a deployment file, or its URI alone."}
    return {**defs, "Source": source, "SourceEdit": edit, "Config": schema, "ConfigPatch": patch}


@functools.cache
def _document(version: str, engine: str, token: bool) -> dict:
    schemas = {**_config_schemas(), **ANSWERS}
    stream_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
                 "description": "the stream's id (URL-encoded)"}
    ray = engine == "ray"
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Inferpath service",
            "version": version,
            "description": ("inferpath serve: add and remove streams, edit the live settings, probe health. "
                            + ("On Ray: POST starts a stream on the worker running the fewest streams, "
                               "DELETE stops it there, PATCH is checked and applied on every worker. "
                               if ray else "")
                            + "Every error is one JSON line ({\"error\": ...}), never a traceback."),
        },
        "paths": {
            "/healthz": {"get": _op("Liveness: 200 while the process runs", ("200", "running", "Health"),
                                    api=False)},
            "/readyz": {"get": _op("Readiness: every stream that has not ended is up",
                                   ("200", "ready", "Ready"), api=False,
                                   _503=_answer("not ready: the streams that are not up", "Ready"))},
            "/api/openapi.json": {"get": _op("This document", ("200", "the OpenAPI document", "OpenAPI"))},
            "/api/docs": {"get": _op("This document as a page to read", ("200", "an HTML page", None),
                                     _200={"description": "an HTML page",
                                           "content": {"text/html": {"schema": {"type": "string"}}}})},
            "/api/streams": {
                "get": _op("The streams running now", ("200", "every stream", None)),
                "post": _op("Start a stream", ("201", "started", "Stream"), 400, 409, 411, 413, 422, 503, 504,
                            body="Source", body_text="one sources[] entry of a deployment file"),
            },
            "/api/streams/{id}": {
                "parameters": [stream_id],
                "get": _op("One stream", ("200", "the stream", "Stream"), 404, 503),
                "delete": _op("Stop a stream; answered once its outputs are closed",
                              ("200", "its summary", "StreamSummary"), 404, 503, 504),
            },
            "/api/config": {
                "get": _op("The running config", ("200", "the config", "Config"), 503),
                "patch": _op("Edit the live settings", ("200", "the keys applied", "Changed"), 400, 411, 413, 503,
                             504, body="ConfigPatch", body_text="a partial config",
                             _409=_answer("a key that needs a restart: nothing applied", "RestartRequired")),
            },
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "the token the live view prints at start"},
                "token": {"type": "apiKey", "in": "query", "name": "token", "description": "the same token, on a GET"},
            },
        },
        # a service bound to a non-local address needs the token on /api; on 127.0.0.1 none
        "security": [{"bearer": []}, {"token": []}] if token else [{}],
    }
    doc["paths"]["/api/streams"]["get"]["responses"]["200"]["content"] = {
        "application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Stream"}}}}
    return doc


def _type_text(schema: dict) -> str:
    """A property's type in a few words: ``integer``, ``string | null``, ``one of tcp, udp``, a schema's name."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    if "anyOf" in schema or "oneOf" in schema:
        return " | ".join(_type_text(s) for s in schema.get("anyOf", schema.get("oneOf")))
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        return " | ".join(kind)
    if kind == "array":
        return f"list of {_type_text(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of {_type_text(schema['additionalProperties'])}"
    return kind


def _limits(schema: dict) -> str:
    words = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<", "minLength": "length >="}
    return ", ".join(f"{w} {schema[k]}" for k, w in words.items() if k in schema)


def render_html(doc: dict, token: str = "") -> str:
    """The document as one page a person reads (``GET /api/docs``): every route with its body
    and answers, then every schema's fields with their types, defaults and what they mean. No
    script and nothing fetched from elsewhere: it reads the same on a machine with no internet.
    ``token``: the reader's (a service on a non-local address), kept on the link to the document."""
    esc = html.escape
    schemas = doc["components"]["schemas"]

    def link(schema: dict | None) -> str:
        if not schema:
            return ""
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            return f'<a href="#schema-{esc(name)}">{esc(name)}</a>'
        if schema.get("type") == "array" and "$ref" in schema.get("items", {}):
            return "list of " + link(schema["items"])
        return esc(_type_text(schema))

    routes = []
    for path, item in doc["paths"].items():
        for method in ("get", "post", "patch", "delete", "put"):
            op = item.get(method)
            if op is None:
                continue
            rows = []
            body = op.get("requestBody")
            if body:
                schema = body["content"]["application/json"]["schema"]
                rows.append(f"<tr><th>body</th><td>{link(schema)}</td><td>{esc(body.get('description', ''))}</td></tr>")
            for code, answer in op["responses"].items():
                content = answer.get("content", {})
                schema = next(iter(content.values()), {}).get("schema") if content else None
                rows.append(f"<tr><th>{esc(code)}</th><td>{link(schema)}</td><td>{esc(answer['description'])}</td></tr>")
            tag = "" if op.get("security") == [] or doc["security"] == [{}] else " <span class=tag>token</span>"
            routes.append(f'<section><h3><code>{method.upper()} {esc(path)}</code>{tag}</h3>'
                          f'<p>{esc(op["summary"])}</p><table>{"".join(rows)}</table></section>')
    parts = []
    for name in sorted(schemas):
        schema = schemas[name]
        variants = schema.get("oneOf", [schema])
        rows = []
        for variant in variants:
            required = set(variant.get("required", []))
            for prop, spec in variant.get("properties", {}).items():
                default = json.dumps(spec["default"]) if "default" in spec else ""
                text = spec.get("description") or _limits(spec)
                rows.append(f"<tr><td><code>{esc(prop)}</code>{' *' if prop in required else ''}</td>"
                            f"<td>{link(spec) if '$ref' in spec or 'items' in spec else esc(_type_text(spec))}</td>"
                            f"<td>{esc(default)}</td><td>{esc(text)}</td></tr>")
        table = (f"<table><tr><th>field</th><th>type</th><th>default</th><th>meaning</th></tr>{''.join(rows)}</table>"
                 if rows else "")
        parts.append(f'<section id="schema-{esc(name)}"><h3>{esc(name)}</h3>'
                     f'<p>{esc(schema.get("description", ""))}</p>{table}</section>')
    info = doc["info"]
    document = "openapi.json" + (f"?{urlencode({'token': token})}" if token else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(info['title'])} API</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 70em; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: .3em 0 1em; }} td, th {{ border: 1px solid #ccc; padding: 2px 8px;
text-align: left; vertical-align: top; }} code {{ font-size: 13px; }} .tag {{ font-size: 11px; background: #eee;
padding: 1px 5px; border-radius: 3px; }} section {{ margin-bottom: 1em; }}
</style></head><body>
<h1>{esc(info['title'])} <small>{esc(info['version'])}</small></h1>
<p>{esc(info['description'])}</p>
<p>The same as an OpenAPI 3.1 document: <a href="{esc(document)}">/api/openapi.json</a>. Fields marked * are required.</p>
<h2>Routes</h2>
{''.join(routes)}
<h2>Schemas</h2>
{''.join(parts)}
</body></html>
"""


def openapi_document(engine: str = "local", token: bool = False) -> dict:
    """The document for a service on ``engine`` (``local`` | ``ray``), with the token required
    on ``/api`` (``token``) or not. A fresh copy: the caller may change it."""
    from pipeline import __version__

    return copy.deepcopy(_document(__version__, engine, token))


__all__ = ["ANSWERS", "STATES", "openapi_document"]
