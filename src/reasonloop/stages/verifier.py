"""The verifier stage: sample k solutions per training question, label each with the task's judge, and
train a scalar-head verifier on them (Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems";
ReFT, Luong et al. 2024, reranks its RL model's samples with one trained on the SFT model's own samples).

Sampling goes through the one rollout path (`rollout.sample_and_judge`); the labelled samples are written to
`samples.jsonl` once, so a resumed stage trains on the same data. A share of the questions (`holdout`) is
kept out of training and the verifier is measured on their samples: accuracy, AUC, Brier score and a
reliability table. The output is `stages/<name>/verifier`, a sequence-classification folder
(`reasonloop.verifier_model`); the stage does not change the current model, so the next stage goes on
from the policy.
"""

from __future__ import annotations

import json
import logging
import random

import torch

from reasonloop import dist
from reasonloop.algos.verifier_loss import verifier_loss
from reasonloop.atomic import write_text_atomic
from reasonloop.errors import UserError
from reasonloop.metrics import calibration_bins, roc_auc, sigmoid
from reasonloop.stages.sft import SftTrainer
from reasonloop.stages.sft_data import Example
from reasonloop.verifier_model import packed_scores, score_solutions, verifier_ids

log = logging.getLogger(__name__)


def labelled_rows(judged, prompts: list[str]) -> list[dict]:
    """One row per sampled solution: its question, prompt, text, extracted answer and judged correctness."""
    return [{"problem_id": j.problem.id, "prompt": prompt, "response": text, "answer": answer, "correct": ok}
            for j, prompt in zip(judged, prompts)
            for text, answer, ok in zip(j.texts, j.answers, j.correct)]


def split_questions(question_ids: list[str], holdout: float, seed: int) -> set[str]:
    """The held-out questions: a seeded share `holdout` of the distinct ids (at least one when holdout > 0
    and there are two or more questions; never all of them, so something is left to train on)."""
    distinct = sorted(set(question_ids))
    if holdout <= 0 or len(distinct) < 2:
        return set()
    n_out = min(len(distinct) - 1, max(1, round(holdout * len(distinct))))
    random.Random(seed).shuffle(distinct)
    return set(distinct[:n_out])


def sample_rows(ctx, cfg, name: str) -> list[dict]:
    """The stage's labelled samples: read from `samples.jsonl` when an earlier attempt wrote them, else
    sampled from `sample_from` (k per training question) and judged."""
    from reasonloop.generate import make_engine
    from reasonloop.models import load_model
    from reasonloop.stages.rollout import prompts_for, sample_and_judge, sampling_params
    from reasonloop.tasks import train_subset

    path = ctx.stage_dir(name) / "samples.jsonl"
    if path.is_file():
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    problems = train_subset(ctx.task.train, cfg)
    model, tok = load_model(ctx.resolve_model(cfg.sample_from), dtype=ctx.recipe.model.dtype)
    engine = make_engine(model, tok, kind=ctx.recipe.run.engine, max_batch=cfg.batch_size,
                         dtype=ctx.recipe.model.dtype, progress=ctx.progress)
    prompts = prompts_for(tok, [p.question for p in problems], ctx.recipe.task)
    judged = sample_and_judge(engine, tok, problems, ctx.recipe.task, sampling_params(cfg.decoding, cfg.k, cfg.seed),
                              ctx.progress, prompts)
    rows = labelled_rows(judged, prompts)
    if dist.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows), what="verifier samples")
    return rows


def _step_loss(model, examples, labels, batches, cfg, device, use_bf16) -> dict[str, float]:
    """Accumulate one optimizer step's gradient; each solution of the step weighs the same."""
    total = sum(len(mb) for mb in batches)
    loss_sum = acc_sum = 0.0
    for mb in batches:
        token_level = cfg.objective == "token"
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits, seq_of = packed_scores(model, [examples[i].ids for i in mb], [examples[i].n_prompt for i in mb],
                                           device, token_level=token_level)
        y = torch.tensor([labels[i] for i in mb], dtype=torch.float32, device=device)  # [S]
        if token_level:
            is_last = torch.ones_like(seq_of, dtype=torch.bool)
            is_last[:-1] = seq_of[1:] != seq_of[:-1]
        else:
            seq_of, is_last = torch.arange(len(mb), device=device), torch.ones(len(mb), dtype=torch.bool, device=device)
        loss, metrics = verifier_loss(logits.float(), y, seq_of, is_last, cfg.objective)
        (loss * len(mb) / total).backward()
        loss_sum += loss.item() * len(mb)
        acc_sum += metrics["accuracy"].item() * len(mb)
    return {"loss": loss_sum / total, "accuracy": acc_sum / total}


class VerifierTrainer(SftTrainer):
    """The SFT loop (seeded packed plan, optimizer, resume, logging, checkpoints) training a one-label
    sequence classifier: only the step's gradient and what it logs differ. Every rank trains on every
    micro-batch (no data parallelism yet), so none is idle whatever grad_accum is."""

    shares_microbatches = False

    def __init__(self, model, tokenizer, examples: list[Example], labels: list[float], cfg, *, store=None,
                 stage: str = "verifier", ckpt_dir=None, dtype: str = "auto"):
        if not examples:
            raise UserError(f"{stage}: no labelled solutions to train the verifier on")
        super().__init__(model, tokenizer, examples, cfg, store=store, stage=stage, ckpt_dir=ckpt_dir, dtype=dtype)
        self.labels = labels

    def gradients(self, batches: list[list[int]], *, step: int) -> dict[str, float]:
        return _step_loss(self.model, self.examples, self.labels, batches, self.cfg, self.device, self.use_bf16)

    def step_metrics(self, metrics: dict, lr: float, grad_norm: float, seconds: float) -> dict:
        return {**metrics, "lr": lr, "grad_norm": grad_norm, "seconds": seconds}

    def progress_fields(self, metrics: dict) -> dict[str, str]:
        return {"loss": f"{metrics['loss']:.4f}"}

    def train(self, *, progress: bool = True) -> dict:
        result = super().train(progress=progress)
        self.model.eval()
        return result


def verifier_quality(logits: list[float], correct: list[bool]) -> dict:
    """How well scores separate right from wrong solutions: accuracy at P = 0.5, AUC, Brier score, the
    share right (what always saying "right" would score) and a 10-bin reliability table."""
    if not logits:
        return {}
    probs = [sigmoid(x) for x in logits]
    n = len(probs)
    return {"accuracy": sum((p > 0.5) == ok for p, ok in zip(probs, correct)) / n,
            "auc": roc_auc(logits, correct), "brier": sum((p - ok) ** 2 for p, ok in zip(probs, correct)) / n,
            "base_rate": sum(correct) / n, "n": n, "right": sum(correct),
            "calibration": calibration_bins(probs, correct)}


def _init_ref(ctx, cfg) -> str:
    """`init_from` if set, else the latest SFT output before this stage (Cobbe et al., ReFT), else the current model."""
    if cfg.init_from is not None:
        return ctx.resolve_model(cfg.init_from)
    for stage, stage_name in reversed(list(zip(ctx.recipe.stages, ctx.recipe.stage_names()))):
        if stage.kind == "sft" and stage_name in ctx.outputs:
            return ctx.outputs[stage_name]
    return ctx.current_model


def run(ctx, cfg, name: str) -> dict:
    """Pipeline entry: sample and label, train the verifier on all but the held-out questions, measure it on
    those, save it to `stages/<name>/verifier`."""
    from reasonloop.models import save_hf_folder
    from reasonloop.verifier_model import new_verifier

    rows = sample_rows(ctx, cfg, name)
    held_out = split_questions([r["problem_id"] for r in rows], cfg.holdout, cfg.seed)
    init_ref = _init_ref(ctx, cfg)
    model, tok = new_verifier(init_ref, cfg.seed)
    model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    train_rows = [r for r in rows if r["problem_id"] not in held_out]
    examples = [Example(*verifier_ids(tok, r["prompt"], r["response"], cfg.max_length), r["problem_id"])
                for r in train_rows]
    trainer = VerifierTrainer(model, tok, examples, [float(r["correct"]) for r in train_rows], cfg,
                              store=ctx.store, stage=name, ckpt_dir=ctx.stage_dir(name) / "checkpoint",
                              dtype=ctx.recipe.model.dtype)
    result = trainer.train(progress=ctx.progress)
    test_rows = [r for r in rows if r["problem_id"] in held_out]
    logits = score_solutions(model, tok, [r["prompt"] for r in test_rows], [r["response"] for r in test_rows],
                             cfg.batch_tokens, cfg.max_length)
    quality = verifier_quality(logits, [bool(r["correct"]) for r in test_rows])
    out = ctx.stage_dir(name) / "verifier"
    if dist.is_main():  # under torchrun every rank trains the same verifier (no data parallelism yet); one saves
        # Logged after the last step (step + 1): a resume from the last checkpoint drops them and logs them anew.
        ctx.store.add_samples(name, result["steps"] + 1, [
            {"problem_id": r["problem_id"], "prompt": r["prompt"], "completion": r["response"], "answer": r["answer"],
             "reward": sigmoid(x), "correct": r["correct"], "meta": {"verifier_score": x, "split": "heldout"}}
            for r, x in zip(test_rows, logits)])
        save_hf_folder(model, tok, out)
    dist.barrier()
    # The AUC's sample size beside it: with one right sample among 96 it is that sample's rank, 0 or 1.
    log.info("%s: %d samples (%.1f%% right); held out %d questions: accuracy %s, AUC %s (%s right, %s wrong "
             "held-out samples)", name, len(rows), 100 * sum(r["correct"] for r in rows) / max(1, len(rows)),
             len(held_out), quality.get("accuracy"), quality.get("auc"), quality.get("right"),
             quality.get("n", 0) - quality.get("right", 0))
    return {**result, "verifier": str(out), "samples": len(rows),
            "sample_accuracy": sum(r["correct"] for r in rows) / max(1, len(rows)),
            "train_questions": len({r["problem_id"] for r in train_rows}), "heldout_questions": len(held_out),
            "heldout": quality, "initialised_from": str(init_ref), "sampled_from": str(ctx.resolve_model(cfg.sample_from))}
