"""Helpers for the http_api tests that run the daemon on simnet: a small blocking HTTP
client (standard library), simnet's control API, and an SSE reader."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    @property
    def error(self) -> dict[str, Any]:
        return self.json["error"]


class Api:
    """Calls the daemon's HTTP API with a role's token (or none)."""

    def __init__(self, base: str, tokens: dict[str, str]) -> None:
        self.base = base
        self.tokens = tokens

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        role: str | None = "admin",
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        timeout: float = 30.0,
    ) -> Reply:
        url = urllib.parse.urlsplit(self.base)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
        h = dict(headers or {})
        if role is not None:
            h["Authorization"] = f"Bearer {self.tokens[role]}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=h)
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Reply:
        return self.call("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return self.call("POST", path, body, **kw)

    def invoice(self, role: str = "invoice", **body: Any) -> dict[str, Any]:
        reply = self.post("/v1/invoices", body or {"amount_sat": 1000}, role=role)
        assert reply.status == 201, reply.raw
        return reply.json


def wait_lnd_active(api: Api, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = api.get("/v1/health", role=None)
        if reply.status == 200 and reply.json["lnd"]["active"]:
            return
        time.sleep(0.02)
    raise AssertionError(f"LND not active after {timeout} s: {reply.raw!r}")


def control(simnet: Any, path: str, body: dict[str, Any] | None = None) -> Any:
    """POST to simnet's control API (GET when body is None and path is /state)."""
    url = urllib.parse.urlsplit(simnet.control_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        if body is None:
            conn.request("GET", path)
        else:
            conn.request(
                "POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
            )
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, data
        return json.loads(data)
    finally:
        conn.close()


@dataclass
class SseReader:
    """Reads an SSE stream on a thread: ``events`` (id, type, data) and ``comments``."""

    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    status: int = 0
    _stop: bool = False

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> list[tuple[int, str, dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in list(self.events) if predicate(e)]
            if found:
                return found
            time.sleep(0.02)
        raise AssertionError(f"no matching SSE event in {timeout} s; got {self.events}")


def open_sse(
    api: Api, query: str = "", headers: dict[str, str] | None = None, role: str = "readonly"
) -> SseReader:
    reader = SseReader()
    url = urllib.parse.urlsplit(api.base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    h = {"Authorization": f"Bearer {api.tokens[role]}", **(headers or {})}
    conn.request("GET", f"/v1/events{query}", headers=h)
    resp = conn.getresponse()
    reader.status = resp.status
    ready = threading.Event()

    def run() -> None:
        ready.set()
        fields: dict[str, str] = {}
        try:
            while not reader._stop:
                line = resp.readline()
                if not line:
                    return
                text = line.decode().rstrip("\n")
                if text.startswith(":"):
                    reader.comments.append(text[1:].strip())
                elif not text:
                    if "data" in fields:
                        reader.events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
                    fields = {}
                else:
                    key, _, value = text.partition(":")
                    fields[key] = value.lstrip(" ")
        except (TimeoutError, OSError, ValueError, http.client.HTTPException):
            return

    if resp.status == 200:
        threading.Thread(target=run, daemon=True).start()
        ready.wait(5)
    return reader


@pytest.fixture
def api_of() -> Iterator[Any]:
    """``api_of(daemon) -> Api`` for a running ``ldp_daemon``, once LND is active
    (READY=1 does not wait for LND, which may legitimately stay locked)."""

    def make(daemon: Any, wait_active: bool = True) -> Api:
        api = Api(daemon.api_url, daemon.tokens)
        if wait_active:
            wait_lnd_active(api)
        return api

    yield make


UNLIMITED = {"rate_limits": {"general": "0", "channels": "0", "public": "0"}}


@pytest.fixture
def api_daemon(ldp_daemon_factory: Any) -> Any:
    """A daemon on simnet without rate limits (tests poll a lot); LND active."""
    daemon = ldp_daemon_factory(plugins={"http_api": UNLIMITED})
    return daemon


@pytest.fixture
def simctl() -> Any:
    """``simctl(simnet, path, body=None)``: call simnet's control API."""
    return control


@pytest.fixture
def sse() -> Any:
    """``sse(api, query="", headers=None, role="readonly") -> SseReader``."""
    readers: list[SseReader] = []

    def start(*args: Any, **kw: Any) -> SseReader:
        reader = open_sse(*args, **kw)
        readers.append(reader)
        return reader

    yield start
    for reader in readers:
        reader._stop = True
