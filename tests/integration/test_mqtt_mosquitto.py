"""The MQTT ingestor against a real broker (Debian's ``mosquitto``, started here).

* messages on several topics with number, JSON and line-protocol payloads
  become the expected series, values and timestamps;
* the broker is restarted (SIGTERM, persistence on) while a publisher keeps
  sending QoS 1 messages: the ingestor reconnects and resumes, and every
  message the broker acknowledged to the publisher ends up in the store
  (nothing tsagent acknowledged is lost: it acknowledges after the append);
* username/password, and TLS with a CA made here by ``openssl``.

Skipped, with the reason, when ``/usr/sbin/mosquitto`` is absent; ``.ci/run``
installs the Debian package ``mosquitto``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.model import Matcher
from agent.web.app import context_of, make_app
from tests.conftest import free_port, wait_until
from tests.test_remote_write import metric_values

MOSQUITTO = Path("/usr/sbin/mosquitto")
T0 = 1_700_000_000_000

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not MOSQUITTO.exists(),
        reason=f"{MOSQUITTO} not installed (Debian package 'mosquitto'; .ci/run installs it)",
    ),
]


class Broker:
    def __init__(self, tmp: Path, extra: str = "", port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = tmp
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            # as root mosquitto would switch to its own user, who cannot write here
            + ("user root\n" if os.geteuid() == 0 else "")
            + f"persistence true\npersistence_location {tmp}/\n"
            f"log_dest file {tmp}/mosquitto.log\n" + (extra or "allow_anonymous true\n")
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen([str(MOSQUITTO), "-c", str(self.conf)])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise AssertionError(f"mosquitto did not start\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)

    def log(self) -> str:
        path = self.dir / "mosquitto.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    d = tmp_path / "broker"
    d.mkdir()
    b = Broker(d).start()
    yield b
    b.stop()


def publisher(port: int, client_id: str = "test-pub", **tls: Any) -> Any:
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.reconnect_delay_set(1, 2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def config(port: int, rules: list[dict[str, Any]], **extra: Any) -> str:
    section = {
        "enabled": True,
        "broker": f"127.0.0.1:{port}",
        "client_id": "tsagent-test",
        "reconnect_min": "1s",
        "reconnect_max": "2s",
        "rules": rules,
        **extra,
    }
    return json.dumps({"ingest": {"mqtt": section}})


async def series(
    client: Any, name: str
) -> dict[tuple[tuple[str, str], ...], list[tuple[int, float]]]:
    store = context_of(client.server.app).require_store()
    found = await store.select([Matcher.of("__name__", "=~", name)], 0, 2**62)
    return {
        s.labels: list(zip(s.timestamps.tolist(), s.values.tolist(), strict=True)) for s in found
    }


def ingestor(client: Any) -> Any:
    return next(i for i in context_of(client.server.app).ingestors if i.name == "mqtt")


RULES = [
    {"topic": "home/+room/+sensor", "metric": "home_{sensor}", "labels": {"site": "lab"}},
    {
        "topic": "devices/+device/state",
        "payload": "json",
        "fields": {"battery.level": "device_battery_percent", "rssi": "device_rssi_dbm"},
        "timestamp": "ts",
        "timestamp_unit": "ms",
    },
    {"topic": "telegraf/#", "payload": "line", "precision": "ms", "qos": 0},
]


async def test_topics_payloads_and_bad_messages(
    broker: Broker, aiohttp_client: Any, make_config: Any
) -> None:
    cfg, host = make_config(config(broker.port, RULES))
    client = await aiohttp_client(make_app(cfg, host))
    await asyncio.wait_for(ingestor(client).connected.wait(), 15)
    pub = publisher(broker.port)
    try:
        pub.publish("home/kitchen/temp", "21.5", qos=1).wait_for_publish(10)
        pub.publish(
            "devices/d7/state", json.dumps({"battery": {"level": 88}, "rssi": -61, "ts": T0}), qos=1
        )
        pub.publish("telegraf/h1", f"mem,host=h1 used=1024i {T0}", qos=0)
        pub.publish("home/kitchen/temp", "warm", qos=1)  # bad payload: counted, acknowledged
        pub.publish("elsewhere/x", "1", qos=1)  # no rule matches (not even subscribed)
        pub.publish("devices/d8/state", "{not json", qos=1).wait_for_publish(10)

        async def arrived() -> bool:
            return len(await series(client, "home_temp|device_.*|mem_used")) == 4

        await wait_until("four series", arrived, 30, 0.1)
    finally:
        pub.loop_stop()
        pub.disconnect()
    data = await series(client, "home_temp|device_.*|mem_used")
    [(temp_labels, temp)] = [(k, v) for k, v in data.items() if dict(k)["__name__"] == "home_temp"]
    assert dict(temp_labels) == {
        "__name__": "home_temp",
        "room": "kitchen",
        "sensor": "temp",
        "site": "lab",
    }
    assert temp[0][1] == 21.5
    battery = {k: v for k, v in data.items() if dict(k)["__name__"] == "device_battery_percent"}
    assert battery == {(("__name__", "device_battery_percent"), ("device", "d7")): [(T0, 88.0)]}
    rssi = [v for k, v in data.items() if dict(k)["__name__"] == "device_rssi_dbm"]
    assert rssi == [[(T0, -61.0)]]
    mem = [v for k, v in data.items() if dict(k)["__name__"] == "mem_used"]
    assert mem == [[(T0, 1024.0)]]

    async def counted() -> bool:
        m = metric_values(await (await client.get("/metrics")).text())
        return m.get(("tsagent_mqtt_rejected_total", (("reason", "bad_payload"),)), 0) == 2

    await wait_until("two bad payloads counted", counted, 30, 0.1)
    m = metric_values(await (await client.get("/metrics")).text())
    assert m[("tsagent_mqtt_connected", ())] == 1
    assert m[("tsagent_samples_ingested_total", (("source", "mqtt"),))] == 4


async def test_broker_restart_while_publishing_qos1_nothing_lost(
    broker: Broker, aiohttp_client: Any, make_config: Any
) -> None:
    rules = [
        {
            "topic": "meters/+meter",
            "payload": "json",
            "fields": {"v": "meter_reading"},
            "timestamp": "t",
            "timestamp_unit": "ms",
            "qos": 1,
        }
    ]
    cfg, host = make_config(config(broker.port, rules))
    client = await aiohttp_client(make_app(cfg, host))
    ing = ingestor(client)
    await asyncio.wait_for(ing.connected.wait(), 15)
    total = 300
    confirmed: set[int] = set()

    def publish_all() -> None:
        """Publish seq 0..total-1 at QoS 1; keep the ones the broker acknowledged.

        A publish interrupted by the restart is simply sent again after it.
        """
        import paho.mqtt.client as mqtt

        pub = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="meter-pub", clean_session=True
        )
        pub.reconnect_delay_set(1, 1)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        try:
            pending = list(range(total))
            while pending:
                seq = pending.pop(0)
                body = json.dumps({"v": seq, "t": T0 + seq * 1000})
                info = pub.publish("meters/m1", body, qos=1)
                try:
                    info.wait_for_publish(2)
                    published = info.is_published()
                except (RuntimeError, ValueError):  # not connected (the broker is restarting)
                    published = False
                if published:
                    confirmed.add(seq)
                else:
                    pending.append(seq)
                    time.sleep(0.05)
                if seq == total // 2 and broker.proc is not None:
                    broker.stop()  # SIGTERM mid-stream: mosquitto saves its persistence db
                    time.sleep(0.5)
                    broker.start()
        finally:
            pub.loop_stop()
            pub.disconnect()

    await asyncio.get_running_loop().run_in_executor(None, publish_all)
    try:

        async def all_in() -> bool:
            data = await series(client, "meter_reading")
            got = {int(v) for vals in data.values() for _, v in vals}
            return confirmed <= got

        await wait_until("every acknowledged reading in the store", all_in, 60, 0.1)
    finally:
        broker.stop()
    data = await series(client, "meter_reading")
    [(labels, samples)] = data.items()
    assert dict(labels) == {"__name__": "meter_reading", "meter": "m1"}
    assert [t for t, _ in samples] == sorted({T0 + int(v) * 1000 for _, v in samples})
    assert len(confirmed) == total
    m = metric_values(await (await client.get("/metrics")).text())
    assert m[("tsagent_mqtt_connects_total", (("result", "success"),))] >= 2  # it reconnected


async def test_username_password(tmp_path: Path, aiohttp_client: Any, make_config: Any) -> None:
    d = tmp_path / "broker"
    d.mkdir()
    pw = d / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), "agent", "s3cret"], check=True)
    broker = Broker(d, f"allow_anonymous false\npassword_file {pw}\n").start()
    try:
        rules = [{"topic": "t/+k", "metric": "auth_value"}]
        cfg, host = make_config(config(broker.port, rules, username="agent", password="s3cret"))
        client = await aiohttp_client(make_app(cfg, host))
        await asyncio.wait_for(ingestor(client).connected.wait(), 15)
        import paho.mqtt.client as mqtt

        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="auth-pub")
        pub.username_pw_set("agent", "s3cret")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        pub.publish("t/a", "5", qos=1).wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()

        async def arrived() -> bool:
            return bool(await series(client, "auth_value"))

        await wait_until("auth_value", arrived, 30, 0.1)
    finally:
        broker.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
async def test_tls(tmp_path: Path, aiohttp_client: Any, make_config: Any) -> None:
    d = tmp_path / "broker"
    d.mkdir()

    def ssl_cmd(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ssl_cmd(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
    )
    ssl_cmd(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    )
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    ssl_cmd(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    )
    broker = Broker(
        d,
        f"allow_anonymous true\ncafile {d}/ca.crt\n"
        f"certfile {d}/server.crt\nkeyfile {d}/server.key\n",
    ).start()
    try:
        rules = [{"topic": "secure/+k", "metric": "tls_value"}]
        cfg, host = make_config(config(broker.port, rules, tls=True, ca_file=str(d / "ca.crt")))
        client = await aiohttp_client(make_app(cfg, host))
        await asyncio.wait_for(ingestor(client).connected.wait(), 15)
        import paho.mqtt.client as mqtt

        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-pub")
        pub.tls_set(ca_certs=str(d / "ca.crt"))
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        pub.publish("secure/a", "7", qos=1).wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()

        async def arrived() -> bool:
            return bool(await series(client, "tls_value"))

        await wait_until("tls_value", arrived, 30, 0.1)
    finally:
        broker.stop()
