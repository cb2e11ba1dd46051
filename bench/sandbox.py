"""Sandbox throughput (programs/s) and GSM8K gold-program conversion rate.

    python bench/sandbox.py [--quick] [--data /work/shared/data/gsm8k/train.jsonl]

1. Converts GSM8K train answers to programs (``reasonloop.tasks.pot.gsm8k_to_program``) and runs
   every converted program in the sandbox: the fraction whose output matches the ``#### N`` answer.
2. Throughput of ``run_programs`` on those programs for both launch modes (``fork``: fork server,
   ``spawn``: a new interpreter per program) at 1x and 2x the core count.
Prints a table, writes bench/results/sandbox.json; the last line is ``programs_per_s=<N>`` (fork
mode, workers = cores, the default of ``run_programs``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from reasonloop.tasks.gsm8k import split_gsm8k_answer
from reasonloop.tasks.pot import gsm8k_to_program
from reasonloop.verify.equiv import answers_match
from reasonloop.verify.pot import program_answer
from reasonloop.verify.sandbox import run_programs

DATA = "/work/shared/data/gsm8k/train.jsonl"


def conversion(path: str, limit: int | None) -> tuple[dict, list[str]]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()][:limit]
    programs = [gsm8k_to_program(r["answer"]) for r in rows]
    pairs = [(p, split_gsm8k_answer(r["answer"])[1]) for p, r in zip(programs, rows) if p is not None]
    t0 = time.perf_counter()
    results = run_programs([p for p, _ in pairs])
    seconds = time.perf_counter() - t0
    matched = sum(answers_match(program_answer(r), gold) for r, (_, gold) in zip(results, pairs))
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            errors[r.error] = errors.get(r.error, 0) + 1
    stats = {"questions": len(rows), "converted": len(pairs), "output_matches": matched,
             "match_fraction": matched / len(rows), "run_errors": errors, "seconds": round(seconds, 2),
             "programs_per_s": round(len(pairs) / seconds, 2), "isolation": results[0].isolation}
    return stats, [p for p, _ in pairs]


def throughput(programs: list[str], mode: str, workers: int) -> dict:
    run_programs(programs[:workers], mode=mode, workers=workers)  # warm-up (fork server start)
    t0 = time.perf_counter()
    results = run_programs(programs, mode=mode, workers=workers)
    seconds = time.perf_counter() - t0
    return {"mode": mode, "workers": workers, "programs": len(programs), "ok": sum(r.ok for r in results),
            "seconds": round(seconds, 2), "programs_per_s": round(len(programs) / seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="300 GSM8K answers, 60 programs per throughput row")
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sandbox.json"))
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    stats, programs = conversion(args.data, 300 if args.quick else None)
    print(f"GSM8K {args.data}: {stats['questions']} answers, {stats['converted']} converted, "
          f"{stats['output_matches']} outputs match the gold answer ({stats['match_fraction']:.2%}); "
          f"run errors {stats['run_errors']}; isolation {stats['isolation']}")
    sample = programs[: 60 if args.quick else 400]
    rows = [throughput(sample, mode, w) for mode in ("fork", "spawn") for w in (cores, 2 * cores)]
    print(f"\n{'mode':<6} {'workers':>7} {'programs':>8} {'ok':>5} {'seconds':>8} {'programs/s':>10}")
    for r in rows:
        print(f"{r['mode']:<6} {r['workers']:>7} {r['programs']:>8} {r['ok']:>5} {r['seconds']:>8} "
              f"{r['programs_per_s']:>10}")
    headline = next(r for r in rows if r["mode"] == "fork" and r["workers"] == cores)["programs_per_s"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"cpu": platform.processor() or platform.machine(), "cores": cores,
                                           "uid": os.getuid()}, "quick": args.quick,
                               "gsm8k": stats, "throughput": rows, "programs_per_s": headline}, indent=2))
    print(f"programs_per_s={headline}")


if __name__ == "__main__":
    main()
