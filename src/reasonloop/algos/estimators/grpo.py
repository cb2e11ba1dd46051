"""GRPO (Shao et al. 2024, DeepSeekMath): group-normalised advantage per sample, KL as a loss term.
``scale_std: false`` is Dr. GRPO (Liu et al. 2025)."""

from reasonloop.algos.advantages import group_advantages
from reasonloop.algos.estimators import AdvantageInput, register


@register("grpo", groups=True, settings=("scale_std",))
def grpo(inp: AdvantageInput, *, scale_std: bool = True):
    return group_advantages(inp.rewards, inp.group_size, scale_std=scale_std), None
