"""run.ablation: Holm's adjustment by hand, arms paired with the first, the table, and bad recipes."""

from __future__ import annotations

import pytest

from reasonloop.config import load_recipe
from reasonloop.errors import UserError
from reasonloop.metrics import mcnemar_exact_p
from reasonloop.runs.ablation import ablation_from_store, ablation_lines, ablation_verdict, compare_arms, holm
from reasonloop.runs.store import RunStore


def test_holm_by_hand():
    # sorted: 0.01 (x3 = 0.03), 0.02 (x2 = 0.04), 0.04 (x1 = 0.04); returned in the input's order
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    # monotone: a later (larger) raw p never gets a smaller adjusted one; capped at 1
    assert holm([0.03, 0.02, 0.9]) == pytest.approx([0.06, 0.06, 0.9])
    assert holm([0.6, 0.5]) == [1.0, 1.0]
    assert holm([0.2]) == [0.2] and holm([]) == []


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_holm_refuses_what_is_no_p_value(bad):
    with pytest.raises(ValueError, match="p-values must lie in"):
        holm([0.1, bad])


def outcomes(right: int, n: int = 20) -> dict[str, bool]:
    return {f"q{i}": i < right for i in range(n)}


def test_every_arm_is_paired_with_the_first_and_holm_adjusted():
    correct = {"a": outcomes(5), "b": outcomes(15), "c": outcomes(6)}
    tokens = {"a": {f"q{i}": 10.0 for i in range(20)}, "b": {f"q{i}": 12.0 + i % 2 for i in range(20)}}
    got = compare_arms(["a", "b", "c"], correct, tokens)
    assert list(got) == ["b", "c"]
    b, c = got["b"], got["c"]
    assert (b["vs"], b["wins"], b["losses"], b["n"], b["delta"]) == ("a", 10, 0, 20, 0.5)
    assert (c["wins"], c["losses"]) == (1, 0)
    pb, pc = mcnemar_exact_p(10, 0), mcnemar_exact_p(1, 0)  # 2 / 1024 and 1
    assert b["p_value"] == pb and c["p_value"] == pc == 1.0
    assert b["p_holm"] == pytest.approx(2 * pb) and c["p_holm"] == 1.0
    assert b["tokens_delta"] == pytest.approx(2.5) and b["tokens_delta_ci95"][0] < 2.5 < b["tokens_delta_ci95"][1]
    assert "tokens_delta" not in c  # c's lengths were not recorded
    assert ablation_verdict(b) == "better" and ablation_verdict(c) == "no clear difference"
    assert ablation_verdict({**b, "wins": 0, "losses": 10}) == "worse"


def test_an_arm_without_common_problems_is_skipped_and_not_counted():
    correct = {"a": outcomes(5), "b": {"other": True}, "c": outcomes(15)}
    got = compare_arms(["a", "b", "c"], correct, {})
    assert got["b"] == {"vs": "a", "skipped": "no problem in common with 'a'"}
    assert got["c"]["p_holm"] == got["c"]["p_value"]  # m = 1: only c was tested
    with pytest.raises(ValueError, match="at least two arms"):
        compare_arms(["a"], correct, {})


def test_summary_entry_from_the_store_and_its_table(tmp_path):
    store = RunStore(tmp_path / "s.sqlite")
    for arm, right in (("plain", 5), ("adarft", 15), ("sec", 5)):
        store.set_problem_stats(arm, "greedy_correct", {k: float(v) for k, v in outcomes(right).items()})
        store.set_problem_stats(arm, "greedy_tokens", {f"q{i}": 20.0 for i in range(20)})
    brief = lambda top1: {"top1": top1, "top1_ci95": [top1 - 0.1, top1 + 0.1], "n": 20, "mean_tokens": 20.0}  # noqa: E731
    briefs = {"plain": brief(0.25), "adarft": brief(0.75), "sec": brief(0.25)}
    got = ablation_from_store(store, ["plain", "adarft", "sec"], briefs)
    assert "vs_first" not in got["plain"] and got["adarft"]["vs_first"]["wins"] == 10
    assert got["sec"]["vs_first"]["p_value"] == 1.0 and got["sec"]["vs_first"]["tokens_delta"] == 0.0
    lines = ablation_lines(got)
    assert lines[0].split()[:2] == ["arm", "top-1"] and "(baseline)" in lines[1]
    assert "+0.500" in lines[2] and "10/0" in lines[2] and "better" in lines[2]
    assert "no clear difference" in lines[3]
    # a run in progress: only the arms that ran; none yet: no entry
    assert list(ablation_from_store(store, ["plain", "adarft", "sec"], {"plain": briefs["plain"]})) == ["plain"]
    assert ablation_from_store(store, ["plain", "adarft"], {}) is None
    store.close()


@pytest.mark.parametrize("ablation, message", [
    ("[e1]", r"run.ablation: name at least two eval stages \(the first is the baseline every other arm is "
             r"compared with\), got only 'e1'"),
    ("[e1, e1]", "run.ablation names e1 more than once"),
    ("[e1, sft]", r"run.ablation names \['sft'\], which are not eval stages of this recipe"),
])
def test_bad_ablation_fails_when_the_recipe_loads(tmp_path, ablation, message):
    path = tmp_path / "r.yaml"
    path.write_text(f"run:\n  ablation: {ablation}\nstages:\n  - {{kind: sft, name: sft}}\n"
                    "  - {kind: eval, name: e1}\n  - {kind: eval, name: e2}\n")
    with pytest.raises(UserError, match=message):
        load_recipe(path)


def test_report_shows_the_ablation_table(tmp_path):
    import json

    from reasonloop.runs.report import write_report

    store = RunStore(tmp_path / "store.sqlite")
    store.close()
    correct = {"a": outcomes(5), "b": outcomes(15)}
    cmp = compare_arms(["a", "b"], correct, {"a": {"q0": 10.0}, "b": {"q0": 7.0}})["b"]
    brief = {"top1_ci95": [0.1, 0.4], "n": 20, "mean_tokens": 10.0}
    summary = {"stages": [], "ablation": {"a": {"top1": 0.25, **brief},
                                          "b": {"top1": 0.75, **brief, "vs_first": cmp}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    page = write_report(tmp_path).read_text()
    assert "<h2>Ablation</h2>" in page and "&Delta; vs a<br>" in page
    row = page[page.index("<td>b</td>"):].split("</tr>")[0]
    lo, hi = cmp["delta_ci95"]
    assert (f'<td class="nowrap">+0.500 [{lo:+.3f}, {hi:+.3f}]</td><td class="nowrap">10 / 0</td><td>0.002</td>'
            '<td>0.002</td><td class="raises">better</td><td>10.0</td><td>-3.0</td>') in row
    assert '<td class="note">baseline</td>' in page
    (tmp_path / "summary.json").write_text(json.dumps({"stages": []}))
    assert "Ablation" not in write_report(tmp_path).read_text()
