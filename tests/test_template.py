"""The request templates, unit by unit: what a row can and cannot change in the request it becomes."""

from __future__ import annotations

import json

import pytest

from engine.errors import DestinationError, TemplateError, UsageError
from engine.request.spec import REDACTED, Body, RequestSpec, redact
from engine.request.template import CompiledRequest, RowRequests

ENV = {"API_TOKEN": "sk_live_secret123", "TENANT": "acme"}


def build(url="https://api.example.com/v1/customers/{id}/charges", **options) -> RequestSpec:
    return RequestSpec.build(url, environ=ENV, **options)


def test_a_value_in_the_path_is_percent_encoded_and_cannot_move_the_url():
    compiled = CompiledRequest(build())
    url = compiled.render_url({"id": "a/../b?admin=1#frag"})
    assert url == "https://api.example.com/v1/customers/a%2F..%2Fb%3Fadmin%3D1%23frag/charges"


def test_only_plain_field_placeholders_are_templates():
    for text in ("{id!r}", "{id:>10}", "{}"):
        with pytest.raises(TemplateError):
            CompiledRequest(build(f"https://api.example.com/{text}"))


def test_attribute_and_index_syntax_is_a_field_name_never_an_attribute_access():
    compiled = CompiledRequest(build("https://api.example.com/{id.__class__}/{id[0]}"))
    assert compiled.missing_fields({"id": "c1"}) == ["id.__class__", "id[0]"]
    assert compiled.render_url({"id.__class__": "x", "id[0]": "y"}) == "https://api.example.com/x/y"


def test_a_placeholder_in_the_host_needs_every_host_allowed():
    with pytest.raises(UsageError, match="--allow-host"):
        build("https://{tenant}.example.com/charges")
    compiled = CompiledRequest(build("https://{tenant}.example.com/charges", allow_hosts=["acme.example.com"]))
    compiled.check({"tenant": "acme"})
    for tenant in ("evil", "evil.com#", "acme.example.com.evil.net?"):
        with pytest.raises(DestinationError):
            compiled.check({"tenant": tenant})


def test_a_header_value_from_a_row_cannot_carry_a_line_break():
    compiled = CompiledRequest(build(header_lines=["X-Customer: {id}"]))
    compiled.check({"id": "c1"})
    with pytest.raises(TemplateError, match="line break"):
        compiled.check({"id": "c1\r\nX-Admin: yes"})


def test_the_body_is_the_row_unless_a_template_says_otherwise():
    assert build().body == Body.JSON
    assert build(method="GET").body == Body.NONE
    assert build(body_template_text='{"amount": "{amount}"}').body == Body.TEMPLATE
    assert build(body_template_text='{"amount": "{amount}"}', form=True).body == Body.FORM


def test_a_lone_placeholder_keeps_the_values_type_and_text_around_it_makes_a_string():
    compiled = CompiledRequest(build(body_template_text='{"amount": "{amount}", "note": "pay {amount}", "n": [1]}'))
    assert compiled.render_body({"id": "c1", "amount": 250}) == b'{"amount":250,"note":"pay 250","n":[1]}'


def test_a_form_body_is_url_encoded():
    compiled = CompiledRequest(build(body_template_text='{"amount": "{amount}", "who": "{id}"}', form=True))
    assert compiled.render_body({"id": "a b&c", "amount": 5}) == b"amount=5&who=a+b%26c"


def test_headers_get_a_content_type_and_no_expect_100_continue_unless_set():
    compiled = CompiledRequest(build())
    assert compiled.fixed_headers == ["Content-Type: application/json", "Expect:"]
    compiled = CompiledRequest(build(header_lines=["Content-Type: application/vnd.api+json"]))
    assert compiled.fixed_headers == ["Content-Type: application/vnd.api+json", "Expect:"]
    assert CompiledRequest(build(method="GET")).fixed_headers == []


def test_a_worker_renders_a_row_with_its_idempotency_key_and_reuses_the_payload_as_body():
    requests = RowRequests(build(header_lines=["Authorization: Bearer ${API_TOKEN}"]), "id")
    assert not requests.needs_fields  # the id alone fills the URL: the payload is never parsed
    url, headers, body = requests.render("c 1", '{"id":"c 1","amount":5}', "fp:c%201")
    assert url == "https://api.example.com/v1/customers/c%201/charges"
    assert headers == [
        "Authorization: Bearer sk_live_secret123",
        "Content-Type: application/json",
        "Expect:",
        "Idempotency-Key: fp:c%201",
    ]
    assert body == b'{"id":"c 1","amount":5}'


@pytest.mark.parametrize(
    "url", ["https://api.example.com/v1/customers/{id}/charges", "https://api.example.com/{id}", "https://a.example/x"]
)
@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize("row_id", ["c1", "a b/c?d=é&#", "%2F"])
def test_the_id_only_url_renders_as_the_full_template_does(url, method, row_id):
    requests = RowRequests(build(url, method=method), "id")
    assert requests.url_pieces is not None  # the shortcut is taken
    payload = json.dumps({"id": row_id, "amount": 5})
    expected_url, expected_headers, expected_body = requests.compiled.render({"id": row_id}, payload)
    expected = (expected_url, [*expected_headers, "Idempotency-Key: k1"], expected_body)
    assert requests.render(row_id, payload, "k1") == expected


def test_no_key_header_without_idempotency():
    requests = RowRequests(build(idempotency_header=None), "id")
    assert not any(line.startswith("Idempotency-Key") for line in requests.render("c1", "{}", "k")[1])


def test_environment_values_are_secrets_kept_out_of_repr_and_errors():
    spec = build("https://api.example.com/{id}?key=${API_TOKEN}", header_lines=["Authorization: Bearer ${API_TOKEN}"])
    assert spec.secrets == ("sk_live_secret123",)
    assert "sk_live_secret123" not in repr(spec)
    with pytest.raises(UsageError, match="environment variable MISSING is not set"):
        build(header_lines=["X-Key: ${MISSING}"])
    with pytest.raises(UsageError) as caught:
        build(header_lines=["Bearer sk_typed_in_argv"])
    assert "sk_typed_in_argv" not in str(caught.value)


def test_redact_replaces_a_secret_and_a_secret_cut_at_the_end_of_an_excerpt():
    secrets = ("sk_live_secret123",)
    assert redact("token sk_live_secret123 echoed", secrets) == f"token {REDACTED} echoed"
    assert redact('{"auth":"Bearer sk_live_sec', secrets) == f'{{"auth":"Bearer {REDACTED}'
    assert redact("sk_l is too short to be sure", secrets) == "sk_l is too short to be sure"
    assert redact(None, secrets) is None
