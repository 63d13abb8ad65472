"""A click group that imports a command's module only when that command runs (or help lists it).

``python -m engine mock-api`` or ``status`` then loads what it needs, not the whole engine: the
run settings, the pool and both ledgers stay unimported. This is click's documented pattern for
lazily loaded subcommands. Each command is given its ``ENGINE_*`` variables as it is loaded.
"""

from __future__ import annotations

import importlib

import click

from engine.cli.config import wire_environment


class LazyGroup(click.Group):
    """A group whose ``lazy`` commands are ``{name: "module:attribute"}``, imported on first use."""

    def __init__(self, *args, lazy: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context | None) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context | None, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            module, attribute = self.lazy[cmd_name].split(":")
            command = getattr(importlib.import_module(module), attribute)
            wire_environment(command, (cmd_name,))
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)
