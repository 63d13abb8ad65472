"""Shared helpers for the benchmark scripts: machine facts, result lines, markdown tables."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import random
import resource
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from dataclasses import dataclass

import psutil
import pycurl

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results.jsonl")


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "libcurl": pycurl.version}


def record(bench: str, figure: str, value, unit: str, **extra) -> dict:
    """Append one figure as a JSON line to bench/results.jsonl (git-ignored) and return it."""
    line = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "bench": bench,
        "figure": figure,
        "value": value,
        "unit": unit,
        **extra,
        "machine": machine(),
    }
    with open(RESULTS, "a") as handle:
        handle.write(json.dumps(line) + "\n")
    return line


def table(headers: list[str], rows: list[list]) -> str:
    """A markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(out)


def engine(*args, timeout: float = 3600) -> subprocess.CompletedProcess:
    """Run ``python -m engine ...`` and return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


class TreeWatch:
    """Samples a running process and its descendants: peak RSS, and CPU seconds per role.

    Roles: ``coordinator`` (the process itself), ``workers`` (its spawned multiprocessing
    children), ``other`` (anything else, such as multiprocessing's resource tracker).
    CPU is the last sample of each process, so up to one interval per process is missed.
    """

    def __init__(self, pid: int, interval: float = 0.05):
        self.root, self.interval = psutil.Process(pid), interval
        self.peak_rss = 0
        self._cpu: dict[int, tuple[str, float]] = {}

    def _role(self, member) -> str:
        if member.pid == self.root.pid:
            return "coordinator"
        command = " ".join(member.cmdline())
        return "workers" if "spawn_main" in command and "resource_tracker" not in command else "other"

    def sample(self) -> None:
        rss = 0
        for member in [self.root, *self.root.children(recursive=True)]:
            try:
                with member.oneshot():
                    rss += member.memory_info().rss
                    times = member.cpu_times()
                    # a spawned worker reads as its parent's command line until it has exec'd: look again
                    known = self._cpu.get(member.pid, ("other",))[0]
                    role = known if known != "other" else self._role(member)
                    self._cpu[member.pid] = (role, times.user + times.system)
            except psutil.Error:
                pass
        self.peak_rss = max(self.peak_rss, rss)

    def wait(self, child: subprocess.Popen) -> int:
        """Sample until ``child`` exits; return its exit code."""
        while child.poll() is None:
            self.sample()
            time.sleep(self.interval)
        return child.returncode

    def cpu(self) -> dict[str, float]:
        """CPU seconds per role."""
        totals = {"coordinator": 0.0, "workers": 0.0, "other": 0.0}
        for role, seconds in self._cpu.values():
            totals[role] += seconds
        return totals


def bill_phases(log: str, started: float, ended: float) -> dict[str, float]:
    """Where a ``bill``'s wall time went (``started``/``ended``: epoch seconds around its process), from
    its ``--log-file``: before its pass (start, claim, load), the pass, and after it (summary, exit)."""
    with open(log) as handle:
        times = {event["event"]: event["time"] for event in map(json.loads, handle)}
    return {
        "start and load": times["pass_start"] - started,
        "pass": times["pass_end"] - times["pass_start"],
        "summary and exit": ended - times["pass_end"],
    }


def cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by a process and its children (a server, between runs)."""
    total = 0.0
    root = psutil.Process(pid)
    for member in [root, *root.children(recursive=True)]:
        times = member.cpu_times()
        total += times.user + times.system
    return total


def report(db: str, run_id: str) -> dict:
    done = engine("report", run_id, "--db", db, "--format", "json")
    return json.loads(done.stdout)


NGINX_CONF = """
{main}
worker_processes {workers};
worker_rlimit_nofile {open_files};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    log_format conns '$connection $ssl_session_reused $server_protocol $status';
    {http}
    server {{
        listen 127.0.0.1:{port}{listen} backlog=4096;
        {extra}
        location = /nginx-status {{ stub_status; }}
        location / {{ {answer} }}
    }}
}}
"""
#: What nginx answers by default: at once, 200 and a small JSON body.
ANSWER_AT_ONCE = "return 200 '{\"ok\":true}';"
#: The echo module (Debian's libnginx-mod-http-echo), for a C server that answers after a delay.
ECHO_MODULE = "/usr/lib/nginx/modules/ngx_http_echo_module.so"


def answer_after(seconds: float) -> str:
    """A location body answering 200 and JSON after ``seconds``, without holding a worker: the
    request body is read first (a POST's body is taken, not left on the connection)."""
    return f"default_type application/json; echo_read_request_body; echo_sleep {seconds}; echo '{{\"ok\":true}}';"


#: With TLS: the server's certificate, a session cache (resumption by session id or ticket).
NGINX_TLS = """
        ssl_certificate {certs.server_cert};
        ssl_certificate_key {certs.server_key};
        ssl_session_cache shared:TLS:10m;
        ssl_session_timeout 10m;
"""
#: With mutual TLS: only clients whose certificate the CA signed.
NGINX_CLIENT_CA = """
        ssl_verify_client on;
        ssl_client_certificate {certs.ca};
"""


@dataclass(frozen=True)
class Certificates:
    """A CA, a server certificate for 127.0.0.1 and a client certificate it signed (PEM files)."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def make_certificates(directory: str) -> Certificates:
    """Make them with openssl (P-256 keys, valid two days)."""
    path = functools.partial(os.path.join, directory)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    key_args = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *key_args, "-keyout", path("ca.key"), "-out", path("ca.pem"), "-days", "2",
            "-subj", "/CN=batch-engine test CA")  # fmt: skip
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        with open(path(f"{name}.ext"), "w") as handle:
            handle.write(extension + "\n")
        openssl("req", *key_args, "-keyout", path(f"{name}.key"), "-out", path(f"{name}.csr"), "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", path(f"{name}.csr"), "-CA", path("ca.pem"), "-CAkey", path("ca.key"),
                "-CAcreateserial", "-out", path(f"{name}.pem"), "-days", "2",
                "-extfile", path(f"{name}.ext"))  # fmt: skip
    return Certificates(path("ca.pem"), path("server.pem"), path("server.key"), path("client.pem"), path("client.key"))


def ensure_nginx() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if path:
        return path
    print("nginx not found: installing it with apt-get", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "nginx-light"],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    return shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _open_files(wanted: int) -> int:
    """``wanted``, or the hard open-file limit if that is lower (nginx could not raise past it)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)


def start_nginx(
    directory: str,
    extra: str = "",
    certs: Certificates | None = None,
    http2: bool = False,
    client_ca: bool = False,
    answer: str = ANSWER_AT_ONCE,
    workers: int = 1,
    connections: int = 20000,
    http: str = "",
) -> tuple[subprocess.Popen, int]:
    """nginx answering 200 to everything (``extra``: more directives in its server block); over TLS
    with ``certs`` (and HTTP/2 offered, client certificates required if asked); its stub_status at
    /nginx-status counts the connections it accepted.

    ``answer`` is the default location's body (:func:`answer_after` needs :data:`ECHO_MODULE`, loaded
    then), ``workers`` its worker processes, ``connections`` each one's worker_connections, ``http``
    more directives in its http block."""
    port = free_port()
    if certs:
        extra = NGINX_TLS.format(certs=certs) + (NGINX_CLIENT_CA.format(certs=certs) if client_ca else "") + extra
    listen = (" ssl" if certs else "") + (" http2" if http2 else "")
    conf = os.path.join(directory, "nginx.conf")
    with open(conf, "w") as handle:
        handle.write(
            NGINX_CONF.format(
                dir=directory,
                port=port,
                extra=extra,
                listen=listen,
                answer=answer,
                workers=workers,
                connections=connections,
                open_files=_open_files(connections + 100),
                http=http,
                main=f"load_module {ECHO_MODULE};" if "echo_sleep" in answer else "",
            )
        )
    process = subprocess.Popen([ensure_nginx(), "-c", conf, "-e", os.path.join(directory, "error.log")])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("nginx did not start")


def write_rows(path: str, count: int, random_ids: bool = False) -> None:
    """``count`` customers; ``random_ids``: ids in no particular order, as a billing system's are
    (``cus_`` and 14 letters and digits, seeded), else ``cus_0000000`` upwards."""
    chance = random.Random(7)
    alphabet = string.ascii_letters + string.digits
    with open(path, "w") as handle:
        handle.write("id,amount_cents,currency\n")
        for n in range(count):
            row_id = "cus_" + "".join(chance.choices(alphabet, k=14)) if random_ids else f"cus_{n:07d}"
            handle.write(f"{row_id},{n % 5000},eur\n")


#: The local PostgreSQL server and Redis db the node benchmarks use (trust auth on 127.0.0.1).
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
BENCH_BROKER = "redis://127.0.0.1:6379/15"


@contextlib.contextmanager
def fresh_postgres():
    """A PostgreSQL database of this benchmark's own, with the ledger's tables; dropped afterwards."""
    import psycopg

    name = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{POSTGRES_ADMIN.rsplit('/', 1)[0]}/{name}"
    try:
        engine("status", "--db", url)  # creates the tables
        yield url
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@contextlib.contextmanager
def worker_nodes(count: int, db: str, *extra, broker: str = BENCH_BROKER):
    """``count`` worker nodes on ``broker`` (flushed first), each its own process tree."""
    import redis

    redis.Redis.from_url(broker).flushdb()
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "engine", "worker", "--broker", broker, "--db", db, *map(str, extra)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(count)
    ]
    try:
        time.sleep(3 + count)  # each node connects to Redis and starts its pool
        yield nodes
    finally:
        for node in nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait()


def bill_through_nodes(csv_path: str, url: str, db: str, run_id: str, *extra) -> float:
    """``bill`` of ``csv_path`` through the nodes on :data:`BENCH_BROKER`; its wall time (s)."""
    started = time.monotonic()
    done = engine(
        "bill", csv_path, "--url", url, "--db", db, "--broker", BENCH_BROKER, "--run-id", run_id, *extra, "--quiet"
    )
    assert done.returncode == 0, done.stderr
    return time.monotonic() - started
