"""Deterministic test clips for the compressed-domain reader, encoded with PyAV (no ffmpeg binary).

``make_clip`` writes a short synthetic video whose content really moves (smoothed-noise textures,
so that motion estimation finds true vectors) with PyAV's native ``mpeg4`` encoder (or libx264),
into a raw MPEG-4 Part 2 elementary stream (``.m4v``) or a container. ``bad_inputs`` writes files
that are not decodable videos. ``clip_stats`` summarises what a clip holds (for checking that the
encoder options took effect).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import av
import numpy as np

#: container name -> PyAV/FFmpeg output format name
CONTAINER_FORMATS: dict[str, str] = {
    "m4v": "m4v",
    "mp4": "mp4",
    "avi": "avi",
    "mkv": "matroska",
    "h264": "h264",
}

CONTENTS = ("translate", "rotate", "static")


def has_libx264() -> bool:
    """Whether PyAV's bundled FFmpeg has the libx264 encoder."""
    return "libx264" in av.codecs_available


@contextmanager
def on_cores(cpus: set[int]) -> Iterator[None]:
    """Run this thread (and the processes it starts) on the CPUs `cpus` only: FFmpeg's automatic
    thread counts follow (one per CPU)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _box_blur(a: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """Periodic box blur of ``a`` (float) along ``axis`` with window 2*radius+1."""
    out = np.zeros_like(a)
    for s in range(-radius, radius + 1):
        out += np.roll(a, s, axis=axis)
    return out / (2 * radius + 1)


def _blurred(rng: np.random.Generator, h: int, w: int, c: int, radius: int) -> np.ndarray:
    """White noise (h, w, c) box-blurred twice, stretched to [0, 1] per channel."""
    t = rng.random((h, w, c))
    for _ in range(2):
        t = _box_blur(_box_blur(t, radius, 0), radius, 1)
    t -= t.min(axis=(0, 1), keepdims=True)
    t /= np.maximum(t.max(axis=(0, 1), keepdims=True), 1e-9)
    return t


def smooth_noise(rng: np.random.Generator, h: int, w: int, radius: int = 2) -> np.ndarray:
    """Colour texture (h, w, 3) uint8 like natural images: fine luminance detail (noise blurred
    at ``radius``) plus a coarser colour tint (so that 4:2:0 chroma keeps most of it)."""
    luma = _blurred(rng, h, w, 1, radius)
    tint = _blurred(rng, h, w, 3, 4 * radius + 2)
    t = 0.75 * luma + 0.25 * tint
    return np.round(16 + 223 * t).astype(np.uint8)


def _bounce(pos: int, lo: int, hi: int) -> int:
    """Reflect a linear position into [lo, hi] (triangle wave)."""
    span = hi - lo
    if span <= 0:
        return lo
    p = (pos - lo) % (2 * span)
    return lo + (p if p <= span else 2 * span - p)


def _bilinear(tex: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Sample ``tex`` (h, w, 3) bilinearly at float coordinates (clamped to the border)."""
    h, w = tex.shape[:2]
    xs = np.clip(xs, 0, w - 1)
    ys = np.clip(ys, 0, h - 1)
    x0 = np.floor(xs).astype(np.int64)
    y0 = np.floor(ys).astype(np.int64)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    fx = (xs - x0)[..., None]
    fy = (ys - y0)[..., None]
    t = tex.astype(np.float64)
    top = t[y0, x0] * (1 - fx) + t[y0, x1] * fx
    bot = t[y1, x0] * (1 - fx) + t[y1, x1] * fx
    return top * (1 - fy) + bot * fy


def make_frames(
    width: int, height: int, frames: int, content: str = "translate", seed: int = 0
) -> list[np.ndarray]:
    """The RGB24 frames (height, width, 3) uint8 of a synthetic clip, deterministic for a seed.

    * ``translate``: a background drifting 1 px/frame (right) and a textured patch moving
      3 px/frame diagonally (bouncing at the borders).
    * ``rotate``: a textured square patch rotating (8 degrees/frame) and scaling over a
      still background.
    * ``static``: the same picture in every frame.
    """
    if content not in CONTENTS:
        raise ValueError(f"unknown content {content!r}; expected one of {CONTENTS}")
    rng = np.random.default_rng(seed)
    margin = frames + 8
    bg = smooth_noise(rng, height + 8, width + margin, radius=2)
    ps = max(16, min(width, height) // 3)
    patch = smooth_noise(rng, ps, ps, radius=1)
    big = 2 * ps
    tex = smooth_noise(rng, big, big, radius=1)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    out: list[np.ndarray] = []
    for i in range(frames):
        if content == "static":
            img = bg[4 : 4 + height, margin - 4 : margin - 4 + width].copy()
        elif content == "translate":
            ox = margin - 4 - i  # window moves left over the canvas: content drifts right
            img = bg[4 : 4 + height, ox : ox + width].copy()
            x = _bounce(4 + 3 * i, 0, width - ps)
            y = _bounce(4 + 3 * i, 0, height - ps)
            img[y : y + ps, x : x + ps] = patch
        else:  # rotate
            img = bg[4 : 4 + height, margin - 4 : margin - 4 + width].copy()
            ang = math.radians(8.0 * i)
            scale = 1.0 + 0.25 * math.sin(2 * math.pi * i / 16)
            cx, cy = width / 2.0, height / 2.0
            dx, dy = (xx - cx) / scale, (yy - cy) / scale
            u = math.cos(ang) * dx + math.sin(ang) * dy  # inverse rotation
            v = -math.sin(ang) * dx + math.cos(ang) * dy
            half = ps / 2.0
            inside = (np.abs(u) < half) & (np.abs(v) < half)
            vals = _bilinear(tex, u + big / 2.0, v + big / 2.0)
            img[inside] = np.round(vals[inside]).astype(np.uint8)
        out.append(np.ascontiguousarray(img))
    return out


def make_clip(
    path: str | Path,
    width: int = 176,
    height: int = 144,
    frames: int = 24,
    gop: int = 300,
    mv4: bool = False,
    qpel: bool = False,
    content: str = "translate",
    codec: str = "mpeg4",
    bframes: int = 0,
    container: str = "m4v",
    seed: int = 0,
    q: int = 2,
) -> Path:
    """Encode a synthetic clip to ``path`` and return it as a ``Path``.

    ``codec`` "mpeg4" (native encoder, fixed quantiser ``q`` through qmin = qmax = q, GOP
    ``gop``, ``bframes`` B-frames, optional ``+mv4`` / ``+qpel``, scene-cut keyframes off) or
    "h264" (libx264; raises ``RuntimeError`` if PyAV lacks it) or "ffv1" (lossless YUV 4:4:4, any
    size, odd included; container "mkv"). ``container`` one of "m4v" (raw
    MPEG-4 Part 2 elementary stream, as ``ffmpeg -f rawvideo`` writes), "mp4", "avi", "mkv"
    ("m4v" with codec "h264" writes a raw H.264 Annex B stream instead). ``width`` and
    ``height`` must be even (YUV 4:2:0) except with "ffv1"; they need not be multiples of 16.
    """
    path = Path(path)
    if (width % 2 or height % 2) and codec != "ffv1":
        raise ValueError("width and height must be even for yuv420p")
    if container not in CONTAINER_FORMATS:
        raise ValueError(f"unknown container {container!r}")
    if codec == "mpeg4":
        enc = "mpeg4"
        if container == "h264":
            raise ValueError("container 'h264' needs codec 'h264'")
    elif codec == "h264":
        if not has_libx264():
            raise RuntimeError("PyAV has no libx264 encoder")
        enc = "libx264"
        if container == "m4v":
            container = "h264"
    elif codec == "ffv1":
        enc = "ffv1"
    else:
        raise ValueError(f"unknown codec {codec!r}")

    imgs = make_frames(width, height, frames, content, seed)
    options: dict[str, str] = {}
    if enc == "mpeg4":
        options["qmin"] = str(q)
        options["qmax"] = str(q)
        options["sc_threshold"] = "1000000000"  # no scene-cut keyframes: GOPs of exactly `gop`
        flags = ("+mv4" if mv4 else "") + ("+qpel" if qpel else "")
        if flags:
            options["flags"] = flags
    elif enc == "libx264":
        options["preset"] = "ultrafast" if bframes == 0 else "fast"
        options["qp"] = str(max(q, 1))
        options["sc_threshold"] = "0"
        options["bf"] = str(bframes)

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=CONTAINER_FORMATS[container]) as out:
        stream: Any = out.add_stream(enc, rate=25)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv444p" if enc == "ffv1" else "yuv420p"
        cc = stream.codec_context
        cc.gop_size = gop
        cc.max_b_frames = bframes
        cc.options = options
        for i, img in enumerate(imgs):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for pkt in stream.encode(frame):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    return path


def clip_stats(path: str | Path) -> dict[str, Any]:
    """Decode ``path`` with exported MVs and summarise it.

    Keys: ``frames``, ``pict_types`` (list of ints: 1 = I, 2 = P, 3 = B), ``keyframes``
    (indices), ``block_sizes`` (set of (w, h)), ``motion_scales`` (set), ``sources`` (set),
    ``nonzero_mvs`` (records with dst != src), ``width``, ``height``.
    """
    stats: dict[str, Any] = {
        "frames": 0,
        "pict_types": [],
        "keyframes": [],
        "block_sizes": set(),
        "motion_scales": set(),
        "sources": set(),
        "nonzero_mvs": 0,
    }
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        vs.codec_context.options = {"flags2": "+export_mvs"}
        for i, fr in enumerate(c.decode(vs)):
            stats["frames"] += 1
            stats["width"], stats["height"] = fr.width, fr.height
            stats["pict_types"].append(int(fr.pict_type))
            if fr.key_frame:
                stats["keyframes"].append(i)
            sd = fr.side_data.get("MOTION_VECTORS")
            if sd is None:
                continue
            a = sd.to_ndarray()
            stats["block_sizes"].update(zip(a["w"].tolist(), a["h"].tolist(), strict=True))
            stats["motion_scales"].update(a["motion_scale"].tolist())
            stats["sources"].update(a["source"].tolist())
            moved = (a["dst_x"] != a["src_x"]) | (a["dst_y"] != a["src_y"])
            stats["nonzero_mvs"] += int(moved.sum())
    return stats


def bad_inputs(dirpath: str | Path) -> dict[str, Path]:
    """Write undecodable inputs into ``dirpath``; return {name: path}.

    ``empty`` (0 bytes), ``random`` (4 KiB of seeded random bytes), ``text`` (a text file),
    ``truncated`` (a valid 24-frame m4v cut in the middle, inside a frame's data). All carry the
    ``.m4v`` suffix so that nothing can reject them by name alone.
    """
    d = Path(dirpath)
    d.mkdir(parents=True, exist_ok=True)
    paths = {
        "empty": d / "empty.m4v",
        "random": d / "random.m4v",
        "text": d / "text.m4v",
        "truncated": d / "truncated.m4v",
    }
    paths["empty"].write_bytes(b"")
    paths["random"].write_bytes(np.random.default_rng(1234).bytes(4096))
    paths["text"].write_text("This is not a video.\n" * 50, encoding="utf-8")
    full = make_clip(d / "_full_for_truncation.m4v", frames=24)
    data = full.read_bytes()
    paths["truncated"].write_bytes(data[: len(data) // 2 + 7])
    full.unlink()
    return paths
