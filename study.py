"""The measurements behind MIC's claim on the synthetic set, from one command each.

    python study.py coupling     # make study: coupling c ∈ {0, 0.5, 1} × {MIC, MIC − MI}
    python study.py ablations    # make table: the paper's ablation rows at one coupling
    python study.py sweep        # make sweep: which identity regulariser recovers what identity
                                 # costs (docs/identity-study.md)

`coupling`: for each coupling of the synthetic set (how much a person's movement style follows
their appearance, `synthetic.py --coupling`), MIC and MIC − MI are trained on the same
subject-independent folds with several seeds; evaluate.py measures each (WAR, UAR, held-out
MI(z_E; z_I) with its shuffled control, identity probes on training and on unseen test clips)
and the paired per-split difference MIC − (MIC − MI). Writes OUT/study.md, OUT/study.json and
OUT/study.png (accuracy and test-clip identity probe against coupling, with error bars).

`ablations`: the rows of the paper's ablation table (MIC; − MI; − MI + adversary; −
reconstruction; + motion vectors; a deeper expression CNN; the RGB Mode-VLSTM baseline) at one
coupling, with test-time speed; writes OUT/table.md beside the paper's numbers.

`sweep`: on the 200-subject set of `make precondition` (identity style × 3, coupling 1), each
identity regulariser of FAMILIES at each weight α, on held-out training folds (train.py
--validate: the test folds are never seen), the best α of each family (by that validation
accuracy) again on the test folds with more seeds, MIC − MI on the same set with and without the
identity style as the references, and MIC's MI term with and without conditioning on y on a set
whose subjects' emotions follow their appearance (synthetic.py --label-coupling 1). Writes
docs/identity-study.md, docs/identity-study.json and docs/identity-study.png.

Every run goes through train.py with --resume and evaluate.py, so a killed study continues
where it stopped. The defaults are a reduced size that fits a 2-core CPU (README: measured time
and the full-size settings for a GPU).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from evaluate import PAIRED_HEAD, paired_cells
from train import result_epochs

ROOT = Path(__file__).resolve().parent

# The reduced CPU configuration (the demo's model: ResNet6 + LSTM on accumulated residuals).
CPU_TRAIN = [
    "--backbone",
    "resnet6",
    "--hidden",
    "64",
    "--size",
    "48",
    "--num-segments",
    "4",
    "--accumulate",
    "--batch-size",
    "16",
    "--schedule",
    "5:3e-4",
    "--workers",
    "1",
]
# The paper's numbers (MIC, Liu et al. 2021, as quoted by the reproduction report): CK+ / MMI.
PAPER = {
    "mic": "98.95 / 81.29",
    "mic-mi": "97.84 / 80.25",
    "mic-mi+adv": "98.78 / 80.98",
    "mic-rec": "98.72 / 80.94",
    "mic+mv": "98.93 / 81.24",
    "resnet6": "99.71 / –",
    "rgb": "97.42 / 79.33",
}
ABLATIONS = {  # variant flags; the backbone is added from --backbone (and --deeper)
    "mic": [],
    "mic-mi": ["--no-mi"],
    "mic-mi+adv": ["--no-mi", "--adv"],
    "mic-rec": ["--no-rec"],
    "mic+mv": ["--with-mv"],
    "rgb": ["--baseline", "rgb"],
}


def sh(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def dataset(args: argparse.Namespace, coupling: float) -> Path:
    """The synthetic set at `coupling` (generated once; train.py re-encodes and indexes it)."""
    root = args.data / f"c{coupling:g}"
    raw = root.with_name(root.name + "-raw")
    if not (raw / "synthetic.json").exists():
        sh(
            [
                sys.executable,
                str(ROOT / "synthetic.py"),
                "--out",
                str(raw),
                "--force",
                "--subjects",
                str(args.subjects),
                "--coupling",
                str(coupling),
                "--id-subjects",
                "0",
                "--jobs",
                str(args.jobs),
                "--seed",
                "0",
                *shlex.split(args.synthetic),
            ]
        )
    return root


def train(args: argparse.Namespace, root: Path, out: Path, seed: int, flags: list[str]) -> None:
    folds = [x for f in args.folds for x in ("--fold", str(f))]
    sh(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "--dataset",
            "synthetic",
            "--root",
            str(root),
            "--out",
            str(out),
            "--epochs",
            str(args.epochs),
            "--seed",
            str(seed),
            "--resume",
            *folds,
            *args.train,
            *flags,
        ]
    )


def evaluate(out: Path, speed: bool) -> dict:
    sh([sys.executable, str(ROOT / "evaluate.py"), str(out), *([] if speed else ["--no-speed"])])
    return json.loads((out / "results.json").read_text())


def pm(v: dict, key: str, scale: float = 100, digits: int = 1) -> str:
    mean, sd = v[f"{key}_mean"], v[f"{key}_sd"]
    return "–" if mean != mean else f"{scale * mean:.{digits}f} ± {scale * sd:.{digits}f}"


def row_cells(v: dict) -> list[str]:
    """WAR, UAR, held-out MI (shuffled control), the two identity probes."""
    mi = (
        "–"
        if v["mi_mean"] != v["mi_mean"]
        else (f"{v['mi_mean']:.3f} ± {v['mi_sd']:.3f} ({v['mi_shuffled_mean']:.3f})")
    )
    return [
        pm(v, "war"),
        pm(v, "uar"),
        mi,
        f"{pm(v, 'probe_train')} ({100 * v['probe_train_chance_mean']:.1f})",
        f"{pm(v, 'probe_test')} ({100 * v['probe_test_chance_mean']:.1f} / "
        f"{100 * v['probe_test_majority_mean']:.1f})",
    ]


def coupling_study(args: argparse.Namespace) -> None:
    results = {}
    for c in args.couplings:
        root = dataset(args, c)
        out = args.out / f"c{c:g}"
        for seed in args.seeds:
            for flags in ([], ["--no-mi"]):
                train(args, root, out, seed, flags)
        results[c] = evaluate(out, speed=False)
    (args.out / "study.json").write_text(
        json.dumps({str(c): r for c, r in results.items()}, indent=1)
    )
    head = (
        "| coupling | variant | WAR % | UAR % | held-out MI (shuffled), nats | identity "
        "probe, training clips (chance) | on unseen test clips (chance / majority) |"
    )
    lines = [
        f"# MIC on the synthetic set against coupling ({len(args.folds)} folds × "
        f"{len(args.seeds)} seeds, {args.epochs} epochs, {args.subjects} subjects)",
        "",
        head,
        "|---|---|---|---|---|---|---|",
    ]
    for c, r in results.items():
        for v in r["variants"]:
            lines.append(f"| {c:g} | {v['variant']} | " + " | ".join(row_cells(v)) + " |")
    lines += [
        "",
        "Paired difference MIC − (MIC − MI) over folds × seeds:",
        "",
        "| coupling " + PAIRED_HEAD,
        "|---" * 8 + "|",
    ]
    for c, r in results.items():
        lines += [
            f"| {c:g} " + paired_cells(d)
            for d in r["comparisons"]
            if d["a"].startswith("mic+") or d["a"] == "mic"
        ]
    (args.out / "study.md").write_text("\n".join(lines) + "\n")
    plot(results, args.out / "study.png")
    print("\n".join(lines))


def plot(results: dict[float, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    cs = sorted(results)
    names = [v["variant"] for v in results[cs[0]]["variants"]]
    for i, name in enumerate(names):
        vs = [next(v for v in results[c]["variants"] if v["variant"] == name) for c in cs]
        for ax, key in zip(axes, ("war", "probe_test"), strict=True):
            ax.errorbar(
                np.array(cs) + 0.01 * (i - 0.5),
                [100 * v[f"{key}_mean"] for v in vs],
                yerr=[100 * v[f"{key}_sd"] for v in vs],
                marker="o",
                capsize=3,
                label=name,
            )
    for key, style in (("chance", "k:"), ("majority", "k--")):
        axes[1].plot(
            cs,
            [100 * results[c]["variants"][0][f"probe_test_{key}_mean"] for c in cs],
            style,
            label=key,
        )
    axes[0].set_ylabel("test accuracy (WAR), %")
    axes[1].set_ylabel("identity probe on unseen test clips, %")
    for ax in axes:
        ax.set_xlabel("coupling c (style follows appearance)")
        ax.legend(fontsize=8)
    fig.suptitle("mean ± sd over folds × seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def ablation_table(args: argparse.Namespace) -> None:
    root = dataset(args, args.coupling)
    out = args.out / f"ablations-c{args.coupling:g}"
    runs = [(name, flags) for name, flags in ABLATIONS.items()]
    runs += [("deeper", ["--backbone", b]) for b in args.deeper]
    for _, flags in runs:
        for seed in args.seeds:
            train(args, root, out, seed, flags)
    r = evaluate(out, speed=True)
    lines = [
        f"# The paper's ablations on the synthetic set at coupling {args.coupling:g} "
        f"({len(args.folds)} folds × {len(args.seeds)} seeds, {args.epochs} epochs)",
        "",
        "| variant | paper row | WAR % | UAR % | held-out MI (shuffled), nats | identity "
        "probe, training clips (chance) | on unseen test clips (chance / majority) | "
        "test clips/s | the paper's CK+ / MMI (its ResNet50 rows, MIC + ResNet6 for "
        "mic+resnet6; not measured here) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in r["variants"]:
        paper = paper_numbers(v, args.backbone)
        speed = f"{v['speed']['clips_per_s']:.1f}" if "speed" in v else "–"
        lines.append(
            f"| {v['variant']} | {v['row']} | "
            + " | ".join(row_cells(v))
            + f" | {speed} | {paper} |"
        )
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def paper_numbers(v: dict, backbone: str) -> str:
    """The paper's CK+ / MMI of an evaluated variant (its row and backbone, from the options
    its runs stored), where the rows are run with `backbone`."""
    if v["ablation"] == "mic" and v["backbone"] == "resnet6":  # the paper's "MIC + ResNet6" row
        return PAPER["resnet6"]
    # the paper's rows (ResNet50); a deeper CNN of ours has no row there
    return PAPER.get(v["ablation"], "–") if v["backbone"] == backbone else "–"


# The identity regularisers of the sweep: train.py's flags, --alpha being each one's weight.
FAMILIES = {
    "mi": [],  # MIC's MI term, the default: CLUB with a ridge q fitted on the clip table
    "club-mlp": ["--mi-critic", "mlp"],  # the same bound, q an MLP trained by gradient steps
    "mi-cond": ["--mi-conditional"],  # I(z_E; z_I | y): partners of the same label
    "adv": ["--no-mi", "--adv"],  # a subject classifier behind gradient reversal
    "adv-cond": ["--no-mi", "--adv", "--adv-conditional"],  # the same adversary sees y
    "placebo": ["--mi-placebo"],  # the control: MIC's term with z_I permuted across clips
}
STAGES = ("sweep", "confirm", "coupled")
# The sweep's set (with --subjects 200): make precondition's, where identity costs accuracy; its
# siblings: the same set without the identity style, and with emotions that follow appearance.
SWEEP_SET = "--style 3 --variability 1 --intensity-jitter 0.6"
SIBLINGS = {"style0": "--style 0", "lc1": "--label-coupling 1"}
SWEEP_DOC = ROOT / "docs" / "identity-study"
REFERENCE = "mic-mi+resnet6"  # train.py's name of MIC − MI (the CPU configuration's ResNet6)
# Minutes of one fold-run (24 epochs, the CPU configuration, decode cache) measured on the 2-core
# CPU, for the first estimate; later estimates use the runs timed in --out.
FOLD_RUN_MIN = 5.0


def point_name(family: str, alpha: float) -> str:
    return f"{family}-a{alpha:g}+resnet6"


def sibling(args: argparse.Namespace, key: str) -> argparse.Namespace:
    """The options of a sibling set of the sweep's (data and runs beside the main ones)."""
    return argparse.Namespace(
        **{
            **vars(args),
            "data": args.data.with_name(f"{args.data.name}-{key}"),
            "out": args.out.with_name(f"{args.out.name}-{key}"),
            "synthetic": f"{args.synthetic} {SIBLINGS[key]}",
        }
    )


def run_folder(out: Path, name: str, fold: int, seed: int, validate: bool) -> Path:
    """train.py's folder of one fold-run (`train.run_dir`): validation runs in OUT/sweep."""
    return (
        out
        / ("sweep" if validate else "c1")
        / name
        / (f"fold{fold}" + ("-val" if validate else "") + (f"-seed{seed}" if seed else ""))
    )


def stage_jobs(args: argparse.Namespace, stage: str, best: dict[str, float]) -> list[tuple]:
    """The stage's trainings: (set options, variant name, flags, folds, seeds, validate). Before
    the sweep has chosen, `best` holds a stand-in α per family (only the count matters then)."""

    def point(a: argparse.Namespace, f: str, alpha: float, validate: bool) -> tuple:
        folds, seeds = (args.folds, [0]) if validate else (args.confirm_folds, args.seeds)
        return (
            a,
            point_name(f, alpha),
            [*FAMILIES[f], "--alpha", f"{alpha:g}"],
            folds,
            seeds,
            validate,
        )

    def reference(a: argparse.Namespace, validate: bool) -> tuple:
        folds, seeds = (args.folds, [0]) if validate else (args.confirm_folds, args.seeds)
        return (a, REFERENCE, ["--no-mi"], folds, seeds, validate)

    off, coupled = sibling(args, "style0"), sibling(args, "lc1")
    if stage == "sweep":
        return [
            reference(args, True),
            reference(off, True),
            *(point(args, f, alpha, True) for f in args.families for alpha in args.alphas),
        ]
    if stage == "confirm":
        return [
            reference(args, False),
            reference(off, False),
            *(point(args, f, alpha, False) for f, alpha in best.items()),
        ]
    return [
        reference(coupled, False),
        *(point(coupled, f, best[f], False) for f in ("mi", "mi-cond") if f in best),
    ]


def pending(jobs: list[tuple], epochs: int) -> int:
    return sum(
        result_epochs(run_folder(a.out, name, f, s, validate)) != epochs
        for a, name, _, folds, seeds, validate in jobs
        for f in folds
        for s in seeds
    )


def best_alphas(args: argparse.Namespace) -> dict[str, float]:
    """Each family's α of the highest mean validation accuracy (WAR) in the evaluated sweep;
    families none of whose points are evaluated are left out."""
    path = args.out / "sweep" / "results.json"
    if not path.exists():
        return {}
    war = {v["variant"]: v["war_mean"] for v in json.loads(path.read_text())["variants"]}
    best = {}
    for f in args.families:
        scored = [(war[point_name(f, a)], a) for a in args.alphas if point_name(f, a) in war]
        if scored:
            best[f] = max(scored)[1]
    return best


def run_jobs(args: argparse.Namespace, jobs: list[tuple]) -> None:
    """Train what is not finished (train.py --resume), timing each fold-run into --timing."""
    times = json.loads(args.timing.read_text()) if args.timing.exists() else []
    for a, name, flags, folds, seeds, validate in jobs:
        root = dataset(a, 1.0)
        for seed in seeds:
            todo = [
                f
                for f in folds
                if result_epochs(run_folder(a.out, name, f, seed, validate)) != args.epochs
            ]
            if not todo:
                continue
            start = time.time()
            train(
                argparse.Namespace(**{**vars(a), "folds": todo}),
                root,
                a.out / ("sweep" if validate else "c1"),
                seed,
                [*flags, "--name", name, *(["--validate"] if validate else [])],
            )
            times += [(time.time() - start) / len(todo)] * len(todo)
            args.timing.write_text(json.dumps(times))


def evaluate_sets(args: argparse.Namespace) -> None:
    for a in (args, sibling(args, "style0"), sibling(args, "lc1")):
        for stage in ("sweep", "c1"):
            if any((a.out / stage).glob("*/*/result.json")):
                evaluate(a.out / stage, speed=False)


def sweep(args: argparse.Namespace) -> None:
    """The identity study, stage by stage (resumable), then docs/identity-study.* from every
    evaluated run."""
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report:
        evaluate_sets(args)
        write_study(args, best_alphas(args))
        return
    args.timing = args.out / "sweep-timing.json"
    stand_in = {f: args.alphas[0] for f in args.families}
    best = best_alphas(args)
    runs = sum(
        pending(
            stage_jobs(args, s, best if s == "sweep" or len(best) == len(stand_in) else stand_in),
            args.epochs,
        )
        for s in args.stages
    )
    times = json.loads(args.timing.read_text()) if args.timing.exists() else []
    minutes = float(np.mean(times)) / 60 if times else FOLD_RUN_MIN
    print(
        f"study.py sweep: {runs} fold-runs to train (stages {', '.join(args.stages)}), about "
        f"{runs * minutes / 60:.1f} h at {minutes:.1f} min each",
        flush=True,
    )
    for stage in args.stages:
        if stage != "sweep":
            best = best_alphas(args)
            missing = [f for f in args.families if f not in best]
            if missing:
                raise SystemExit(
                    f"study.py sweep: no evaluated sweep point of "
                    f"{', '.join(missing)} in {args.out / 'sweep'}: run "
                    "--stages sweep first (or leave them out with --families)"
                )
        run_jobs(args, stage_jobs(args, stage, best))
        evaluate_sets(args)
    write_study(args, best_alphas(args))


def load_results(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def study_row(v: dict, r: dict, ref: dict | None, off: dict | None) -> dict:
    """One variant's numbers for the tables and the plot: WAR, UAR, dependence, the
    label-residualised probe, the MI term's diagnostics, the paired accuracy difference against
    MIC − MI (corrected p) and the share of the identity style's cost it recovers."""
    diff = next(
        (
            c
            for c in r["comparisons"]
            if c["a"] == v["variant"]
            and c["b"] == REFERENCE
            and c["metric"] == "accuracy_per_split"
        ),
        None,
    )
    cost = None if ref is None or off is None else off["war_mean"] - ref["war_mean"]
    return {
        "variant": v["variant"],
        "splits": len(v["splits"]),
        "war": v["war_mean"],
        "war_sd": v["war_sd"],
        "uar": v["uar_mean"],
        "dependence": v.get("dependence", {}).get("statistic", float("nan")),
        "dependence_p": v.get("dependence", {}).get("p", float("nan")),
        "probe_resid": v.get("probe_resid_mean", float("nan")),
        "mi_active": v.get("mi_active_mean", float("nan")),
        "mi_grad_ratio": v.get("mi_grad_ratio_mean", float("nan")),
        "diff": None if diff is None else diff["mean"],
        "diff_p": None if diff is None else diff.get("p_corrected", diff["p"]),
        "recovered": (None if diff is None or not cost else diff["mean"] / cost),
    }


def study_table(rows: list[dict]) -> list[str]:
    def num(x: float | None, fmt: str) -> str:
        return "–" if x is None or x != x else format(x, fmt)

    lines = [
        "| variant | splits | WAR % | UAR % | dependence z (p) | label-residualised probe % "
        "| mi_active | mi_grad_ratio | WAR − (MIC − MI), points (corrected p) | share of "
        "the style's cost recovered |",
        "|---" * 10 + "|",
    ]
    for x in rows:
        diff = "–" if x["diff"] is None else f"{100 * x['diff']:+.1f} ({num(x['diff_p'], '.3f')})"
        lines.append(
            f"| {x['variant']} | {x['splits']} | {100 * x['war']:.1f} ± {100 * x['war_sd']:.1f} "
            f"| {100 * x['uar']:.1f} | {num(x['dependence'], '.2f')} "
            f"({num(x['dependence_p'], '.3f')}) | {num(100 * x['probe_resid'], '.1f')} | "
            f"{num(x['mi_active'], '.2f')} | {num(x['mi_grad_ratio'], '.2f')} | {diff} | "
            f"{'–' if x['recovered'] is None else format(100 * x['recovered'], '.0f') + ' %'} |"
        )
    return lines


def stage_rows(args: argparse.Namespace, stage: str) -> tuple[list[dict], dict | None]:
    """The rows of one stage (the main set's variants, then MIC − MI without the style) and the
    style-off reference's row."""
    r = load_results(args.out / stage / "results.json")
    r_off = load_results(sibling(args, "style0").out / stage / "results.json")
    if r is None:
        return [], None
    by_name = {v["variant"]: v for v in r["variants"]}
    off = (
        None
        if r_off is None
        else next((v for v in r_off["variants"] if v["variant"] == REFERENCE), None)
    )
    ref = by_name.get(REFERENCE)
    rows = [study_row(v, r, ref, off) for v in r["variants"]]
    off_row = (
        None
        if off is None
        else {**study_row(off, r_off, None, None), "variant": f"{REFERENCE}, style off"}
    )
    return rows, off_row


def write_study(args: argparse.Namespace, best: dict[str, float]) -> None:
    """docs/identity-study.md, .json and .png from the evaluated runs of every stage."""
    doc = args.doc
    stages = {stage: stage_rows(args, stage) for stage in ("sweep", "c1")}
    coupled = load_results(sibling(args, "lc1").out / "c1" / "results.json")
    coupled_rows = (
        [] if coupled is None else [study_row(v, coupled, None, None) for v in coupled["variants"]]
    )
    lines = [
        "# Which identity regulariser recovers what identity costs",
        "",
        f"Written by `python study.py sweep` (the numbers of the runs evaluated so far). The "
        f"set: synthetic, {args.subjects} subjects, coupling 1, `{args.synthetic}`; the "
        f"style-off set adds `--style 0`; {args.epochs} epochs of `train.py "
        f"{' '.join(args.train)}`. The families (train.py's flags, with `--alpha`): "
        + "; ".join(f"{f} `{' '.join(FAMILIES[f]) or '(the default)'}`" for f in args.families)
        + ". Dependence: evaluate.py's "
        "held-out ridge test of z_E on z_I (pooled z over the splits, exact permutation p); "
        "the label-residualised probe identifies unseen clips' subjects from z_E with the "
        "label's mean removed. The share recovered: the paired WAR gain over MIC − MI ÷ "
        "(style-off MIC − MI's WAR − MIC − MI's WAR).",
        "",
    ]
    summary = {"best_alpha": best, "families": {f: FAMILIES[f] for f in args.families}}
    for stage, title in (
        (
            "sweep",
            f"## The sweep: validation folds (train.py --validate: the "
            f"training fold after each of the test folds {args.folds}, "
            "seed 0)",
        ),
        (
            "c1",
            f"## Confirmation: each family's best α on the test folds "
            f"{args.confirm_folds} × seeds {args.seeds}",
        ),
    ):
        rows, off = stages[stage]
        summary[stage] = {"rows": rows, "style_off": off}
        lines += [title, ""]
        if not rows:
            lines += ["Not run yet.", ""]
            continue
        lines += study_table(rows + ([off] if off else [])) + [""]
        gains = [x for x in rows if x["recovered"] is not None]
        if gains:
            top = max(gains, key=lambda x: x["diff"])
            lines += [
                f"Largest gain over MIC − MI: {top['variant']}, {100 * top['diff']:+.1f} "
                f"points (corrected p {top['diff_p']:.3f}), "
                f"{100 * top['recovered']:.0f} % of the style's cost.",
                "",
            ]
    lines += [
        f"## The label-coupled set (`--label-coupling 1`): MIC's term with and without "
        f"conditioning on y, at their best α, folds {args.confirm_folds} × seeds "
        f"{args.seeds}",
        "",
    ]
    lines += study_table(coupled_rows) + [""] if coupled_rows else ["Not run yet.", ""]
    summary["coupled"] = coupled_rows
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.with_suffix(".md").write_text("\n".join(lines))
    doc.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    plot_study(stages, doc.with_suffix(".png"))
    print("\n".join(lines))


def plot_study(stages: dict[str, tuple[list[dict], dict | None]], path: Path) -> None:
    """Accuracy against the identity left in z_E: a line per family over α (the sweep), each
    family's best α (the confirmation), MIC − MI and the style-off model as reference points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(s, rows, off) for s, (rows, off) in stages.items() if rows]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (stage, rows, off) in zip(axes[0], panels, strict=True):
        families: dict[str, list[tuple[float, dict]]] = {}
        for x in rows:
            name = x["variant"].removesuffix("+resnet6")
            family, _, alpha = name.rpartition("-a")
            if family in FAMILIES:
                families.setdefault(family, []).append((float(alpha), x))
        for i, (family, points) in enumerate(sorted(families.items())):
            points.sort(key=lambda p: p[0])
            xs = [p[1]["dependence"] for p in points]
            ys = [100 * p[1]["war"] for p in points]
            ax.plot(
                xs,
                ys,
                marker="o",
                color=f"C{i}",
                label=family,
                ls=":" if family == "placebo" else "-",
            )
            for (alpha, _), x, y in zip(points, xs, ys, strict=True):
                ax.annotate(
                    f"{alpha:g}", (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points"
                )
        for ref, marker, label in (
            (next((x for x in rows if x["variant"] == REFERENCE), None), "*", "MIC − MI"),
            (off, "^", "MIC − MI, style off"),
        ):
            if ref is not None:
                ax.plot(
                    [ref["dependence"]], [100 * ref["war"]], marker, color="k", ms=10, label=label
                )
        ax.set_xlabel("identity left in z_E: held-out dependence z (pooled)")
        ax.set_ylabel("WAR, %")
        ax.set_title(
            "sweep (validation folds; numbers: α)"
            if stage == "sweep"
            else "confirmation (best α, test folds × seeds)",
            fontsize=9,
        )
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=["coupling", "ablations", "sweep"])
    p.add_argument(
        "--data", type=Path, help="synthetic sets (default: data/study; sweep: data/sv200)"
    )
    p.add_argument(
        "--out", type=Path, help="runs and reports (default: runs/study; sweep: runs/sv200)"
    )
    p.add_argument("--couplings", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    p.add_argument("--coupling", type=float, default=1.0, help="the ablations' coupling")
    p.add_argument(
        "--folds",
        type=int,
        nargs="+",
        default=[0, 1, 2, 3, 4],
        help="test folds of the 10-fold subject-independent protocol (sweep: those "
        "whose next fold is the validation fold)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--subjects", type=int, help="subjects of each synthetic set (80; sweep: 200)")
    p.add_argument("--epochs", type=int, help="epochs of every run (8; sweep: 24)")
    p.add_argument("--backbone", default="resnet6", help="the expression CNN of the rows")
    p.add_argument(
        "--deeper",
        nargs="*",
        default=["resnet18"],
        help="deeper expression CNNs for the ablation table (MIC)",
    )
    p.add_argument(
        "--families",
        nargs="+",
        choices=list(FAMILIES),
        default=list(FAMILIES),
        help="sweep: the identity regularisers",
    )
    p.add_argument(
        "--alphas",
        type=float,
        nargs="+",
        default=[0.03, 0.1, 0.3, 1.0],
        help="sweep: the weights α of each family",
    )
    p.add_argument(
        "--confirm-folds",
        type=int,
        nargs="+",
        default=list(range(10)),
        help="sweep: the test folds of the confirmation and the label-coupled set",
    )
    p.add_argument(
        "--stages",
        nargs="+",
        choices=STAGES,
        default=list(STAGES),
        help="sweep: which stages to train (the document is written from all)",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="sweep: train nothing; evaluate what is finished and write the document",
    )
    p.add_argument(
        "--doc",
        type=Path,
        default=SWEEP_DOC,
        help="sweep: the document's path without suffix (.md, .json, .png)",
    )
    p.add_argument("--jobs", type=int, default=2, help="processes generating a set")
    p.add_argument(
        "--synthetic",
        help=f"more synthetic.py options, one string (default: none; sweep: {SWEEP_SET!r})",
    )
    p.add_argument(
        "--train",
        nargs=argparse.REMAINDER,
        help="train.py options of every run (last; default: the CPU configuration, "
        "sweep: with the decode cache runs/cache)",
    )
    args = p.parse_args(argv)
    sweeping = args.what == "sweep"
    for key, default, of_sweep in (
        ("data", Path("data/study"), Path("data/sv200")),
        ("out", Path("runs/study"), Path("runs/sv200")),
        ("subjects", 80, 200),
        ("epochs", 8, 24),
        ("synthetic", "", SWEEP_SET),
        ("train", CPU_TRAIN, [*CPU_TRAIN, "--cache", "runs/cache"]),
    ):
        if getattr(args, key) is None:
            setattr(args, key, of_sweep if sweeping else default)
    if "--backbone" not in args.train:
        args.train = [*args.train, "--backbone", args.backbone]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    {"coupling": coupling_study, "ablations": ablation_table, "sweep": sweep}[args.what](args)


if __name__ == "__main__":
    main()
