"""Read problem records from JSONL / Parquet / Hugging Face datasets with errors that name file:line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from reasonloop.errors import UserError
from reasonloop.tasks.base import Problem
from reasonloop.tasks.template import is_template, render


def read_jsonl(path: str | Path) -> Iterator[tuple[str, dict]]:
    """Yield (`file:line`, record); a malformed line raises UserError naming file:line."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{path}: is a folder, not a JSONL file")
    if not p.is_file():
        raise UserError(f"{path}: data file not found")
    with p.open("rb") as fh:  # bytes, decoded per line, so a bad byte is reported with its line
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise UserError(f"{p}:{lineno}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column "
                                f"{err.start + 1}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{p}:{lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(rec, dict):
                raise UserError(f"{p}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            yield f"{p}:{lineno}", rec


def _read_parquet(path: str) -> Iterator[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    if not Path(path).is_file():
        raise UserError(f"{path}: data file not found")
    for i, rec in enumerate(pq.read_table(path).to_pylist()):
        yield f"{path}:row {i}", rec


def _read_hf(spec: str) -> Iterator[tuple[str, dict]]:
    """`dataset_id[:config]:split`, e.g. `openai/gsm8k:main:test`."""
    try:
        import datasets
    except ImportError:
        raise UserError(f"{spec}: Hugging Face datasets need the `datasets` package") from None
    parts = spec.split(":")
    if len(parts) < 2:
        raise UserError(f"{spec}: expected `dataset_id[:config]:split`")
    name, config, split = parts[0], (parts[1] if len(parts) == 3 else None), parts[-1]
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # the hub client raises many kinds; the user needs the first line
        raise UserError(f"{spec}: could not load dataset: {str(err).splitlines()[0]}") from None
    for i, rec in enumerate(ds):
        yield f"{spec}:row {i}", rec


def read_records(path: str, required: tuple[str, ...] = (), kind: str = "jsonl"
                 ) -> Iterator[tuple[str, dict]]:
    reader = {"jsonl": read_jsonl, "gsm8k": read_jsonl, "parquet": _read_parquet, "hf": _read_hf}[kind]
    for where, rec in reader(path):
        for key in required:
            if key not in rec or rec[key] is None:
                raise UserError(f"{where}: missing field {key!r}")
        yield where, rec


def _field_value(rec: dict, spec: str, where: str, key: str):
    """The value `task.fields.<key>` stands for in one record: a field, or a template filled from several."""
    return render(spec, rec, where, key) if is_template(spec) else rec.get(spec)


def mapped_problems(cfg, path: str, split: str) -> list[Problem]:
    """Problems from records whose fields `task.fields` names or combines in a template (jsonl, parquet, hf)."""
    kind = cfg.source
    f = {"question": "question", "answer": "answer", **cfg.fields}
    required = tuple(f[k] for k in ("question", "answer") if not is_template(f[k]))  # templates check their own
    out = []
    for where, rec in read_records(path, required=required, kind=kind):
        value = {key: _field_value(rec, spec, where, key) for key, spec in f.items()}
        diff, pid, reasoning = value.get("difficulty"), value.get("id"), value.get("reasoning")
        answer = str(value["answer"]).strip()
        if not answer:
            raise UserError(f"{where}: empty answer in field {f['answer']!r}")
        out.append(Problem(id=str(pid) if pid is not None else f"{Path(path).stem}-{split}-{len(out)}",
                           question=str(value["question"]), answer=answer, reasoning=reasoning,
                           difficulty=float(diff) if diff is not None else None, source=kind,
                           meta={"record": rec}))  # every column, for TRL-style rewards
    return out
