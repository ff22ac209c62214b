"""Speed and memory of the compressed-domain reader `coviar` (a benchmark, not a timed test).

On a generated clip whose content really moves (smooth textures translating), measured in the
same run (median of interleaved repeats): PyAV decoding every frame to BGR (the floor),
`coviar.load_many` of k frames at TSN-style segment centres, the same k frames through k separate
`coviar.load` calls (the original loader's access pattern), the pure-Python reference
`tests/coviar_reference.ref_load`, and `coviar.load_clip` of k residuals, k motion vectors and
the last picture in one decode against three `load_many` calls; then the file size against the
decoded frames, and the RSS growth over many `load` calls on a tiny clip. Targets are printed as
PASS/FAIL; the exit status is 1 if any fails.

    .venv/bin/python benchmarks/coviar_speed.py [--frames 64 --size 224 --k 8 --repeats 7]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import coviar  # noqa: E402
from tests.clips import make_clip  # noqa: E402
from tests.coviar_reference import ref_load  # noqa: E402

MAX_FLOOR_RATIO = 1.2  # load_many <= 1.2 x the floor
MIN_SPEEDUP = 3.0  # load_many >= 3 x faster than k separate loads
MAX_RSS_GROWTH_MB = 5.0
NAMES = {coviar.PICTURE: "pictures", coviar.MV: "motion vectors", coviar.RESIDUAL: "residuals"}


def tsn_centres(num_frames: int, k: int) -> list[int]:
    """The centre frame of each of `k` equal segments of `num_frames` frames (TSN sampling)."""
    return [(2 * i + 1) * num_frames // (2 * k) for i in range(k)]


def decode_all_bgr(path: Path) -> None:
    """Decode every frame of `path` to BGR24 with PyAV: the floor every loader is compared to."""
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frame.to_ndarray(format="bgr24")


def medians(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time (s) of each case over `repeats` rounds, the cases interleaved per round
    so that a change of machine load hits them all alike."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def verdict(ok: bool) -> str:
    """PASS or FAIL."""
    return "PASS" if ok else "FAIL"


def speed(path: Path, args: argparse.Namespace) -> bool:
    """Time the loaders on `path` (accumulate False and True); print a table; True if all
    targets pass."""
    idx, rep, k = tsn_centres(args.frames, args.k), args.representation, args.k
    print(f"frames sampled (TSN centres): {idx}; representation {rep} ({NAMES[rep]})")
    cases: dict[str, Callable[[], object]] = {"floor": lambda: decode_all_bgr(path)}
    refs: dict[str, Callable[[], object]] = {}
    three = {coviar.RESIDUAL: idx, coviar.MV: idx, coviar.PICTURE: [args.frames - 1]}
    for acc in (False, True):
        cases[f"many{acc}"] = lambda acc=acc: coviar.load_many(path, 0, idx, rep, acc)
        cases[f"separate{acc}"] = lambda acc=acc: [coviar.load(path, 0, i, rep, acc) for i in idx]
        cases[f"clip{acc}"] = lambda acc=acc: coviar.load_clip(path, 0, three, acc)
        cases[f"three{acc}"] = lambda acc=acc: [
            coviar.load_many(path, 0, f, r, acc) for r, f in three.items()
        ]
        refs[f"reference{acc}"] = lambda acc=acc: [ref_load(path, 0, i, rep, acc) for i in idx]
    t = medians(cases, args.repeats) | (medians(refs, args.ref_repeats) if args.ref_repeats else {})
    floor = t["floor"]

    def row(label: str, key: str, note: str = "") -> None:
        print(f"  {label:<44s}{1e3 * t[key]:9.1f}  {t[key] / floor:7.2f}  {note}".rstrip())

    print(f"\nmedian of {args.repeats} interleaved repeats{'':21s}time (ms)  x floor")
    row(f"PyAV: all {args.frames} frames to BGR (the floor)", "floor")
    ok = True
    for acc in (False, True):
        many_ok = t[f"many{acc}"] <= MAX_FLOOR_RATIO * floor
        speedup = t[f"separate{acc}"] / t[f"many{acc}"]
        ok &= many_ok and speedup >= MIN_SPEEDUP
        print(f"accumulate={acc}:")
        row(
            f"coviar.load_many, {k} {NAMES[rep]}",
            f"many{acc}",
            f"{verdict(many_ok)} (<= {MAX_FLOOR_RATIO} x floor)",
        )
        row(
            f"{k} x coviar.load",
            f"separate{acc}",
            f"load_many {speedup:.1f} x faster: {verdict(speedup >= MIN_SPEEDUP)}"
            f" (>= {MIN_SPEEDUP:.0f} x)",
        )
        if args.ref_repeats:
            row(f"{k} x ref_load (pure Python, {args.ref_repeats} repeats)", f"reference{acc}")
        row(
            f"load_clip: {k} residuals, {k} vectors, 1 picture",
            f"clip{acc}",
            f"one decode; the 3 load_many calls: {t[f'three{acc}'] / t[f'clip{acc}']:.1f} x",
        )
    return ok


def vm_rss_mb() -> float:
    """Resident set size of this process (MB), from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def memory(path: Path, calls: int) -> bool:
    """RSS before and after `calls` `load` calls on a tiny clip (all representations, both
    accumulate modes, every frame); print it; True if the growth stays under the target."""
    combos = itertools.cycle(itertools.product(range(4), (0, 1, 2), (False, True)))
    for frame, rep, acc in itertools.islice(combos, 200):  # warm-up: caches, allocator pools
        coviar.load(path, 0, frame, rep, acc)
    before = vm_rss_mb()
    marks = []
    start = time.perf_counter()
    for n, (frame, rep, acc) in enumerate(itertools.islice(combos, calls), 1):
        coviar.load(path, 0, frame, rep, acc)
        if n % (calls // 4 or 1) == 0:
            marks.append(f"{vm_rss_mb():.1f}")
    growth = vm_rss_mb() - before
    print(
        f"\nmemory: {calls} load calls on a 32x32 4-frame clip "
        f"({1e3 * (time.perf_counter() - start) / calls:.2f} ms each)"
    )
    print(f"  VmRSS before {before:.1f} MB, after each quarter {' / '.join(marks)} MB")
    print(
        f"  growth {growth:+.2f} MB  {verdict(growth <= MAX_RSS_GROWTH_MB)}"
        f" (<= {MAX_RSS_GROWTH_MB} MB)"
    )
    return growth <= MAX_RSS_GROWTH_MB


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 if a target fails."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--frames", type=int, default=64, help="frames of the clip (one GOP)")
    ap.add_argument("--size", type=int, default=224, help="width and height of the clip")
    ap.add_argument("--k", type=int, default=8, help="frames sampled per clip")
    ap.add_argument("--representation", type=int, default=coviar.RESIDUAL, choices=(0, 1, 2))
    ap.add_argument("--repeats", type=int, default=11, help="timing repeats (median)")
    ap.add_argument(
        "--ref-repeats",
        type=int,
        default=3,
        help="repeats of the slow pure-Python reference (0: skip it)",
    )
    ap.add_argument("--mem-calls", type=int, default=10_000, help="load calls of the memory check")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = make_clip(
            Path(tmp) / "bench.m4v",
            width=args.size,
            height=args.size,
            frames=args.frames,
            gop=args.frames + 1,
            content="translate",
        )
        tiny = make_clip(Path(tmp) / "tiny.m4v", width=32, height=32, frames=4)
        size, decoded = path.stat().st_size, args.size * args.size * 3 * args.frames
        print(
            f"clip: {args.size}x{args.size}, {args.frames} frames, 1 GOP, MPEG-4 Part 2 q=2, "
            f"translating textures; PyAV {av.__version__}"
        )
        print(
            f"size: compressed {size:,} B vs decoded frames (H*W*3*frames) {decoded:,} B: "
            f"{decoded / size:.1f} x smaller"
        )
        ok = speed(path, args)
        ok &= memory(tiny, args.mem_calls)
    print(f"\noverall: {verdict(ok)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
