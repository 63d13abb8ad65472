"""How requests travel: TLS verified (or, when asked, not), connections reused without keys, TLS
sessions resumed on new connections, HTTP/2 multiplexing over few connections, a proxy, client certificates. Debian's
nginx on 127.0.0.1 with certificates openssl makes for this test module."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import ENGINE, ledger_rows, status_counts

from engine.delivery.transport import TLS_WARMUP
from engine.mock.process import MockProcess

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from common import ECHO_MODULE, answer_after, make_certificates, start_nginx  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")) or not shutil.which("openssl"),
    reason="nginx or openssl is not installed (.ci/run installs both with apt-get)",
)


def _nginx_has_http2() -> bool:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True)
    return "http_v2_module" in built.stderr + built.stdout


needs_http2 = pytest.mark.skipif(
    pytestmark.args[0] or not _nginx_has_http2(), reason="this nginx was built without HTTP/2 (http_v2_module)"
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(str(tmp_path_factory.mktemp("certs")))


class Nginx:
    """nginx over TLS logging each request's connection number, session reuse and protocol."""

    def __init__(self, directory: Path, certs, **options):
        self.log = directory / "access.log"
        extra = f"access_log {self.log} conns;\n" + options.pop("extra", "")
        self.process, self.port = start_nginx(str(directory), extra=extra, certs=certs, **options)

    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/v1/customers/{{id}}/charges"

    def requests(self) -> list[tuple[str, str, str, str]]:
        """(connection, session reused "r" or ".", protocol, status) per logged request."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [tuple(line.split()) for line in lines]  # type: ignore[misc]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def nginx(tmp_path, certs):
    started: list[Nginx] = []

    def start(**options) -> Nginx:
        directory = tmp_path / f"nginx{len(started)}"
        directory.mkdir()
        started.append(Nginx(directory, certs, **options))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def bill(csv, url, db, run_id, *args, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*ENGINE, "bill", str(csv), "--url", url, "--db", db, "--run-id", run_id, "--quiet", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def test_tls_is_verified_against_the_ca_bundle_unless_insecure(customers, db, certs, nginx):
    server = nginx()
    rows = customers(20)
    trusted = bill(rows, server.url(), db, "trusted", "--ca-bundle", certs.ca)
    assert trusted.returncode == 0, trusted.stderr
    unknown_ca = bill(rows, server.url(), db, "unknown-ca")
    assert unknown_ca.returncode == 1 and "curl 60" in unknown_ca.stdout + unknown_ca.stderr
    assert status_counts(db, "unknown-ca") == {"failed": 20}  # one attempt each: retrying cannot help
    insecure = bill(rows, server.url(), db, "insecure", "--insecure")
    assert insecure.returncode == 0 and "insecure" in (insecure.stdout + insecure.stderr).lower()


def test_a_rerun_from_another_directory_finds_a_relative_ca_bundle(customers, db, certs, nginx, tmp_path):
    """Certificate paths are stored with the run as absolute paths, whatever directory billed."""
    server, rows = nginx(), customers(20)
    ca = Path(certs.ca)
    no_way = bill(rows, server.url(), db, "moved", "--ca-bundle", ca.name, "--proxy", "http://127.0.0.1:1",
                  "--max-attempts", 1, cwd=ca.parent)  # fmt: skip
    assert no_way.returncode == 1 and status_counts(db, "moved") == {"failed": 20}, no_way.stderr  # proxy down
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    rerun = subprocess.run(
        [*ENGINE, "rerun", "moved", "--db", db, "--no-proxy", "--quiet"],
        capture_output=True, text=True, timeout=120, cwd=elsewhere,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert status_counts(db, "moved") == {"succeeded": 20}


@pytest.mark.parametrize("keys", ["--idempotency-header", "--no-idempotency"])
def test_connections_are_reused_and_all_but_the_first_resume_its_tls_session(customers, db, certs, nginx, keys):
    """With keys or without (libcurl cannot send a request again on its own: the body is read
    once), connections are reused: a TLS handshake per connection, not per request. A worker's
    first connection does the one full handshake; the rest of its window resumes its session."""
    server, rows = nginx(), 300
    args = ["--no-idempotency"] if keys == "--no-idempotency" else []
    done = bill(
        customers(rows), server.url(), db, "reuse", *args, "--ca-bundle", certs.ca,
        "--workers", 2, "--concurrency", 10,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    logged = server.requests()
    connections = {connection: reused for connection, reused, *_ in logged}
    assert len(logged) == rows and len(connections) <= 2 * 10
    full_handshakes = [connection for connection, reused in connections.items() if reused != "r"]
    assert len(full_handshakes) <= 2, connections  # one per worker


def test_new_connections_resume_their_tls_session(customers, db, certs, nginx):
    """A server that closes every connection after one request: each new connection resumes the
    worker's TLS session instead of a full handshake."""
    server, rows = nginx(extra="keepalive_requests 1;\n"), 300
    done = bill(
        customers(rows), server.url(), db, "fresh", "--no-idempotency", "--ca-bundle", certs.ca,
        "--workers", 2, "--concurrency", 10,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    logged = server.requests()
    assert len(logged) == rows and len({connection for connection, *_ in logged}) == rows
    resumed = sum(1 for _, reused, *_ in logged if reused == "r")
    assert resumed >= rows - 2 * 10, resumed  # at most each worker's first burst does a full handshake


needs_echo = pytest.mark.skipif(not os.path.exists(ECHO_MODULE), reason="no nginx echo module (.ci/run installs it)")


@needs_echo
def test_against_a_slow_api_the_window_opens_once_the_first_tls_handshake_is_done(customers, db, certs, nginx):
    """A worker's first HTTPS transfer opens the connection whose TLS session the rest of its window
    resumes. The rest wait for its handshake (and the session ticket just after), not for its answer nor
    TLS_WARMUP: against an API that answers in a second they start at once, and still resume."""
    server, rows = nginx(answer=answer_after(1.0)), 20
    done = bill(
        customers(rows), server.url(), db, "slow", "--ca-bundle", certs.ca, "--workers", 1, "--concurrency", rows
    )
    assert done.returncode == 0, done.stderr
    starts = sorted(started for (started,) in ledger_rows(db, "SELECT started_at FROM attempts"))
    assert len(starts) == rows and starts[-1] - starts[0] < TLS_WARMUP / 2, starts
    logged = server.requests()
    full_handshakes = {connection for connection, reused, *_ in logged if reused != "r"}
    assert len(logged) == rows and len(full_handshakes) == 1, logged


@needs_http2
def test_http2_carries_a_thousand_transfers_over_at_most_ten_connections(customers, db, certs, nginx):
    with MockProcess(latency=0.5, lock_keys=False) as api:
        upstream = api.base_url.removeprefix("http://")
        proxy_to_mock = f"location /v1/ {{ proxy_pass http://{upstream}; proxy_http_version 1.1; }}\n"
        server = nginx(http2=True, extra=proxy_to_mock)
        rows = 4000
        done = bill(
            customers(rows), server.url(), db, "h2", "--http2", "--ca-bundle", certs.ca,
            "--workers", 2, "--concurrency", 500, "--max-host-connections", 5,
        )  # fmt: skip
        stats = api.stats()
    assert done.returncode == 0, done.stderr
    assert stats["customers_charged"] == rows and stats["customers_charged_more_than_once"] == 0
    assert stats["max_inflight"] >= 900  # about a thousand at once ...
    logged = server.requests()
    assert {protocol for _, _, protocol, _ in logged} == {"HTTP/2.0"}
    assert len({connection for connection, *_ in logged}) <= 10  # ... over at most ten connections


@needs_http2
def test_http2_keeps_a_window_larger_than_the_open_file_limit(customers, db, certs, nginx):
    """Over HTTP/2 five hundred transfers need a few sockets, not five hundred: workers allowed 256 open
    files keep their whole window (over HTTP/1.1 it would be lowered to 192 each)."""

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    with MockProcess(latency=0.5, lock_keys=False) as api:
        upstream = api.base_url.removeprefix("http://")
        proxy_to_mock = f"location /v1/ {{ proxy_pass http://{upstream}; proxy_http_version 1.1; }}\n"
        server = nginx(http2=True, extra=proxy_to_mock)
        rows = 4000
        done = subprocess.run(
            [*ENGINE, "bill", str(customers(rows)), "--url", server.url(), "--db", db, "--run-id", "wide",
             "--quiet", "--http2", "--ca-bundle", certs.ca, "--workers", "2", "--concurrency", "500"],
            capture_output=True, text=True, timeout=120, preexec_fn=low_limit,
        )  # fmt: skip
        stats = api.stats()
    assert done.returncode == 0, done.stderr
    assert "lowered" not in done.stderr
    assert stats["customers_charged"] == rows and stats["customers_charged_more_than_once"] == 0
    assert stats["max_inflight"] > 2 * 192 + 100, stats  # more than HTTP/1.1's 192 sockets per worker could hold


@needs_http2
def test_http2_falls_back_to_http_1_1_where_the_server_does_not_offer_it(customers, db, certs, nginx):
    server = nginx(http2=False)
    done = bill(customers(50), server.url(), db, "h1", "--http2", "--ca-bundle", certs.ca)
    assert done.returncode == 0, done.stderr
    assert {protocol for _, _, protocol, _ in server.requests()} == {"HTTP/1.1"}


class ConnectProxy(socketserver.ThreadingTCPServer):
    """A small HTTP CONNECT proxy on 127.0.0.1 that remembers where it was asked to go."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Tunnel)
        self.targets: list[str] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Tunnel(socketserver.StreamRequestHandler):
    def handle(self):
        request_line = self.rfile.readline().decode("latin-1").split()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        if len(request_line) < 2 or request_line[0] != "CONNECT":
            self.wfile.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        self.server.targets.append(request_line[1])  # type: ignore[attr-defined]
        host, port = request_line[1].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as upstream:
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.wfile.flush()
            pump = threading.Thread(target=_copy, args=(upstream, self.connection), daemon=True)
            pump.start()
            _copy(self.connection, upstream, self.rfile)
            pump.join(10)


def _copy(source: socket.socket, target: socket.socket, buffered=None) -> None:
    with contextlib.suppress(OSError):
        while data := (buffered.read1(65536) if buffered else source.recv(65536)):
            target.sendall(data)
        target.shutdown(socket.SHUT_WR)


def test_a_proxy_from_the_option_or_the_environment_and_none_when_told(customers, db, certs, nginx):
    server, proxy, rows = nginx(), ConnectProxy(), customers(30)
    target = f"127.0.0.1:{server.port}"
    through = bill(rows, server.url(), db, "proxied", "--proxy", proxy.url, "--ca-bundle", certs.ca)
    assert through.returncode == 0, through.stderr
    assert proxy.targets and set(proxy.targets) == {target}
    proxy.targets.clear()
    from_env = bill(rows, server.url(), db, "env", "--ca-bundle", certs.ca, env={"https_proxy": proxy.url})
    assert from_env.returncode == 0, from_env.stderr
    assert set(proxy.targets) == {target}  # libcurl's own environment variables
    dead = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    direct = bill(rows, server.url(), db, "direct", "--no-proxy", "--ca-bundle", certs.ca, env=dead)
    assert direct.returncode == 0, direct.stderr
    proxy.shutdown()


def test_proxy_credentials_are_refused_on_the_command_line(customers, db):
    refused = bill(customers(3), "https://127.0.0.1:9/{id}", db, "secret", "--proxy", "http://u:hunter2@127.0.0.1:3128")
    assert refused.returncode == 2 and "https_proxy" in refused.stderr
    assert "hunter2" not in refused.stderr + refused.stdout and "Traceback" not in refused.stderr


def test_mutual_tls_with_a_client_certificate(customers, db, certs, nginx, tmp_path):
    server, rows = nginx(client_ca=True), customers(20)
    without = bill(rows, server.url(), db, "no-cert", "--ca-bundle", certs.ca, "--max-attempts", 1)
    assert without.returncode == 1 and status_counts(db, "no-cert") == {"rejected": 20}  # nginx: 400
    signed = bill(rows, server.url(), db, "cert", "--ca-bundle", certs.ca, "--cert", certs.client_cert,
                  "--key", certs.client_key)  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    locked = tmp_path / "client-locked.key"
    subprocess.run(
        ["openssl", "pkey", "-in", certs.client_key, "-aes256", "-passout", "pass:open-sesame", "-out", str(locked)],
        check=True,
    )
    with_passphrase = bill(
        rows, server.url(), db, "locked", "--ca-bundle", certs.ca, "--cert", certs.client_cert, "--key", locked,
        env={"ENGINE_CLIENT_KEY_PASSWORD": "open-sesame"},
    )  # fmt: skip
    assert with_passphrase.returncode == 0, with_passphrase.stderr
    assert "open-sesame" not in with_passphrase.stdout + with_passphrase.stderr


def test_a_window_spread_over_several_multis_resumes_one_tls_session(customers, db, certs, nginx):
    """1,200 in flight in one worker: 19 CurlMulti handles (``SHARD`` 64), one TLS session cache.
    After the first transfer's full handshake every new connection resumes its session."""
    server, rows = nginx(), 1200
    done = bill(
        customers(rows), server.url(), db, "wide", "--ca-bundle", certs.ca, "--workers", 1, "--concurrency", rows,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first_requests = {}
    for connection, reused, *_ in server.requests():
        first_requests.setdefault(connection, reused)
    assert len(first_requests) > 500  # more connections than one multi holds
    full = sum(1 for reused in first_requests.values() if reused != "r")
    assert full <= 5, f"{full} of {len(first_requests)} connections did a full TLS handshake"
