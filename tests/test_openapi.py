"""The service's OpenAPI document (``GET /api/openapi.json``, :mod:`pipeline.openapi`): a valid
OpenAPI 3.1 document, request schemas that accept and refuse what the config does, and a real
``inferpath serve`` process whose every answer is one the document names, with that schema."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from pipeline.config import build_config
from pipeline.errors import ConfigError
from pipeline.openapi import openapi_document
from tests.conftest import REPO, TREE
from tests.test_service import Service

METHODS = ("get", "post", "patch", "delete", "put")


def _validator(doc: dict, schema: dict) -> Draft202012Validator:
    """A validator for ``schema`` whose ``#/components/...`` references resolve in ``doc``."""
    return Draft202012Validator({**schema, "components": doc["components"]})


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


@pytest.mark.parametrize("engine", ["local", "ray"])
@pytest.mark.parametrize("token", [False, True])
def test_the_document_is_valid_openapi_3_1(engine, token):
    doc = openapi_document(engine, token)
    validate(doc)  # raises on an invalid document
    assert doc["openapi"] == "3.1.0"
    assert doc["paths"]["/healthz"]["get"]["security"] == []  # the probes never need the token
    assert doc["security"] == ([{"bearer": []}, {"token": []}] if token else [{}])


def _as_json(node):
    """A YAML mapping as a client's JSON has it: YAML 1.1 read the key ``on`` as ``true``."""
    if isinstance(node, dict):
        return {("on" if k is True else k): _as_json(v) for k, v in node.items()}
    return [_as_json(v) for v in node] if isinstance(node, list) else node


def test_the_schemas_carry_the_configs_own_notes():
    """A field's meaning is the comment beside it in pipeline/config.py (written once, there)."""
    props = openapi_document()["components"]["schemas"]["SourceConfig"]["properties"]
    assert props["realtime"]["description"] == "play a file at its native rate, as a camera would"
    assert props["weight"]["description"].startswith("this stream's share of inference")
    assert props["weight"]["description"].endswith("(expected: a positive number)")  # pydantic's words kept
    assert props["uri"]["description"] == "a path or URI"  # no comment: the Field's own description


def test_request_schemas_accept_the_shipped_configs_and_refuse_what_the_config_refuses():
    doc = openapi_document()
    source, patch = _validator(doc, _ref("Source")), _validator(doc, _ref("ConfigPatch"))
    assert not list(source.iter_errors(str(TREE))) and list(source.iter_errors(""))  # a URI alone
    assert list(patch.iter_errors({"sources": [{"id": None, "weight": 2}]}))  # an edit names its stream
    for path in sorted((REPO / "configs").glob("*.yaml")):
        data = _as_json(yaml.safe_load(path.read_text()))
        for entry in data.get("sources") or []:
            entry = {"uri": entry} if isinstance(entry, str) else entry
            assert not list(source.iter_errors(entry)), (path.name, entry)
        sections = {k: v for k, v in data.items() if k != "sources"}
        assert not list(patch.iter_errors(sections)), path.name
    for bad_source in ({"uri": str(TREE), "latency_budget_ms": -3}, {"uri": str(TREE), "colour": "red"},
                       {"id": "no-uri"}, {"uri": str(TREE), "transport": "carrier-pigeon"}):
        assert list(source.iter_errors(bad_source)), bad_source
        with pytest.raises(ConfigError):
            build_config({"sources": [bad_source]})
    for bad_patch in ({"model": {"conf_threshold": 1.5}}, {"modle": {}}, {"pipeline": {"latency_budget_ms": "soon"}}):
        assert list(patch.iter_errors(bad_patch)), bad_patch
        with pytest.raises(ConfigError):
            build_config({"sources": [], **bad_patch})


def test_the_readmes_request_bodies_fit_the_document():
    """Every body the README sends with curl (-X POST/PATCH ... -d '{...}') fits its request schema."""
    doc = openapi_document()
    sent = re.findall(r"curl -s -X (POST|PATCH) \S+?(/api/\S+) -d '(\{.*\})'", (REPO / "README.md").read_text())
    assert len(sent) >= 4 and {m for m, _, _ in sent} == {"POST", "PATCH"}
    for method, path, body in sent:
        schema = doc["paths"][path][method.lower()]["requestBody"]["content"]["application/json"]["schema"]
        errors = [e.message for e in _validator(doc, schema).iter_errors(json.loads(body))]
        assert not errors, (method, path, body, errors)


class Contract:
    """Each answer of the service checked against the document: its status is one the document
    names for that path and method, and its JSON body fits that answer's schema."""

    def __init__(self, svc: Service, doc: dict) -> None:
        self.svc = svc
        self.doc = doc
        self.seen: set[tuple[str, str, str]] = set()
        self._templates = [(re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$"), p) for p in doc["paths"]]

    def _template(self, path: str) -> str:
        bare = path.split("?")[0]
        return next(t for rx, t in self._templates if rx.match(bare))

    def __call__(self, method: str, path: str, body=None, raw: bytes | None = None) -> tuple[int, object]:
        code, answer = self.svc.request(method.upper(), path, body, raw=raw)
        template = self._template(path)
        op = self.doc["paths"][template].get(method.lower())
        assert op is not None, f"{method} {template} answered {code} but is not in the document"
        spec = op["responses"].get(str(code))
        assert spec is not None, f"{method} {template}: {code} is not a documented answer ({answer})"
        if "application/json" not in spec["content"]:  # the page: text, no schema to check
            assert isinstance(answer, str) and list(spec["content"]) == ["text/html"], (method, template)
            self.seen.add((template, method.lower(), str(code)))
            return code, answer
        schema = spec["content"]["application/json"]["schema"]
        errors = [e.message for e in _validator(self.doc, schema).iter_errors(answer)]
        assert not errors, f"{method} {template} {code}: {errors[:3]} in {answer}"
        self.seen.add((template, method.lower(), str(code)))
        return code, answer


@pytest.fixture(scope="module")
def contract(tmp_path_factory):
    tmp: Path = tmp_path_factory.mktemp("openapi")
    config = tmp / "service.yaml"
    config.write_text(yaml.safe_dump({"sources": [], "output": {"video": False}, "metrics": {"log_interval_s": 0}}))
    svc = Service(config, tmp / "out")
    try:
        yield Contract(svc, openapi_document())
    finally:
        svc.stop()


def test_every_answer_of_a_real_service_is_documented_with_its_schema(contract):
    call = contract
    assert call("get", "/api/openapi.json")[1] == openapi_document()  # the running service serves this document
    assert call("get", "/healthz") == (200, {"status": "ok"})
    assert call("get", "/readyz")[0] == 200
    assert call("get", "/api/streams") == (200, [])
    live = {"id": "loop", "uri": str(TREE), "realtime": True, "loop": True}
    code, stream = call("post", "/api/streams", live)
    assert code == 201 and stream["id"] == "loop"
    assert call("post", "/api/streams", live)[0] == 409
    assert call("post", "/api/streams", {"id": "x", "uri": str(TREE), "latency_budget_ms": -3})[0] == 400
    assert call("post", "/api/streams", {"id": "gone", "uri": "/no/such.mp4"})[0] == 400
    assert call("post", "/api/streams", raw=b"{not json")[0] == 400
    assert call("post", "/api/streams", raw=b"x" * (70 * 1024))[0] == 413
    code, bare = call("post", "/api/streams", str(TREE))  # a URI alone is a sources[] entry too
    assert code == 201 and call("delete", f"/api/streams/{bare['id']}")[0] == 200
    assert call("patch", "/api/config", {"sources": [{"id": None, "weight": 2}]})[0] == 400
    contract.svc.wait(lambda: contract.svc.stream("loop")["frames_out"] > 0, 30, "the first frame")
    assert call("get", "/api/streams/loop")[1]["state"] == "up"
    assert call("get", "/api/streams/nope")[0] == 404
    assert call("patch", "/api/config", {"model": {"conf_threshold": 0.5}}) == (200, {"changed": ["model.conf_threshold"]})
    code, body = call("patch", "/api/config", {"backend": {"max_batch": 2}})
    assert code == 409 and body["restart_keys"] == ["backend.max_batch"]
    assert call("patch", "/api/config", {"model": {"conf_threshold": 7}})[0] == 400
    assert call("patch", "/api/config", {"sources": [{"id": "loop", "weight": 0.5}]})[0] == 200
    code, config = call("get", "/api/config")
    assert code == 200 and config["model"]["conf_threshold"] == 0.5 and config["sources"][0]["weight"] == 0.5
    code, summary = call("delete", "/api/streams/loop")
    assert code == 200 and summary["frames_in"] == summary["frames_out"] + sum(summary["drops"].values())
    assert call("delete", "/api/streams/loop")[0] == 404


def test_the_docs_page_shows_every_route_and_field(contract):
    """``GET /api/docs``: the document as a page to read, with no script and nothing fetched."""
    from html.parser import HTMLParser

    code, page = contract("get", "/api/docs")
    assert code == 200
    doc = contract.doc
    for path, item in doc["paths"].items():
        for method in item:
            if method != "parameters":
                assert f"<code>{method.upper()} {path}</code>" in page, (method, path)
    for field in doc["components"]["schemas"]["SourceConfig"]["properties"]:
        assert f"<code>{field}</code>" in page
    assert "a number of ms" in page and "one of &quot;tcp&quot;, &quot;udp&quot;" in page  # meanings, choices
    anchors = set(re.findall(r'id="schema-([^"]+)"', page))
    assert set(re.findall(r'href="#schema-([^"]+)"', page)) <= anchors == set(doc["components"]["schemas"])

    class Tags(HTMLParser):
        fetched: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag in ("script", "link", "img", "iframe"):
                self.fetched.append(tag)

    parser = Tags()
    parser.feed(page)
    assert parser.fetched == []


def test_the_paths_and_methods_are_exactly_the_ones_answered(contract):
    """A method the document gives a path is routed there (never 404 or 405); any other is 405."""
    for template, item in contract.doc["paths"].items():
        path = template.replace("{id}", "nope")
        for method in METHODS:
            if method in item:
                body = {} if method in ("post", "patch") else None
                code, _ = contract(method, path, body)
                assert code != 405 and (code != 404 or "{id}" in template), (method, template, code)
            else:
                code, body = contract.svc.request(method.upper(), path, {} if method in ("post", "patch", "put") else None)
                assert code == 405 and "not allowed" in body["error"], (method, template, code, body)
