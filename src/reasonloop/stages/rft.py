"""The RFT stage: sample -> verify -> keep distinct correct paths -> train with the SFT loop, R rounds.

Rejection-sampling fine-tuning ("Scaling Relationship on Learning Mathematical Reasoning with LLMs",
Yuan et al. 2023): sample k solutions per training question, keep the correct ones as distinct
reasoning paths (plus the gold solution), pool paths from several models, fine-tune. Variants, each
a recipe setting (config.RftStage): DART-Math's difficulty-aware allocation (Tong et al. 2024),
STaR rationalisation with the gold answer as a hint (Zelikman et al. 2022), and repeated rounds
(Expert Iteration). Training is `stages.sft.SftTrainer` itself, so every SFT objective applies.

Stage folder (resume skips whatever a round has finished):
  pool/<i>.jsonl                samples drawn once from pooled model i
  round_<r>/samples.jsonl       every sample judged this round (reusable as a pooled sample file)
  round_<r>/stats.jsonl         per question: drawn, correct, pass_rate, distinct, kept, ...
  round_<r>/kept.jsonl          the training set: prompt, response, source (an SFT `data: jsonl` file)
  round_<r>/checkpoint/         the round's SFT trainer state; round_<r>/train.json its result
  round_<r>/model/, model/      each round's output; the last round's is the stage's `model/`
"""

from __future__ import annotations

import gc
import json
import logging
import zlib
from pathlib import Path

import torch

from reasonloop import dist
from reasonloop.atomic import write_text_atomic
from reasonloop.stages.rft_paths import star_hint_prompt
from reasonloop.errors import UserError
from reasonloop.stages.rollout import prompts_for, sample_and_judge, sampling_params
from reasonloop.stages.rft_data import (allocate_samples, gold_is_checkable, load_jsonl, read_sample_file,
                                        select_paths, summarise, training_question, write_jsonl_atomic)
from reasonloop.tasks import train_subset
from reasonloop.tasks.base import Problem
from reasonloop.tasks.prompt import gold_response, prompt_text

log = logging.getLogger(__name__)


def _seed(*parts: int | str) -> int:
    """A stable seed per (stage seed, round, call, ...): every sampling call draws fresh samples."""
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


class _Sampler:
    """One model behind the rollout engine, turning judged samples into sample records."""

    def __init__(self, ctx, cfg, model_ref: str):
        from reasonloop.generate import make_engine
        from reasonloop.models import load_model

        self.ctx, self.cfg = ctx, cfg
        self.model, self.tok = load_model(model_ref, dtype=ctx.recipe.model.dtype)
        self.engine = make_engine(self.model, self.tok, kind=ctx.recipe.run.engine, max_batch=cfg.batch_size,
                                  dtype=ctx.recipe.model.dtype, progress=ctx.progress)

    def close(self) -> None:
        del self.engine, self.model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def draw(self, problems: list[Problem], n: int, seed: int, source: str, r: int,
             questions: list[str] | None = None) -> list[dict]:
        """``n`` judged samples per problem; ``questions`` replace the problems' own (STaR hints)."""
        task_cfg = self.ctx.recipe.task
        prompts = None if questions is None else prompts_for(self.tok, questions, task_cfg)
        judged = sample_and_judge(self.engine, self.tok, problems, task_cfg,
                                  sampling_params(self.cfg.decoding, n, seed), self.ctx.progress, prompts)
        eos = self.tok.eos_token or ""
        rows = []
        for i, j in enumerate(judged):
            for text, ans, ok, n_tok in zip(j.texts, j.answers, j.correct, j.tokens):
                # An engine may decode the end-of-turn token; training appends its own.
                text = text[: -len(eos)] if eos and text.endswith(eos) else text
                row = {"problem_id": j.problem.id, "completion": text, "answer": ans, "gold": j.problem.answer,
                       "correct": bool(ok), "tokens": n_tok, "source": source, "round": r}
                if questions is not None:
                    row["hinted_question"] = questions[i]
                rows.append(row)
        return rows


def _draw_round(ctx, cfg, r: int, problems: list[Problem], model_ref: str, pooled: list[dict]) -> list[dict]:
    """This round's own samples (fixed k or DART) and STaR rationalisations, as sample records."""
    sampler = _Sampler(ctx, cfg, model_ref)
    rows: list[dict] = []
    try:
        def sample(requests: dict[int, int], call: int) -> dict[int, list[bool]]:
            flags: dict[int, list[bool]] = {}
            for n in sorted(set(requests.values())):  # one engine call per sample count
                idx = [i for i, m in requests.items() if m == n]
                got = sampler.draw([problems[i] for i in idx], n, _seed(cfg.seed, r, call, n), "sample", r)
                rows.extend(got)
                by_id: dict[str, list[bool]] = {}
                for g in got:
                    by_id.setdefault(g["problem_id"], []).append(g["correct"])
                for i in idx:
                    flags[i] = by_id.get(problems[i].id, [])
            return flags

        tries, correct, calls = allocate_samples(sample, len(problems), cfg.k, cfg.allocation, cfg.min_correct,
                                                 cfg.budget)
        log.info("round %d: %d samples in %d sampling calls, %d/%d questions solved", r, sum(tries), calls,
                 sum(c > 0 for c in correct), len(problems))
        if cfg.rationalize:
            solved = {row["problem_id"] for row in rows + pooled if row["correct"]}
            unsolved = [p for p in problems if p.id not in solved]
            if unsolved:
                hinted = [star_hint_prompt(p.question, p.answer) for p in unsolved]
                rows += sampler.draw(unsolved, cfg.k, _seed(cfg.seed, r, "star"), "star", r, hinted)
                log.info("round %d: STaR re-sampled %d unsolved questions with the answer as a hint", r,
                         len(unsolved))
    finally:
        sampler.close()
    return rows


def _filter_round(ctx, cfg, problems: list[Problem], rows: list[dict], tok) -> tuple[list[dict], list[dict]]:
    """Kept training rows (prompt without any hint, response, source) and per-question statistics."""
    task_cfg = ctx.recipe.task
    by_problem: dict[str, list[dict]] = {p.id: [] for p in problems}
    for row in rows:
        by_problem[row["problem_id"]].append(row)
    kept, stats = [], []
    for p in problems:
        gold = gold_response(p, task_cfg.answer_format, task_cfg.strip_calculator) if cfg.include_gold else None
        rows_p, stat = select_paths(p, by_problem[p.id], gold, cfg.dedup, cfg.max_per_question,
                                    cfg.check_equations)
        for row in rows_p:
            question = training_question(row, p)
            row.pop("hinted_question", None)
            row["prompt"] = prompt_text(tok, question, task_cfg.prompt, task_cfg.answer_format)
        kept += rows_p
        stats.append(stat)
    return kept, stats


def _store_round(ctx, name: str, r: int, step: int, problems: list[Problem], samples: list[dict],
                 stats: list[dict], tok) -> None:
    """Samples, round metrics and per-question pass rates / distinct paths into the run store, once."""
    task_cfg = ctx.recipe.task
    prompts = {p.id: prompt_text(tok, p.question, task_cfg.prompt, task_cfg.answer_format) for p in problems}
    ctx.store.add_samples(name, r, [
        {**s, "prompt": prompts[s["problem_id"]], "reward": float(s["correct"]),
         "meta": {"source": s["source"], "round": r, **({"hint": True} if "hinted_question" in s else {})}}
        for s in samples])
    summary = summarise(stats)
    ctx.store.log_metrics(name, step, {f"rft_{k}": v for k, v in summary.items() if not isinstance(v, dict)})
    ctx.store.set_problem_stats(name, "pass_rate", {s["problem_id"]: s["pass_rate"] for s in stats})
    ctx.store.set_problem_stats(name, "distinct_paths", {s["problem_id"]: s["distinct"] for s in stats})


def _sample_round(ctx, cfg, name, r, step, problems, model_ref, pooled, tok) -> tuple[list[dict], list[dict]]:
    rdir = ctx.stage_dir(name) / f"round_{r}"
    if (rdir / "kept.jsonl").is_file() and (rdir / "stats.jsonl").is_file():
        log.info("%s round %d: samples already drawn (%s); not sampling again", name, r, rdir)
        kept, stats = load_jsonl(rdir / "kept.jsonl"), load_jsonl(rdir / "stats.jsonl")
    else:
        samples = _draw_round(ctx, cfg, r, problems, model_ref, pooled)
        kept, stats = _filter_round(ctx, cfg, problems, samples + pooled, tok)
        if dist.is_main():
            # kept.jsonl last: its presence means the round's sampling finished.
            write_jsonl_atomic(rdir / "samples.jsonl", samples)
            write_jsonl_atomic(rdir / "stats.jsonl", stats)
            write_jsonl_atomic(rdir / "kept.jsonl", kept)
        dist.barrier()
    stored = f"stage:{name}:round_{r}_stored"  # `stored` file: the mark of run folders written before
    if dist.is_main() and not (rdir / "stored").exists() and not ctx.store.get_meta(stored):
        samples = load_jsonl(rdir / "samples.jsonl") + (pooled if r == 0 else [])
        with ctx.store.batch():  # the round's rows and the mark that they are stored: all or none after a kill
            _store_round(ctx, name, r, step, problems, samples, stats, tok)
            ctx.store.set_meta(stored, True)
    return kept, stats


class _RoundStore:
    """The run store as one round's SFT loop sees it: its steps continue after earlier rounds' steps,
    so every round's loss curve lands under the stage's name and a resume truncates only its own rows."""

    def __init__(self, store, offset: int):
        self.store, self.offset = store, offset

    def log_metrics(self, stage: str, step: int, metrics: dict) -> None:
        self.store.log_metrics(stage, self.offset + step, metrics)

    def truncate_after(self, stage: str, step: int) -> None:
        self.store.truncate_after(stage, self.offset + step)


def _train_round(ctx, cfg, name: str, r: int, kept: list[dict], init_ref: str, out: Path, offset: int,
                 stats: list[dict]) -> dict:
    """Fine-tune `init_ref` on the kept rows with the SFT loop; resume or skip what is done. `stats`: the
    round's per-question statistics, whose pass rates a `train.curriculum` with `difficulty: pass_rate` reads."""
    from reasonloop.checkpoint import save_model_folder
    from reasonloop.models import load_model, load_trainable
    from reasonloop.stages.sft import SftTrainer
    from reasonloop.stages.sft_data import curriculum_order, examples_from_pairs

    rdir = ctx.stage_dir(name) / f"round_{r}"
    saved = json.loads((rdir / "train.json").read_text()) if (rdir / "train.json").is_file() else None
    if saved is not None and (out / "config.json").is_file():
        log.info("%s round %d: already trained (%s)", name, r, out)
        return saved
    if not kept:
        raise UserError(f"{name}: round {r} kept no solutions to train on (no correct samples and no gold "
                        "solutions); raise k or budget, or set include_gold with a task that has gold reasoning")
    model, tok = load_trainable(init_ref, ctx.recipe.model, ctx.recipe.run.parallel)
    examples = examples_from_pairs(tok, [(k["problem_id"], k["prompt"], k["response"]) for k in kept],
                                   cfg.train.max_length)
    # The round's own measurement: the pass rate of the model that sampled, on exactly these questions.
    measured = {st["problem_id"]: st["pass_rate"] for st in stats if st["drawn"]}
    where = f"stages[{ctx.recipe.stage_names().index(name)}].train.curriculum"
    order_fn = curriculum_order(cfg.train.curriculum, examples, {p.id: p for p in ctx.task.train}, measured,
                                cfg.train.seed, where)
    ref_model = None
    if cfg.train.objective == "asft" and ctx.recipe.model.lora is None:
        ref_model, _ = load_model(init_ref, dtype=ctx.recipe.model.dtype)
    trainer = SftTrainer(model, tok, examples, cfg.train, store=_RoundStore(ctx.store, offset), stage=name,
                         ckpt_dir=rdir / "checkpoint", ref_model=ref_model, order_fn=order_fn,
                         dtype=ctx.recipe.model.dtype)
    result = trainer.train(progress=ctx.progress)
    result = saved or result  # a run killed after training and before saving resumes at the last step
    if dist.is_main():
        write_text_atomic(rdir / "train.json", json.dumps(result))
    save_model_folder(model, tok, out)
    del model, ref_model, trainer
    gc.collect()
    return result


def usable_problems(problems: list[Problem], task_cfg, name: str) -> tuple[list[Problem], list[str]]:
    """The questions whose gold answer the verifier can recognise, and the ids of the others."""
    good, bad = [], []
    for p in problems:
        (good if gold_is_checkable(p, task_cfg) else bad).append(p)
    if bad:
        log.warning("%s: skipping %d question(s) whose gold answer cannot be checked: %s%s", name, len(bad),
                    ", ".join(f"{p.id} ({p.answer!r})" for p in bad[:5]), " ..." if len(bad) > 5 else "")
    if not good:
        raise UserError(f"{name}: none of the {len(problems)} training questions has a gold answer the "
                        f"verifier can check (task.extract: {list(task_cfg.extract)})")
    return good, [p.id for p in bad]


def pooled_samples(ctx, cfg, name: str, problems: list[Problem]) -> list[dict]:
    """Samples pooled from saved sample files (checked first: cheap) and from other models (drawn once)."""
    task_cfg = ctx.recipe.task
    every = {p.id: p for p in ctx.task.train}
    wanted = {p.id for p in problems}
    rows: list[dict] = []
    for ref in cfg.pool_from:
        if ref.endswith(".jsonl"):
            rows += [s for s in read_sample_file(ref, every, task_cfg) if s["problem_id"] in wanted]
    for i, ref in enumerate(cfg.pool_from):
        if ref.endswith(".jsonl"):
            continue
        cache = ctx.stage_dir(name) / "pool" / f"{i}.jsonl"
        if not cache.is_file():
            sampler = _Sampler(ctx, cfg, ctx.resolve_model(ref))
            try:
                drawn = sampler.draw(problems, cfg.k, _seed(cfg.seed, "pool", i), "pool", 0)
            finally:
                sampler.close()
            if dist.is_main():
                write_jsonl_atomic(cache, [{**d, "origin": ref} for d in drawn])
            dist.barrier()
        rows += [s for s in load_jsonl(cache) if s["problem_id"] in wanted]
    return rows


def run(ctx, cfg, name: str) -> dict:
    """Pipeline entry: R rounds of sample -> verify -> keep distinct paths -> SFT; the last round's model."""
    from reasonloop.models import load_tokenizer

    start = ctx.resolve_model(cfg.init_from)
    train = train_subset(ctx.task.train, cfg)
    problems, bad_gold = usable_problems(train, ctx.recipe.task, name)
    tok = load_tokenizer(start)
    pooled = pooled_samples(ctx, cfg, name, problems)
    sample_ref = ctx.resolve_model(cfg.sample_from) if cfg.sample_from is not None else start
    base = ctx.resolve_model(ctx.recipe.model.path)
    train_ref = base if cfg.train_from == "base" else start
    rounds, offset, drawn_total = [], 0, 0
    for r in range(cfg.rounds):
        last = r == cfg.rounds - 1
        out = ctx.stage_dir(name) / ("model" if last else f"round_{r}/model")
        kept, stats = _sample_round(ctx, cfg, name, r, offset, problems, sample_ref, pooled, tok)
        summary = summarise(stats)
        trained = _train_round(ctx, cfg, name, r, kept, train_ref, out, offset, stats)
        offset += trained["steps"]
        drawn_total += summary["samples_drawn"]
        rounds.append({"round": r, **summary, "final_loss": trained["final_loss"], "steps": trained["steps"],
                       "sampled_from": str(sample_ref), "trained_from": str(train_ref)})
        log.info("%s round %d: %d questions, %d samples, pass rate %.3f, %.2f distinct paths, %d kept, loss %s",
                 name, r, summary["questions"], summary["samples_drawn"], summary["pass_rate_mean"],
                 summary["distinct_paths_mean"], summary["kept"], trained["final_loss"])
        sample_ref = str(out)  # Expert Iteration: the next round samples from the improved model
        train_ref = {"base": base, "init": start, "last": str(out)}[cfg.train_from]
    final = rounds[-1]
    rdir = ctx.stage_dir(name) / f"round_{cfg.rounds - 1}"
    return {"model": str(ctx.stage_dir(name) / "model"), **{k: v for k, v in final.items() if k != "round"},
            "samples_drawn_total": drawn_total, "skipped_bad_gold": len(bad_gold), "skipped_ids": bad_gold[:20],
            "kept_path": str(rdir / "kept.jsonl"), "stats_path": str(rdir / "stats.jsonl"), "rounds": rounds}
