"""``bill --dry-run``: everything a ``bill`` does before the first request, and nothing after.

Every row is read, validated and loaded exactly as a real run loads it (the same
:func:`~engine.run.loading.load_rows`, so the same errors and exit 2), but into a ledger in
memory: the real one is never touched and no run is left behind. What is shown is what an
operator checks before charging a million customers: how many rows, which hosts, the first
request as it will go out (secrets as ``[redacted]``), and the totals of the amounts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit

from engine.config import RunSettings
from engine.errors import InputError
from engine.ledger import MEMORY, Store, open_store
from engine.ledger.lease import Holder
from engine.request.inputs import Row, detect_format, read_rows
from engine.request.spec import RequestSpec, redact
from engine.request.template import CompiledRequest, RowRequests
from engine.run.loading import load_rows
from engine.run.runner import claim_new_run
from engine.states import PENDING

#: The run id of the in-memory ledger's only run (the real keys derive as a ``bill``'s would).
DRY_RUN_ID = "dry-run"


@dataclass(frozen=True)
class Preview:
    """What a ``bill`` would send: rows, destination hosts, the first request, the totals asked for."""

    rows: int
    hosts: tuple[str, ...]
    method: str
    url: str | None = None
    headers: tuple[str, ...] = ()
    body: str | None = None
    sums: dict[str, Decimal] = field(default_factory=dict)

    def render(self) -> str:
        """The text ``bill --dry-run`` prints."""
        lines = [
            f"dry run: {self.rows:,} rows would be sent; nothing was sent and no run was recorded",
            f"  hosts      {', '.join(self.hosts) or '-'}",
        ]
        for name, total in self.sums.items():
            lines.append(f"  sum        {name} = {total:,}")
        if self.url is None:
            return "\n".join(lines)
        lines += ["first request:", f"  {self.method} {self.url}"]
        lines += [f"  {line}" for line in self.headers]
        if self.body is not None:
            lines += ["", f"  {self.body}"]
        return "\n".join(lines)


def dry_run(
    *, input_path: str, settings: RunSettings, key_prefix: str, fmt: str | None = None, sum_fields=()
) -> Preview:
    """Load ``input_path`` as ``bill`` would, into a ledger in memory, and describe what would be sent."""
    fmt = detect_format(input_path, fmt)
    spec = settings.request_spec()
    request = CompiledRequest(spec)
    source = "<stdin>" if input_path == "-" else input_path
    watch = _Watch(request, tuple(sum_fields), source)
    with open_store(MEMORY) as ledger:
        claim_new_run(ledger, DRY_RUN_ID, Holder.this_process(), input_path, settings, None)
        rows = watch.through(read_rows(input_path, fmt, settings.id_field))
        total, _ = load_rows(ledger, DRY_RUN_ID, rows, settings, request, source, key_prefix=key_prefix)
        first = _first_request(ledger, spec, settings.id_field)
    url, headers, body = first if first else (None, (), None)
    return Preview(total, tuple(sorted(watch.hosts)), spec.method, url, headers, body, watch.sums)


class _Watch:
    """Sees each row after it was validated (and its ``--field`` types converted): hosts and sums."""

    def __init__(self, request: CompiledRequest, sum_fields: tuple[str, ...], source: str):
        self.request, self.source = request, source
        self.sums = {name: Decimal(0) for name in sum_fields}
        self.hosts: set[str] = set()

    def through(self, rows: Iterable[Row]) -> Iterator[Row]:
        for row in rows:
            yield row  # load_rows validates it before asking for the next
            self._observe(row)

    def _observe(self, row: Row) -> None:
        if self.request.host_is_dynamic or not self.hosts:
            self.hosts.add(urlsplit(self.request.render_url(row.fields)).netloc.rpartition("@")[2])
        for name in self.sums:
            value = row.fields.get(name)
            if value in (None, ""):
                raise InputError(self.source, row.line, "missing, but named by --sum-field", name)
            try:
                self.sums[name] += Decimal(str(value))
            except InvalidOperation:
                raise InputError(self.source, row.line, f"--sum-field needs a number, found {value!r}", name) from None


def _first_request(ledger: Store, spec: RequestSpec, id_field: str) -> tuple[str, tuple[str, ...], str | None] | None:
    """The first row in dispatch order, rendered as the workers render it, secrets redacted."""
    page = next(iter(ledger.iter_pages(DRY_RUN_ID, (PENDING,), page=1)), None)
    if page is None:
        return None
    row = page.rows[0]
    url, headers, body = RowRequests(spec, id_field).render(row.row_id, row.payload, row.idempotency_key)

    def shown(text: str) -> str:
        return redact(text, spec.secrets) or text

    lines = tuple(shown(line) for line in headers)
    return shown(url), lines, None if body is None else shown(body.decode("utf-8", errors="replace"))
