"""Run the mock billing API in its own process, and talk to its admin endpoints.

Used by ``engine demo``, the tests and the benchmarks: the server gets a core of its
own instead of competing with the coordinator's event loop.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

from engine.errors import EngineError

READY_PREFIX = "mock-api listening on "


class MockProcess:
    """``with MockProcess(latency=1.6) as api: api.url`` — a mock API on a free 127.0.0.1 port."""

    def __init__(self, **knobs):
        self.knobs = knobs
        self.process: subprocess.Popen | None = None
        self.base_url = ""

    def start(self) -> MockProcess:
        args = [sys.executable, "-m", "engine", "mock-api", "--host", "127.0.0.1", "--port", "0"]
        for name, value in self.knobs.items():
            option = name.replace("_", "-")
            if isinstance(value, bool):
                args.append(f"--{option}" if value else f"--no-{option}")
            elif value is not None:
                args += [f"--{option}", str(value)]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith(READY_PREFIX):
            self.stop()
            raise EngineError(f"the mock API did not start: {line.strip() or 'no output'}")
        self.base_url = line[len(READY_PREFIX) :].strip()
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def charge_url(self) -> str:
        return f"{self.base_url}/v1/customers/{{id}}/charges"

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.base_url}/stats", timeout=10) as response:
            return json.load(response)

    def configure(self, **knobs) -> dict:
        return self._post("/admin/config", knobs)

    def reset(self) -> dict:
        return self._post("/admin/reset", {})

    def _post(self, path: str, data: dict) -> dict:
        request = urllib.request.Request(
            f"{self.base_url}{path}",
            data=json.dumps(data).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)
