"""MQTT through paho-mqtt 2.x: ``mqtt://[user:pass@]host[:1883]``, ``mqtts://`` for TLS (8883).

paho's own network thread keeps the connection: it connects in the background, reconnects
with backoff (``initial_backoff_s`` .. ``max_backoff_s``) and re-sends a QoS 1/2 message that
was in flight when the connection dropped. The delivery thread publishes one message at a time
and waits (``timeout_s`` at most) for its acknowledgement; a message not acknowledged yet is
waited on again, never published twice by us. A broker that stops answering is dropped by
paho after 1.5 x ``keepalive_s`` of silence, and reconnected.
"""

from __future__ import annotations

import os
import ssl
import threading
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from pipeline.errors import ConfigError
from pipeline.events.delivery import Delivery, target_url

if TYPE_CHECKING:
    from pipeline.config import EventSinkConfig
    from pipeline.metrics import Metrics

INSTALL_HINT = "output.events: type mqtt needs paho-mqtt 2.x (a dependency of inferpath): pip install 'paho-mqtt>=2,<3'"


def _import_paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return mqtt


class MqttDelivery(Delivery):
    """Publishes each message to ``topic`` (``{source}``, ``{type}`` filled in) at ``qos``."""

    kind = "mqtt"

    def __init__(self, cfg: EventSinkConfig, label: str, source_id: str, metrics: Metrics | None) -> None:
        url = target_url(cfg, label, ("mqtt", "mqtts"))
        self._mqtt = mqtt = _import_paho()
        self._host, self._port = url.hostname, url.port or (8883 if url.scheme == "mqtts" else 1883)
        self._connected = threading.Event()
        self._inflight: tuple[dict, Any] | None = None
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"inferpath-{source_id}-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv311)
        if url.username is not None:
            client.username_pw_set(unquote(url.username), unquote(url.password) if url.password is not None else None)
        if url.scheme == "mqtts":
            client.tls_set(ca_certs=os.path.expanduser(cfg.ca_file) if cfg.ca_file else None,
                           cert_reqs=ssl.CERT_REQUIRED)
        client.reconnect_delay_set(max(1, round(cfg.initial_backoff_s)), max(1, round(cfg.max_backoff_s)))
        client.connect_timeout = cfg.timeout_s
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self._client = client
        super().__init__(cfg, label, source_id, metrics)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._report_failure(f"broker refused the connection: {reason_code}")
            return
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if not self._closing:
            self._report_failure(f"connection lost ({reason_code})")

    def open_transport(self) -> None:
        # In the background: a broker that is down at the start is retried like a lost one.
        self._client.connect_async(self._host, self._port, keepalive=self.cfg.keepalive_s)
        self._client.loop_start()

    def send(self, msg: dict, payload: bytes) -> bool:
        info = self._inflight[1] if self._inflight is not None and self._inflight[0] is msg else None
        if info is None:
            if not self._connected.wait(self.cfg.timeout_s):
                self._report_failure(f"not connected to {self._host}:{self._port}")
                return False
            topic = self.cfg.topic.format_map({"source": self.source_id, "type": msg.get("type", "")})
            info = self._client.publish(topic, payload, qos=self.cfg.qos, retain=self.cfg.retain)
            if info.rc != self._mqtt.MQTT_ERR_SUCCESS:  # the connection dropped just now: sent again later
                self._report_failure(f"publish failed: {self._mqtt.error_string(info.rc)}")
                return False
            if self.cfg.qos == 0:
                return True
            self._inflight = (msg, info)
        info.wait_for_publish(self.cfg.timeout_s)  # paho re-sends it after a reconnect: we only wait
        if info.is_published():
            self._inflight = None
            return True
        self._report_failure(f"no acknowledgement from {self._host}:{self._port} in {self.cfg.timeout_s:g} s")
        return False

    def close_transport(self) -> None:
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
