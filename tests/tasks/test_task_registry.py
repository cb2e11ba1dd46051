"""A new task source is one registration: the recipe's `task.source`, `load_task` and `--task` know it."""

import pytest

from reasonloop.config import TaskConfig, load_recipe
from reasonloop.errors import UserError
from reasonloop.tasks import Problem, load_task, task_sources
from reasonloop.tasks.registry import TaskSource, register_source, task_section, unregister_source


def _doubling(cfg):
    """A toy source: `task.train: N` asks for N problems "What is 2 * i?"; the test split is 3 more."""
    n = int(cfg.train or 4)
    make = lambda lo, hi: [Problem(id=f"double-{i}", question=f"What is 2 * {i}?", answer=str(2 * i),  # noqa: E731
                                   reasoning=f"2 * {i} = {2 * i}", source="double") for i in range(lo, hi)]
    return make(0, n), make(n, n + 3)


@pytest.fixture
def doubling():
    register_source(TaskSource("double", _doubling, spec_help="double:<n>",
                               parse_spec=lambda s: {"source": "double", "train": s[7:]} if s.startswith("double:")
                               else None))
    yield
    unregister_source("double")


def test_registered_source_loads_and_validates(doubling, tmp_path):
    assert "double" in task_sources()
    data = load_task(TaskConfig(source="double", train="5"))
    assert [p.answer for p in data.train] == ["0", "2", "4", "6", "8"] and len(data.test) == 3
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task:\n  source: double\nstages:\n  - kind: eval\n")
    assert load_recipe(recipe).task.source == "double"


def test_command_line_task_spec_reads_the_registry(doubling):
    assert task_section("double:7") == {"source": "double", "train": "7"}
    assert task_section("gsm8k") == {"source": "gsm8k"}
    with pytest.raises(UserError, match=r"--task mathqa: unknown task \(expected gsm8k, file.jsonl, "
                                        r"gym:<reasoning-gym name>, double:<n>\)"):
        task_section("mathqa")


def test_unregistered_source_is_refused_with_the_registered_names(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task:\n  source: double\nstages:\n  - kind: eval\n")
    with pytest.raises(UserError, match=r"r.yaml:2: task.source: expected one of gsm8k, .*gym, got 'double'"):
        load_recipe(recipe)


def test_empty_split_names_the_source(doubling):
    with pytest.raises(UserError, match="task.train: no problems in 0"):
        load_task(TaskConfig(source="double", train="0"))
