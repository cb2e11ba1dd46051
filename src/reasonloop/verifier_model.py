"""A trained verifier as a plain Hugging Face folder: `AutoModelForSequenceClassification` with one label.

Why a sequence-classification model and not a causal LM plus a head file: the folder then loads with
transformers alone, head included (`score`, a [1, H] linear layer without bias), and `model(**batch).logits`
is the verifier's score: a logit, `sigmoid(logit)` = P(the solution's final answer is right). transformers
reads it at each row's last token that is not padding, which is where reasonloop reads it when it packs
solutions (the last response token; the end-of-turn token is not part of the input). With a token-level
verifier the same head applied to every position gives the per-token values.

Input: the chat prompt text (as `reasonloop.stages.rollout.prompts_for` builds it) followed by the
response text, tokenised without special tokens, prompt and response separately (`verifier_ids`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from reasonloop.errors import UserError
from reasonloop.packing import pack_sequences, packed_hidden, plan_microbatches
from reasonloop.tasks.prompt import encode_prompt


def new_verifier(init_from: str, seed: int = 0):
    """(verifier, tokenizer): the backbone of causal LM `init_from` under a zero-initialised score head,
    so every solution starts at P(correct) = 0.5 (the LM head is dropped). fp32: it is trained."""
    from transformers import AutoModelForSequenceClassification

    from reasonloop.models import load_tokenizer, resolve_model_path

    where = resolve_model_path(init_from)
    tok = load_tokenizer(str(where))
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the head is new by design: no "score.weight MISSING" load report
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(where, num_labels=1, dtype=torch.float32)
        except (OSError, ValueError) as err:
            raise UserError(f"{init_from}: could not build a verifier from it: {str(err).splitlines()[0]}") from None
        finally:
            hf_logging.set_verbosity(verbosity)
    torch.nn.init.zeros_(model.score.weight)
    model.config.pad_token_id = tok.pad_token_id  # transformers finds each row's last real token by it
    return model, tok


def check_verifier_folder(path: str | Path) -> Path:
    """The folder of a saved verifier, or a one-line UserError saying what is wrong with `path`."""
    folder = Path(path)
    config = folder / "config.json"
    if not config.is_file():
        raise UserError(f"{path}: not a verifier folder (no config.json); name a verifier stage or the "
                        "`verifier` folder it saved")
    cfg = json.loads(config.read_text())
    archs = cfg.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in archs) or len(cfg.get("id2label", {0: 0})) != 1:
        raise UserError(f"{path}: not a verifier (expected a sequence-classification model with one label, "
                        f"found {archs or 'no architecture'})")
    return folder


def load_verifier(path: str | Path, dtype: str = "auto", device=None):
    """(verifier in eval mode, tokenizer) from a folder a verifier stage saved."""
    from transformers import AutoModelForSequenceClassification

    from reasonloop.models import default_device, load_tokenizer, resolve_dtype

    folder = check_verifier_folder(path)
    device = torch.device(device) if device is not None else default_device()
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
    model = model.to(resolve_dtype(dtype, device)).to(device).eval()
    return model, load_tokenizer(str(folder))


def verifier_ids(tokenizer, prompt: str, response: str, max_length: int | None = None) -> tuple[list[int], int]:
    """Token ids of prompt + response (no end-of-turn) and the prompt's length. Longer than `max_length`:
    the start of the prompt is cut, never the end of the response, where the answer is."""
    p = encode_prompt(tokenizer, prompt)
    r = tokenizer(response, add_special_tokens=False)["input_ids"]  # empty: scored at the prompt's last token
    ids = p + r
    if max_length is not None and len(ids) > max_length:
        cut = len(ids) - max_length
        return ids[cut:], max(0, len(p) - cut)
    return ids, len(p)


def packed_scores(model, seqs: list[list[int]], n_prompts: list[int], device, token_level: bool = False,
                  share_prompts: bool = False):
    """Verifier logits of packed solutions: [S] at each last token, or (token_level) [n] at every response
    position (a response token's own position: the value after reading it) with [n] solution indices.
    ``share_prompts``: solutions of one question carry its prompt once (`pack_sequences`); same scores."""
    batch = pack_sequences(seqs, n_prompts if share_prompts else [len(s) for s in seqs], device=device,
                           share_prompts=share_prompts)
    hidden = packed_hidden(model, batch)  # [N, H]
    L = batch.max_len
    if not token_level:
        last = batch.src[torch.tensor([i * L + len(s) - 1 for i, s in enumerate(seqs)], device=device)]  # [S]
        return model.score(hidden[last]).squeeze(-1), None
    # Response positions of each solution; an empty response is scored at the prompt's last token.
    slots = [(i, i * L + j) for i, (s, n) in enumerate(zip(seqs, n_prompts))
             for j in range(min(max(n, 0), len(s) - 1), len(s))]
    index = batch.src[torch.tensor([slot for _, slot in slots], device=device)]  # [n]
    seq_of = torch.tensor([i for i, _ in slots], device=device)
    return model.score(hidden[index]).squeeze(-1), seq_of


@torch.no_grad()
def score_solutions(model, tokenizer, prompts: list[str], responses: list[str], batch_tokens: int = 8192,
                    max_length: int | None = None) -> list[float]:
    """One verifier logit per (prompt, response), computed in packed micro-batches."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    encoded = [verifier_ids(tokenizer, p, r, max_length) for p, r in zip(prompts, responses)]
    device = next(model.parameters()).device
    out: list[float] = []
    for mb in plan_microbatches([len(ids) for ids, _ in encoded], batch_tokens):
        # The k samples of a question sit side by side here: their shared prompt is run through once.
        logits, _ = packed_scores(model, [encoded[i][0] for i in mb], [encoded[i][1] for i in mb], device,
                                  share_prompts=True)
        out += logits.float().tolist()
    return out
