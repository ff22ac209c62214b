"""Predict the facial expression in a video with a checkpoint of train.py.

    python predict.py VIDEO --checkpoint runs/mic/mic/fold0/ckpt.pt
    python predict.py long.mp4 --checkpoint CKPT --window 16 --stride 8 --plot probs.png
    python predict.py face_crop.avi --checkpoint CKPT --no-crop

VIDEO is any video PyAV/FFmpeg reads (H.264 .mp4, .avi, .mkv, ...) or a folder of frames (CK+).
It goes through the same path as the training data of AFEW: the face is found with MTCNN and one
box per video is kept (`faces.face_box`: the median of the detections, enlarged by --margin),
every frame is cropped to it and written as MPEG-4 Part 2 (`faces.write_video`), and
`reencode.sh` turns that into the stream coviar reads (one GOP per 300 frames). With --no-crop
(videos that already show a face filling the frame, as CK+ and MMI) the video goes to
`reencode.sh` as it is. Residuals are then sampled and normalised as `ClipDataset` does in test
mode (TSN centre sampling, the centred square of the shorter side resized to the model's size).

Output (stdout, JSON): {"video", "checkpoint", "classes", "frames", "probabilities" (class ->
probability), "prediction"} for the whole video (num_segments residual frames sampled over all of
it). A video longer than --window frames also gets "window", "stride" and "windows": one
{"start_frame", "end_frame" (exclusive), "probabilities", "prediction"} per sliding window.
The default window is 2 × num_segments frames (16 for 8 segments: about the length of a CK+
neutral-to-apex sequence, which is what the models are trained on); the default stride is half
a window. Residuals at a GOP's I-frame are all zeros, so I-frames are never sampled: a window
that straddles a GOP start samples the P-frames on both sides of it.

Frame indices are those of the re-encoded video (the frames of the input, in order). The face
crop decodes the whole video into memory once (about frames × width × height × 3 bytes).
Errors (no face, unreadable video, a file that is not a train.py checkpoint) are reported on
stderr with exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

import coviar
from datasets import IMAGE_EXTS
from faces import face_box, read_frames, write_video
from models import MIC, RANDOM
from reader import (
    MV,
    PICTURE,
    RESIDUAL,
    crop_frames,
    multiscale_box,
    normalise,
    resize_frames,
    sample_indices,
)

ROOT = Path(__file__).resolve().parent
CONFIG_KEYS = ("num_classes", "class_names", "num_segments", "backbone", "hidden", "with_mv",
               "d_i", "size", "input")
DECODE_BYTES = 512 << 20  # at most this much int32 data per coviar.load_many call
BATCH = 16  # windows per forward pass


class PredictError(RuntimeError):
    """A problem with the user's input, reported without a traceback."""


class CheckpointError(PredictError):
    """The checkpoint is missing, unreadable or not one of train.py."""


class VideoError(PredictError):
    """The video cannot be read or re-encoded."""


class NoFaceError(PredictError):
    """MTCNN found no face in the video."""


@dataclass
class Window:
    """Frames [start, end) of the video and the frames sampled in it for the model."""

    start: int
    end: int
    frames: list[int]


def load_model(checkpoint: str | Path, device: str = "cpu") -> tuple[MIC, dict[str, Any]]:
    """The expression model of a train.py checkpoint (eval mode) and its config."""
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint of tensors (torch.load(weights_only=True) "
            f"failed: {type(exc).__name__})"
        ) from exc
    if not (isinstance(ckpt, dict) and {"model", "config"} <= ckpt.keys()
            and isinstance(ckpt["model"], dict)):
        keys = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path}: not a train.py checkpoint (expected a state dict 'model' and a 'config', "
            f"found {keys})"
        )
    try:
        config = json.loads(ckpt["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its 'config' is not train.py's JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its 'config' is not a JSON object, as train.py writes")
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise CheckpointError(f"{path}: its config lacks {missing}; is it from train.py?")
    if config["input"] not in ("residual", "rgb") or len(config["class_names"]) != config[
            "num_classes"]:
        raise CheckpointError(f"{path}: inconsistent config (input {config['input']!r}, "
                              f"{len(config['class_names'])} class names, "
                              f"num_classes {config['num_classes']})")
    try:
        model = MIC(config["num_classes"], config["num_segments"], config["backbone"],
                    config["hidden"], with_mv=config["with_mv"], decoder=False,
                    d_i=config["d_i"], size=config["size"], backbone_weights=RANDOM)
        # The decoder and the adversary only serve training.
        model.load_state_dict({k: v for k, v in ckpt["model"].items()
                               if not k.startswith(("decoder.", "discriminator."))})
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: its weights do not match its config: {exc}") from exc
    return model.to(device).eval(), config


def _tree_for_reencode(video: Path, src: Path, crop: bool, device: str, margin: float,
                       min_prob: float) -> None:
    """Put the clip, face-cropped (`src/clip.avi`) or as it is (`src/clip.mkv`, or the frame
    folder `src/clip/`), into `src`, as the one item of reencode.sh's input tree."""
    if not crop:
        if video.is_dir():
            shutil.copytree(video, src / "clip", copy_function=_link_or_copy)
        else:  # reencode.sh picks videos by suffix; FFmpeg reads the content whatever its name
            _link_or_copy(video, src / "clip.mkv")
        return
    try:
        frames, rate = read_frames(video)
    except (OSError, ValueError, IndexError, av.error.FFmpegError) as exc:
        raise VideoError(f"{video}: not a readable video ({type(exc).__name__}: {exc})") from exc
    if not frames:
        raise VideoError(f"{video}: holds no frame")
    from facenet_pytorch import MTCNN  # here: importing it (torchvision) costs seconds

    detector = MTCNN(select_largest=True, post_process=False, device=device)
    box = face_box(frames, detector, margin=margin, min_prob=min_prob)
    if box is None:
        raise NoFaceError(
            f"{video}: no face found (MTCNN, probability >= {min_prob}); lower --min-prob, or "
            "pass --no-crop if the video already shows a face filling the frame"
        )
    x0, y0, x1, y1 = box
    write_video(src / "clip.avi", [f[y0:y1, x0:x1] for f in frames], rate)


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def reencode(video: str | Path, workdir: str | Path, crop: bool = True, device: str = "cpu",
             margin: float = 0.3, min_prob: float = 0.9) -> Path:
    """Face-crop `video` (unless not `crop`) and re-encode it with reencode.sh into `workdir`;
    returns the MPEG-4 Part 2 stream coviar reads."""
    video, workdir = Path(video), Path(workdir)
    if not video.exists():
        raise VideoError(f"{video}: no such file")
    if video.is_dir() and not any(p.suffix.lower() in IMAGE_EXTS for p in video.iterdir()):
        raise VideoError(f"{video}: a folder without image frames")
    src, out = workdir / "in", workdir / "out"
    src.mkdir(parents=True)
    _tree_for_reencode(video, src, crop, device, margin, min_prob)
    proc = subprocess.run(["bash", str(ROOT / "reencode.sh"), "-j", "1", str(src), str(out)],
                          capture_output=True, text=True)
    stream = out / "clip.mp4"
    if proc.returncode != 0 or not stream.is_file():
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        why = lines[-1].removeprefix(f"{stream}: ") if lines else f"status {proc.returncode}"
        raise VideoError(f"{video}: reencode.sh could not convert it ({why})")
    return stream


def stream_layout(stream: str | Path) -> tuple[list[int], int, tuple[int, int]]:
    """GOP start frames, number of frames and (height, width) of a re-encoded stream, read from
    its packets without decoding (counted as coviar counts them)."""
    try:
        with av.open(str(stream)) as container:
            vs = container.streams.video[0]
            keys = [p.is_keyframe for p in container.demux(vs) if p.size]
            size = (vs.codec_context.height, vs.codec_context.width)
    except (OSError, ValueError, IndexError, av.error.FFmpegError) as exc:
        raise VideoError(f"{stream}: unreadable after re-encoding ({exc})") from exc
    starts = [i for i, k in enumerate(keys) if k]
    if not starts or starts[0] != 0:
        raise VideoError(f"{stream}: does not start with an I-frame")
    return starts, len(keys), size


def sample_window(start: int, end: int, gop_starts: list[int], num_segments: int,
                  skip_iframes: bool = True) -> list[int]:
    """`num_segments` frames of [start, end) sampled as ClipDataset does in test mode (TSN
    centres), GOP starts left out when `skip_iframes` (their residuals are zeros)."""
    skip = set(gop_starts) if skip_iframes else set()
    usable = [f for f in range(start, end) if f not in skip]
    if not usable:
        raise VideoError(f"no P-frame in frames [{start}, {end}) to take residuals from")
    return [usable[i] for i in sample_indices(len(usable), num_segments, False, first=0)]


def plan_windows(num_frames: int, gop_starts: list[int], num_segments: int, window: int,
                 stride: int, skip_iframes: bool = True) -> list[Window]:
    """The whole video, then (if it has more than `window` frames) sliding windows of `window`
    frames every `stride` frames, the last one ending at the last frame."""
    plans = [Window(0, num_frames, sample_window(0, num_frames, gop_starts, num_segments,
                                                 skip_iframes))]
    if num_frames > window:
        starts = list(range(0, num_frames - window + 1, stride))
        if starts[-1] + window < num_frames:
            starts.append(num_frames - window)
        plans += [Window(s, s + window, sample_window(s, s + window, gop_starts, num_segments,
                                                      skip_iframes)) for s in starts]
    return plans


def load_frames(stream: str | Path, frames: list[int], gop_starts: list[int],
                representation: int, hw: tuple[int, int], size: int,
                accumulate: bool = False) -> dict[int, torch.Tensor]:
    """{frame: uint8 (C, size, size)} of a representation: loaded with coviar GOP by GOP, cropped
    to the centred square and resized as ClipDataset does in test mode."""
    h, w = hw
    chunk = max(1, DECODE_BYTES // (h * w * 3 * 4))
    box = multiscale_box(h, w, train=False)
    out: dict[int, torch.Tensor] = {}
    by_gop: dict[int, list[int]] = {}
    for f in sorted(set(frames)):
        by_gop.setdefault(bisect_right(gop_starts, f) - 1, []).append(f)
    for gop, fs in by_gop.items():
        for i in range(0, len(fs), chunk):
            part = fs[i:i + chunk]
            local = [f - gop_starts[gop] for f in part]
            try:
                a = coviar.load_many(str(stream), gop, local, representation, accumulate)
            except (OSError, ValueError, IndexError, RuntimeError) as exc:
                raise VideoError(f"{stream}: coviar cannot read it ({exc})") from exc
            out.update(zip(part, resize_frames(crop_frames(a, box), size), strict=True))
    return out


def to_inputs(windows: list[Window], frames: dict[int, torch.Tensor], kind: str) -> torch.Tensor:
    """(B, S, C, size, size) float inputs of `kind` "residual", "rgb" or "mv" from
    `load_frames`'s output, normalised as ClipDataset (`reader.normalise`); BGR turned into
    RGB."""
    x = torch.stack([torch.stack([frames[f] for f in w.frames]) for w in windows])
    return normalise(x if kind == "mv" else x[:, :, [2, 1, 0]], kind)


@torch.no_grad()
def classify(model: MIC, config: dict[str, Any], stream: Path, windows: list[Window],
             gop_starts: list[int], hw: tuple[int, int], device: str = "cpu") -> np.ndarray:
    """Class probabilities (len(windows), C) of the windows of a re-encoded stream."""
    frames = [f for w in windows for f in w.frames]
    rgb = config["input"] == "rgb"
    acc = config.get("accumulate", False)  # residuals against the I-frame (train.py --accumulate)
    pics = load_frames(stream, frames, gop_starts, PICTURE if rgb else RESIDUAL, hw,
                       config["size"], acc)
    mvs = (load_frames(stream, frames, gop_starts, MV, hw, config["size"], acc)
           if config["with_mv"] else None)
    probs = []
    for i in range(0, len(windows), BATCH):
        batch = windows[i:i + BATCH]
        x = to_inputs(batch, pics, "rgb" if rgb else "residual").to(device)
        mv = to_inputs(batch, mvs, "mv").to(device) if mvs is not None else None
        probs.append(torch.softmax(model(x, mv)["logits"].float(), dim=1).cpu())
    return torch.cat(probs).numpy()


def _entry(classes: list[str], p: np.ndarray) -> dict[str, Any]:
    return {"probabilities": {c: round(float(v), 6) for c, v in zip(classes, p, strict=True)},
            "prediction": classes[int(p.argmax())]}


def predict_video(video: str | Path, checkpoint: str | Path, window: int | None = None,
                  stride: int | None = None, crop: bool = True, device: str = "cpu",
                  margin: float = 0.3, min_prob: float = 0.9) -> dict[str, Any]:
    """Expression probabilities of `video` (see the module docstring for the result's keys).

    `window` defaults to 2 × num_segments frames, `stride` to half a window."""
    model, config = load_model(checkpoint, device)
    window = 2 * config["num_segments"] if window is None else window
    stride = max(1, window // 2) if stride is None else stride
    if window < 2 or stride < 1:
        raise PredictError(f"window must be >= 2 and stride >= 1, not {window} and {stride}")
    with tempfile.TemporaryDirectory(prefix="mic-predict-") as tmp:
        stream = reencode(video, tmp, crop, device, margin, min_prob)
        gop_starts, n, hw = stream_layout(stream)
        windows = plan_windows(n, gop_starts, config["num_segments"], window, stride,
                               skip_iframes=config["input"] != "rgb")
        probs = classify(model, config, stream, windows, gop_starts, hw, device)
    classes = list(config["class_names"])
    result: dict[str, Any] = {"video": str(video), "checkpoint": str(checkpoint),
                              "classes": classes, "frames": n, **_entry(classes, probs[0])}
    if len(windows) > 1:
        result.update(window=window, stride=stride, windows=[
            {"start_frame": w.start, "end_frame": w.end, **_entry(classes, p)}
            for w, p in zip(windows[1:], probs[1:], strict=True)])
    return result


def plot_probabilities(result: dict[str, Any], out: str | Path) -> None:
    """PNG of the probabilities: per class over time (window centres) for a video with windows,
    a bar chart otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = result["classes"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    if "windows" in result:
        ws = result["windows"]
        x = [(w["start_frame"] + w["end_frame"] - 1) / 2 for w in ws]
        for c in classes:
            ax.plot(x, [w["probabilities"][c] for w in ws], marker=".", label=c)
        ax.set_xlabel(f"frame (centre of a {result['window']}-frame window)")
        ax.set_xlim(0, result["frames"] - 1)
        ax.set_ylim(0, 1)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    else:
        ax.barh(classes, [result["probabilities"][c] for c in classes])
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
    ax.set_ylabel("probability" if "windows" in result else "")
    ax.set_title(f"{Path(result['video']).name}: {result['prediction']}", fontsize=10)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video", metavar="VIDEO", help="video file (any codec/container) or folder "
                   "of frames")
    p.add_argument("--checkpoint", metavar="CKPT", required=True, help="ckpt.pt of train.py")
    p.add_argument("--window", type=int, metavar="N",
                   help="frames per window (default: 2 × num_segments of the checkpoint)")
    p.add_argument("--stride", type=int, metavar="N",
                   help="frames between window starts (default: half a window)")
    p.add_argument("--plot", metavar="PNG", help="write a plot of the probabilities")
    p.add_argument("--no-crop", action="store_true",
                   help="no face detection: the video already is a face crop")
    p.add_argument("--margin", type=float, default=0.3,
                   help="face box enlargement, as `datasets.py crop` (default 0.3)")
    p.add_argument("--min-prob", type=float, default=0.9,
                   help="MTCNN face probability, as `datasets.py crop` (default 0.9)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    args = p.parse_args(argv)
    try:
        result = predict_video(args.video, args.checkpoint, args.window, args.stride,
                               not args.no_crop, args.device, args.margin, args.min_prob)
    except PredictError as exc:
        print(f"predict.py: error: {exc}", file=sys.stderr)
        return 1
    if args.plot:
        plot_probabilities(result, args.plot)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
