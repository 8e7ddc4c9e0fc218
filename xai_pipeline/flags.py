"""CLI flags made from configuration dataclasses: one ``--flag`` per field, typed from its
annotation, with the help text and choices kept in the field's metadata (see :func:`opt`)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, TypeVar

from xai_pipeline.errors import ConfigError


def opt(help: str, *, required: bool = False, choices: tuple[str, ...] | None = None, metavar: str | None = None, positional: bool = False) -> dict[str, Any]:
    """Field metadata for a CLI option (``positional=True``: an argument, not a flag)."""
    return {"help": help, "required": required, "choices": choices, "metavar": metavar, "positional": positional}


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def check_range(config: Any, *names: str, low: float = 0.0, high: float | None = None, low_open: bool = False,
                high_open: bool = False, allow_none: bool = False) -> None:
    """Each named field at least ``low`` (above it with ``low_open``) and, given ``high``, at most
    ``high`` (below it with ``high_open``); ``None`` passes only with ``allow_none``, NaN never.
    Else a :class:`ConfigError` naming the flag and the range."""
    for name in names:
        value = getattr(config, name)
        if value is None and allow_none:
            continue
        if value is None or not ((value > low if low_open else value >= low) and (high is None or (value < high if high_open else value <= high))):
            if high is None:
                wanted = "positive" if low_open and low == 0 else f"{'>' if low_open else '>='} {low:g}"
            else:
                wanted = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise ConfigError(f"{flag_name(name)} must be {wanted}, got {value}")


def check_choice(config: Any, name: str) -> None:
    choices = {f.name: f for f in dataclasses.fields(config)}[name].metadata.get("choices")
    if choices and getattr(config, name) not in choices:
        raise ConfigError(f"{flag_name(name)} must be one of {', '.join(choices)}; got {getattr(config, name)!r}")


def _scalar_type(annotation: Any) -> type:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def add_arguments(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """Add one ``--flag`` per dataclass field, typed from its annotation."""
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        meta = f.metadata
        kind = _scalar_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = meta.get("help", "").replace("%", "%%")  # argparse formats help with %
        if not meta.get("required") and default not in (None, ""):
            help_text += f" (default: {default})"
        if meta.get("positional"):
            parser.add_argument(f.name, choices=meta.get("choices"), help=help_text)
            continue
        if kind is bool:
            parser.add_argument(flag_name(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        parser.add_argument(
            flag_name(f.name),
            dest=f.name,
            type=kind,
            default=default,
            required=bool(meta.get("required")),
            choices=meta.get("choices"),
            metavar=meta.get("metavar") or (None if meta.get("choices") else f.name.upper()),
            help=help_text,
        )


C = TypeVar("C")


def from_namespace(config_cls: type[C], namespace: argparse.Namespace) -> C:
    names = {f.name for f in dataclasses.fields(config_cls)}  # type: ignore[arg-type]
    return config_cls(**{k: v for k, v in vars(namespace).items() if k in names})
