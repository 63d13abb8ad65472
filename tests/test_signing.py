"""--sign: Standard Webhooks signatures, verified by the reference library, and a generic HMAC-SHA256 header."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from engine.errors import UsageError
from engine.request.signing import Signing
from engine.request.spec import RequestSpec
from engine.request.template import RowRequests

SECRET = "whsec_" + base64.b64encode(b"a signing key of 32 bytes here!!").decode()
ENV = {"SIGNING_SECRET": SECRET, "HMAC_SECRET": "plain-hmac-secret-42"}


def rendered(sign: str, payload: str = '{"id":"cus_1","amount":5}', key: str = "run:cus_1"):
    spec = RequestSpec.build("https://api.test/charges", signing=Signing.parse(sign, ENV), environ=ENV)
    url, lines, body = RowRequests(spec, "id").render("cus_1", payload, key)
    return dict(line.split(": ", 1) for line in lines if ": " in line), body


def test_a_standard_webhooks_signature_is_verified_by_the_reference_library():
    headers, body = rendered("standard-webhooks:${SIGNING_SECRET}")
    assert headers["webhook-id"] == headers["Idempotency-Key"] == "run:cus_1"
    assert Webhook(SECRET).verify(body, headers) == json.loads(body)


def test_a_tampered_body_or_another_secret_fails_verification():
    headers, body = rendered("standard-webhooks:${SIGNING_SECRET}")
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"5", b"6"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"another key").decode()).verify(body, headers)


def test_each_attempt_gets_its_own_timestamp_over_the_same_body():
    signing = Signing.parse("standard-webhooks:${SIGNING_SECRET}", ENV)
    first = signing.headers("k", b"{}", now=1_700_000_000)
    retry = signing.headers("k", b"{}", now=1_700_000_030)
    assert first[1] == "webhook-timestamp: 1700000000" and retry[1] == "webhook-timestamp: 1700000030"
    assert first[2] != retry[2]


def test_hmac_sha256_puts_the_hex_digest_of_the_body_in_the_named_header():
    headers, body = rendered("hmac-sha256:${HMAC_SECRET}:X-Signature")
    assert headers["X-Signature"] == hmac.new(b"plain-hmac-secret-42", body, hashlib.sha256).hexdigest()
    assert "webhook-signature" not in headers


@pytest.mark.parametrize(
    "text",
    [
        "standard-webhooks:whsec_typedinargv",  # a secret typed, not a ${VAR}
        "hmac-sha256:${HMAC_SECRET}",  # no header
        "hmac-sha256:${HMAC_SECRET}:Bad Header",
        "md5:${HMAC_SECRET}:X-Sig",
    ],
)
def test_a_malformed_sign_option_is_refused_without_showing_it(text):
    with pytest.raises(UsageError) as error:
        Signing.parse(text, ENV)
    assert "typedinargv" not in str(error.value)


def test_the_signing_secret_is_redacted_like_every_environment_secret():
    spec = RequestSpec.build(
        "https://api.test/charges", signing=Signing.parse("hmac-sha256:${HMAC_SECRET}:X-Sig", ENV), environ=ENV
    )
    assert "plain-hmac-secret-42" in spec.secrets and "plain-hmac-secret-42" not in repr(spec)


class _Recorder(BaseHTTPRequestHandler):
    """Keeps each request's headers and body; the first attempt of every row is answered 503."""

    seen: list[tuple[dict, bytes]] = []
    lock = threading.Lock()

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            first = not any(h["webhook-id"] == self.headers["webhook-id"] for h, _ in self.seen)
            self.seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(503 if first else 200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.seen
    server.shutdown()


def test_every_attempt_of_a_bill_verifies_and_the_secret_is_nowhere(recorder, customers, db, run, tmp_path):
    url, seen = recorder
    log = tmp_path / "events.jsonl"
    result = run(
        "bill",
        customers(20),
        "--url",
        f"{url}/customers/{{id}}/charges",
        "--db",
        db,
        "--sign",
        "standard-webhooks:${SIGNING_SECRET}",
        "--backoff-base",
        0.01,
        "--log-file",
        log,
        "--quiet",
        env=ENV,
    )
    assert result.exit_code == 0, result.output
    assert len(seen) == 40  # each row twice: a 503, then the retry
    webhook = Webhook(SECRET)
    for headers, body in seen:
        assert headers["webhook-id"] == headers["idempotency-key"]
        assert webhook.verify(body, headers)["id"].startswith("cus_")
    stored = Path(db).read_bytes() + log.read_bytes()
    assert SECRET.encode() not in stored and SECRET.encode() not in result.output.encode()
    assert b"standard-webhooks:${SIGNING_SECRET}" in Path(db).read_bytes()  # the option, stored unexpanded


def test_standard_webhooks_needs_the_idempotency_key(customers, db, run):
    result = run(
        "bill",
        customers(2),
        "--url",
        "http://127.0.0.1:9/{id}",
        "--db",
        db,
        "--no-idempotency",
        "--sign",
        "standard-webhooks:${SIGNING_SECRET}",
        env=ENV,
    )
    assert result.exit_code == 2 and "webhook-id" in result.output
