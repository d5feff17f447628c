"""``inferpath serve``: a long-running service on one port (live view, ``/metrics``, the API).

The service is a :class:`~pipeline.runtime.Pipeline` built with ``serve=True`` (it runs until
SIGTERM/Ctrl-C, with the config's sources, possibly none); its live view's HTTP server (the
standard library's ``ThreadingHTTPServer``, :mod:`pipeline.web`) also answers these routes, which
only translate to the Pipeline's own methods (``add_source``, ``remove_source``, ``streams``,
``update``); docs/bench/service.md says why that server and not an ASGI framework:

=========================  ==================================================================
``GET /healthz``           200 while the process runs
``GET /readyz``            200 when every stream that has not ended is ``up``, else 503 and the
                           streams that are not
``GET /api/streams``       200, a JSON list: ``id``, ``uri`` (redacted), ``state``, ``fps``,
                           ``frames_in``, ``frames_out``, ``drops``
``POST /api/streams``      one ``sources[]`` entry as JSON: 201 and the stream; 400 with the
                           config's one-line message; 409 when the id is in use
``GET /api/streams/ID``    200 the stream; 404
``DELETE /api/streams/ID`` 200 its summary once its outputs are closed; 404
``GET /api/config``        200 the running config (credentials redacted)
``PATCH /api/config``      a partial config: 200 and the keys applied (live keys only); 409
                           naming the keys that need a restart; 400 for a bad value
``GET /api/openapi.json``  200, these routes as an OpenAPI 3.1 document (:mod:`pipeline.openapi`)
``GET /api/docs``          200, the same as an HTML page to read
=========================  ==================================================================

With ``cluster.engine: ray`` the same routes run on the Ray driver (:class:`~pipeline.cluster.ClusterRun`):
``POST`` starts the stream on the worker running the fewest streams, ``DELETE`` stops it there,
``PATCH`` is checked and applied on every worker; each stream object also names its ``worker``.

Security: bound to 127.0.0.1 unless ``--host`` says otherwise. On any other address every
``/api`` request needs the live view's token (``Authorization: Bearer <token>``; a read may also
carry ``?token=``), compared in constant time (:func:`hmac.compare_digest`); the probes
(``/healthz``, ``/readyz``) need none. Bodies are capped (:data:`MAX_BODY`); unknown routes are
404; an unexpected error is logged here and answered ``500`` with one line, never a traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from pipeline.config import to_dict
from pipeline.errors import (
    ConfigError,
    InferpathError,
    RestartRequiredError,
    SourceError,
    StreamExistsError,
    UnknownStreamError,
)
from pipeline.runtime.summary import finite
from pipeline.sources import redacted_config
from pipeline.sources.base import redact_text, redact_uri

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # bytes: a sources[] entry or a partial config is far smaller
JSON = "application/json"
_STREAM = re.compile(r"^/api/streams/([^/]+)$")


class ServiceAPI:
    """The routes of a service (see the module doc), over a running ``Pipeline(cfg, serve=True)``.
    ``token``: required on ``/api`` when bound to a non-local address (None: open)."""

    def __init__(self, pipe: Any, token: str | None) -> None:
        self.pipe = pipe
        self.token = token

    @staticmethod
    def routes(path: str) -> bool:
        """Whether ``path`` is the service's (the live view answers the rest)."""
        return path in ("/healthz", "/readyz") or path == "/api" or path.startswith("/api/")

    def handle(self, method: str, target: str, headers: Any, body_stream: Any) -> tuple[int, str, bytes]:
        """One request: ``(status, content type, body)``. Never raises (except on a broken socket)."""
        try:
            url = urlsplit(target)
            path = url.path
            if not self.routes(path):
                return _error(404, "not found")
            query = parse_qs(url.query)
            if path.startswith("/api") and not self._authorized(method, query, headers):
                return _error(401, "this service needs Authorization: Bearer <token> (the token the live "
                                   "view printed at start)")
            body = _read_body(method, headers, body_stream)
            if isinstance(body, tuple):  # an error answer
                return body
            return self._route(method, path, body, query)
        except (BrokenPipeError, ConnectionResetError):
            raise
        except Exception as exc:  # a bug: logged here with its traceback, one line to the client
            log.exception("service: %s %s failed: %s", method, redact_text(target), exc)
            return _error(500, "internal error (the service log has the details)")

    def _authorized(self, method: str, query: dict[str, list[str]], headers: Any) -> bool:
        if not self.token:
            return True
        auth = headers.get("Authorization", "")
        given = auth[7:] if auth.startswith("Bearer ") else ""
        if method == "GET" and not given:
            given = (query.get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), self.token.encode())

    def _route(self, method: str, path: str, body: Any, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        pipe = self.pipe
        try:
            if path == "/healthz":
                return _only(method, "GET") or _json(200, {"status": "ok"})
            if path == "/readyz":
                return _only(method, "GET") or self._ready()
            if path == "/api/streams":
                if method == "GET":
                    return _json(200, pipe.streams())
                if method == "POST":
                    return _json(201, pipe.add_source(body))
                return _error(405, f"{method} is not allowed on /api/streams (GET, POST)")
            if match := _STREAM.match(path):
                sid = unquote(match.group(1))
                if method == "GET":
                    return _json(200, pipe.stream(sid))
                if method == "DELETE":
                    return _json(200, pipe.remove_source(sid).to_dict())
                return _error(405, f"{method} is not allowed on /api/streams/ID (GET, DELETE)")
            if path == "/api/openapi.json":
                return _only(method, "GET") or _json(200, self._openapi())
            if path == "/api/docs":  # its link to the document keeps the reader's token
                return _only(method, "GET") or self._docs((query.get("token") or [""])[0] if self.token else "")
            if path == "/api/config":
                if method == "GET":
                    return _json(200, self._config())
                if method == "PATCH":
                    return _json(200, {"changed": pipe.update(body)})
                return _error(405, f"{method} is not allowed on /api/config (GET, PATCH)")
            return _error(404, "not found")
        except RestartRequiredError as exc:
            return _json(409, {"error": str(exc), "restart_keys": exc.keys})
        except StreamExistsError as exc:
            return _error(409, str(exc))
        except UnknownStreamError as exc:
            return _error(404, str(exc))
        except (ConfigError, SourceError) as exc:
            return _error(400, str(exc))
        except InferpathError as exc:
            return _error(422, str(exc))
        except TimeoutError as exc:
            return _error(504, str(exc))
        except RuntimeError as exc:  # the service is stopping (or not started yet)
            return _error(503, str(exc))

    def _docs(self, token: str) -> tuple[int, str, bytes]:
        from pipeline.openapi import render_html

        return 200, "text/html; charset=utf-8", render_html(self._openapi(), token).encode()

    def _openapi(self) -> dict:
        from pipeline.openapi import openapi_document

        return openapi_document(getattr(self.pipe.plan, "engine", "local"), token=bool(self.token))

    def _ready(self) -> tuple[int, str, bytes]:
        streams = self.pipe.streams()
        not_up = [{"id": s["id"], "state": s["state"]} for s in streams if s["state"] not in ("up", "ended")]
        if not_up:
            return _json(503, {"ready": False, "not_up": not_up})
        return _json(200, {"ready": True, "streams": len(streams)})

    def _config(self) -> dict:
        """The running config: the file's settings, with the streams running now as ``sources``."""
        data = redacted_config(self.pipe.cfg)
        engine = self.pipe.engine
        data["sources"] = [dict(to_dict(s.config), uri=redact_uri(s.config.uri)) for s in list(engine.streams.values())]
        return data


def _read_body(method: str, headers: Any, stream: Any) -> Any:
    """The request's JSON body (None when it has none), or an error answer."""
    if method not in ("POST", "PATCH"):  # the only methods with a body here
        return None
    if headers.get("Transfer-Encoding"):
        return _error(411, "send the body with a Content-Length (no chunked encoding)")
    try:
        length = int(headers.get("Content-Length") or 0)
    except ValueError:
        return _error(400, "Content-Length: not a number")
    if length > MAX_BODY or length < 0:
        return _error(413, f"request body too large ({length} bytes; at most {MAX_BODY})")
    raw = stream.read(length) if length else b""
    if not raw.strip():
        return _error(400, "request body: expected a JSON object, got nothing")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(400, f"request body: not JSON ({str(exc).splitlines()[0][:200]})")


def _only(method: str, allowed: str) -> tuple[int, str, bytes] | None:
    return None if method == allowed else _error(405, f"{method} is not allowed here ({allowed})")


def _json(code: int, data: Any) -> tuple[int, str, bytes]:
    return code, JSON, (json.dumps(finite(data), allow_nan=False) + "\n").encode()


def _error(code: int, message: str) -> tuple[int, str, bytes]:
    return _json(code, {"error": message})


__all__ = ["MAX_BODY", "ServiceAPI"]
