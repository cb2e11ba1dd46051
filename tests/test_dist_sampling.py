"""Sampling sharded across ranks (issue #21), on CPU with gloo and two real processes.

- (slow) evaluation: each rank samples its strided share of the problems, each problem exactly once, every
  rank ends with all samples; samples and metrics equal one process's (per-(prompt, sample) seeding);
- RL: the rollouts of one step, split over two ranks, are the ones one process draws.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import gloo
from reasonloop import dist
from reasonloop.tasks.base import Problem

pytestmark = pytest.mark.e2e  # subprocesses: outside the inner test loop

PROBLEMS = [Problem(id=f"p{i}", question=f"What is {i} + {i % 3}?", answer=str(i + i % 3)) for i in range(9)]


def launch(job: str, *args, world: int = 2, timeout: float | None = None) -> None:
    """Run JOBS[job](*args) in `world` processes joined by gloo, as torchrun would start them."""
    gloo.launch(__name__, job, *args, world=world, timeout=timeout)


class Recording:
    """The real torch engine, noting which prompts this process was asked to sample."""

    def __init__(self, engine):
        self.engine, self.seen = engine, []

    def generate(self, prompts, params, progress=True, keys=None):
        self.seen += [list(p) for p in prompts]
        return self.engine.generate(prompts, params, progress=progress, keys=keys)


# --------------------------------------------------------------------------- jobs (run in every process)


def job_eval(model_dir: str, out: Path, max_batch: int) -> dict:
    from reasonloop.config import EvalStage, TaskConfig
    from reasonloop.generate import make_engine
    from reasonloop.models import load_model
    from reasonloop.stages.evaluate import evaluate
    from reasonloop.stages.rollout import sample_and_judge, sampling_params

    model, tok = load_model(model_dir, dtype="fp32")
    engine = Recording(make_engine(model, tok, kind="torch", max_batch=max_batch, dtype="fp32", progress=False))
    cfg = EvalStage(kind="eval", k=2, n=3, seeds=2, decoding={"temperature": 1.0, "max_new_tokens": 8})
    result = evaluate(model, tok, PROBLEMS, TaskConfig(), cfg, engine=engine, progress=False)
    engine.seen = []  # the samples below: one call, each problem once on exactly one rank
    judged = sample_and_judge(engine, tok, PROBLEMS, TaskConfig(), sampling_params(cfg.decoding, 3, seed=5), False)
    res = {"result": result, "texts": [j.texts for j in judged], "ids": [j.problem.id for j in judged],
           "seen": engine.seen}
    (out / f"eval{dist.rank()}.json").write_text(json.dumps(res))
    return res


def job_rl(model_dir: str, out: Path) -> dict:
    """The rollouts of RL's first step: {problem index: its group's texts}, over every rank."""
    from reasonloop.config import RlStage, TaskConfig
    from reasonloop.generate import make_engine
    from reasonloop.models import load_model
    from reasonloop.stages.rl import RLLoop

    policy, tok = load_model(model_dir, trainable=True, dtype="fp32")
    engine = make_engine(policy, tok, kind="torch", max_batch=64, dtype="fp32", progress=False)
    cfg = RlStage(kind="rl", steps=1, prompts_per_step=4, group_size=3, save_every=1,
                  decoding={"temperature": 1.0, "max_new_tokens": 8})
    loop = RLLoop(policy, tok, PROBLEMS, cfg, task_cfg=TaskConfig(), engine=engine,
                  reward_fn=lambda completions, problems: [float(len(c)) for c in completions], dtype="fp32")
    _, sampled = loop.collect()
    mine = {}
    for row in range(0, len(sampled), cfg.group_size):
        mine[sampled.indices[row]] = sampled.texts[row:row + cfg.group_size]
    groups = {str(k): v for part in dist.all_gather_object(mine) for k, v in part.items()}
    res = {"groups": groups, "local": len(mine)}
    (out / f"rl{dist.rank()}.json").write_text(json.dumps(res))
    return res


def reward_failing_on_rank_1(completions, problems):
    if dist.rank() == 1:
        raise ValueError("bad reward")
    return [float(len(c)) for c in completions]


def job_rl_reward_fails(model_dir: str, out: Path) -> None:
    """A reward that raises on rank 1 only: every rank must stop with its error, none wait for the others."""
    from reasonloop.config import RlStage, TaskConfig
    from reasonloop.errors import UserError
    from reasonloop.generate import make_engine
    from reasonloop.models import load_model
    from reasonloop.stages.rl import RLLoop

    policy, tok = load_model(model_dir, trainable=True, dtype="fp32")
    engine = make_engine(policy, tok, kind="torch", max_batch=64, dtype="fp32", progress=False)
    cfg = RlStage(kind="rl", steps=2, prompts_per_step=4, group_size=2, decoding={"max_new_tokens": 4})
    loop = RLLoop(policy, tok, PROBLEMS, cfg, task_cfg=TaskConfig(), engine=engine,
                  reward_fn=reward_failing_on_rank_1, dtype="fp32")
    try:
        loop.step()
    except UserError as err:
        (out / f"error{dist.rank()}.txt").write_text(str(err))
    dist.barrier()  # both ranks got here: neither is left waiting in a collective


JOBS = {"eval": job_eval, "rl": job_rl, "rl_reward_fails": job_rl_reward_fails}


# --------------------------------------------------------------------------- tests


def test_gather_strided_restores_the_order():
    items = list("abcdefg")
    assert dist.interleave([items[r::3] for r in range(3)]) == items
    assert dist.interleave([items[r::2] for r in range(2)]) == items
    assert dist.interleave([[], []]) == [] and dist.interleave([["x"], []]) == ["x"]
    assert dist.gather_strided(items) == items  # one process: its share is everything


@pytest.mark.slow  # 67 s measured on a loaded 2-core CPU, most of it two processes importing transformers
def test_eval_two_processes_shard_and_equal_one_process(tmp_path, tiny_model_dir):
    from reasonloop.models import load_tokenizer
    from reasonloop.stages.rollout import prompts_for
    from reasonloop.config import TaskConfig
    from reasonloop.tasks.prompt import encode_prompt

    one = job_eval(str(tiny_model_dir), tmp_path, 16)  # one process, another batch size
    launch("eval", str(tiny_model_dir), tmp_path, 4)
    r0, r1 = (json.loads((tmp_path / f"eval{r}.json").read_text()) for r in (0, 1))
    tok = load_tokenizer(str(tiny_model_dir))
    prompts = [encode_prompt(tok, t) for t in prompts_for(tok, [p.question for p in PROBLEMS], TaskConfig())]
    # Each problem sampled exactly once: rank 0 the even positions, rank 1 the odd ones.
    assert r0["seen"] == prompts[0::2] and r1["seen"] == prompts[1::2]
    for res in (r0, r1):  # every rank has every sample, in the problems' order, and the same metrics
        assert res["ids"] == [p.id for p in PROBLEMS]
        assert res["texts"] == one["texts"]
        assert res["result"] == one["result"]
    assert len({t for group in one["texts"] for t in group}) > len(PROBLEMS)  # sampled, not greedy


def test_rl_rollouts_two_processes_equal_one_process(tmp_path, tiny_model_dir):
    one = job_rl(str(tiny_model_dir), tmp_path)
    launch("rl", str(tiny_model_dir), tmp_path)
    r0, r1 = (json.loads((tmp_path / f"rl{r}.json").read_text()) for r in (0, 1))
    assert len(one["groups"]) == 4 and r0["local"] == r1["local"] == 2  # 4 prompts, 2 per rank
    assert r0["groups"] == r1["groups"] == one["groups"]


def test_reward_error_on_one_rank_stops_every_rank_with_it(tmp_path, tiny_model_dir):
    launch("rl_reward_fails", str(tiny_model_dir), tmp_path, timeout=120)  # it takes ~15 s
    for rank in (0, 1):
        message = (tmp_path / f"error{rank}.txt").read_text()
        assert "reward raised ValueError: bad reward (rank 1)" in message, message
        assert "run the same command to resume" in message
