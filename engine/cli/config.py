"""Where an option's value comes from: the command line, an ``ENGINE_*`` variable, a TOML file, its default.

Click decides the precedence (command line > environment > ``default_map`` > default); this
module only feeds it. Every option of every command gets two variables: ``ENGINE_<COMMAND>_<OPTION>``
for that command alone, then ``ENGINE_<OPTION>`` shared by every command that has the option
(``ENGINE_DB``, ``ENGINE_CHUNKS``…); ``--help`` shows them. ``--config FILE`` is read into click's
``default_map``: top-level keys are shared, a table per command (``[bill]``) overrides them.

A config file is checked in, copied and mailed around, so it must not hold a secret: a secret
header's value must be a ``${VAR}`` reference, a URL must not carry a password, a signing key
must be a reference. Such a file is refused in one line naming the key (exit 2).
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import urlsplit

import click

if sys.version_info >= (3, 11):
    import tomllib
else:  # the backport, installed on 3.10 only (setup.cfg)
    import tomli as tomllib

from engine.errors import UsageError
from engine.request.spec import ENV_REF

#: The prefix of every option's environment variable.
ENV_PREFIX = "ENGINE"
#: Options whose value is a URL that must not carry a password in a file (it goes in the environment).
URL_KEYS = frozenset({"broker", "db", "proxy"})
#: Options whose value holds a key: in a file, only as a ``${VAR}`` reference.
SECRET_KEYS = frozenset({"sign"})
#: What repeated options take from a variable: one value per line (a header holds spaces).
LINE_SPLITTER = "\n"


class ConfigFileError(UsageError):
    """A config file that cannot be used: unreadable, not TOML, an unknown key, a secret in it."""


def option_key(option: click.Option) -> str:
    """The name an option has in a file and in its variable: its long flag without ``--``."""
    longs = [opt for opt in option.opts if opt.startswith("--")]
    return (longs[0] if longs else f"--{option.name}")[2:]


def envvar_name(*parts: str) -> str:
    return "_".join([ENV_PREFIX, *parts]).upper().replace("-", "_").replace(".", "_")


def user_options(command: click.Command) -> list[click.Option]:
    """The options a user sets (not --help, --version, --config)."""
    return [
        param
        for param in command.params
        if isinstance(param, click.Option) and not param.is_eager and param.name not in ("config",)
    ]


def wire_environment(command: click.Command, path: tuple[str, ...] = ()) -> None:
    """Give every option of ``command`` and its subcommands its ``ENGINE_*`` variables, shown in --help.

    An option that already names its own variable (``--broker``: ``ENGINE_BROKER``) keeps it.
    A repeated option reads one value per line of its variable, not per word."""
    for option in user_options(command):
        if option.envvar is None:
            key = option_key(option)
            option.envvar = [envvar_name(*path, key), envvar_name(key)] if path else [envvar_name(key)]
        option.show_envvar = True
        if option.multiple and isinstance(option.type, click.types.StringParamType):
            option.type = _LineString()
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            wire_environment(sub, (*path, name))


class _LineString(click.types.StringParamType):
    """A string option repeated from a variable one line at a time."""

    envvar_list_splitter = LINE_SPLITTER


def subcommands(command: click.Command) -> dict[str, click.Command]:
    """``command``'s subcommands by name, lazily loaded ones included; none for a plain command."""
    if not isinstance(command, click.Group):
        return {}
    found = {name: command.get_command(None, name) for name in command.list_commands(None)}  # type: ignore[arg-type]
    return {name: sub for name, sub in found.items() if sub is not None}


def load_default_map(group: click.Group, path: str) -> dict[str, Any]:
    """The file at ``path`` as click's ``default_map`` for ``group``: ConfigFileError when it is not
    TOML, names an option no command has, or holds a secret."""
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as err:
        raise ConfigFileError(f"--config {path}: cannot read: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigFileError(f"--config {path}: not valid TOML: {err}") from None
    return _defaults_for(group, document, path, ())


def _defaults_for(command: click.Command, table: dict, path: str, where: tuple[str, ...]) -> dict[str, Any]:
    """``table``'s keys as ``{param name: value}`` for ``command``; its sub-tables for its subcommands,
    each also given the shared (top-level) keys its options know."""
    commands = subcommands(command)
    shared = {key: value for key, value in table.items() if not isinstance(value, dict)}
    defaults = _options_of(command, shared, path, where, strict=not commands)
    unknown = set(shared)
    for name, sub in commands.items():
        known_here = {_normal(option_key(o)) for o in user_options(sub)} | {o.name for o in user_options(sub)}
        unknown -= {key for key in shared if _normal(key) in known_here}
        own = table.get(name, {})
        mine = {key: value for key, value in shared.items() if _normal(key) in known_here}
        nested = _defaults_for(sub, {**mine, **own}, path, (*where, name))
        if nested:
            defaults[name] = nested
    unknown -= {key for key in shared if _find(command, key) is not None}
    for key in sorted(unknown):
        raise ConfigFileError(f"--config {path}: {_label(where, key)}: no command has this option")
    for key in sorted(set(table) - set(shared) - set(commands)):
        raise ConfigFileError(f"--config {path}: [{'.'.join((*where, key))}]: no such command")
    return defaults


def _options_of(command: click.Command, table: dict, path: str, where: tuple[str, ...], strict: bool) -> dict:
    values: dict[str, Any] = {}
    for key, value in table.items():
        option = _find(command, key)
        if option is None:
            if strict:
                raise ConfigFileError(f"--config {path}: {_label(where, key)}: {' '.join(where)} has no such option")
            continue
        if option.is_flag and not option.is_bool_flag:  # --no-proxy = true: the value the flag stands for
            if value is True:
                values[option.name or key] = option.flag_value
            continue
        values[option.name or key] = value
    _refuse_secrets(values, path, where)
    return values


def _refuse_secrets(values: dict[str, Any], path: str, where: tuple[str, ...]) -> None:
    from engine.config import check_secret_headers  # the run settings: imported only when a file is read

    try:
        check_secret_headers(_listed(values.get("headers")), _listed(values.get("secret_headers")))
    except UsageError as err:
        raise ConfigFileError(f"--config {path}: {_label(where, 'header')}: {err}") from None
    for key in URL_KEYS & set(values):
        if isinstance(values[key], str) and _has_password(values[key]):
            raise ConfigFileError(
                f"--config {path}: {_label(where, key)}: a password must not be in a config file;"
                f" set ENGINE_{key.upper()} in the environment instead"
            )
    for key in SECRET_KEYS & set(values):
        for value in _listed(values[key]):
            if not ENV_REF.search(value):
                raise ConfigFileError(
                    f"--config {path}: {_label(where, key)}: a key must not be in a config file;"
                    " write it as ${VAR} and set VAR in the environment"
                )


def _has_password(url: str) -> bool:
    try:
        return "://" in url and urlsplit(url).password is not None
    except ValueError:
        return False


def _find(command: click.Command, key: str) -> click.Option | None:
    for option in user_options(command):
        if _normal(key) in (_normal(option_key(option)), option.name):
            return option
    return None


def _normal(key: str) -> str:
    return key.replace("-", "_")


def _listed(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(item) for item in value]


def _label(where: tuple[str, ...], key: str) -> str:
    return f"[{'.'.join(where)}] {key}" if where else key
