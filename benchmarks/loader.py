"""Cost of a training item of `ClipDataset` against the cost of just decoding the clip.

On CK+-sized clips (640x490, 18 frames: PNG frame folders put through reencode.sh, as CK+ goes)
of two kinds of content, cheap to decode (a small face-like region moving over a smooth
background) and costly (textured full-frame motion), each clip's costs are measured in one run,
interleaved, as the median CPU time of this process (one torch thread; CPU time, not wall time,
so that other jobs on a shared machine weigh less; glibc keeping freed memory as in train.py's
DataLoader workers, `reader.worker_init`):

* the plain decode floor: PyAV decoding every frame with motion-vector export
  (``flags2 +export_mvs``) and converting every frame to BGR: ``av.open(path)``, then
  ``frame.to_ndarray(format="bgr24")``, the obvious PyAV code;
* a stricter floor: the same work without avoidable overhead, as coviar does it (the format of
  a raw MPEG-4 stream named, so FFmpeg does not probe it; one single-threaded swscale context,
  bicubic); and that without motion-vector export;
* ``ClipDataset(train=True, num_segments=8, size=112)[i]``, uncached, with the apex frame as
  train.py reads it for MIC (``apex=True``): residuals; residuals + motion vectors
  (``with_mv``); accumulated residuals (``accumulate``); each with the reader before the
  one-pass change (commit ac75c2b, its reader.py and its coviar, built from git into a temporary
  folder; skipped when git or a C compiler is missing) and with today's;
* today's reader from a warm ``DecodeCache(short_side=170)`` (train.py's ``--cache``).

Printed: per row and kind the median over clips of (median item time / median floor of the same
clip), the item time, and clips/s per core (1 / item CPU time: a DataLoader worker is one
process on one core, so ``--workers N`` gives about N times that, if the GPU keeps up). Target:
today's reader <= 1.3 x the floor in every row.

    .venv/bin/python benchmarks/loader.py [--clips 4] [--repeats 7]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import coviar  # noqa: E402
import datasets as ds  # noqa: E402
import reader  # noqa: E402
from tests.clips import make_frames  # noqa: E402

TARGET = 1.3
BEFORE = "ac75c2b"  # the last commit with one decode per representation
ROWS = {  # row -> ClipDataset keywords
    "residuals": {},
    "residuals + motion vectors": {"with_mv": True},
    "accumulated residuals": {"accumulate": True},
}


def face_frames(width: int, height: int, frames: int, seed: int) -> list[np.ndarray]:
    """Cheap content: a blurred face-like ellipse (eyes, an opening mouth) drifting a few pixels
    over a smooth background, as lab-filmed faces: most macroblocks are skipped."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 90 + 60 * yy / height + 20 * np.sin(xx / width * np.pi)
    background = np.stack([base, 0.95 * base, 0.9 * base], -1).clip(0, 255).astype(np.uint8)
    fw, fh = width // 4, int(height / 2.6)
    x0 = width // 2 - fw // 2 + int(rng.integers(-40, 40))
    y0 = height // 2 - fh // 2 + int(rng.integers(-20, 20))
    out = []
    for i in range(frames):
        img = Image.fromarray(background)
        draw = ImageDraw.Draw(img)
        x, y = x0 + round(6 * np.sin(i / 5)), y0 + round(3 * np.cos(i / 7))
        draw.ellipse([x, y, x + fw, y + fh], fill=(205, 160, 140))
        for ex in (x + fw // 4, x + 3 * fw // 4):
            draw.ellipse([ex - 10, y + fh // 3 - 5, ex + 10, y + fh // 3 + 5], fill=(40, 30, 30))
        mouth = 4 + int(30 * i / frames)
        draw.ellipse(
            [x + fw // 3, y + 2 * fh // 3, x + 2 * fw // 3, y + 2 * fh // 3 + mouth],
            fill=(120, 40, 50),
        )
        out.append(np.asarray(img.filter(ImageFilter.GaussianBlur(1.5))))
    return out


def make_tree(root: Path, clips: int, width: int, height: int, frames: int) -> dict[str, Path]:
    """Two CK+-layout trees (cheap, costly) of `clips` clips each, re-encoded and indexed."""
    trees = {}
    for kind in ("cheap", "costly"):
        raw = root / f"{kind}-raw"
        for i in range(clips):
            subject = f"S{i + 1:03d}"
            if kind == "cheap":
                imgs = face_frames(width, height, frames, seed=i)
            else:
                imgs = make_frames(width, height, frames, "translate", seed=i)
            seq = raw / "cohn-kanade-images" / subject / "001"
            seq.mkdir(parents=True)
            for k, img in enumerate(imgs, 1):
                Image.fromarray(img).save(seq / f"{subject}_001_{k:08d}.png")
            label = raw / "Emotion" / subject / "001"
            label.mkdir(parents=True)
            (label / f"{subject}_001_{frames:08d}_emotion.txt").write_text(f"{i % 7 + 1:.7e}\n")
        out = root / kind
        subprocess.run(
            ["bash", str(ROOT / "reencode.sh"), str(raw), str(out)], check=True, capture_output=True
        )
        with contextlib.redirect_stderr(io.StringIO()):  # the indexer's progress bar
            ds.write_index(ds.build_index("ckplus", out), out / "index.csv")
        trees[kind] = out
    return trees


def old_reader(tmp: Path) -> ModuleType | str:
    """reader.py and coviar of commit BEFORE, built from git into `tmp` (its coviar under the
    name ``coviar_old``), or why not."""
    old = tmp / "old"
    (old / "coviar_old").mkdir(parents=True)

    def show(name: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{BEFORE}:{name}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    try:
        init = show("coviar_ext/coviar/__init__.py")
        (old / "coviar_old" / "__init__.py").write_text(
            init.replace("from coviar import _kernels", "from coviar_old import _kernels")
        )
        (old / "coviar_old" / "_kernels.c").write_text(show("coviar_ext/coviar/_kernels.c"))
        (old / "old_reader.py").write_text(
            show("reader.py").replace("\nimport coviar\n", "\nimport coviar_old as coviar\n")
        )
        (old / "setup.py").write_text(
            "import numpy\nfrom setuptools import Extension, setup\n"
            "setup(name='coviar_old', ext_modules=[Extension('coviar_old._kernels', "
            "['coviar_old/_kernels.c'], include_dirs=[numpy.get_include()], "
            "extra_compile_args=['-O3', '-std=c11'])])\n"
        )
        subprocess.run(
            [sys.executable, "setup.py", "build_ext", "--inplace"],
            cwd=old,
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"{type(exc).__name__}: {exc}"
    sys.path.insert(0, str(old))
    return importlib.import_module("old_reader")


def floor_plain(path: Path) -> None:
    """The plain decode floor, written as PyAV is usually called."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.options = {"flags2": "+export_mvs"}
        for frame in container.decode(stream):
            frame.to_ndarray(format="bgr24")


def floor_strict(path: Path, export: bool = True) -> None:
    """The same work as coviar opens and converts: format named, one swscale context."""
    with open(path, "rb") as f:
        raw = f.read(4) == b"\x00\x00\x01\xb0"
    with av.open(str(path), format="m4v" if raw else None) as container:
        stream = container.streams.video[0]
        if export:
            stream.codec_context.options = {"flags2": "+export_mvs"}
        reformatter = VideoReformatter()
        for frame in container.decode(stream):
            reformatter.reformat(
                frame, format="bgr24", interpolation="BICUBIC", threads=1
            ).to_ndarray()


def cpu_medians(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median CPU time (s) of each case, the cases interleaved in every round."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(repeats + 1):
        for name, fn in cases.items():
            torch.manual_seed(r)
            start = time.process_time()
            fn()
            if r:  # round 0 warms up (imports, allocator, caches)
                times[name].append(time.process_time() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=4, help="clips per kind of content")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=490)
    p.add_argument("--frames", type=int, default=18)
    p.add_argument("--num-segments", type=int, default=8)
    p.add_argument("--size", type=int, default=112)
    args = p.parse_args()
    torch.set_num_threads(1)
    reader.worker_init()
    with tempfile.TemporaryDirectory() as tmp:
        trees = make_tree(Path(tmp), args.clips, args.width, args.height, args.frames)
        old = old_reader(Path(tmp))
        readers = {"after": reader} if isinstance(old, str) else {"before": old, "after": reader}
        print(
            f"{args.clips} clips per kind, {args.width}x{args.height}, {args.frames} frames; "
            f"train mode, {args.num_segments} segments, {args.size} px, apex on; median CPU "
            f"time of {args.repeats} interleaved repeats, 1 torch thread; PyAV {av.__version__}"
        )
        if isinstance(old, str):
            print(f"before ({BEFORE}): not available ({old})")
        results: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
        short = -(-args.size // min(reader.SCALES))
        for kind, root in trees.items():
            common = dict(train=True, num_segments=args.num_segments, size=args.size)
            sets = {
                (when, row): mod.ClipDataset(root, **common, **kw)
                for when, mod in readers.items()
                for row, kw in ROWS.items()
            }
            for row, kw in ROWS.items():
                cache = reader.DecodeCache(Path(tmp) / f"cache-{kind}", short_side=int(short))
                sets[("cache", row)] = reader.ClipDataset(root, **common, **kw, cache=cache)
                for i in range(len(sets[("cache", row)])):
                    sets[("cache", row)][i]  # warm
            for i, row in enumerate(sets[("after", "residuals")].rows):
                path = root / row["path"]
                cases: dict[str, Callable[[], object]] = {
                    "floor": lambda path=path: floor_plain(path),
                    "strict": lambda path=path: floor_strict(path),
                    "no export": lambda path=path: floor_strict(path, export=False),
                }
                for key, dset in sets.items():
                    cases[" / ".join(key)] = lambda dset=dset, i=i: dset[i]
                t = cpu_medians(cases, args.repeats)
                for name, v in t.items():
                    results.setdefault(kind, {}).setdefault(name, []).append(
                        (v, v / t["floor"], v / t["strict"])
                    )
        ok = report(results, readers)
    print(
        f"\noverall: {'PASS' if ok else 'FAIL'} (today's reader <= {TARGET} x the floor in "
        f"every row; coviar from {Path(coviar.__file__).parent})"
    )
    return 0 if ok else 1


def report(
    results: dict[str, dict[str, list[tuple[float, float, float]]]], readers: dict[str, ModuleType]
) -> bool:
    """Print the table; True if every row of today's reader meets the target."""
    kinds = list(results)
    print(f"\n{'':44}" + "".join(f"{k:>34}" for k in kinds))
    print(
        f"{'':44}"
        + "".join(f"{'ms':>10}{'x floor':>9}{'x strict':>9}{'clips/s':>6}" for _ in kinds)
    )
    ok = True
    names = ["floor", "strict", "no export"] + [
        f"{when} / {row}" for row in ROWS for when in (*readers, "cache")
    ]
    labels = {
        "floor": "plain decode floor (av.open, to_ndarray)",
        "strict": "strict floor (format named, one swscale)",
        "no export": "strict floor without MV export",
    }
    for name in names:
        line = f"{labels.get(name, name):<44}"
        for kind in kinds:
            rows = results[kind][name]
            ms = 1e3 * statistics.median(r[0] for r in rows)
            ratio = statistics.median(r[1] for r in rows)
            strict = statistics.median(r[2] for r in rows)
            line += f"{ms:10.1f}{ratio:9.2f}{strict:9.2f}{1e3 / ms:6.0f}"
            if name.startswith("after"):
                ok &= ratio <= TARGET
        print(line)
    return ok


if __name__ == "__main__":
    sys.exit(main())
