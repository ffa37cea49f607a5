"""``lightningd-py demo``: a simulated LND node, the daemon with every built-in plugin,
a local webhook receiver and a trickle of payments, all on this machine.

The process handles used here (``SimnetProcess``, ``DaemonProcess``) are the same ones
the pytest fixtures in ``lightningd_py.testing`` use; they live here because the demo
runs without pytest installed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import tomli_w

from .cli import hash_tokens, new_tokens, new_webhook_secret
from .config import merge_tables, write_private_file

if TYPE_CHECKING:
    from .simnet.control import SimnetControl

__all__ = [
    "DaemonProcess",
    "NotifyListener",
    "SimnetProcess",
    "WebhookReceiver",
    "daemon_config",
    "free_port",
    "run_demo",
    "wait_for",
    "write_config",
]

T = TypeVar("T")


def free_port(host: str = "127.0.0.1", preferred: int | None = None) -> int:
    """``preferred`` if it can be bound on ``host``, else a free port the kernel picks."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError(f"no free port on {host}")


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    :raises TimeoutError: when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout:g} s")
        time.sleep(interval)


def write_config(path: Path, data: Mapping[str, Any]) -> Path:
    """Write a config file with tomli-w, readable only by its owner (it holds secrets)."""
    return write_private_file(path, tomli_w.dumps(data).encode())


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------- sd_notify


class NotifyListener:
    """A ``NOTIFY_SOCKET`` (abstract unix datagram socket) that records every sd_notify
    field (``"READY=1"``, ``"STATUS=..."``) the daemon sends, in order."""

    def __init__(self) -> None:
        self.address = f"@ldp-notify-{uuid.uuid4().hex}"
        self.fields: list[str] = []
        self._cond = threading.Condition()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + self.address[1:])
        self._sock.settimeout(0.1)
        self._closed = False
        self._thread = threading.Thread(target=self._receive, name="notify-listener", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.fields.extend(f for f in data.decode(errors="replace").split("\n") if f)
                self._cond.notify_all()

    def wait(self, predicate: Callable[[list[str]], bool], timeout: float) -> bool:
        """Wait until ``predicate(fields)`` holds; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.fields), timeout)

    def close(self) -> None:
        self._closed = True
        self._thread.join(1.0)
        self._sock.close()


# ---------------------------------------------------------------- simnet


class SimnetProcess:
    """``python -m lightningd_py.simnet --dir DIR`` as a child process.

    simnet prints one JSON line once it serves (``grpc``, ``control``, ``tls_cert``,
    ``admin_macaroon``, ...); its fields are available as attributes after ``start``.
    """

    def __init__(self, directory: Path, *, args: Sequence[str] = (), env: Mapping[str, str] | None = None):
        self.directory = Path(directory)
        self.args = list(args)
        self.env = dict(env or {})
        self.log_path = self.directory / "simnet.log"
        self.info: dict[str, Any] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self._control: SimnetControl | None = None

    def start(self, timeout: float = 30.0) -> SimnetProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        command = [sys.executable, "-m", "lightningd_py.simnet", "--dir", str(self.directory), *self.args]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        try:
            self.info = wait_for(lambda: self._ready_line(offset), timeout, 0.01)
        except TimeoutError:
            self.stop()
            raise TimeoutError(f"simnet not ready within {timeout:g} s:\n{_tail(self.log_path)}") from None
        self._control = None
        return self

    def _ready_line(self, offset: int) -> dict[str, Any] | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"simnet exited with {self.process.returncode}:\n{_tail(self.log_path)}")
        with self.log_path.open("rb") as log:
            log.seek(offset)
            for line in log:
                if line.startswith(b"{"):
                    try:
                        info = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(info, dict) and "grpc" in info:
                        return info
        return None

    @property
    def grpc(self) -> str:
        """simnet's gRPC ``host:port`` (what ``lnd.host`` points at)."""
        return str(self.info["grpc"])

    @property
    def control_url(self) -> str:
        return str(self.info["control"])

    @property
    def control(self) -> SimnetControl:
        """A blocking ``SimnetControl`` client for this simnet's control API."""
        if self._control is None:
            # Imported here: the simnet package pulls in its whole server (slow to import
            # for every pytest run that loads this module through lightningd_py.testing).
            from .simnet.control import SimnetControl

            self._control = SimnetControl(self.control_url)
        return self._control

    def _path(self, key: str) -> Path:
        return Path(self.info[key])

    @property
    def tls_cert(self) -> Path:
        return self._path("tls_cert")

    @property
    def admin_macaroon(self) -> Path:
        return self._path("admin_macaroon")

    @property
    def invoice_macaroon(self) -> Path:
        return self._path("invoice_macaroon")

    @property
    def readonly_macaroon(self) -> Path:
        return self._path("readonly_macaroon")

    @property
    def lnddir(self) -> Path:
        return Path(self.info.get("lnddir") or self.directory)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit status."""
        proc, self.process = self.process, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def restart(
        self,
        down_seconds: float = 1.0,
        *,
        regenerate_tls: bool = False,
        locked: bool = False,
        wait: bool = True,
    ) -> Any:
        """Restart the simulated LND the way LND restarts: streams end cleanly, the port is
        closed for ``down_seconds``, and the node comes back with the same state (LOCKED
        first when ``locked``). With ``wait`` return once it is back."""
        return self.control.restart(down_seconds, regenerate_tls=regenerate_tls, locked=locked, wait=wait)

    def restart_process(self, timeout: float = 30.0) -> SimnetProcess:
        """Stop the process and start a new one on the same directory and ports (TLS
        certificate and macaroons are kept; the in-memory node state is not)."""
        ports = [
            "--grpc-port",
            self.grpc.rpartition(":")[2],
            "--control-port",
            self.control_url.rpartition(":")[2],
        ]
        self.stop()
        args = self.args
        self.args = [*args, *ports]
        try:
            return self.start(timeout)
        finally:
            self.args = args


# ---------------------------------------------------------------- daemon


def daemon_config(
    simnet: SimnetProcess,
    state_dir: Path,
    *,
    api_listen: str,
    metrics_listen: str,
    token_hashes: Mapping[str, str],
    core: Mapping[str, Any] | None = None,
    lnd: Mapping[str, Any] | None = None,
    plugins: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """A config table pointing at ``simnet`` (admin macaroon), with the HTTP API and
    metrics on the given addresses and one API token per role (``{role: sha256}``);
    ``core``/``lnd``/``plugins`` are deep-merged over it."""
    data: dict[str, Any] = {
        "core": {"state_dir": str(state_dir), "log_format": "json"},
        "lnd": {
            "host": simnet.grpc,
            "tls_cert": str(simnet.tls_cert),
            "macaroon": str(simnet.admin_macaroon),
        },
        "plugins": {
            "http_api": {
                "listen": api_listen,
                "tokens": [{"name": role, "role": role, "sha256": sha} for role, sha in token_hashes.items()],
            },
            "metrics": {"listen": metrics_listen},
        },
    }
    return merge_tables(data, {"core": core or {}, "lnd": lnd or {}, "plugins": plugins or {}})


class DaemonProcess:
    """``lightningd-py run --config PATH`` as a child process with its own NOTIFY_SOCKET.

    ``launcher`` replaces ``python -m lightningd_py.cli`` in the command line.

    :ivar notifications: every sd_notify field received, in order, across restarts.
    """

    def __init__(
        self,
        config_path: Path,
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        api_url: str = "",
        metrics_url: str = "",
        tokens: Mapping[str, str] | None = None,
        state_dir: Path | None = None,
        launcher: Sequence[str] | None = None,
    ) -> None:
        self.config_path = Path(config_path)
        # What runs the CLI; tests wrap it (e.g. to apply a seccomp or prctl first).
        self.launcher = list(launcher or [sys.executable, "-m", "lightningd_py.cli"])
        self.log_path = Path(log_path)
        self.env = dict(env or {})
        self.api_url = api_url
        self.metrics_url = metrics_url
        self.tokens = dict(tokens or {})
        self.state_dir = state_dir
        self.process: subprocess.Popen[bytes] | None = None
        self._listener = NotifyListener()
        self.notifications = self._listener.fields

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def start(self, *, wait_ready: bool = True, timeout: float = 20.0) -> DaemonProcess:
        """Start the daemon; with ``wait_ready`` return once it sent READY=1.

        :raises RuntimeError: the daemon exited first (the message has its log's tail).
        :raises TimeoutError: no READY=1 within ``timeout`` (the daemon is killed).
        """
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env, "NOTIFY_SOCKET": self._listener.address}
        for key in ("WATCHDOG_USEC", "WATCHDOG_PID"):
            if key not in self.env:
                env.pop(key, None)
        mark = len(self.notifications)
        command = [*self.launcher, "run", "--config", str(self.config_path)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        if wait_ready:
            self.wait_notification("READY=1", timeout, after=mark)
        return self

    def wait_notification(self, field: str, timeout: float = 10.0, *, after: int = 0) -> str:
        """Wait for an sd_notify field equal to ``field``, or starting with it when it ends
        with ``=`` (``"STATUS="``), among those received after index ``after``."""
        proc = self.process

        def seen(fields: list[str]) -> bool:
            return any(f == field or (field.endswith("=") and f.startswith(field)) for f in fields[after:])

        deadline = time.monotonic() + timeout
        while not self._listener.wait(seen, 0.05):
            if proc is not None and proc.poll() is not None:
                # The last datagrams may still be in flight.
                if self._listener.wait(seen, 0.2):
                    break
                raise RuntimeError(
                    f"lightningd-py exited with {proc.returncode} before {field}:\n{_tail(self.log_path)}"
                )
            if time.monotonic() >= deadline:
                self.kill9()
                raise TimeoutError(
                    f"no {field} from lightningd-py within {timeout:g} s:\n{_tail(self.log_path)}"
                )
        return next(f for f in self.notifications[after:] if f == field or f.startswith(field))

    def signal(self, sig: int) -> None:
        if self.process is not None:
            self.process.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; the exit status.

        :raises TimeoutError: the daemon did not exit in ``timeout`` (it is then killed).
        """
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise TimeoutError(
                    f"lightningd-py ignored SIGTERM for {timeout:g} s:\n{_tail(self.log_path)}"
                ) from None
        return proc.returncode

    def kill9(self) -> None:
        """SIGKILL: a crash, as far as the daemon's state is concerned."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, *, wait_ready: bool = True, timeout: float = 20.0) -> DaemonProcess:
        """Stop (if running) and start again with the same config and state."""
        self.stop()
        return self.start(wait_ready=wait_ready, timeout=timeout)

    def logs(self) -> str:
        """Everything the daemon wrote to stdout and stderr, across restarts."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
        """Poll ``predicate`` until truthy (see ``wait_for``)."""
        return wait_for(predicate, timeout, interval)

    def close(self) -> None:
        """Stop the daemon (killing it if it hangs) and the notify socket."""
        try:
            self.stop()
        except TimeoutError:
            pass
        finally:
            self._listener.close()


# ---------------------------------------------------------------- the demo

_say_lock = threading.Lock()


def _say(line: str) -> None:
    """One activity line; the receiver's and the activity's threads print concurrently."""
    with _say_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class WebhookReceiver:
    """A local HTTP server that prints each webhook delivery (the demo's "backend")."""

    def __init__(self) -> None:
        self.received: list[str] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    kind = str(json.loads(body).get("type", "?"))
                except ValueError:
                    kind = "?"
                received.append(kind)
                _say(f"  webhook   {kind}  (id {self.headers.get('webhook-id', '?')})")
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the demo prints its own line per delivery

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="webhook-receiver", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _api(url: str, token: str, method: str = "GET", body: Mapping[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def _print_banner(root: Path, simnet: SimnetProcess, daemon: DaemonProcess, started: float) -> None:
    tokens = daemon.tokens
    print(f"  daemon    ready in {time.monotonic() - started:.1f} s (logs: {daemon.log_path})")
    print(f"\n  HTTP API  {daemon.api_url}   (OpenAPI: {daemon.api_url}/v1/openapi.json)")
    print(f"  metrics   {daemon.metrics_url}")
    print(f"  config    {daemon.config_path}")
    print("\n  API tokens:")
    for role, token in tokens.items():
        print(f"    {role:<9} {token}")
    print("\n  Try:")
    print(f"    curl -H 'Authorization: Bearer {tokens['readonly']}' {daemon.api_url}/v1/node")
    print(f"    curl -H 'Authorization: Bearer {tokens['readonly']}' '{daemon.api_url}/v1/invoices?limit=5'")
    print(
        f"    curl -H 'Authorization: Bearer {tokens['invoice']}' -H 'Content-Type: application/json' "
        f'-d \'{{"amount_sat": 2100, "memo": "coffee"}}\' {daemon.api_url}/v1/invoices'
    )
    print(f"    curl -N -H 'Authorization: Bearer {tokens['readonly']}' {daemon.api_url}/v1/events")
    print(f"    curl -s {daemon.metrics_url} | grep '^ldp_'")
    print(
        "\n  Live activity below: an invoice paid every few seconds, a forward now and then. Ctrl-C stops.\n"
    )


def _activity(simnet: SimnetProcess, daemon: DaemonProcess, stop: threading.Event, interval: float) -> None:
    """Create invoices through the API and have simnet pay them; forward now and then."""
    from .simnet.control import SimnetControlError

    rng = random.Random()
    round_ = 0
    while not stop.wait(rng.uniform(0.5 * interval, 1.5 * interval)):
        round_ += 1
        amount = rng.choice((1_000, 2_100, 5_000, 12_345, 50_000))
        try:
            invoice = _api(
                f"{daemon.api_url}/v1/invoices",
                daemon.tokens["invoice"],
                "POST",
                {"amount_sat": amount, "memo": f"demo order #{round_}"},
            )
            simnet.control.settle_invoice(invoice["payment_hash"])
            _say(f"  paid      {amount} sat for '{invoice['memo']}' ({invoice['payment_hash'][:12]}...)")
            if round_ % 3 == 0:
                channels = [c for c in simnet.control.state()["channel_list"] if c["status"] == "open"]
                incoming, outgoing = rng.sample(channels, 2)
                amt = rng.randrange(10_000, 2_000_000)
                fee = 1_000 + amt // 1_000
                simnet.control.forward(incoming["chan_id"], outgoing["chan_id"], amt, fee_msat=fee)
                _say(f"  forward   {amt} msat, earned {fee} msat in fees")
        except (OSError, ValueError, KeyError, SimnetControlError) as exc:
            # The demo keeps going; say what failed (e.g. while LND "restarts").
            _say(f"  activity  failed: {type(exc).__name__}: {exc}")


def run_demo(
    directory: Path | None = None, interval: float = 3.0, *, api_port: int = 8080, metrics_port: int = 9108
) -> int:
    """Run the demo until Ctrl-C or SIGTERM; everything it started is stopped.

    :param directory: where its files go (default: a new temporary directory).
    :param interval: mean seconds between payments.
    :param api_port: the HTTP API's port when free (else, or when 0, any free port).
    :param metrics_port: the same for the metrics endpoint.
    """
    root = Path(directory).absolute() if directory else Path(tempfile.mkdtemp(prefix="lightningd-py-demo-"))
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops like Ctrl-C
    simnet = SimnetProcess(root / "simnet")
    receiver: WebhookReceiver | None = None
    daemon: DaemonProcess | None = None
    stop = threading.Event()
    worker: threading.Thread | None = None
    try:
        print(f"lightningd-py demo in {root}\n")
        simnet.start()
        print(f"  simnet    simulated LND on {simnet.grpc} (control API {simnet.control_url})")
        receiver = WebhookReceiver()
        print(f"  receiver  webhooks to {receiver.url}")
        tokens = new_tokens()
        api = f"127.0.0.1:{free_port(preferred=api_port)}"
        metrics = f"127.0.0.1:{free_port(preferred=metrics_port)}"
        endpoint = {"name": "demo", "url": receiver.url, "events": ["*"], "secret": new_webhook_secret()}
        data = daemon_config(
            simnet,
            root / "state",
            api_listen=api,
            metrics_listen=metrics,
            token_hashes=hash_tokens(tokens),
            core={"log_format": "json"},
            # No exchange-rate lookups: the demo works offline.
            plugins={
                "http_api": {"exchange_rates": {"provider": "none"}},
                "webhooks": {"endpoints": [endpoint]},
            },
        )
        config_path = write_config(root / "config.toml", data)
        daemon = DaemonProcess(
            config_path,
            log_path=root / "daemon.log",
            api_url=f"http://{api}",
            metrics_url=f"http://{metrics}/metrics",
            tokens=tokens,
            state_dir=root / "state",
        )
        started = time.monotonic()
        daemon.start()
        _print_banner(root, simnet, daemon, started)
        worker = threading.Thread(
            target=_activity, args=(simnet, daemon, stop, interval), name="demo-activity", daemon=True
        )
        worker.start()
        while daemon.returncode is None:
            time.sleep(0.5)
        print(f"\nthe daemon exited with {daemon.returncode}; its log: {daemon.log_path}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping...")
        return 0
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"lightningd-py demo: {exc}", file=sys.stderr)
        return 1
    finally:
        stop.set()
        if worker is not None:
            worker.join(5)
        if daemon is not None:
            daemon.close()
        simnet.stop()
        if receiver is not None:
            receiver.close()
        signal.signal(signal.SIGTERM, previous)
        print(f"demo stopped; its files are in {root}")
