"""OpenTelemetry traces, only when asked for: a span per run and per chunk, carried to the nodes by Celery.

Off unless ``--otel`` is given or the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; off,
``opentelemetry`` is never imported and every call here is a no-op, so the embedded default
installs light (the ``[otel]`` extra) and sends nothing. On, the SDK is configured by its own
``OTEL_*`` variables (endpoint, headers, service name) with the OTLP/HTTP exporter.

The coordinator's run span is the parent: its context travels in each chunk task's headers
(W3C ``traceparent``, :func:`inject`), and a node's chunk span continues it (:func:`extract`).
Only trace ids travel: never a payload, a header or a secret.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from engine.extras import MissingExtra, Wing

#: The optional wing: its packages are imported only once tracing is on.
OTEL = Wing("tracing (--otel)", "otel", ("opentelemetry.sdk.trace",), frozenset({"opentelemetry"}))
#: The standard variable that turns tracing on without --otel.
ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"
#: The instrumentation scope of every span.
TRACER_NAME = "batch-engine"

_tracer: Any = None


def setup_tracing(enabled: bool, exporter: Any = None) -> None:
    """Turn tracing on when ``enabled`` or the OTLP endpoint variable is set (``exporter``: a test's
    in-memory one instead of OTLP); otherwise leave it off and import nothing."""
    global _tracer
    if not (enabled or exporter is not None or os.environ.get(ENDPOINT_VARIABLE)):
        _tracer = None
        return
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ModuleNotFoundError:
        raise MissingExtra(OTEL.missing()) from None
    provider = TracerProvider()
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
    _tracer = provider.get_tracer(TRACER_NAME)
    trace.set_tracer_provider(provider)


def _otlp_exporter() -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ModuleNotFoundError:
        raise MissingExtra(OTEL.missing()) from None
    return OTLPSpanExporter()


def enabled() -> bool:
    return _tracer is not None


@contextlib.contextmanager
def span(name: str, parent: dict[str, str] | None = None, **attributes: Any) -> Iterator[Any]:
    """A span around the block (None when tracing is off), child of the context in ``parent``
    (headers a task carried) or of the current span."""
    if _tracer is None:
        yield None
        return
    context = None
    if parent:
        from opentelemetry.propagate import extract

        context = extract(parent)
    with _tracer.start_as_current_span(name, context=context, attributes=_plain(attributes)) as current:
        yield current


def annotate_current(**attributes: Any) -> None:
    """Add attributes (rows, outcome counts) to the current span once they are known."""
    if _tracer is not None:
        from opentelemetry import trace

        trace.get_current_span().set_attributes(_plain(attributes))


def inject(headers: dict) -> None:
    """Write the current span's context into a task's headers (nothing when tracing is off)."""
    if _tracer is not None:
        from opentelemetry.propagate import inject as otel_inject

        otel_inject(headers)


def carried(request: Any) -> dict[str, str]:
    """The trace context a Celery task request carried in its headers."""
    headers = getattr(request, "headers", None) or {}
    found = {name: getattr(request, name, None) or headers.get(name) for name in ("traceparent", "tracestate")}
    return {name: str(value) for name, value in found.items() if value}


def shutdown() -> None:
    """Send the spans still buffered (at the end of a command)."""
    if _tracer is not None:
        from opentelemetry import trace

        provider = trace.get_tracer_provider()
        if hasattr(provider, "shutdown"):
            provider.shutdown()


def _plain(attributes: dict[str, Any]) -> dict[str, Any]:
    return {f"engine.{key}": value for key, value in attributes.items() if isinstance(value, str | int | float | bool)}
