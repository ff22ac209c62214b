"""MI staircase benchmark (Poole et al. 2019; Song & Ermon 2020) for the estimators of mi.py.

x, y ∈ R^d are correlated Gaussians whose true MI steps through 2, 4, 6, 8, 10 nats; each estimator
trains one T_θ across the whole staircase on fresh batches, and its estimate on each training batch
is recorded. Prints a markdown table (mean ± std over the last steps of each level) and plots the
estimates against the true staircase.

    python benchmarks/mi_staircase.py                 # ~4 min on a 2-core CPU
    python benchmarks/mi_staircase.py --cubic         # y -> y³ (same MI)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mi  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=800, help="training steps per MI level")
    p.add_argument("--levels", type=float, nargs="+", default=[2, 4, 6, 8, 10], help="true MI")
    p.add_argument("--dim", type=int, default=20, help="dimension d of x and y")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128, help="hidden width of T_θ / q")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--tail", type=float, default=0.25, help="fraction of a level's steps to average"
    )
    p.add_argument("--estimators", default=",".join(mi.ESTIMATORS), help="comma-separated names")
    p.add_argument("--cubic", action="store_true", help="use y³ instead of y (MI unchanged)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--out", type=Path, default=None, help="PNG path (default benchmarks/results/)")
    return p.parse_args()


def run_staircase(name: str, args: argparse.Namespace) -> np.ndarray:
    """Estimates (levels × steps) of one estimator trained across the staircase."""
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    est = mi.build_estimator(name, args.dim, args.dim, hidden=args.hidden)
    opt = torch.optim.Adam(est.parameters(), lr=args.lr)
    out = np.empty((len(args.levels), args.steps))
    for k, level in enumerate(args.levels):
        for s in range(args.steps):
            x, y = mi.correlated_gaussians(args.batch_size, args.dim, level, g)
            if args.cubic:
                y = y**3
            with torch.no_grad():
                out[k, s] = float(est(x, y))
            opt.zero_grad()
            est.loss_T(x, y).backward()
            opt.step()
    return out


def table(results: dict[str, np.ndarray], args: argparse.Namespace) -> str:
    tail = max(1, int(args.tail * args.steps))
    head = "| estimator | " + " | ".join(f"true {v:g}" for v in args.levels) + " |"
    rows = [head, "|---" * (len(args.levels) + 1) + "|"]
    for name, est in results.items():
        last = est[:, -tail:]
        cells = [f"{m:.2f} ± {s:.2f}" for m, s in zip(last.mean(1), last.std(1), strict=True)]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    club_true = [args.dim * math.expm1(2 * v / args.dim) for v in args.levels]
    rows.append(
        "| *CLUB with the true q(y\\|x)* | " + " | ".join(f"{v:.2f}" for v in club_true) + " |"
    )
    rows.append(
        f"| *InfoNCE cap log {args.batch_size}* | "
        + " | ".join(f"{math.log(args.batch_size):.2f}" for _ in args.levels)
        + " |"
    )
    return "\n".join(rows)


def plot(results: dict[str, np.ndarray], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(len(args.levels) * args.steps)
    truth = np.repeat(args.levels, args.steps)
    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.4), squeeze=False)
    for ax, (name, est) in zip(axes[0], results.items(), strict=True):
        flat = est.reshape(-1)
        smooth = np.convolve(flat, np.ones(50) / 50, mode="valid")  # 50-step moving average
        ax.plot(steps, flat, color="C0", alpha=0.25, lw=0.5)
        ax.plot(steps[49:], smooth, color="C0", lw=1.2, label="estimate")
        ax.plot(steps, truth, color="k", lw=1.5, label="true MI")
        if name == "club":
            ax.plot(
                steps, args.dim * np.expm1(2 * truth / args.dim), "k--", lw=1, label="CLUB, true q"
            )
            ax.set_ylim(-2, 1.2 * args.dim * math.expm1(2 * max(args.levels) / args.dim))
        else:
            ax.set_ylim(-2, max(args.levels) + 4)
        if name == "infonce":
            ax.axhline(math.log(args.batch_size), color="r", ls=":", lw=1, label="log n")
        ax.set_title(name + (" (y³)" if args.cubic else ""))
        ax.set_xlabel("step")
        ax.legend(loc="upper left", fontsize=7)
    axes[0][0].set_ylabel("MI (nats)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    names = args.estimators.split(",")
    results: dict[str, np.ndarray] = {}
    start = time.time()
    for name in names:
        t = time.time()
        results[name] = run_staircase(name, args)
        print(f"{name}: {time.time() - t:.0f} s", file=sys.stderr, flush=True)
    print(
        f"d = {args.dim}, batch {args.batch_size}, hidden {args.hidden}, lr {args.lr}, "
        f"{args.steps} steps per level{', y -> y³' if args.cubic else ''}; "
        f"mean ± std over the last {args.tail:.0%} of each level (nats)\n"
    )
    print(table(results, args))
    path = args.out or Path(__file__).parent / "results" / (
        "mi_staircase_cubic.png" if args.cubic else "mi_staircase.png"
    )
    plot(results, args, path)
    print(f"\nplot: {path}; wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
