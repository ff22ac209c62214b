"""Speed of predict.py against decoding the same video to RGB (a benchmark, not a timed test).

On made clips of the size of a phone or webcam video (640x360 at 25 fps, 20 s and 60 s by
default, H.264 where PyAV has libx264, else MPEG-4 Part 2; the astronaut's head of scikit-image
moving and turning in front of a photo, with grain) and a checkpoint of `make demo`'s model
(ResNet6, LSTM 64, 48 px, 4 accumulated residual segments; untrained weights in train.py's
format, whose speed is that of trained ones), measured in the same run, interleaved, median
wall time of the repeats:

* the floor: PyAV decoding every frame of the video to RGB (`frame.to_ndarray(format="rgb24")`);
* `python predict.py VIDEO --checkpoint CKPT` at the defaults (face crop, 8-frame windows every
  4 frames), the whole command with the interpreter's start and the imports;
* the same with `--stream` (JSON lines) and with `--no-crop`.

Printed per clip: each median wall time and its ratio to the floor, and the same of CPU time
(user + system, all threads and child processes: steadier than wall time on a loaded machine);
then, from the shortest and the longest clip, the marginal cost: (time of the long clip - time
of the short one) / (the same of the floor), the ratio a very long video tends to (the fixed
cost, the interpreter, torch's import and MTCNN, divided away). Target: predict.py at the
defaults <= 5 x the floor in wall time, PASS/FAIL per row for the last --predict; the exit
status is 1 if it fails on the longest clip. Several --predict (another version's, to compare)
are timed in the same rounds, interleaved: on a shared machine only ratios of one run compare.

    .venv/bin/python benchmarks/predict.py [--seconds 20 60 --repeats 3]
    .venv/bin/python benchmarks/predict.py --predict OLD/predict.py --predict predict.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from skimage import data as skdata

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasets import CLASSES  # noqa: E402
from models import MIC  # noqa: E402
from tests.clips import has_libx264  # noqa: E402

MAX_RATIO = 5.0
WIDTH, HEIGHT, RATE = 640, 360, 25
# `make demo`'s model (Makefile DEMO_ARGS): what predict.py needs of train.py's config.
DEMO = {"num_segments": 4, "backbone": "resnet6", "hidden": 64, "size": 48, "accumulate": True}


def face_video(path: Path, seconds: float) -> Path:
    """The astronaut's head (150 px) wandering and turning in front of scikit-image's coffee
    photo panning slowly, with a camera's grain (sigma 3), 640x360."""
    head = Image.fromarray(skdata.astronaut()[:230, 110:340]).resize((150, 150), Image.BICUBIC)
    rng = np.random.default_rng(0)
    frames = round(seconds * RATE)
    photo = Image.fromarray(skdata.coffee())
    background = np.asarray(photo.resize((WIDTH + frames // 8 + 1, HEIGHT), Image.BICUBIC))
    codec = "libx264" if has_libx264() else "mpeg4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=RATE)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(frames):
            t = i / RATE
            img = background[:, i // 8 : i // 8 + WIDTH].copy()
            x = round(245 + 150 * np.sin(0.5 * t))
            y = round(105 + 50 * np.sin(0.8 * t))
            img[y : y + 150, x : x + 150] = np.asarray(head.rotate(10 * np.sin(1.3 * t)))
            img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def demo_checkpoint(path: Path) -> Path:
    """An untrained checkpoint of `make demo`'s model, in train.py's format."""
    classes = list(CLASSES["synthetic"])
    config = {
        "num_classes": len(classes),
        "class_names": classes,
        "with_mv": False,
        "decoder": True,
        "d_i": 512,
        "input": "residual",
        "data_bn": True,
        "dataset": "ckplus",
        **DEMO,
    }
    torch.manual_seed(0)
    model = MIC(
        len(classes),
        DEMO["num_segments"],
        DEMO["backbone"],
        DEMO["hidden"],
        decoder=True,
        d_i=512,
        size=DEMO["size"],
        backbone_weights="random",
    )
    torch.save({"model": model.state_dict(), "config": json.dumps(config)}, path)
    return path


def decode_rgb(path: Path) -> int:
    """Decode every frame of `path` to RGB with PyAV (the floor); the number of frames."""
    n = 0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frame.to_ndarray(format="rgb24")
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--seconds",
        type=float,
        nargs="+",
        default=[20.0, 60.0],
        help="lengths of the clips (default 20 60)",
    )
    p.add_argument("--repeats", type=int, default=3, help="rounds (default 3)")
    p.add_argument(
        "--predict",
        type=Path,
        action="append",
        help="a predict.py to time, repeatable (default: this one's)",
    )
    p.add_argument(
        "--cases",
        default="defaults,--stream,--no-crop",
        help="comma-separated cases among defaults, --stream, --no-crop",
    )
    args = p.parse_args(argv)
    lengths = sorted(set(args.seconds))
    scripts = args.predict or [ROOT / "predict.py"]
    flags = {"defaults": [], "--stream": ["--stream"], "--no-crop": ["--no-crop"]}
    with tempfile.TemporaryDirectory(prefix="mic-bench-predict-") as tmp:
        ckpt = demo_checkpoint(Path(tmp) / "ckpt.pt")
        videos = {s: face_video(Path(tmp) / f"face{s:g}.mp4", s) for s in lengths}
        cases = {}
        for k, script in enumerate(scripts):
            for name in args.cases.split(","):
                cases[f"{k}:{name}" if len(scripts) > 1 else name] = [
                    sys.executable,
                    str(script),
                    "VIDEO",
                    "--checkpoint",
                    str(ckpt),
                    "--device",
                    "cpu",
                    *flags[name],
                ]
        times = {s: {name: [] for name in ["decode", *cases]} for s in lengths}
        cpu = {s: {name: [] for name in ["decode", *cases]} for s in lengths}
        for _ in range(args.repeats):
            for s, video in videos.items():
                start, used = time.perf_counter(), time.process_time()
                decode_rgb(video)
                times[s]["decode"].append(time.perf_counter() - start)
                cpu[s]["decode"].append(time.process_time() - used)
                for name, cmd in cases.items():
                    cmd = [str(video) if a == "VIDEO" else a for a in cmd]
                    start, before = time.perf_counter(), os.times()
                    subprocess.run(cmd, check=True, capture_output=True)
                    times[s][name].append(time.perf_counter() - start)
                    after = os.times()
                    cpu[s][name].append(
                        after.children_user
                        - before.children_user
                        + after.children_system
                        - before.children_system
                    )
        for k, script in enumerate(scripts):
            print(f"{k}: {script}" if len(scripts) > 1 else script)
        last = f"{len(scripts) - 1}:defaults" if len(scripts) > 1 else "defaults"
        ok = True
        median = {s: {n: statistics.median(ts) for n, ts in times[s].items()} for s in lengths}
        median_cpu = {s: {n: statistics.median(ts) for n, ts in cpu[s].items()} for s in lengths}
        for s, video in videos.items():
            with av.open(str(video)) as container:
                stream = container.streams.video[0]
                codec, frames = stream.codec_context.name, stream.frames
            print(
                f"\nclip: {frames} frames {WIDTH}x{HEIGHT} ({s:g} s, {codec}, "
                f"{video.stat().st_size / 1e6:.2f} MB)"
            )
            ok = _table(median[s], median_cpu[s], s, last) if last in cases else ok
        if len(lengths) > 1:
            short, long = lengths[0], lengths[-1]
            print(
                f"\nmarginal cost, {short:g} s -> {long:g} s of video (the ratio a long video "
                "tends to; seconds per second of video)"
            )
            _table(
                {n: (median[long][n] - median[short][n]) / (long - short) for n in median[long]},
                {
                    n: (median_cpu[long][n] - median_cpu[short][n]) / (long - short)
                    for n in median[long]
                },
                1.0,
                last if last in cases else None,
            )
    return 0 if ok else 1


def _table(
    wall: dict[str, float], cpu: dict[str, float], seconds: float, target: str | None
) -> bool:
    """Print one clip's times (or marginal costs) against the floor's; whether `target` (the
    case held to MAX_RATIO) meets it."""
    print(
        f"{'case':<12} {'seconds':>8} {'x decode':>9} {'x real time':>12} "
        f"{'cpu s':>7} {'x decode cpu':>13}"
    )
    for name, t in wall.items():
        print(
            f"{name:<12} {t:8.2f} {t / wall['decode']:9.2f} {seconds / t:12.1f} "
            f"{cpu[name]:7.2f} {cpu[name] / cpu['decode']:13.2f}"
        )
    if target is None:
        return True
    ratio = wall[target] / wall["decode"]
    print(
        f"{'PASS' if ratio <= MAX_RATIO else 'FAIL'}: predict.py at the defaults = "
        f"{ratio:.2f} x decoding to RGB (target <= {MAX_RATIO:g})"
    )
    return ratio <= MAX_RATIO


if __name__ == "__main__":
    sys.exit(main())
