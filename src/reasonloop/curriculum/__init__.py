"""Which problems next: difficulty estimates and schedulers (METHODS.md §4).

``difficulty`` turns metadata, measured pass rates or lengths into a normalised difficulty per
problem; ``schedulers.make_curriculum`` binds a recipe's ``curriculum`` section to them and
gives the loops ``init_state / sample / update / log`` over a JSON-serialisable state.
"""

from reasonloop.curriculum.difficulty import (accuracy_by_level, bucketize, estimate_difficulty,
                                              length_difficulty, metadata_difficulty, normalise,
                                              pass_rate_difficulty)
from reasonloop.curriculum.schedulers import SCHEDULERS, BatchStats, Curriculum, make_curriculum

__all__ = ["SCHEDULERS", "BatchStats", "Curriculum", "make_curriculum", "accuracy_by_level", "bucketize",
           "estimate_difficulty", "length_difficulty", "metadata_difficulty", "normalise", "pass_rate_difficulty"]
