"""Sinks standing in for Distinct in the benchmarks.

- ``NginxSink``: Debian's nginx answering every POST with Distinct's envelope (the
  fast sink; nothing in Python).
- ``AsyncSink``: an asyncio HTTP/1.1 keep-alive server in its own process that
  answers after ``latency`` seconds and records (time, eventValue) of each POST, for
  the 50 ms sink and the end-to-end latency run.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from forwarder.redis_server import free_port

ENVELOPE = b'{"statusCode":200,"message":"Analytics captured successfully.","data":null}'


class NginxSink:
    def __init__(self) -> None:
        self.binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(self.binary).exists():
            raise RuntimeError("nginx not found: apt-get install nginx-light")
        self.port = free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="fwd-nginx-")
        conf = Path(self.dir.name) / "nginx.conf"
        conf.write_text(f"""
worker_processes 1;
pid {self.dir.name}/nginx.pid;
error_log {self.dir.name}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {self.dir.name};
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{self.port};
    location / {{
      default_type application/json;
      return 200 '{ENVELOPE.decode()}';
    }}
  }}
}}
""")
        self.process = subprocess.Popen([self.binary, "-c", str(conf), "-p", self.dir.name,
                                         "-g", "daemon off;"])
        _wait_http(self.url)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.dir.cleanup()


def _wait_http(url: str) -> None:
    for _ in range(200):
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answers on {url}")


async def _serve(port: int, latency: float, record_path: str) -> None:
    records: list[tuple[float, str]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                if head.startswith(b"GET /_dump"):
                    Path(record_path).write_text(json.dumps(records))
                    payload = b'{"ok":true}'
                elif head.startswith(b"GET /_count"):
                    payload = json.dumps({"count": len(records)}).encode()
                else:
                    if latency:
                        await asyncio.sleep(latency)
                    try:
                        value = json.loads(body).get("eventValue", "")
                    except ValueError:
                        value = ""
                    records.append((time.time(), value))
                    payload = ENVELOPE
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n"
                             + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def _run(port: int, latency: float, record_path: str) -> None:
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_serve(port, latency, record_path))


class AsyncSink:
    def __init__(self, latency: float = 0.0):
        self.port = free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="fwd-sink-")
        self.record_path = os.path.join(self.dir.name, "records.json")
        self.process = multiprocessing.get_context("spawn").Process(
            target=_run, args=(self.port, latency, self.record_path), daemon=True)
        self.process.start()
        _wait_http(self.url + "/_count")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self) -> int:
        return int(requests.get(self.url + "/_count", timeout=5).json()["count"])

    def records(self) -> list[tuple[float, str]]:
        requests.get(self.url + "/_dump", timeout=30)
        return [tuple(r) for r in json.loads(Path(self.record_path).read_text())]  # type: ignore[misc]

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(10)
        self.dir.cleanup()


async def _async_posts(port: int, count: int, connections: int) -> int:
    body = b'{"eventValue":"x"}'
    request = (b"POST /api/v1/analytics/capture/bench HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Content-Type: application/json\r\nx-distinct-api-key: k\r\n"
               b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    left = [count]

    async def one_connection() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        ok = 0
        while left[0] > 0:
            left[0] -= 1
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            await reader.readexactly(length)
            ok += head.startswith(b"HTTP/1.1 200")
        writer.close()
        return ok

    return sum(await asyncio.gather(*(one_connection() for _ in range(connections))))


def _async_rate_child(port: int, count: int, connections: int) -> float:
    started = time.perf_counter()
    done = asyncio.run(_async_posts(port, count, connections))
    return done / (time.perf_counter() - started)


def async_rate(url: str, count: int, connections: int) -> float:
    """POSTs per second a sink answers to a lean asyncio client in its own process.

    Raw HTTP/1.1 on keep-alive connections, so the client costs far less per
    request than the sink: the figure is the sink's capacity, not the client's.
    """
    from concurrent.futures import ProcessPoolExecutor

    port = int(url.rsplit(":", 1)[1])
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_async_rate_child, port, count, connections).result()


__all__: list[Any] = ["AsyncSink", "NginxSink", "async_rate"]
