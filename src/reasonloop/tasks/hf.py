"""Source `hf`: Hugging Face datasets, each split named `dataset_id[:config]:split` (needs `datasets`);
`task.fields` maps their columns."""

from __future__ import annotations

from reasonloop.tasks.files import mapped_problems
from reasonloop.tasks.registry import TaskSource, paths_required, register_source

register_source(TaskSource("hf", paths_required(mapped_problems)))
