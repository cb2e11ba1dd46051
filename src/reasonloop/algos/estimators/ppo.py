"""PPO with a value head as in ReFT (Luong et al. 2024): per-token rewards (the score on the last token, a
k1 KL penalty to the reference on every token), GAE, advantages whitened over the batch."""

from reasonloop.algos.advantages import gae, whiten
from reasonloop.algos.estimators import AdvantageInput, register


@register("ppo", value_head=True, kl="reward", kl_estimator="k1",
          settings=("gamma", "lam", "whiten_advantages"))
def ppo(inp: AdvantageInput, *, gamma: float = 1.0, lam: float = 0.95, whiten_advantages: bool = True):
    advantages, returns = gae(inp.token_rewards, inp.values, inp.mask, gamma, lam)  # [N, L] each
    return (whiten(advantages, inp.mask) if whiten_advantages else advantages), returns
