"""The README's figures from the committed quick-grid dataset are what the tool prints.

Re-runs the main job's analysis on ``data/quick-cpu/`` (its measurements, run.json and device
profile, committed with how they were measured) and checks that every figure the README
quotes from it appears there, formatted by the report's own functions. A change in the
analysis that moves a quoted figure fails here until the README says what the tool says.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis import data, pipeline, report
from costmodel.hardware import HardwareProfile

pytestmark = pytest.mark.slow  # one full analysis with the default 1,000 refits

REPO = Path(__file__).resolve().parents[2]
QUICK = REPO / "data" / "quick-cpu"


@pytest.fixture(scope="module")
def analysis():
    dataset = data.load(str(QUICK))
    profile = HardwareProfile.from_json(str(QUICK / "profile.json"))
    return pipeline.run(dataset, profile, "the dataset's profile")


def quoted_figures(a) -> dict[str, str]:
    """label -> the text the README must hold, as the stdout report formats it."""
    t = a.crossover.table
    out = {}
    for b, r, m in ((2, 1, "lora"), (2, 4, "lora"), (256, 1, "lora")):
        row = t[(t["batch"] == b) & (t["rank"] == r) & (t["method"] == m)].iloc[0]
        out[f"fitted b{b} r{r} {m}"] = report._fitted_cell(row)
        out[f"measured b{b} r{r} {m}"] = report._measured_cell(row)
        out[f"d->inf b{b} r{r} {m}"] = f"{row['asymptotic_speedup']:.3g}x"
    v = a.validation.table
    pooled = v[(v["quantity"] == "all methods") & (v["scheme"] == "out_of_scale")
               & (v["model"] == a.validation.chosen)].iloc[0]
    out["out-of-scale"] = f"{pooled['median_ape_pct']:.1f}%"
    ex = report.extrapolation_display(a, short=True).set_index("width")
    out["full/lora at 12288"] = ex.loc[12288, "full/lora"]
    return out


def test_readme_quotes_what_the_tool_prints_on_the_committed_quick_grid(analysis):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = {k: v for k, v in quoted_figures(analysis).items() if v not in readme}
    assert not missing, f"README figures that the tool does not print: {missing}"


def test_readme_quotes_the_seed_grid_slices_and_anova():
    """The blog-grid paragraph's figures, from ``data/seed-cpu/``'s grid rows (no fit)."""
    from analysis import factors, prepare

    seed = REPO / "data" / "seed-cpu"
    dataset = data.load(str(seed))
    grid = dataset.frame[~dataset.frame["refinement"].astype(bool)]
    summary = factors.blog_summary(grid).set_index("method")
    sl = data.select(data.Dataset(grid, str(seed), "table"), 8)
    anova = factors.analyse(prepare.terms_for(sl.frame, None, measured=True)).anova
    share = anova[anova["method"] == "lora"].set_index("term")["share_of_variance"]
    lora, merged = summary.loc["lora"], summary.loc["lora_merged"]
    n = int(lora["configs"])
    quoted = [
        f"**{round(lora['share_lora_faster'] * n)} of {n}** configs",
        f"t_LoRA / t_full {lora['min_ratio']:.2f}–{lora['max_ratio']:.2f}, median "
        f"{lora['median_ratio_lora_over_full']:.2f}",
        f"at {round(merged['share_lora_faster'] * n)} of {n} (median",
        f"{merged['median_ratio_lora_over_full']:.2f}, up to {merged['max_ratio']:.2f})",
        f"Batch explains {share['batch']:.0%} of the variance",
        f"e {share['embed']:.1%},\nh {share['hidden']:.1%}, rank {share['rank']:.1%}",
        f"residual holds {share['Residual']:.0%}",
    ]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [q for q in quoted if q not in readme]
    assert not missing, missing


def test_readme_quotes_the_whole_model_validation(tmp_path, capsys):
    """The 'predicted against measured' paragraph, from ``data/models-cpu-validation/`` and the
    layer rates fitted on ``data/quick-cpu/``, by the two commands the README gives."""
    import json

    from analysis import crossover

    q = tmp_path / "q"
    assert crossover.main(["--data", str(REPO / "data" / "quick-cpu"), "--out", str(q), "--no-plots"]) == 0
    capsys.readouterr()
    assert crossover.main(["--data", str(REPO / "data" / "models-cpu-validation"),
                           "--layer-fit", str(q / "fitted_profile.json"), "--out", str(tmp_path / "m"),
                           "--no-plots", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["whole_model_validation"]

    def median(route: str, scheme: str, target: str) -> str:
        row = next(r for r in rows if (r["route"], r["scheme"], r["target"], r["method"])
                   == (route, scheme, target, "all"))
        return f"{row['median_abs_pct']:.1f}%"

    quoted = [f"is {median('layer_fit', 'all', 'ratio')} with\nthe layer-fitted rates",
              f"(target 10%; unfitted {median('unfitted', 'all', 'ratio')})",
              f"{median('step_fit', 'out_of_scale', 'ratio')} for step-level rates",
              f"(target 8%; unfitted {median('unfitted', 'out_of_scale', 'ratio')} on the same rows)",
              f"out-of-scale step-time error is {median('step_fit', 'out_of_scale', 'step_time')}",
              f"better than the unfitted {median('unfitted', 'out_of_scale', 'step_time')}"]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [q for q in quoted if q not in readme]
    assert not missing, missing


def test_readme_quotes_the_measured_whole_steps(capsys):
    """The "Whole training steps, measured" paragraph's ratios are what
    `benchmarks/bench_models_grid.py --data data/models-cpu-validation` prints."""
    import importlib.util

    from measure import dataset

    spec = importlib.util.spec_from_file_location(
        "bench_models_grid", REPO / "benchmarks" / "bench_models_grid.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.summarise(dataset.read_csv(REPO / "data" / "models-cpu-validation" / dataset.CSV_NAME))
    printed = capsys.readouterr().out
    readme = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    lora = printed.split("t_lora_merged")[0]
    all_line = lora.splitlines()[0]  # "... all median 0.62 (range 0.40-0.92, n=23)"
    median, low, high = (all_line.split("median ")[1].replace("(range ", "").replace("-", " ")
                         .replace(",", "").split()[:3])
    assert f"median {median} ({low}–{high} over the 23" in readme
    heads = {line.split()[1]: line.split("median ")[1].split()[0]
             for line in lora.splitlines() if line.strip().startswith("head ")}
    assert (f"by head {heads['classifier']} (classifier), {heads['lm']} (`lm`), "
            f"{heads['lm-tied']} (`lm-tied`)") in readme
    options = {line.split(":")[0].strip(): line.split(": ")[1].split(";")[0]
               for line in printed.splitlines() if "attention=" in line}
    as_is = next(v for k, v in options.items() if "optimizer=adamw precision=fp32 recompute=False"
                 in k and "attention=naive clip=True grad_accum=1" in k)
    assert f"seq 64: {as_is} as is" in readme
