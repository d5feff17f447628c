"""Webhooks: each message is one JSON ``POST`` to ``url`` (the standard library's HTTP client).

A 2xx answer delivers it; a 5xx, a 408 or 429, a timeout or a refused connection is retried
with backoff; any other 4xx drops it (``rejected``). ``user:pass@`` in the URL becomes a Basic
``Authorization`` header (never part of the request line or a log). ``cooldown_s``: at most one
POST per that many seconds, as Roboflow's webhook sink; messages inside it are dropped and
counted (``cooldown``).
"""

from __future__ import annotations

import base64
import os
import ssl
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlunsplit

from pipeline.events.delivery import Delivery, Rejected, target_url

if TYPE_CHECKING:
    from pipeline.config import EventSinkConfig
    from pipeline.metrics import Metrics

RETRY_STATUS = {408, 425, 429}  # and every 5xx


class WebhookDelivery(Delivery):
    """POSTs each message as ``application/json`` with ``headers``."""

    kind = "webhook"

    def __init__(self, cfg: EventSinkConfig, label: str, source_id: str, metrics: Metrics | None) -> None:
        url = target_url(cfg, label, ("http", "https"))
        netloc = url.hostname
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if url.port:
            netloc += f":{url.port}"
        self._url = urlunsplit((url.scheme, netloc, url.path or "/", url.query, ""))
        self._headers = {"Content-Type": "application/json", "User-Agent": "inferpath", **cfg.headers}
        if url.username is not None:
            token = f"{unquote(url.username)}:{unquote(url.password or '')}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        self._ssl = (ssl.create_default_context(cafile=os.path.expanduser(cfg.ca_file)) if cfg.ca_file and
                     url.scheme == "https" else None)
        self._next_post = 0.0
        super().__init__(cfg, label, source_id, metrics)

    def offer(self, msg: dict) -> None:
        if self.cfg.cooldown_s > 0:
            now = time.monotonic()
            if now < self._next_post:
                self._drop("cooldown")
                return
            self._next_post = now + self.cfg.cooldown_s
        super().offer(msg)

    def send(self, msg: dict, payload: bytes) -> bool:
        request = urllib.request.Request(self._url, data=payload, headers=self._headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.cfg.timeout_s, context=self._ssl) as response:
                response.read()
            return True
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code in RETRY_STATUS:
                self._report_failure(f"HTTP {exc.code} {exc.reason}")
                return False
            raise Rejected(f"HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:  # refused, unreachable, timed out
            self._report_failure(str(getattr(exc, "reason", exc)))
            return False
