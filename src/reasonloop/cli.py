"""`reasonloop` command line: run, validate, eval, sft, rft, rl, report, compare, tasks.

Bad input ends with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import time
from pathlib import Path

from reasonloop.errors import UserError
from reasonloop.stage_registry import get_stage, stage_kinds


def _task_specs() -> list[str]:
    from reasonloop.tasks.registry import get_source, task_sources

    return [get_source(name).spec_help for name in task_sources() if get_source(name).spec_help]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reasonloop", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a recipe (default: the packaged default recipe)")
    run.add_argument("recipe", nargs="?", default=None, help="recipe YAML (default: packaged default)")
    run.add_argument("--out", default=None, help="run folder (default: runs/<recipe>-<time>); reuse to resume")
    run.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                     help="override recipe fields, e.g. --set stages.1.optim.lr=2e-5 stages.1.epochs=2")
    run.add_argument("--no-progress", action="store_true")

    val = sub.add_parser("validate", help="check a recipe without running it")
    val.add_argument("recipe")
    val.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE")

    for kind in stage_kinds():
        s = sub.add_parser(kind, help=f"run one {kind} stage: {get_stage(kind).help}")
        s.add_argument("--model", default="default", help="default | HF folder | .gguf | hub id")
        s.add_argument("--task", default="gsm8k", help=" | ".join(_task_specs()))
        s.add_argument("--out", default=None, help="run folder")
        s.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                       help="override a field of the one-stage recipe, e.g. stages.0.optim.lr=1e-5")
        s.add_argument("--no-progress", action="store_true")
        if kind == "eval":
            s.add_argument("--limit", type=int, default=None, help="first N held-out problems")
            s.add_argument("--k", type=int, default=4, help="samples for maj@k / pass@k (0: greedy only)")
            s.add_argument("--n", type=int, default=None, help="samples drawn per problem (>= k)")
            s.add_argument("--seeds", type=int, default=1, help="repeat sampled metrics over S seeds")

    rep = sub.add_parser("report", help="(re)write report.html of a run folder")
    rep.add_argument("run_dir")
    cmp = sub.add_parser("compare", help="is run B better than run A? paired comparison of one eval of each")
    cmp.add_argument("run_a")
    cmp.add_argument("run_b")
    cmp.add_argument("--stage", default=None, help="the eval stage to compare in both runs (default: each run's last)")
    cmp.add_argument("--html", default=None, help="page to write (default: compare-<A>-vs-<B>.html here)")
    sub.add_parser("tasks", help="list task sources and reasoning-gym task names")
    return p


def _one_stage_recipe(args):
    from reasonloop.config import Recipe
    from reasonloop.recipe_io import apply_override, parse_overrides, validate_with_lines

    stage: dict = {"kind": args.command}
    flags: dict[tuple, str] = {}  # a bad value is reported against the flag the user typed
    if args.command == "eval":
        stage.update({"limit": args.limit, "k": args.k, "n": args.n, "seeds": args.seeds})
        flags = {("stages", 0, key): f"--{key}" for key in ("limit", "k", "n", "seeds")}
    from reasonloop.tasks.registry import task_section

    data = {"model": {"path": args.model}, "task": task_section(args.task), "stages": [stage]}
    for key, value in parse_overrides(args.set):
        apply_override(data, key, value)
        flags[tuple(int(p) if p.isdigit() else p for p in key.split("."))] = f"--set {key}"
    return validate_with_lines(Recipe, data, flags, "command line")


def _print_table(summary: dict) -> None:
    from reasonloop.memory import peak_text
    from reasonloop.runs.compare import SIGNIFICANCE, delta_text, verdict

    name_w = max(12, *(len(s["name"]) + 2 for s in summary["stages"]))  # long names must not run into the next column
    kind_w = max(6, *(len(s["kind"]) + 2 for s in summary["stages"]))
    print(f"\n{'stage':<{name_w}}{'kind':<{kind_w}}{'top-1 [95% CI]':<24}{'vs previous eval [95% CI]':<28}{'won/lost':<10}"
          f"{'p':<9}{'verdict':<17}{'sampled':<9}{'maj@k':<9}{'pass@k':<9}{'tokens':<8}{'time':>8}  {'peak MB':<8}")
    for s in summary["stages"]:
        # one row per measurement: a training stage's entry repeats the next eval's numbers; show them once
        ev = (s.get("eval") or {}) if s["kind"] == "eval" else {}
        top1 = f"{ev['top1']:.3f} [{ev['top1_ci95'][0]:.3f}, {ev['top1_ci95'][1]:.3f}]" if ev else "-"
        pr = ev.get("paired")
        delta, won, p, word = (delta_text(pr), f"{pr['wins']}/{pr['losses']}", f"{pr['p_value']:.2g}", verdict(pr)) \
            if pr else ("-", "-", "-", "")
        rate = lambda key: f"{ev[key]:.3f}" if ev.get(key) is not None else "-"  # noqa: E731
        tok = f"{ev['mean_tokens']:.0f}" if ev else "-"
        print(f"{s['name']:<{name_w}}{s['kind']:<{kind_w}}{top1:<24}{delta:<28}{won:<10}{p:<9}{word:<17}{rate('sampled_acc'):<9}"
              f"{rate('maj_k'):<9}{rate('pass_k'):<9}{tok:<8}{s['seconds']:>7.0f}s  {peak_text(s):<8}")
    print(f"vs previous eval: greedy top-1 paired by problem (Newcombe interval); p: exact McNemar test on the "
          f"problems won/lost; a stage raises accuracy when p < {SIGNIFICANCE}. sampled: pass@1 at the sampling "
          "temperature. peak MB: the stage's peak resident memory.")
    if summary.get("ablation"):
        from reasonloop.runs.ablation import ablation_lines

        print("\nablation (each arm paired with the first; p (Holm): adjusted for the number of arms)")
        print("\n".join(ablation_lines(summary["ablation"])))


def _run(recipe, out: str | None, label: str, progress: bool) -> int:
    from reasonloop.pipeline import run_pipeline

    from reasonloop import dist

    # Rank 0 names the folder: ranks started a second apart must not pick different timestamps.
    out = dist.broadcast_object(out or f"runs/{label}-{time.strftime('%Y%m%d-%H%M%S')}")
    if not dist.is_main():
        run_pipeline(recipe, out, progress=False)
        return 0
    print(f"run folder: {out}", file=sys.stderr)
    summary = run_pipeline(recipe, out, progress=progress)
    _print_table(summary)
    print(f"\nsummary: {Path(out) / 'summary.json'}\nreport:  {Path(out) / 'report.html'}")
    return 0


def _dispatch(args) -> int:
    from reasonloop.config import load_recipe

    if args.command == "validate":
        recipe = load_recipe(args.recipe, args.set)
        print(f"{args.recipe}: ok ({len(recipe.stages)} stages: {', '.join(recipe.stage_names())})")
        return 0
    if args.command == "run":
        recipe = load_recipe(args.recipe, args.set)
        label = Path(args.recipe).stem if args.recipe else "default"
        return _run(recipe, args.out, label, not args.no_progress)
    if args.command in stage_kinds():
        return _run(_one_stage_recipe(args), args.out, args.command, not args.no_progress)
    if args.command == "report":
        from reasonloop.runs.report import write_report

        if not (Path(args.run_dir) / "store.sqlite").is_file():
            raise UserError(f"{args.run_dir}: not a run folder (no store.sqlite)")
        print(write_report(Path(args.run_dir)))
        return 0
    if args.command == "compare":
        from reasonloop.runs.compare_runs import compare_evals, format_table, read_eval, write_html

        a, b = read_eval(args.run_a, args.stage), read_eval(args.run_b, args.stage)
        result = compare_evals(a, b)
        print(format_table(result))
        default = f"compare-{Path(args.run_a).resolve().name}-vs-{Path(args.run_b).resolve().name}.html"
        print(f"html: {write_html(result, a, b, args.html or default)}")
        return 0
    if args.command == "tasks":
        import reasoning_gym

        names = sorted(reasoning_gym.factory.DATASETS)
        from reasonloop.tasks import task_sources

        print(f"sources: {', '.join(task_sources())}\nreasoning-gym tasks (--task gym:<name>):")
        print(json.dumps(names))
        return 0
    raise UserError(f"unknown command {args.command}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from reasonloop import dist

    dist.init()  # joins the process group under torchrun / accelerate launch; no-op in one process
    if not dist.is_main():
        logging.getLogger().setLevel(logging.WARNING)  # one copy of the progress log, from rank 0
    try:
        return _dispatch(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # Writes that matter (checkpoints, models, the store) say more; this catches the small files.
        print(f"error: {err.filename or 'run folder'}: could not write ({err.strerror}); free disk space, then "
              "run the same command to resume", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    finally:
        dist.shutdown()
