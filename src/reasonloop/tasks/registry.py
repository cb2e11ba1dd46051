"""Task sources: one table `name -> (loader, --task spec parser)`, the reasoning-gym way.

Each source is one module in this package that builds its loader and calls `register_source`; the
recipe's `task.source` field, `load_task` and the command line's `--task` read this table. A new source
is one file (plus its test, which can register a toy source the same way).
"""

from __future__ import annotations

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


_SOURCES: dict[str, TaskSource] = {}


def register_source(source: TaskSource) -> TaskSource:
    _SOURCES[source.name] = source
    return source


def unregister_source(name: str) -> None:
    _SOURCES.pop(name, None)


def task_sources() -> tuple[str, ...]:
    return tuple(_SOURCES)


def get_source(name: str) -> TaskSource:
    if name not in _SOURCES:
        raise UserError(f"task.source: unknown source {name!r}; expected one of {', '.join(_SOURCES)}")
    return _SOURCES[name]


def task_section(spec: str) -> dict:
    """The `task` section a `--task SPEC` flag stands for; the first source that claims SPEC wins."""
    for source in _SOURCES.values():
        section = source.parse_spec(spec) if source.parse_spec is not None else None
        if section is not None:
            return section
    expected = ", ".join(s.spec_help for s in _SOURCES.values() if s.spec_help)
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
