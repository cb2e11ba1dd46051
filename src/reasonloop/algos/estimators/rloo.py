"""RLOO (Ahmadian et al. 2024): each sample's baseline is the mean reward of the other G-1 of its group."""

from reasonloop.algos.advantages import leave_one_out
from reasonloop.algos.estimators import AdvantageInput, register


@register("rloo", groups=True)
def rloo(inp: AdvantageInput):
    return leave_one_out(inp.rewards, inp.group_size), None
