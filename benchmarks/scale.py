"""Scaling MIC to DFEW, FERV39k and MAFW: measured here on small stand-ins, then extrapolated.

For each set, N stand-in clips in the set's released layout and shape: folders of 224x224 JPEG
frames (DFEW's ``clip_224x224``, FERV39k's ``2_ClipsforFaceCrop`` and MAFW's frame folders all
are 224x224 face crops) of the set's typical length, with split files naming them. Typical
lengths (frames), the median of the first rows of DFER-CLIP's annotation files
(zengqunzhao/DFER-CLIP ``annotation/DFEW_set_1_test.txt``: 100 rows, median 59.5, 24-320;
``FERV39K_test.txt``: 69 rows, median 26, 11-45; ``MAFW_set_1_test.txt``: 90 rows, median 68,
31-214): DFEW 60, FERV39k 26, MAFW 68. The frames are moving synthetic textures
(``tests.clips.make_frames``), not faces: sizes and encoding times are indicative.

Measured on this machine, per stand-in set:

* ``reencode.sh -j 1``: CPU seconds (its ffmpeg children) and wall seconds per clip, bytes per
  re-encoded clip; extrapolated to 1,000 clips and to the whole set on ``--cores`` cores;
* ``datasets.py`` indexing: seconds per clip (it decodes every clip once);
* the loader: ``reader.ClipDataset`` in training mode (random TSN sampling, multi-scale crop,
  flip), one process, one torch thread: clips per CPU second (= per core, whatever else runs
  on the machine; the wall rate here is printed beside it), uncached and from a warm
  ``DecodeCache`` (``short_side = ceil(size / 0.66)``, as ``train.py --cache``), and the cache's
  bytes per clip; at the README's default input (8 segments, 112 px) and the demo's (4, 48 px).

And, set-independent: the expression branch (``models.MIC``: forward, cross-entropy + apex
reconstruction, backward, Adam step; random weights) in clips per CPU second on this CPU (one
thread), and its FLOPs per clip (counted by
``torch.utils.flop_counter``: convolutions and matrix products), at the README's default
settings (ResNet50 + LSTM 512, 8 segments, 112 px) and the demo's (ResNet6 + LSTM 64,
4 segments, 48 px).

The plan for a ``--cores``-core GPU machine: the GPU's clips/s cannot be measured here, so it
is ``--gpu-tflops`` (sustained, an assumption) / FLOPs per clip; the loader workers that keep
up with it = ceil(GPU clips/s / loader clips/s per core), at most cores - 1; the epoch time =
training clips / min(GPU rate, workers x loader rate per core).

    .venv/bin/python benchmarks/scale.py [--clips 8] [--cores 16] [--gpu-tflops 30]
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import datasets as ds  # noqa: E402
import reader  # noqa: E402
from models import MIC  # noqa: E402
from tests.clips import make_frames  # noqa: E402


@dataclass(frozen=True)
class Shape:
    """A dataset's stand-in: typical frames per clip, its clips on disk (re-encoded), indexed
    (in the split files) and trained on per fold, and where these counts come from."""

    frames: int
    on_disk: int
    indexed: int
    train: int
    note: str
    layout: Callable[[Path, int, int], None]


@dataclass(frozen=True)
class Setting:
    """An input/model setting of train.py."""

    name: str
    backbone: str
    hidden: int
    segments: int
    size: int
    batch: int


SETTINGS = (
    Setting("README default", "resnet50", 512, 8, 112, 4),
    Setting("demo", "resnet6", 64, 4, 48, 16),
)


def jpeg_clip(folder: Path, frames: int, seed: int, name: str) -> None:
    """A 224x224 JPEG frame folder; ``name`` formats the 1-based frame number."""
    folder.mkdir(parents=True)
    for i, img in enumerate(make_frames(224, 224, frames, seed=seed), 1):
        Image.fromarray(img).save(folder / name.format(i), quality=90)


def dfew_layout(root: Path, n: int, frames: int) -> None:
    """``Clip/clip_224x224/NNNNN/NNNNN_0000k.jpg``; clip i a test clip of set i mod 5 + 1."""
    split = root / "EmoLabel_DataSplit"
    for k in range(1, 6):
        for role in ("train", "test"):
            rows = [
                f"{i},{i % 7 + 1}" for i in range(1, n + 1) if (i % 5 + 1 == k) == (role == "test")
            ]
            path = split / f"{role}(single-labeled)" / f"set_{k}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("video_name,label\n" + "".join(r + "\n" for r in rows))
    for i in range(1, n + 1):
        jpeg_clip(root / "Clip" / "clip_224x224" / f"{i:05d}", frames, i, f"{i:05d}_{{:05d}}.jpg")


def ferv39k_layout(root: Path, n: int, frames: int) -> None:
    """``2_ClipsforFaceCrop/Action/<Emotion>/NNNN/``; every fourth clip a test clip."""
    names = ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")
    keys = [f"Action/{names[i % 7]}/{i:04d}" for i in range(n)]
    setups = root / "4_setups" / "All_scenes"
    setups.mkdir(parents=True)
    for role, keep in (("train", lambda i: i % 4), ("test", lambda i: not i % 4)):
        rows = [f"{k} {names[i % 7]}\n" for i, k in enumerate(keys) if keep(i)]
        (setups / f"{role}_All.csv").write_text("".join(rows))
    for i, key in enumerate(keys):
        jpeg_clip(root / "2_ClipsforFaceCrop" / key, frames, i, "{:05d}.jpg")


def mafw_layout(root: Path, n: int, frames: int) -> None:
    """``data/frames/NNNNN/``, ``split/single/no_caption/set_K``; as DFEW's folds."""
    classes = ds.CLASSES["mafw"]
    for k in range(1, 6):
        for role in ("train", "test"):
            rows = [
                f"{i:05d}.mp4 {classes[i % 11]}\n"
                for i in range(1, n + 1)
                if (i % 5 + 1 == k) == (role == "test")
            ]
            path = root / "split" / "single" / "no_caption" / f"set_{k}" / f"{role}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(rows))
    for i in range(1, n + 1):
        jpeg_clip(root / "data" / "frames" / f"{i:05d}", frames, i, "{:05d}.jpg")


DFEW_NOTE = "DFEW's README: clip_224x224 15,906, single-labelled 11,697, largest train fold 9,361"
SHAPES = {
    "dfew": Shape(60, 15906, 11697, 9361, DFEW_NOTE, dfew_layout),
    "ferv39k": Shape(26, 38935, 38935, 38935, "38,935; train share unconfirmed", ferv39k_layout),
    "mafw": Shape(68, 10045, 10045, 10045, "10,045; single-label share unconfirmed", mafw_layout),
}


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def dir_bytes(path: Path, suffix: str) -> int:
    return sum(p.stat().st_size for p in path.rglob(f"*{suffix}"))


def loader_rate(dataset: reader.ClipDataset, epochs: int) -> tuple[float, float]:
    """Clips per CPU second (per core) and per wall second over ``epochs`` shuffled epochs in
    this process (DataLoader, 0 workers; freed memory kept as in train.py's workers)."""
    loader = DataLoader(dataset, batch_size=1, shuffle=True, collate_fn=reader.collate)
    cpu, wall, n = time.process_time(), time.perf_counter(), 0
    for _ in range(epochs):
        n += sum(len(b["label"]) for b in loader)
    return n / (time.process_time() - cpu), n / (time.perf_counter() - wall)


def measure_set(name: str, shape: Shape, work: Path, n: int) -> dict[str, float]:
    raw, out = work / f"{name}-raw", work / name
    shape.layout(raw, n, shape.frames)
    cpu, wall = children_cpu(), time.perf_counter()
    res = subprocess.run(
        ["bash", str(ROOT / "reencode.sh"), "-j", "1", str(raw), str(out)],
        capture_output=True,
        text=True,
    )
    if res.returncode:
        raise RuntimeError(f"reencode.sh failed:\n{res.stdout}{res.stderr}")
    m = {
        "reencode_cpu_s": (children_cpu() - cpu) / n,
        "reencode_wall_s": (time.perf_counter() - wall) / n,
        "mp4_bytes": dir_bytes(out, ".mp4") / n,
        "jpeg_bytes": dir_bytes(raw, ".jpg") / n,
    }
    start = time.perf_counter()
    index = ds.build_index(name, out)
    m["index_s"] = (time.perf_counter() - start) / n
    if len(index.entries) != n or index.problems:
        raise RuntimeError(f"stand-in {name} indexed with problems:\n{ds.summary(index)}")
    ds.write_index(index, out / "index.csv")
    for s in SETTINGS:
        kw = dict(train=True, num_segments=s.segments, size=s.size, accumulate=s.name == "demo")
        m[f"load_{s.name}"], m[f"load_wall_{s.name}"] = loader_rate(
            reader.ClipDataset(out, **kw), 2
        )
        cache = reader.DecodeCache(work / f"cache-{name}-{s.size}", math.ceil(s.size / 0.66))
        cached = reader.ClipDataset(out, cache=cache, **kw)
        loader_rate(cached, 1)  # fills the cache
        m[f"cached_{s.name}"], m[f"cached_wall_{s.name}"] = loader_rate(cached, 3)
        m[f"cache_bytes_{s.name}"] = dir_bytes(cache.directory, ".npy") / n
    return m


def model_rate(s: Setting, steps: int) -> tuple[float, float]:
    """(clips per CPU second of a training step of the expression branch on this CPU, one
    thread; FLOPs per clip)."""
    model = MIC(7, s.segments, s.backbone, s.hidden, size=s.size, backbone_weights="random")
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
    x = torch.randn(s.batch, s.segments, 3, s.size, s.size)
    y = torch.arange(s.batch) % 7
    z_i, apex = torch.randn(s.batch, 1024), torch.rand(s.batch, 3, s.size, s.size)

    def step() -> None:
        out = model(x)
        loss = F.cross_entropy(out["logits"], y) + F.mse_loss(
            model.reconstruct(z_i, out["z_e"]), apex
        )
        opt.zero_grad()
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        step()
    times = []
    for _ in range(steps):
        start = time.process_time()
        step()
        times.append(time.process_time() - start)
    return s.batch / statistics.median(times), counter.get_total_flops() / s.batch


def fmt_time(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=8, help="stand-in clips per set (N)")
    p.add_argument("--sets", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--cores", type=int, default=16, help="CPU cores of the GPU machine planned")
    p.add_argument(
        "--gpu-tflops",
        type=float,
        default=30.0,
        help="sustained training TFLOP/s assumed for the GPU (not measured here)",
    )
    p.add_argument("--steps", type=int, default=3, help="timed training steps per setting")
    args = p.parse_args()  # fmt: skip
    torch.manual_seed(0)
    torch.set_num_threads(1)  # per-core rates
    reader.worker_init()
    print(
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; N = {args.clips} "
        f"stand-in clips per set; torch threads 1"
    )
    models = {s.name: model_rate(s, args.steps) for s in SETTINGS}
    print("\nexpression branch (forward + backward + Adam, per CPU second, 1 thread):")
    for s in SETTINGS:
        rate, flops = models[s.name]
        gpu = args.gpu_tflops * 1e12 / flops
        print(
            f"  {s.name:<15} {s.backbone}+LSTM{s.hidden}, {s.segments} seg, {s.size} px: "
            f"{rate:.2f} clips/s; {flops / 1e9:.1f} GFLOP/clip -> {gpu:,.0f} clips/s at "
            f"{args.gpu_tflops:g} TFLOP/s"
        )
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            shape = SHAPES[name]
            m = measure_set(name, shape, Path(tmp), args.clips)
            cores = args.cores
            print(f"\n{name}: {shape.frames} frames/clip, 224x224 JPEG frame folders")
            print(f"  clips on disk / indexed / trained per fold: {shape.note}")
            print(
                f"  reencode.sh: {m['reencode_cpu_s']:.2f} CPU s, {m['reencode_wall_s']:.2f} "
                f"wall s per clip (-j 1) -> {fmt_time(1000 * m['reencode_cpu_s'])} CPU per "
                f"1,000 clips, {fmt_time(shape.on_disk * m['reencode_cpu_s'] / cores)} for "
                f"{shape.on_disk:,} clips on {cores} cores"
            )
            print(
                f"  size per clip: {m['jpeg_bytes'] / 1e6:.2f} MB of JPEG -> "
                f"{m['mp4_bytes'] / 1e6:.2f} MB of MPEG-4 ({m['mp4_bytes'] * 1000 / 1e9:.2f} GB "
                f"per 1,000 clips, {m['mp4_bytes'] * shape.on_disk / 1e9:.1f} GB for "
                f"{shape.on_disk:,}); datasets.py {m['index_s']:.2f} s per clip "
                f"({fmt_time(shape.on_disk * m['index_s'])} for {shape.on_disk:,}, one process)"
            )
            for s in SETTINGS:
                gpu = args.gpu_tflops * 1e12 / models[s.name][1]
                for kind in ("load", "cached"):
                    per_core = m[f"{kind}_{s.name}"]
                    workers = min(cores - 1, math.ceil(gpu / per_core))
                    rate = min(gpu, workers * per_core)
                    label = "uncached" if kind == "load" else "DecodeCache"
                    cache = m[f"cache_bytes_{s.name}"]
                    extra = (
                        f", cache {cache / 1e6:.1f} MB/clip, "
                        f"{cache * shape.indexed / 1e9:.0f} GB for {shape.indexed:,}"
                        if kind == "cached"
                        else ""
                    )
                    wall = m[f"{kind}_wall_{s.name}"]
                    print(
                        f"  {s.name:<15} loader {label:<11} {per_core:6.1f} clips/s/core "
                        f"({wall:.1f} wall here){extra}"
                        f" -> {workers} workers, {rate:,.0f} clips/s "
                        f"({'GPU' if rate >= gpu else 'loader'}-bound), epoch of "
                        f"{shape.train:,} clips {fmt_time(shape.train / rate)}"
                    )


if __name__ == "__main__":
    main()
