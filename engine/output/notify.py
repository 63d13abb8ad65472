"""The notice sent when a pass ends: a JSON summary POSTed to ``--notify-url`` and/or given on
stdin to ``--notify-command``.

The notice is told, never obeyed: a notice that cannot be delivered (after a few attempts with
back-off, in bounded time) never changes the run's exit status; its one-line reason is returned
for the CLI to print. Its ``text`` field reads as one message, so a Slack incoming-webhook URL
works as it is. Header values may hold ``${VAR}`` secrets, expanded by the rules of ``--header``;
the URL is shown only as its origin, since a webhook's path is often its credential.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from engine.errors import UsageError
from engine.request.spec import ENV_REF, expand_env, redact, split_header

#: Attempts to deliver a notice to ``--notify-url``, the first included.
NOTICE_ATTEMPTS = 3
#: Seconds before the second attempt; doubled before each later one.
NOTICE_BACKOFF = 1.0
#: Longest time one POST, or the whole ``--notify-command``, may take (s).
NOTICE_TIMEOUT = 10.0
#: Rows' errors quoted in a notice at most.
FIRST_ERRORS = 5


@dataclass(frozen=True)
class Notice:
    """Where the end of each pass is told. Built once by :meth:`build`, which checks the options
    (and reads the headers' secrets) before anything is sent."""

    url: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    backoff: float = NOTICE_BACKOFF
    timeout: float = NOTICE_TIMEOUT

    @classmethod
    def build(cls, url: str | None, header_lines=(), command: str | None = None, **limits) -> Notice | None:
        """The notice the options name, or None; a malformed URL, header or missing ``${VAR}`` is a UsageError."""
        if not url and header_lines:
            raise UsageError("--notify-header needs --notify-url")
        if not url and not command:
            return None
        if url and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname):
            raise UsageError(f"--notify-url must be an http:// or https:// URL, found {_origin(url)!r}")
        headers, secrets = [], []
        for line in header_lines:
            parsed = split_header(line)
            if parsed is None:
                raise UsageError(f"--notify-header must look like 'Name: value', found {line.split(':')[0]!r}")
            name, value = parsed
            expanded = expand_env(value, f"--notify-header {name}")
            if ENV_REF.search(value):
                secrets.append(expanded)
            headers.append((name, expanded))
        argv = tuple(shlex.split(command)) if command else ()
        if command and not argv:
            raise UsageError("--notify-command is empty")
        return cls(url or None, tuple(headers), argv, tuple(secrets), **limits)

    def send(self, message: dict) -> str | None:
        """Deliver ``message`` everywhere asked; None, or one line saying what could not be delivered."""
        body = json.dumps(message).encode()
        errors = [self._post(body) if self.url else None, self._run(body) if self.command else None]
        failed = [error for error in errors if error]
        return redact("; ".join(failed), self.secrets) if failed else None

    def _post(self, body: bytes) -> str | None:
        import urllib.error  # with http.client and email: only when a notice is posted
        import urllib.request

        assert self.url is not None
        headers = {"Content-Type": "application/json", **dict(self.headers)}
        why = ""
        for attempt in range(NOTICE_ATTEMPTS):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (http/https only)
                    response.read()
                return None
            except urllib.error.HTTPError as err:
                why = f"HTTP {err.code}"
            except (urllib.error.URLError, OSError) as err:
                why = str(getattr(err, "reason", err))
        return f"notice to {_origin(self.url)} not delivered after {NOTICE_ATTEMPTS} attempts: {why}"

    def _run(self, body: bytes) -> str | None:
        name = self.command[0]
        try:
            done = subprocess.run(self.command, input=body, capture_output=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            return f"--notify-command {name} did not finish within {self.timeout:g} s"
        except OSError as err:
            return f"--notify-command {name} could not run: {err.strerror or err}"
        if done.returncode:
            said = done.stderr.decode(errors="replace").strip().splitlines()
            return f"--notify-command {name} exited {done.returncode}" + (f": {said[-1]}" if said else "")
        return None


def _origin(url: str) -> str:
    """What a notice URL may show: its scheme and host (a webhook's path is often its secret)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}" if parts.netloc else url[:20]
