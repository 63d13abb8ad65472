"""``bill`` and ``rerun``: the commands that send."""

from __future__ import annotations

import click

from engine.cli.ending import finish, go_on_after_canary, report_notice
from engine.cli.filters import names_rows, read_row_ids, row_filter, row_filter_options
from engine.cli.option_groups import (
    auth_options,
    connection_options,
    kill_switch_options,
    notify_options,
    pool_options,
)
from engine.cli.options import (
    broker_option,
    capture_option,
    db_option,
    engine_errors,
    refuse_workers_with_broker,
    say,
)
from engine.cli.request_options import request_options
from engine.config import RunSettings
from engine.ledger.selection import RISKS, Selection
from engine.output.notify import Notice
from engine.run.dryrun import dry_run as dry_run_preview
from engine.run.killswitch import BILL_MAX_FAILURE_RATE, KillSwitch
from engine.run.runner import bill as bill_run
from engine.run.runner import go_on, key_prefix_for
from engine.run.runner import rerun as rerun_run
from engine.starttime import start_time
from engine.states import REJECTED, RESEND_STATES, UNKNOWN


@click.command()
@click.argument("input_path", metavar="INPUT")
@request_options
@capture_option
@click.option(
    "--dry-run",
    is_flag=True,
    help="Validate every row as a real run would, print the row count, the hosts and the first request "
    "(secrets redacted), then exit 0: nothing is sent, no run is recorded.",
)
@click.option(
    "--sum-field",
    "sum_fields",
    multiple=True,
    metavar="FIELD",
    help="With --dry-run: print the total of this numeric field (repeatable).",
)
@click.option(
    "--canary",
    type=int,
    default=None,
    metavar="N",
    help="Send only the first N rows (priority order), print their outcomes and the rerun command that "
    "sends the rest with the same keys, exit 4; on a terminal, offer to send the rest at once.",
)
@kill_switch_options(BILL_MAX_FAILURE_RATE)
@notify_options
@auth_options
@connection_options
@db_option
@broker_option
@pool_options
@engine_errors
def bill(
    input_path,
    url,
    method,
    headers,
    secret_headers,
    body_template,
    form,
    fmt,
    id_field,
    field_types,
    priority_field,
    run_id,
    not_before,
    delay,
    idempotency_header,
    idempotency_key_field,
    no_idempotency,
    backoff_base,
    backoff_cap,
    retry_after_cap,
    connect_timeout,
    allow_hosts,
    insecure,
    ca_bundle,
    dry_run,
    sum_fields,
    canary,
    max_failure_rate,
    min_sample,
    notify_url,
    notify_headers,
    notify_command,
    db,
    broker,
    busy_timeout,
    log_file,
    quiet,
    **overrides,
):
    """Send one request per row of INPUT (CSV, JSON Lines, or - for stdin) and record each outcome.

    Exit status: 0 when every row succeeded, 1 when some did not (the rerun command is
    printed), 2 on bad usage or bad input (nothing is sent), 3 when the ledger cannot record
    (disk full, locked: nothing more is sent), 4 when stopped on purpose (--canary, the
    --max-failure-rate kill switch; the rest stays pending for rerun), 130 when interrupted.

    Running the same command again charges nobody twice: the idempotency keys derive from
    the request templates and each row's id, and on the same ledger the earlier run is
    named instead. To bill the same customers again on purpose (next month), give a new
    --run-id: the keys then derive from it.

    \b
    Example:
        python -m engine bill customers.csv --chunks 100 --run-id 2026-12 --capture charge_id=$.id \\
            --url 'https://api.example.com/v1/customers/{id}/charges' \\
            --header 'Authorization: Bearer ${API_TOKEN}'
        python -m engine bill customers.csv --url ... --dry-run --sum-field amount
        python -m engine bill customers.csv --url ... --canary 10 --notify-url "$SLACK_WEBHOOK"
        python -m engine bill events.jsonl --url https://hooks.example.com/billing \\
            --oauth2-token-url https://auth.example.com/oauth/token \\
            --sign 'standard-webhooks:${SIGNING_SECRET}'
    """
    refuse_workers_with_broker(broker, overrides.get("workers"))
    settings = RunSettings.from_dict(
        dict(
            url=url,
            method=method,
            headers=headers,
            secret_headers=secret_headers,
            form=form,
            body_template=body_template.read() if body_template else None,
            allow_hosts=allow_hosts,
            id_field=id_field,
            field_types=field_types,
            priority_field=priority_field,
            idempotency_header=idempotency_header,
            idempotency_key_field=idempotency_key_field,
            idempotency=not no_idempotency,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            retry_after_cap=retry_after_cap,
            connect_timeout=connect_timeout,
            insecure=insecure,
            ca_bundle=ca_bundle,
        ),
        **overrides,
    )
    if dry_run:
        preview = dry_run_preview(
            input_path=input_path,
            settings=settings,
            key_prefix=key_prefix_for(settings, run_id),
            fmt=fmt,
            sum_fields=sum_fields,
        )
        click.echo(preview.render())
        return
    if sum_fields:
        raise click.UsageError("--sum-field is shown by --dry-run only")
    kill_switch = KillSwitch.from_option(max_failure_rate, min_sample, BILL_MAX_FAILURE_RATE)
    notice = Notice.build(notify_url, notify_headers, notify_command)
    result = bill_run(
        db=db,
        input_path=input_path,
        settings=settings,
        fmt=fmt,
        run_id=run_id,
        not_before=start_time(not_before, delay),
        log_file=log_file,
        quiet=quiet,
        busy_timeout=busy_timeout,
        broker=broker,
        kill_switch=kill_switch,
        canary=canary,
        notice=notice,
    )
    if canary is not None and go_on_after_canary(result):
        report_notice(result)
        result = go_on(
            db=db,
            run_id=result.run_id,
            log_file=log_file,
            quiet=quiet,
            busy_timeout=busy_timeout,
            broker=broker,
            kill_switch=kill_switch,
            notice=notice,
        )
    finish(result)


@click.command()
@click.argument("run_id")
@click.option("--include-rejected", is_flag=True, help="Also resend rows the API rejected with a final 4xx.")
@click.option(
    "--include-unknown",
    is_flag=True,
    help="Also resend rows whose outcome is unknown (only after checking they were not applied).",
)
@row_filter_options
@click.option(
    "--rows",
    "rows_file",
    type=click.File("r", encoding="utf-8"),
    metavar="FILE",
    help="Only rows whose id is listed in FILE (one per line; a CSV's first column).",
)
@kill_switch_options(None)
@notify_options
@connection_options
@db_option
@broker_option
@pool_options
@engine_errors
def rerun(
    run_id,
    include_rejected,
    include_unknown,
    rows_file,
    max_failure_rate,
    min_sample,
    notify_url,
    notify_headers,
    notify_command,
    db,
    broker,
    busy_timeout,
    log_file,
    quiet,
    states,
    http_status,
    curl_error,
    error_contains,
    row_ids,
    **overrides,
):
    """The later pass: send every row of RUN_ID that has not succeeded, with the same keys.

    Sends rows that are pending (never sent, or in flight when a run was stopped or
    killed), retrying, or failed. The request settings are the ones stored with the run;
    secrets are read again from the environment. With a filter (--status, --http-status,
    --curl-error, --error-contains, --row-id, --rows) it sends exactly the rows that match
    and did not succeed (without --status: among the rows a plain rerun would send).
    Rejected and unknown rows are sent only with --include-rejected / --include-unknown,
    even when --status names them. An invalid filter value is refused (exit 2).

    \b
    Example:
        python -m engine rerun run-20261123-101500-ab12 --db engine.db
        python -m engine rerun run-20261123-101500-ab12 --http-status 503
        python -m engine rerun run-20261123-101500-ab12 --row-id cus_42 --include-unknown
        python -m engine rerun run-20261123-101500-ab12 --rows customers-to-retry.txt
        python -m engine rerun run-20261123-101500-ab12 --max-failure-rate 0.2 --notify-command 'mail -s run ops'
    """
    refuse_workers_with_broker(broker, overrides.get("workers"))
    selection = None
    named = {
        "states": states,
        "http_status": http_status,
        "curl_error": curl_error,
        "error_contains": error_contains,
        "row_ids": row_ids,
    }
    if names_rows(named) or rows_file:
        rows = row_filter(named, RESEND_STATES + (REJECTED, UNKNOWN), include_rejected, include_unknown)
        for state in rows.held_back() if states else ():  # named, yet not opted in to
            say.warning(f"not resending {state} rows: only with --include-{state} ({RISKS[state]})")
        selection = Selection(rows, tuple(read_row_ids(rows_file)) if rows_file else ())
    result = rerun_run(
        db=db,
        run_id=run_id,
        include_rejected=include_rejected,
        include_unknown=include_unknown,
        selection=selection,
        log_file=log_file,
        quiet=quiet,
        **overrides,
        busy_timeout=busy_timeout,
        broker=broker,
        kill_switch=KillSwitch.from_option(max_failure_rate, min_sample, None),
        notice=Notice.build(notify_url, notify_headers, notify_command),
    )
    finish(result)
