"""Face crops for video in the wild (AFEW, DFEW, ...; `predict.py`): one MTCNN box per clip.

    python datasets.py crop --in RAW --out CROPPED     # the command line lives in datasets.py

MTCNN's weights ship inside the facenet-pytorch wheel, so this runs offline.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import av
import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from frames import IMAGE_EXTS, VIDEO_EXTS, frame_files, is_frame_folder


@dataclass
class CropResult:
    """Outcome of ``crop_tree``: crop boxes (x0, y0, x1, y1) per written clip, clips with no
    face, clips that could not be read (with the reason)."""

    boxes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    no_face: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def read_frames(path: Path) -> tuple[list[np.ndarray], float]:
    """RGB uint8 frames of a video file or a frame folder (`frame_files` order: as reencode.sh
    encodes it), and the frame rate."""
    if path.is_dir():
        return [np.asarray(Image.open(p).convert("RGB")) for p in frame_files(path)], 25.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 25)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return frames, rate


def _max_along(x: torch.Tensor, dim: int, k: int, s: int, p: int, ceil: bool) -> torch.Tensor:
    """Max over windows of `k` every `s` along `dim` of `x` padded by `p` on both sides, as
    MaxPool2d counts them (ceil mode: the last one may end past the end): maxima of strided
    slices, in place on a copy of the first."""
    if p:
        shape = list(x.shape)
        shape[dim] = p
        pad = x.new_full(shape, -math.inf)
        x = torch.cat([pad, x, pad], dim)
    n = x.shape[dim]
    o = (-(-(n - k) // s) if ceil else (n - k) // s) + 1
    o -= ceil and (o - 1) * s >= n - p  # no window starting in the right padding
    idx = [slice(None)] * x.dim()
    idx[dim] = slice(0, (o - 1) * s + 1, s)
    out = x[tuple(idx)].clone()
    for i in range(1, k):
        idx[dim] = slice(i, None, s)
        v = x[tuple(idx)].narrow(dim, 0, min(o, -(-(n - i) // s)))
        part = out.narrow(dim, 0, v.shape[dim])
        torch.maximum(part, v, out=part)
    return out


class MaxPool(nn.Module):
    """`nn.MaxPool2d(kernel_size, stride, padding, ceil_mode=ceil_mode)` (square, no dilation)
    for inference, with the very same output (a max is exact), 3-4 times faster on CPU: torch's
    kernel is slow on the many small maps of MTCNN and of ResNet6's stem."""

    def __init__(
        self, kernel_size: int, stride: int, padding: int = 0, ceil_mode: bool = False
    ) -> None:
        super().__init__()
        self.k, self.s, self.p, self.ceil = kernel_size, stride, padding, ceil_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _max_along(x, -2, self.k, self.s, self.p, self.ceil)
        return _max_along(rows, -1, self.k, self.s, self.p, self.ceil)


def fast_max_pools(module: nn.Module) -> nn.Module:
    """`module` with its (square, undilated) MaxPool2d layers replaced by `MaxPool`: the same
    outputs, faster; for inference (the gradient of ties differs). Returns `module`."""
    for parent in list(module.modules()):
        for name, layer in list(parent.named_children()):
            if (
                isinstance(layer, nn.MaxPool2d)
                and not layer.return_indices
                and all(
                    isinstance(v, int)
                    for v in (layer.kernel_size, layer.stride, layer.padding, layer.dilation)
                )
                and layer.dilation == 1
            ):
                setattr(
                    parent,
                    name,
                    MaxPool(layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode),
                )
    return module


def detector(device: str = "cpu") -> Any:
    """facenet-pytorch's MTCNN as `face_box` takes it (the largest face, boxes unprocessed),
    on the CPU with `fast_max_pools`: the same detections, in three quarters of the time.
    (Importing facenet_pytorch, which imports torchvision, takes seconds: done here.)"""
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(select_largest=True, post_process=False, device=device)
    return fast_max_pools(mtcnn) if torch.device(device).type == "cpu" else mtcnn


def detect_indices(num_frames: int, detect_frames: int = 16) -> list[int]:
    """The frames `face_box` detects faces in: up to ``detect_frames`` evenly spaced ones."""
    picks = np.linspace(0, num_frames - 1, min(detect_frames, num_frames)).round()
    return [int(i) for i in np.unique(picks)]


def face_box(
    frames: Sequence[np.ndarray],
    detector: Any,
    margin: float = 0.3,
    detect_frames: int = 16,
    min_prob: float = 0.9,
) -> tuple[int, int, int, int] | None:
    """One square crop box (x0, y0, x1, y1) for a clip, or None if no face is found.

    The largest face is detected (``detector``: facenet-pytorch's ``MTCNN``, as `detector`
    makes it) in up to ``detect_frames`` evenly spaced frames; the box is the per-coordinate
    median of the detections kept (probability >= ``min_prob``), made square on its longer side,
    enlarged by ``margin`` (0.3 = 30 %), of even side, shifted inside the frame (shrunk if
    larger)."""
    picks = detect_indices(len(frames), detect_frames)
    boxes, probs = detector.detect(np.stack([frames[i] for i in picks]))
    found = [
        b[0]
        for b, p in zip(boxes, probs, strict=True)
        if b is not None and p[0] is not None and p[0] >= min_prob
    ]
    if not found:
        return None
    x0, y0, x1, y1 = np.median(np.stack(found), axis=0)
    h, w = frames[0].shape[:2]
    side = int(round(max(x1 - x0, y1 - y0) * (1 + margin)))
    side = max(2, min(side + side % 2, h - h % 2, w - w % 2))
    left = int(np.clip(round((x0 + x1 - side) / 2), 0, w - side))
    top = int(np.clip(round((y0 + y1 - side) / 2), 0, h - side))
    return left, top, left + side, top + side


class VideoWriter:
    """RGB frames to MPEG-4 Part 2 (fixed quantiser ``q``, one encoder thread: the encoder cuts a
    frame into one slice per thread) with PyAV, one at a time: a path or a binary file (then
    ``format``, e.g. "avi"); the stream is set up on the first frame."""

    def __init__(
        self, path: Path | BinaryIO, rate: float, q: int = 2, format: str | None = None
    ) -> None:
        self.out = av.open(path if isinstance(path, io.IOBase) else str(path), "w", format=format)
        self.rate, self.q = round(rate) or 25, q
        self.stream: Any = None
        self.count = 0

    def write(self, img: np.ndarray) -> None:
        if self.stream is None:
            self.stream = self.out.add_stream("mpeg4", rate=self.rate)
            h, w = img.shape[:2]
            self.stream.width, self.stream.height, self.stream.pix_fmt = w, h, "yuv420p"
            self.stream.codec_context.options = {"qmin": str(self.q), "qmax": str(self.q)}
            self.stream.codec_context.thread_count = 1  # bytes independent of the cores
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        frame.pts = self.count
        self.count += 1
        self.out.mux(self.stream.encode(frame))

    def close(self) -> None:
        """Flush the encoder and close the file."""
        if self.stream is not None:
            self.out.mux(self.stream.encode())
        self.out.close()


def write_video(
    path: Path | BinaryIO,
    frames: Iterable[np.ndarray],
    rate: float,
    q: int = 2,
    format: str | None = None,
) -> None:
    """Write RGB frames as MPEG-4 Part 2 (fixed quantiser ``q``) with PyAV (`VideoWriter`)."""
    if isinstance(path, Path):
        path.parent.mkdir(parents=True, exist_ok=True)
    writer = VideoWriter(path, rate, q, format)
    try:
        for img in frames:
            writer.write(img)
    finally:
        writer.close()


def crop_tree(
    src: str | Path,
    dst: str | Path,
    margin: float = 0.3,
    size: int | None = None,
    fmt: str = "video",
    detect_frames: int = 16,
    min_prob: float = 0.9,
    device: str = "cpu",
) -> CropResult:
    """Mirror ``src`` into ``dst`` with every clip (video or frame folder) cropped to its face.

    ``fmt`` "video": ``dst/<path minus suffix>.avi`` (MPEG-4 Part 2, q 2); "frames":
    ``dst/<path minus suffix>/000001.png ...``; both are what ``reencode.sh`` takes. ``size``
    resizes the crops to size × size. Other files are copied. ``dst/crops.csv`` lists every clip
    with its box (empty when no face was found). See ``face_box`` for the box. ``dst`` and
    ``src`` inside one another (or one folder) is a ``ValueError`` before anything is read."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a directory")
    top, out = src.resolve(), dst.resolve()
    if out.is_relative_to(top) or top.is_relative_to(out):
        raise ValueError(
            f"--out {dst} and --in {src} must not lie inside one another nor be one folder: the "
            "crops would be written over or among the originals"
        )
    clips, others = [], []
    for d, dirs, files in os.walk(src):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        here = Path(d)
        if here != src and is_frame_folder(here):
            clips.append(here)
            continue
        for name in sorted(files):
            p = here / name
            if name.startswith(".") or p.suffix.lower() in IMAGE_EXTS:
                continue
            (clips if p.suffix.lower() in VIDEO_EXTS else others).append(p)
    if not clips:
        raise FileNotFoundError(f"no video or frame folder under {src}")
    mtcnn = detector(device)
    result = CropResult()
    rows = []
    for clip in tqdm(clips, desc="cropping faces", unit="clip"):
        rel = clip.relative_to(src)
        try:
            frames, rate = read_frames(clip)
            if not frames:
                raise ValueError("no frame")
        except (OSError, ValueError, av.error.FFmpegError) as exc:
            result.unreadable.append(f"{rel} ({exc})")
            continue
        box = face_box(frames, mtcnn, margin, detect_frames, min_prob)
        if box is None:
            result.no_face.append(str(rel))
            rows.append([str(rel), "", "", "", "", "", len(frames)])
            continue
        x0, y0, x1, y1 = box
        crops = [f[y0:y1, x0:x1] for f in frames]
        if size is not None:
            crops = [
                np.asarray(Image.fromarray(c).resize((size, size), Image.BICUBIC)) for c in crops
            ]
        out = dst / rel.with_suffix("")
        if fmt == "frames":
            out.mkdir(parents=True, exist_ok=True)
            for i, c in enumerate(crops, 1):
                Image.fromarray(c).save(out / f"{i:06d}.png")
        else:
            out = out.with_name(out.name + ".avi")
            write_video(out, crops, rate)
        result.boxes[str(rel)] = box
        rows.append([str(rel), str(out.relative_to(dst)), *box, len(frames)])
    for p in others:
        target = dst / p.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, target)
    dst.mkdir(parents=True, exist_ok=True)
    with open(dst / "crops.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "path", "x0", "y0", "x1", "y1", "num_frames"])
        w.writerows(rows)
    return result
