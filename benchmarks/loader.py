"""Is the clip loader the bottleneck? Clips/s of `ClipDataset` next to a training step of MIC.

Loads one training epoch (random TSN sampling, multi-scale crop, flip) through a DataLoader with
0 and 2 workers, without a cache, with a warm full-resolution `DecodeCache`, and with a warm
downscaled one (shorter side ceil(size / 0.66)); the cold pass that fills each cache is timed
too. Then times a training step (forward, cross-entropy + apex reconstruction, backward, Adam)
of the default model, `models.MIC` (resnet18 + LSTM, random weights), on one batch, and prints
both as clips per second. Data: ``--root`` (an indexed directory) or, by default, generated
clips of CK+'s size (640x490, 18 frames) in the CK+ layout.

    .venv/bin/python benchmarks/loader.py [--root DIR] [--clips 24] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasets as ds  # noqa: E402
import reader  # noqa: E402
from models import MIC  # noqa: E402
from tests.clips import make_clip  # noqa: E402


def make_tree(root: Path, clips: int, width: int, height: int, frames: int) -> None:
    """A re-encoded CK+-layout tree of `clips` moving synthetic clips (one per subject), indexed."""
    for i in range(clips):
        subject = f"S{i + 1:03d}"
        make_clip(
            root / "cohn-kanade-images" / subject / "001.mp4",
            width=width,
            height=height,
            frames=frames,
            seed=i,
        )
        label = root / "Emotion" / subject / "001"
        label.mkdir(parents=True)
        (label / f"{subject}_001_{frames:08d}_emotion.txt").write_text(f"{i % 7 + 1:.7e}\n")
    ds.write_index(ds.build_index("ckplus", root), root / "index.csv")


def epoch_rate(dataset: reader.ClipDataset, workers: int, batch_size: int) -> float:
    """Clips per second over one shuffled epoch."""
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=reader.collate
    )
    start = time.perf_counter()
    n = sum(len(batch["label"]) for batch in loader)
    return n / (time.perf_counter() - start)


def step_time(dataset: reader.ClipDataset, batch_size: int, steps: int) -> float:
    """Median seconds of a training step of MIC on one batch (after a warm-up step)."""
    model = MIC(
        dataset.num_classes,
        dataset.num_segments,
        "resnet18",
        size=dataset.size,
        backbone_weights="random",
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
    batch = next(iter(DataLoader(dataset, batch_size=batch_size, collate_fn=reader.collate)))
    z_i = torch.randn(len(batch["label"]), 1024)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        out = model(batch["input"])
        loss = F.cross_entropy(out["logits"], batch["label"])
        loss = loss + F.mse_loss(model.reconstruct(z_i, out["z_e"]), batch["apex"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, help="indexed dataset (default: generated clips)")
    p.add_argument("--clips", type=int, default=24)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=490)
    p.add_argument("--frames", type=int, default=18)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-segments", type=int, default=8)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--steps", type=int, default=3, help="timed training steps")
    args = p.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = Path(tmp) / "data"
            make_tree(root, args.clips, args.width, args.height, args.frames)
        short = math.ceil(args.size / min(reader.SCALES))
        caches = {
            "no cache": None,
            "DecodeCache": reader.DecodeCache(Path(tmp) / "cache"),
            f"DecodeCache(short_side={short})": reader.DecodeCache(Path(tmp) / "small", short),
        }
        print(
            f"torch threads {torch.get_num_threads()}; batch {args.batch_size}, "
            f"{args.num_segments} segments, size {args.size}; data {root}"
        )
        print(f"{'loader (train mode)':<44} {'workers 0':>10} {'workers 2':>10}  clips/s")
        for name, cache in caches.items():
            dataset = reader.ClipDataset(
                root, train=True, num_segments=args.num_segments, size=args.size, cache=cache
            )
            if cache is not None:
                cold = epoch_rate(dataset, 0, args.batch_size)
                print(f"{name + ' (cold: filling)':<44} {cold:10.1f}")
            rates = [epoch_rate(dataset, w, args.batch_size) for w in (0, 2)]
            print(f"{name:<44} {rates[0]:10.1f} {rates[1]:10.1f}")
        dataset = reader.ClipDataset(root, train=True, num_segments=args.num_segments,
                                     size=args.size)
        t = step_time(dataset, args.batch_size, args.steps)
        print(
            f"training step of MIC (resnet18+LSTM, batch {args.batch_size}): {t:.3f} s "
            f"= {args.batch_size / t:.1f} clips/s"
        )


if __name__ == "__main__":
    main()
