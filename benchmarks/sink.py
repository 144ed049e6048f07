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


def request_rate(url: str, count: int, clients: int) -> float:
    """POSTs per second the sink answers with ``clients`` client processes."""
    from concurrent.futures import ProcessPoolExecutor

    started = time.perf_counter()
    with ProcessPoolExecutor(clients) as pool:
        done = sum(pool.map(_post_loop, [url] * clients, [count // clients] * clients))
    return done / (time.perf_counter() - started)


def _post_loop(url: str, count: int) -> int:
    session = requests.Session()
    body = json.dumps({"eventValue": "x"}).encode()
    headers = {"Content-Type": "application/json", "x-distinct-api-key": "k"}
    ok = 0
    for _ in range(count):
        ok += session.post(url + "/api/v1/analytics/capture/bench", data=body,
                           headers=headers, timeout=10).status_code == 200
    return ok


def concurrent_rate(url: str, count: int, threads: int) -> float:
    """POSTs per second with ``threads`` threads in one process (for a slow sink)."""
    from concurrent.futures import ThreadPoolExecutor

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        done = sum(pool.map(_post_loop, [url] * threads, [count // threads] * threads))
    return done / (time.perf_counter() - started)


__all__: list[Any] = ["AsyncSink", "NginxSink", "concurrent_rate", "request_rate"]
