"""``config show``: the value each option would have, and where it came from, secrets redacted."""

from __future__ import annotations

import json
import os
from urllib.parse import urlsplit

import click

from engine.cli.config import user_options
from engine.config import SECRET_HEADERS
from engine.request.spec import ENV_REF, REDACTED, split_header

#: How ``config show`` names each source click records.
SOURCES = {
    click.core.ParameterSource.COMMANDLINE: "command line",
    click.core.ParameterSource.ENVIRONMENT: "environment",
    click.core.ParameterSource.DEFAULT_MAP: "file",
    click.core.ParameterSource.DEFAULT: "default",
}


@click.group()
def config():
    """Inspect the configuration: options from the command line, ENGINE_* variables, --config FILE.

    \b
    Example:
        python -m engine --config engine.toml config show bill
    """


@config.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("command_name", metavar="[COMMAND]", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def show(ctx: click.Context, command_name: str | None, args: tuple[str, ...]):
    """Print the value every option of COMMAND has (the top-level options without COMMAND), one
    ``key = value  # source`` line each, the source being command line, environment (which
    variable), file (which) or default. Secrets are redacted. Options after COMMAND are taken as
    that command would take them.

    \b
    Example:
        ENGINE_CHUNKS=50 python -m engine --config engine.toml config show bill --rate 20
    """
    root = ctx.find_root()
    group = root.command
    if command_name is None:
        target = root
    else:
        assert isinstance(group, click.Group)
        command = group.get_command(root, command_name)
        if command is None:
            raise click.UsageError(f"no such command: {command_name}")
        target = command.make_context(command_name, list(args), parent=root, resilient_parsing=True)
    for line in describe(target, root.params.get("config")):
        click.echo(line)


def describe(ctx: click.Context, config_file: str | None) -> list[str]:
    """One ``key = value  # source`` line per option of ``ctx``'s command (TOML, so it can be pasted
    into a config file); an option with no value is a comment."""
    secret_headers = tuple(ctx.params.get("secret_headers") or ())
    lines = []
    for option in user_options(ctx.command):
        name = option.name or ""
        key = next((opt[2:] for opt in option.opts if opt.startswith("--")), name)
        source = _source(ctx, option, config_file)
        value = ctx.params.get(name)
        if value is None or value == ():
            lines.append(f"# {key}: not set ({source})")
        else:
            lines.append(f"{key} = {_toml(_redacted(name, value, secret_headers))}  # {source}")
    return lines


def _source(ctx: click.Context, option: click.Option, config_file: str | None) -> str:
    source = ctx.get_parameter_source(option.name or "")
    said = SOURCES.get(source, "default") if source is not None else "default"
    if source == click.core.ParameterSource.ENVIRONMENT:
        names = [option.envvar] if isinstance(option.envvar, str) else list(option.envvar or ())
        found = next((name for name in names if _set(name)), None)
        return f"{said} {found}" if found else said
    if source == click.core.ParameterSource.DEFAULT_MAP and config_file:
        return f"{said} {config_file}"
    return said


def _set(name: str) -> bool:
    return bool(os.environ.get(name))


def _redacted(name: str, value, secret_headers: tuple[str, ...]):
    """``value`` with what could be a secret replaced: a secret header's literal text (a ``${VAR}``
    reference is shown as it is), a URL's password, a signing key that is not a reference."""
    if isinstance(value, tuple | list):
        return [_redacted(name, item, secret_headers) for item in value]
    if not isinstance(value, str):
        return value
    if name == "headers":
        name_value = split_header(value)
        secret = SECRET_HEADERS | {header.lower() for header in secret_headers}
        if name_value and name_value[0].lower() in secret and not ENV_REF.search(name_value[1]):
            return f"{name_value[0]}: {REDACTED}"
        return value
    if name in ("sign", "signs") and not ENV_REF.search(value):
        return REDACTED
    if "://" in value:
        try:
            parts = urlsplit(value)
        except ValueError:
            return value
        if parts.password:
            return value.replace(f":{parts.password}@", f":{REDACTED}@", 1)
    return value


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)
