"""Checkpoints: resume restores everything a loop needs; `X.old` is the fallback a kill between renames leaves."""

import shutil

import torch

from conftest import build_tiny_model
from reasonloop.checkpoint import find_checkpoint, resume_training, save_checkpoint
from reasonloop.runs.store import RunStore


def _trainer(seed: int):
    model = build_tiny_model(32, seed=seed, layers=1)
    head = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, head, opt, sched


def test_resume_training_restores_weights_optimizer_modules_rng_and_trims_the_store(tmp_path):
    model, head, opt, sched = _trainer(seed=0)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    sched.step()
    torch.manual_seed(123)
    save_checkpoint(tmp_path / "ckpt", model, None, opt, sched, {"step": 3, "last": {"loss": 0.5}},
                    extra_modules={"value_head": head})
    expected_draw = torch.rand(1)
    store = RunStore(tmp_path / "store.sqlite")
    for step in (1, 3, 4, 5):
        store.log_metrics("sft", step, {"loss": float(step)})

    fresh, fresh_head, fresh_opt, fresh_sched = _trainer(seed=1)
    state = resume_training(tmp_path / "ckpt", fresh, fresh_opt, fresh_sched, store=store, stage="sft",
                            modules={"value_head": fresh_head})
    assert state == {"step": 3, "last": {"loss": 0.5}}
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(head.weight, fresh_head.weight)
    assert fresh_sched.last_epoch == sched.last_epoch and fresh_opt.state_dict()["state"].keys() == \
        opt.state_dict()["state"].keys()
    assert torch.equal(torch.rand(1), expected_draw)  # RNG continues where the checkpoint left it
    assert [s for s, _ in store.metrics("sft", "loss")] == [1, 3]
    store.close()


def test_resume_training_without_checkpoint_starts_over_and_drops_all_rows(tmp_path):
    model, _, opt, sched = _trainer(seed=0)
    store = RunStore(tmp_path / "store.sqlite")
    store.log_metrics("rl", 2, {"reward": 1.0})
    assert resume_training(tmp_path / "none", model, opt, sched, store=store, stage="rl") is None
    assert resume_training(None, model, opt, sched) is None
    assert store.conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 0
    store.close()


def test_find_checkpoint_falls_back_to_old_and_ignores_incomplete_folders(tmp_path):
    model, _, opt, sched = _trainer(seed=0)
    folder = tmp_path / "checkpoint"
    assert find_checkpoint(folder) is None
    save_checkpoint(folder, model, None, opt, sched, {"step": 1})
    assert find_checkpoint(folder) == folder
    shutil.move(folder, tmp_path / "checkpoint.old")  # a kill between the two renames of save_checkpoint
    folder.mkdir()  # a half-made folder without trainer state does not count
    assert find_checkpoint(folder) == tmp_path / "checkpoint.old"
    shutil.rmtree(tmp_path / "checkpoint.old")
    assert find_checkpoint(folder) is None
