"""Stage kinds: one table `kind -> (config model, module that runs it)`.

The recipe schema (`config.Recipe.stages`), the command line (one subcommand per kind), recipe error
messages (`recipe_io`), the pipeline and the curriculum read this table; none lists the kinds again.
A new stage kind is its config model (a `StageBase` subclass with `kind: Literal["<kind>"]`), its module
(`run(ctx, cfg, name) -> dict`), and one `register_stage` call, here for built-in kinds or in user code.

The module is a dotted path imported when a stage of that kind runs, so loading a recipe never imports
torch-heavy stage code (and `config` -> `stage_registry` -> `stages` would be an import cycle).
"""

from __future__ import annotations

import importlib
import typing
from dataclasses import dataclass
from typing import Annotated, Callable, Union

from pydantic import Field

from reasonloop.stage_config import EvalStage, RftStage, RlStage, SftStage, StageBase, VerifierStage

RunFn = Callable[..., dict]  # run(ctx: pipeline.RunContext, cfg: <config model>, name: str) -> dict


@dataclass(frozen=True)
class StageKind:
    kind: str
    config: type[StageBase]
    """The stage's section of a recipe."""
    run: str | RunFn
    """Dotted module path whose `run(ctx, cfg, name)` runs the stage (imported on use), or the function."""
    help: str = ""
    """One line for `reasonloop <kind> --help`."""
    curriculum_signals: frozenset[str] | None = None
    """What the stage gives a curriculum to steer by (`rewards`, `advantages`); None: it takes no curriculum."""

    def run_fn(self) -> RunFn:
        return self.run if callable(self.run) else importlib.import_module(self.run).run


_KINDS: dict[str, StageKind] = {}
_listeners: list[Callable[[], None]] = []


def _kind_of(config: type[StageBase]) -> str:
    field = config.model_fields.get("kind")
    values = typing.get_args(field.annotation) if field is not None else ()
    if len(values) != 1 or not isinstance(values[0], str):
        raise TypeError(f"{config.__name__}.kind must be a one-value Literal, e.g. kind: Literal['eval']")
    return values[0]


def register_stage(config: type[StageBase], run: str | RunFn, *, help: str = "",
                   curriculum_signals: tuple[str, ...] | None = None) -> StageKind:
    """Add (or replace) a stage kind; the kind is the value of the config model's `kind` Literal."""
    entry = StageKind(_kind_of(config), config, run, help,
                      None if curriculum_signals is None else frozenset(curriculum_signals))
    _KINDS[entry.kind] = entry
    _changed()
    return entry


def unregister_stage(kind: str) -> None:
    """Remove a kind (tests that register a toy kind clean up with this)."""
    _KINDS.pop(kind, None)
    _changed()


def on_change(callback: Callable[[], None]) -> None:
    """Call `callback` after every (un)registration: `config` rebuilds the recipe schema's stage union."""
    _listeners.append(callback)


def _changed() -> None:
    for callback in _listeners:
        callback()


def stage_kinds() -> tuple[str, ...]:
    return tuple(_KINDS)


def get_stage(kind: str) -> StageKind:
    if kind not in _KINDS:
        raise KeyError(f"unknown stage kind {kind!r}; expected one of {', '.join(_KINDS)}")
    return _KINDS[kind]


def stage_union():
    """The type of one entry of `Recipe.stages`: the registered config models, told apart by `kind`."""
    configs = tuple(e.config for e in _KINDS.values())
    return configs[0] if len(configs) == 1 else Annotated[Union[configs], Field(discriminator="kind")]


register_stage(EvalStage, "reasonloop.stages.evaluate", help="evaluate a model (greedy top-1, maj@k, pass@k)")
register_stage(SftStage, "reasonloop.stages.sft", help="supervised fine-tuning on gold or given solutions",
               curriculum_signals=())
register_stage(RftStage, "reasonloop.stages.rft", help="rejection-sampling fine-tuning (sample, verify, train)",
               curriculum_signals=("rewards",))
register_stage(RlStage, "reasonloop.stages.rl_run", help="reinforcement learning (GRPO, RLOO, PPO)",
               curriculum_signals=("rewards", "advantages"))
register_stage(VerifierStage, "reasonloop.stages.verifier",
               help="train a verifier on sampled, judged solutions (for rerank@k and weighted voting)")
