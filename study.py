"""The measurements behind MIC's claim on the synthetic set, from one command each.

    python study.py coupling     # make study: coupling c ∈ {0, 0.5, 1} × {MIC, MIC − MI}
    python study.py ablations    # make table: the paper's ablation rows at one coupling

`coupling`: for each coupling of the synthetic set (how much a person's movement style follows
their appearance, `synthetic.py --coupling`), MIC and MIC − MI are trained on the same
subject-independent folds with several seeds; evaluate.py measures each (WAR, UAR, held-out
MI(z_E; z_I) with its shuffled control, identity probes on training and on unseen test clips)
and the paired per-split difference MIC − (MIC − MI). Writes OUT/study.md, OUT/study.json and
OUT/study.png (accuracy and test-clip identity probe against coupling, with error bars).

`ablations`: the rows of the paper's ablation table (MIC; − MI; − MI + adversary; −
reconstruction; + motion vectors; a deeper expression CNN; the RGB Mode-VLSTM baseline) at one
coupling, with test-time speed; writes OUT/table.md beside the paper's numbers.

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
from pathlib import Path

import numpy as np

from evaluate import PAIRED_HEAD, paired_cells

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
        core, _, backbone = v["variant"].partition("+")
        if core == "mic" and backbone == "resnet6":  # the paper's "MIC + ResNet6" row
            paper = PAPER["resnet6"]
        else:  # the paper's rows (ResNet50); a deeper CNN of ours has no row there
            paper = PAPER.get(core, "–") if backbone == args.backbone else "–"
        speed = f"{v['speed']['clips_per_s']:.1f}" if "speed" in v else "–"
        lines.append(
            f"| {v['variant']} | {v['row']} | "
            + " | ".join(row_cells(v))
            + f" | {speed} | {paper} |"
        )
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=["coupling", "ablations"])
    p.add_argument("--data", type=Path, default=Path("data/study"), help="synthetic sets")
    p.add_argument("--out", type=Path, default=Path("runs/study"), help="runs and reports")
    p.add_argument("--couplings", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    p.add_argument("--coupling", type=float, default=1.0, help="the ablations' coupling")
    p.add_argument(
        "--folds",
        type=int,
        nargs="+",
        default=[0, 1, 2, 3, 4],
        help="test folds of the 10-fold subject-independent protocol",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--subjects", type=int, default=80, help="subjects of each synthetic set")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--backbone", default="resnet6", help="the expression CNN of the rows")
    p.add_argument(
        "--deeper",
        nargs="*",
        default=["resnet18"],
        help="deeper expression CNNs for the ablation table (MIC)",
    )
    p.add_argument("--jobs", type=int, default=2, help="processes generating a set")
    p.add_argument("--synthetic", default="", help="more synthetic.py options, one string")
    p.add_argument(
        "--train",
        nargs=argparse.REMAINDER,
        default=CPU_TRAIN,
        help="train.py options of every run (last; default: the CPU configuration)",
    )
    args = p.parse_args(argv)
    if "--backbone" not in args.train:
        args.train = [*args.train, "--backbone", args.backbone]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (coupling_study if args.what == "coupling" else ablation_table)(args)


if __name__ == "__main__":
    main()
