"""Evaluate a run of train.py as the paper's tables do.

    python evaluate.py runs/mic                 # every variant under the run folder
    python evaluate.py runs/mic --no-speed      # accuracy and identity probe only

Writes RUN/results.json, RUN/results.md and RUN/<variant>/confusion.png:
- accuracy per fold, mean ± std over folds, per-class recall and the pooled confusion matrix;
- the MI estimate between z_E and z_I at the end of training (T_θ's, logged by train.py);
- identity left in z_E: a linear probe trained on the frozen z_E of the training clips to predict
  the subject, tested on other clips of the same subjects (chance = 1 / subjects);
- test-time speed measured here, in this run: MIC's test path (coviar reader + expression branch
  on residuals, no identity branch) for each trained backbone, against RGB paths (decoded frames +
  ResNet50+LSTM, and the same backbone on RGB frames). frames/s counts the clip's video frames
  (what a viewer would call the video's frames), clips/s the clips; one clip at a time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import coviar  # noqa: E402
from datasets import read_index  # noqa: E402
from models import MIC  # noqa: E402
from reader import (  # noqa: E402
    PICTURE,
    RESIDUAL,
    crop_frames,
    multiscale_box,
    normalise,
    resize_frames,
    sample_indices,
)

# Variant name (train.variant_name without the backbone) -> the paper's row label.
PAPER_ROWS = {
    "mic": "MIC",
    "mic-mi": "MIC − MI",
    "mic-mi+adv": "MIC − MI + Adv",
    "mic-rec": "MIC − Î (no reconstruction)",
    "mic+mv": "MIC + T^t (motion vectors)",
    "rgb": "RGB baseline (same model on decoded frames)",
    "rgb-mi": "RGB baseline − MI",
}


def paper_row(variant: str) -> str:
    core, _, backbone = variant.partition("+resnet")
    label = PAPER_ROWS.get(core, core)
    return f"{label}, ResNet{backbone}" if backbone else f"{label}, ResNet50"


def fold_dirs(variant_dir: Path) -> list[Path]:
    return sorted(d for d in variant_dir.iterdir() if (d / "result.json").exists())


def identity_probe(train_z: np.ndarray, subjects: np.ndarray, steps: int = 300,
                   seed: int = 0) -> tuple[float, float]:
    """Linear probe z_E → subject: train on every other clip of each subject, test on the rest.

    Returns (held-out accuracy, chance = 1 / number of probed subjects)."""
    order = np.argsort(subjects, kind="stable")
    rank = np.zeros(len(subjects), int)  # position of each clip among its subject's clips
    for s in np.unique(subjects):
        idx = order[subjects[order] == s]
        rank[idx] = np.arange(len(idx))
    counts = np.bincount(subjects)
    keep = counts[subjects] >= 2
    fit, held = keep & (rank % 2 == 0), keep & (rank % 2 == 1)
    if not held.any():
        return float("nan"), float("nan")
    names, y = np.unique(subjects[keep], return_inverse=True)
    y_all = np.full(len(subjects), -1)
    y_all[keep] = y
    x = torch.from_numpy(train_z).float()
    mu, sd = x[fit].mean(0), x[fit].std(0) + 1e-6
    x = (x - mu) / sd
    torch.manual_seed(seed)
    probe = torch.nn.Linear(x.shape[1], len(names))
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    xf, yf = x[fit], torch.from_numpy(y_all[fit])
    for _ in range(steps):
        loss = F.cross_entropy(probe(xf), yf)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = probe(x[held]).argmax(1).numpy()
    return float((pred == y_all[held]).mean()), 1.0 / len(names)


def evaluate_variant(variant_dir: Path) -> dict:
    """Accuracy, confusion, MI estimate and identity probe of one variant (all its folds)."""
    folds = fold_dirs(variant_dir)
    results = [json.loads((d / "result.json").read_text()) for d in folds]
    classes = results[0]["classes"]
    n = len(classes)
    confusion = np.zeros((n, n), int)
    probe, chance = [], []
    for d in folds:
        f = np.load(d / "features.npz")
        np.add.at(confusion, (f["test_label"], f["test_pred"]), 1)
        acc, ch = identity_probe(f["train_z"], f["train_subject"])
        probe.append(acc)
        chance.append(ch)
    accs = np.array([r["accuracy"] for r in results])
    recall = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
    mi = [r["history"][-1]["mi"] for r in results if r["history"]]
    return {
        "variant": variant_dir.name, "row": paper_row(variant_dir.name),
        "folds": [r["fold"] for r in results], "accuracy_per_fold": accs.tolist(),
        "accuracy_mean": float(accs.mean()), "accuracy_std": float(accs.std()),
        "pooled_accuracy": float(confusion.diagonal().sum() / confusion.sum()),
        "per_class_recall": dict(zip(classes, recall.tolist(), strict=True)),
        "confusion": confusion.tolist(), "classes": classes,
        "mi_estimate": float(np.mean(mi)) if mi else float("nan"),
        "identity_probe": float(np.nanmean(probe)), "identity_probe_chance": float(np.mean(chance)),
    }


def plot_confusion(res: dict, path: Path) -> None:
    c = np.array(res["confusion"], float)
    norm = c / np.maximum(c.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(res["classes"]))
    ax.set_xticks(ticks, res["classes"], rotation=45, ha="right")
    ax.set_yticks(ticks, res["classes"])
    for i in ticks:
        for j in ticks:
            if c[i, j]:
                ax.text(j, i, int(c[i, j]), ha="center", va="center",
                        color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{res['variant']}: {res['pooled_accuracy']:.1%} (all folds pooled)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_clip(path: Path, num_frames: int, config: dict, representation: str) -> torch.Tensor:
    """The test path's reader alone: `num_segments` residuals (or decoded frames) of one clip,
    sampled, cropped, resized and normalised as ClipDataset does in test mode (no I-frame, no
    apex: test time needs neither)."""
    rgb = representation == "rgb"
    seg = sample_indices(num_frames, config["num_segments"], False, 0 if rgb else 1)
    a = coviar.load_many(str(path), 0, seg, PICTURE if rgb else RESIDUAL,
                         config.get("accumulate", False))
    box = multiscale_box(*a.shape[1:3], train=False)
    x = resize_frames(crop_frames(a, box), config["size"])[:, [2, 1, 0]]  # BGR -> RGB
    return normalise(x, representation)


@torch.no_grad()
def measure_speed(root: Path, config: dict, representation: str, backbone: str, clips: int,
                  device: torch.device) -> dict:
    """Clips/s and frames/s of reading `clips` clips and running the expression branch on them."""
    rows = read_index(root / "index.csv")[:clips]
    model = MIC(config["num_classes"], config["num_segments"], backbone, config["hidden"],
                decoder=False, size=config["size"]).to(device).eval()
    clip = [(root / r["path"], int(r["num_frames"])) for r in rows]
    model(read_clip(*clip[0], config, representation)[None].to(device))  # warm-up
    t0 = time.perf_counter()
    for path, n in clip:
        model(read_clip(path, n, config, representation)[None].to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    frames = sum(n for _, n in clip)
    return {"path": f"{representation} + {backbone}+LSTM", "representation": representation,
            "backbone": backbone, "clips_per_s": len(clip) / dt, "frames_per_s": frames / dt}


def speed_table(run: Path, variants: list[dict], clips: int, device: torch.device) -> list[dict]:
    configs = {}
    for v in variants:
        ckpt = torch.load(fold_dirs(run / v["variant"])[0] / "ckpt.pt", map_location="cpu",
                          weights_only=True)
        configs[v["variant"]] = json.loads(ckpt["config"])
    config = next(iter(configs.values()))
    root = Path(config["root"])
    backbones = sorted({c["backbone"] for c in configs.values()})
    paths = [("residual", b) for b in backbones] + [("rgb", b) for b in backbones]
    if "resnet50" not in backbones:
        paths.append(("rgb", "resnet50"))
    rows = [measure_speed(root, config, r, b, clips, device) for r, b in paths]
    base = next(r for r in rows if r["representation"] == "rgb" and r["backbone"] == "resnet50")
    for r in rows:
        r["speedup_vs_rgb_resnet50"] = r["clips_per_s"] / base["clips_per_s"]
    for v in variants:
        c = configs[v["variant"]]
        v["speed"] = next(r for r in rows if r["representation"] == c["input"]
                          and r["backbone"] == c["backbone"])
    return rows


def write_markdown(run: Path, variants: list[dict], speed: list[dict]) -> str:
    lines = [f"# Results of `{run}`", "",
             "| variant | paper row | accuracy (mean ± std over folds) | folds | MI estimate "
             "| identity probe on z_E (chance) | clips/s |",
             "|---|---|---|---|---|---|---|"]
    for v in variants:
        sp = f"{v['speed']['clips_per_s']:.1f}" if "speed" in v else "–"
        lines.append(
            f"| {v['variant']} | {v['row']} | {100 * v['accuracy_mean']:.2f} ± "
            f"{100 * v['accuracy_std']:.2f} | {len(v['folds'])} | {v['mi_estimate']:.3f} | "
            f"{100 * v['identity_probe']:.1f}% ({100 * v['identity_probe_chance']:.1f}%) | {sp} |")
    if len(variants) > 1:
        a, b = variants[0], variants[1]
        spread = max(a["accuracy_std"], b["accuracy_std"])
        diff = a["accuracy_mean"] - b["accuracy_mean"]
        verdict = ("no difference (smaller than the spread over folds)" if abs(diff) <= spread
                   else f"{a['variant']} {'better' if diff > 0 else 'worse'} by {100 * diff:+.2f}")
        lines += ["", f"{a['variant']} vs {b['variant']}: {verdict}."]
    lines += ["", "Per-class recall:", "",
              "| variant | " + " | ".join(variants[0]["classes"]) + " |",
              "|---|" + "---|" * len(variants[0]["classes"])]
    for v in variants:
        lines.append(f"| {v['variant']} | " + " | ".join(
            f"{100 * r:.0f}" for r in v["per_class_recall"].values()) + " |")
    if speed:
        lines += ["", "Test-time speed, measured in this run on this machine (reader + "
                  "expression branch, one clip at a time):", "",
                  "| path | clips/s | frames/s | × RGB ResNet50+LSTM |", "|---|---|---|---|"]
        for r in speed:
            lines.append(f"| {r['path']} | {r['clips_per_s']:.2f} | {r['frames_per_s']:.1f} | "
                         f"{r['speedup_vs_rgb_resnet50']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", type=Path, help="run folder of train.py (--out)")
    p.add_argument("--no-speed", action="store_true", help="skip the speed measurement")
    p.add_argument("--speed-clips", type=int, default=8, help="clips timed per path")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if not args.run.is_dir():
        raise SystemExit(f"evaluate.py: {args.run} is not a folder")
    dirs = [d for d in sorted(args.run.iterdir()) if d.is_dir() and fold_dirs(d)]
    if not dirs:
        raise SystemExit(f"evaluate.py: no finished fold (result.json) under {args.run}")
    order = list(PAPER_ROWS)
    dirs.sort(key=lambda d: (order.index(d.name.partition("+resnet")[0])
                             if d.name.partition("+resnet")[0] in order else 99, d.name))
    variants = [evaluate_variant(d) for d in dirs]
    for v, d in zip(variants, dirs, strict=True):
        plot_confusion(v, d / "confusion.png")
    speed = [] if args.no_speed else speed_table(args.run, variants, args.speed_clips,
                                                   torch.device(args.device))
    (args.run / "results.json").write_text(json.dumps({"variants": variants, "speed": speed},
                                                      indent=1))
    md = write_markdown(args.run, variants, speed)
    (args.run / "results.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
