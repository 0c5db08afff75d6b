"""MQTT ingestor: subscribes to a broker and turns messages into samples.

Mapping rules (topic patterns with captures; number, JSON or line-protocol
payloads): :mod:`plugins.mqtt.rules`. The client is ``paho-mqtt`` (its
network thread; messages are handed to the event loop), with TLS,
username/password, a client id, QoS 0/1 and reconnection with back-off
(``reconnect_min`` doubling up to ``reconnect_max``); topics are subscribed
again on every connect.

Why paho rather than aiomqtt: the guarantee here needs manual
acknowledgement, which paho offers (``manual_ack_set``) and aiomqtt does not
expose. A QoS 1 message is acknowledged (PUBACK) only after its samples are
durable in the store; with ``clean_session: false`` (the default) the broker
keeps the session across a disconnect, so a message received but not yet
acknowledged when the connection drops is delivered again. Bad messages are
acknowledged too (a retry cannot fix them), counted by reason in
``tsagent_mqtt_rejected_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge

from agent.plugin_api import (
    BackPressure,
    Field,
    Parser,
    ProtocolMetrics,
    Schema,
    SeriesSink,
    StorageError,
    check_duration,
    check_positive,
    hookimpl,
    parse_duration,
)
from plugins.mqtt.rules import PayloadError, Rule, parse_rules

if TYPE_CHECKING:
    from agent.plugin_api import AgentContext

SECTION = "ingest.mqtt"
SOURCE = "mqtt"
log = logging.getLogger("tsagent.mqtt")


def _check_rules(value: object) -> str | None:
    if not isinstance(value, list):
        return "expected a list of rules"
    try:
        parse_rules(value, "rules")
    except ValueError as exc:
        return str(exc)
    return None


def _check_broker(value: object) -> str | None:
    if not isinstance(value, str) or ":" not in value:
        return "expected HOST:PORT, e.g. 127.0.0.1:1883"
    port = value.rpartition(":")[2]
    return None if port.isdigit() and 0 < int(port) < 65536 else "port must be 1-65535"


@hookimpl
def config_schema() -> dict[str, Schema]:
    return {
        SECTION: Schema(
            {
                "enabled": Field(bool, False, "Subscribe to an MQTT broker."),
                "broker": Field(
                    str, "127.0.0.1:1883", "HOST:PORT of the broker.", check=_check_broker
                ),
                "client_id": Field(str, "", "MQTT client id; default tsagent-<hostname>."),
                "clean_session": Field(
                    bool,
                    False,
                    "false: the broker keeps our session (and unacknowledged messages).",
                ),
                "username": Field(str, "", "Username (with password); ${ENV} works."),
                "password": Field(str, "", "Password."),
                "tls": Field(bool, False, "Connect with TLS."),
                "ca_file": Field(str, "", "TLS: CA certificates (PEM); default: the system's."),
                "cert_file": Field(str, "", "TLS: client certificate (PEM)."),
                "key_file": Field(str, "", "TLS: client key (PEM)."),
                "insecure_skip_verify": Field(bool, False, "TLS: do not check the broker's name."),
                "keepalive": Field((str, int), "30s", "MQTT keepalive.", check=check_duration),
                "reconnect_min": Field(
                    (str, int), "1s", "First reconnect delay.", check=check_duration
                ),
                "reconnect_max": Field(
                    (str, int), "30s", "Longest reconnect delay.", check=check_duration
                ),
                "batch_max": Field(
                    int, 1000, "Messages written (and acknowledged) together.", check=check_positive
                ),
                "series_cache_size": Field(
                    int, 100_000, "Series ids remembered.", check=check_positive
                ),
                "rules": Field(
                    list, [], "Mapping rules (see docs/protocols.md).", check=_check_rules
                ),
            },
            help="MQTT subscriber.",
        )
    }


class MqttIngestor:
    """paho's network thread → an asyncio queue → batched durable appends → PUBACKs."""

    name = "mqtt"

    def __init__(self, cfg: dict[str, Any], clock: Any = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        self.rules: list[Rule] = parse_rules(cfg["rules"])
        self.parser = Parser()
        self._queue: asyncio.Queue[tuple[str, bytes, int, int, int]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connected = asyncio.Event()
        self.acked = 0

    async def start(self, ctx: AgentContext) -> None:
        import paho.mqtt.client as mqtt

        self.ctx = ctx
        self._loop = asyncio.get_running_loop()
        self.sink = SeriesSink(ctx, SOURCE, self.cfg["series_cache_size"])
        self.m = ProtocolMetrics(ctx, SOURCE, "MQTT input")
        r = ctx.metrics.registry
        self.m_connected = Gauge(
            "tsagent_mqtt_connected", "1 while connected to the broker.", registry=r
        )
        self.m_connects = Counter(
            "tsagent_mqtt_connects", "Connection attempts by result.", ["result"], registry=r
        )
        cfg = self.cfg
        client_id = cfg["client_id"] or f"tsagent-{socket.gethostname()}"
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=cfg["clean_session"],
            protocol=mqtt.MQTTv311,
        )
        client.manual_ack_set(True)
        if cfg["username"]:
            client.username_pw_set(cfg["username"], cfg["password"] or None)
        if cfg["tls"]:
            client.tls_set(
                ca_certs=cfg["ca_file"] or None,
                certfile=cfg["cert_file"] or None,
                keyfile=cfg["key_file"] or None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            client.tls_insecure_set(cfg["insecure_skip_verify"])
        client.reconnect_delay_set(
            max(1, int(parse_duration(cfg["reconnect_min"]))),
            max(1, int(parse_duration(cfg["reconnect_max"]))),
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        host, _, port = cfg["broker"].rpartition(":")
        self._client = client
        client.connect_async(
            host, int(port), keepalive=max(5, int(parse_duration(cfg["keepalive"])))
        )
        client.loop_start()
        self._task = asyncio.create_task(self._writer(), name="mqtt-writer")

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            await asyncio.get_running_loop().run_in_executor(None, client.loop_stop)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # What is still queued was never acknowledged: the broker sends it again.

    # --- paho's thread ------------------------------------------------------------

    def _on_connect(
        self, client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        ok = not reason.is_failure
        self.m_connects.labels("success" if ok else str(reason)).inc()
        if not ok:
            log.warning("MQTT connect to %s refused: %s", self.cfg["broker"], reason)
            return
        filters: dict[str, int] = {}
        for rule in self.rules:
            filters[rule.pattern.filter] = max(filters.get(rule.pattern.filter, 0), rule.qos)
        if filters:
            client.subscribe(list(filters.items()))
        log.info("MQTT connected to %s, subscribed to %s", self.cfg["broker"], ", ".join(filters))
        self.m_connected.set(1)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.connected.set)

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.m_connected.set(0)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.connected.clear)
        log.info("MQTT disconnected from %s: %s (reconnecting)", self.cfg["broker"], reason)

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        # QoS 1 is bounded by the broker's in-flight window (nothing is acknowledged
        # before it is written); QoS 0 is not, so past the bound it is dropped, counted.
        if msg.qos == 0 and self._queue.qsize() >= 10 * self.cfg["batch_max"]:
            self.m.reject("queue_full")
            return
        item = (msg.topic, bytes(msg.payload), int(msg.mid), int(msg.qos), int(self.clock() * 1000))
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    # --- the event loop -------------------------------------------------------------

    async def _writer(self) -> None:
        limit = self.cfg["batch_max"]
        while True:
            batch = [await self._queue.get()]
            while len(batch) < limit and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._write(batch)

    def _decode(
        self, batch: list[tuple[str, bytes, int, int, int]]
    ) -> list[tuple[Any, int, float]]:
        samples: list[tuple[Any, int, float]] = []
        self.m.received.labels("message").inc(len(batch))
        for topic, payload, _mid, _qos, arrival in batch:
            for rule in self.rules:
                captures = rule.pattern.match(topic)
                if captures is None:
                    continue
                try:
                    got, skipped = rule.samples(captures, payload, arrival, self.parser)
                except PayloadError as exc:
                    self.m.reject(exc.reason)
                    log.debug("MQTT message on %s refused: %s", topic, exc)
                except (ValueError, RecursionError, OverflowError) as exc:
                    # hostile payloads (nesting deeper than the parser allows, ...) must
                    # not stop the writer: refused like any bad payload
                    self.m.reject("bad_payload")
                    log.debug("MQTT message on %s refused: %s", topic, exc)
                else:
                    samples.extend(got)
                    self.m.reject("skipped_value", skipped)
                break
            else:
                self.m.reject("no_rule")
        self.m.received.labels("sample").inc(len(samples))
        return samples

    async def _write(self, batch: list[tuple[str, bytes, int, int, int]]) -> None:
        samples = self._decode(batch)
        delay = 0.1
        while samples:
            try:
                written = await self.sink.write(
                    [s[0] for s in samples],
                    [s[1] for s in samples],
                    [s[2] for s in samples],
                )
            except (BackPressure, StorageError) as exc:
                # Not acknowledged until durable: wait and try again (the broker holds on).
                log.warning("MQTT: store refused a batch (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            for _labels, _ts, reason in written.refused_samples:
                self.m.reject(reason)
            if written.refused_series:
                self.m.reject("series_refused", sum(n for _, _, n in written.refused_series))
            break
        client = self._client
        if client is None:
            return
        for _topic, _payload, mid, qos, _arrival in batch:
            if qos > 0:
                client.ack(mid, qos)
                self.acked += 1


@hookimpl
def register_ingestors(ctx: AgentContext) -> list[MqttIngestor]:
    cfg = ctx.plugin_config(SECTION)
    if not cfg.get("enabled"):
        return []
    return [MqttIngestor(cfg)]
