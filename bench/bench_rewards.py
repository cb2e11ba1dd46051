"""A reward with variance for the GRPO benchmark: a seeded hash of each completion's text, in [0, 1).

The correctness reward is 0 for every sample of the base model on GSM8K, so every group is flat:
reasonloop then skips the update (no signal) while TRL still runs forward and backward, and the step
times compare different work. With this reward, two different completions of a group almost surely
differ in reward, so both sides update every step. Written in TRL's convention, which reasonloop
accepts as it is (`verify.rewards.calling_convention`).
"""

from __future__ import annotations

import hashlib


def text_hash(completions, **kwargs) -> list[float]:
    return [int.from_bytes(hashlib.blake2b(c.encode(), digest_size=8, key=b"bench").digest(), "big") / 2**64
            for c in completions]
