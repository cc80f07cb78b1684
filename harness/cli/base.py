"""The Typer application class every command module registers on.

typer's rich help prints a value type for every option, booleans included, so a switch such as
``--overwrite`` reads ``--overwrite <bool>`` although it takes no value. :class:`HarnessTyper`
builds its groups and commands with classes that give every flag (``--help`` too) an empty
metavar, which leaves the type column of a flag blank. A command registered with
``HarnessTyper.command`` or a sub-application made with ``HarnessTyper`` gets this without
further code; a test walks the whole command tree to keep it so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption


def blank_flag_types(params: Iterable[object]) -> None:
    """Give every flag among ``params`` (an option that takes no value) an empty metavar, unless
    it has one of its own; options that take a value keep their type."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""


class FlagCommand(TyperCommand):
    """A typer command whose help shows no value type for its flags."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        blank_flag_types(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # made on first use, after __init__
        blank_flag_types([option])
        return option


class FlagGroup(TyperGroup):
    """A typer group (the root application, ``harness cohort``) whose help shows no value type
    for its flags (``--version``, ``--verbose``, ``--help``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        blank_flag_types(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        blank_flag_types([option])
        return option


class HarnessTyper(typer.Typer):
    """``typer.Typer`` whose groups and commands default to :class:`FlagGroup` and
    :class:`FlagCommand`; an explicit ``cls`` must subclass them."""

    def __init__(self, *, cls: type[TyperGroup] | None = None, **kwargs: Any) -> None:
        super().__init__(cls=_checked(cls, FlagGroup), **kwargs)

    def command(  # type: ignore[override]
        self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return super().command(name, cls=_checked(cls, FlagCommand), **kwargs)


def _checked(cls: type[Any] | None, base: type[Any]) -> type[Any]:
    if cls is None:
        return base
    if not issubclass(cls, base):
        raise TypeError(f"{cls.__name__} must subclass {base.__name__} (flags show no type)")
    return cls
