"""Which problems next: difficulty estimates and schedulers (METHODS.md §4).

``difficulty`` turns metadata, measured pass rates or lengths into a normalised difficulty per
problem; ``schedulers.make_curriculum`` binds an rl stage's ``curriculum`` section to them and
gives the RL loop ``init_state / sample / update / log`` over a JSON-serialisable state. An sft
stage's curriculum (and RFT's ``train.curriculum``) is an order of its examples, ``sft_order``;
RFT's sampling budget by measured pass rate is DART, ``budget.dart_allocation``.
"""

from reasonloop.curriculum.difficulty import (accuracy_by_level, bucketize, estimate_difficulty,
                                              length_difficulty, metadata_difficulty, normalise,
                                              pass_rate_difficulty)
from reasonloop.curriculum.schedulers import SCHEDULERS, BatchStats, Curriculum, make_curriculum
from reasonloop.curriculum.sft_order import SFT_ORDERS, anneal_order, epoch_order, static_order

__all__ = ["SCHEDULERS", "BatchStats", "Curriculum", "make_curriculum", "accuracy_by_level", "bucketize",
           "estimate_difficulty", "length_difficulty", "metadata_difficulty", "normalise", "pass_rate_difficulty",
           "SFT_ORDERS", "anneal_order", "epoch_order", "static_order"]
