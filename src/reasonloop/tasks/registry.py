"""Task sources: one table `name -> (loader, --task spec parser)`, the reasoning-gym way.

Each source is one module in this package that builds its loader and calls `register_source` (built-in
ones are listed in BUILTIN_SOURCES; user code imports its own before loading a recipe); the
recipe's `task.source` field, `load_task` and the command line's `--task` read this table. A new source
is one file (plus its test, which can register a toy source the same way).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from reasonloop.errors import UserError
from reasonloop.tasks.base import Problem

Loader = Callable[..., tuple[list[Problem], list[Problem]]]  # load(task_cfg) -> (train, test)


@dataclass(frozen=True)
class TaskSource:
    name: str
    """The value of `task.source`."""
    load: Loader
    """(train, test) problems for a TaskConfig (reasonloop.config); bad input raises a one-line UserError."""
    parse_spec: Callable[[str], dict | None] | None = None
    """`--task SPEC` -> the recipe's `task` section, or None when SPEC is not this source's."""
    spec_help: str | None = None
    """How `--task` names this source, e.g. `gym:<reasoning-gym name>` (None: not on the command line)."""
    describe: Callable[..., str] | None = None
    """describe(task_cfg, split) -> what an empty split came from, for the error (default: the split's path)."""


# The built-in sources, one module each, imported when the table is first read: `reasonloop.tasks` stays
# importable without pydantic or reasoning-gym (the sandbox's child imports the verifier, which imports it).
# This order is the order `reasonloop tasks` and `--task` errors list them in.
BUILTIN_SOURCES = ("gsm8k", "jsonl", "parquet", "hf", "gym")

_SOURCES: dict[str, TaskSource] = {}
_builtins_loaded = False


def _sources() -> dict[str, TaskSource]:
    """Every registered source, the built-in ones first, in BUILTIN_SOURCES order."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True  # before the imports: each module calls register_source
        for name in BUILTIN_SOURCES:
            importlib.import_module(f"reasonloop.tasks.{name}")
    builtin = {name: _SOURCES[name] for name in BUILTIN_SOURCES if name in _SOURCES}
    return {**builtin, **{name: s for name, s in _SOURCES.items() if name not in builtin}}


def register_source(source: TaskSource) -> TaskSource:
    _SOURCES[source.name] = source
    return source


def unregister_source(name: str) -> None:
    _SOURCES.pop(name, None)


def task_sources() -> tuple[str, ...]:
    return tuple(_sources())


def get_source(name: str) -> TaskSource:
    if name not in _sources():
        raise UserError(f"task.source: unknown source {name!r}; expected one of {', '.join(_sources())}")
    return _SOURCES[name]


def task_section(spec: str) -> dict:
    """The `task` section a `--task SPEC` flag stands for; the first source that claims SPEC wins."""
    for source in _sources().values():
        section = source.parse_spec(spec) if source.parse_spec is not None else None
        if section is not None:
            return section
    expected = ", ".join(s.spec_help for s in _sources().values() if s.spec_help)
    raise UserError(f"--task {spec}: unknown task (expected {expected})")


def paths_required(split_loader: Callable[..., list[Problem]]) -> Loader:
    """A loader for sources whose splits are files or dataset specs: `task.train` and `task.test` are required,
    and `split_loader(task_cfg, path, split)` reads one."""

    def load(cfg) -> tuple[list[Problem], list[Problem]]:
        splits = []
        for split in ("train", "test"):
            path = getattr(cfg, split)
            if path is None:
                raise UserError(f"task.{split}: required for source {cfg.source!r}")
            splits.append(split_loader(cfg, path, split))
        return splits[0], splits[1]

    return load
