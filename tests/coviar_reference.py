"""Independent pure-Python reference of the ``coviar`` compressed-domain loader.

The semantics are those of CoViAR's C loader (``chaoyuaw/pytorch-coviar``,
``data_loader/coviar_data_loader.c``), with its defects fixed (the decoder is flushed, so the
last frame counts; containers work through PyAV's demuxers). Decoding goes through PyAV with
``flags2 +export_mvs``; everything else is explicit loops over the motion-vector records.

* GOP ``g`` = the decoded frames from the g-th keyframe up to the next keyframe; ``frame_index``
  is the position inside the GOP (0 = the I-frame). Frames before the first keyframe (none in a
  valid stream) belong to no GOP.
* representation 0: the picture, BGR24 uint8 (H, W, 3), swscale bicubic.
* representation 1: motion vectors int32 (H, W, 2) = (dst - src) written over each block.
* representation 2: residual int32 (H, W, 3) = current - reference sampled at the source pixel.

``accumulate=True`` composes a per-pixel map into the GOP's I-frame frame by frame.

Two record appliers are provided and must agree: ``_apply_literal`` (the C loops, pixel by
pixel) and ``_apply_sliced`` (the same loops with the bounds test hoisted: the valid (dx, dy)
set of a block is a product of two intervals, written as one numpy slice per record). The
sliced one is the default (10-20x faster); ``literal=True`` selects the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

PICTURE, MV, RESIDUAL = 0, 1, 2

#: the fields of one exported AVMotionVector record (``sd.to_ndarray()``) used here
Record = tuple[int, int, int, int, int, int]  # (w, h, src_x, src_y, dst_x, dst_y)


@dataclass
class RefFrame:
    """One decoded frame: its BGR picture and its past-reference MV records (or None)."""

    bgr: np.ndarray
    records: list[Record] | None  # None: the frame carries no MV side data
    pict_type: int
    key_frame: bool


def _records(frame: av.VideoFrame) -> list[Record] | None:
    """The frame's MV records with source == -1, in export order; None without side data."""
    sd = frame.side_data.get("MOTION_VECTORS")
    if sd is None:
        return None
    arr = sd.to_ndarray()
    out: list[Record] = []
    for r in arr:
        if int(r["source"]) != -1:
            continue
        out.append(
            (
                int(r["w"]),
                int(r["h"]),
                int(r["src_x"]),
                int(r["src_y"]),
                int(r["dst_x"]),
                int(r["dst_y"]),
            )
        )
    return out


def ref_decode(path: str | Path) -> list[list[RefFrame]]:
    """Decode every frame of ``path`` (decoder flushed) and split them into GOPs at keyframes."""
    gops: list[list[RefFrame]] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.options = {"flags2": "+export_mvs"}
        # container.decode flushes the decoder at end of stream, so no frame is lost.
        for frame in container.decode(stream):
            rf = RefFrame(
                bgr=frame.to_ndarray(format="bgr24", interpolation="BICUBIC"),
                records=_records(frame),
                pict_type=int(frame.pict_type),
                key_frame=bool(frame.key_frame),
            )
            if rf.key_frame:
                gops.append([])
            if gops:
                gops[-1].append(rf)
    return gops


def ref_num_gops(path: str | Path) -> int:
    """Number of GOPs (keyframes) in ``path``."""
    return len(ref_decode(path))


def ref_gop_lengths(path: str | Path) -> list[int]:
    """Number of frames of each GOP of ``path``."""
    return [len(g) for g in ref_decode(path)]


def ref_num_frames(path: str | Path) -> int:
    """Total number of frames of ``path`` (all GOPs, the last frame included)."""
    return sum(ref_gop_lengths(path))


def _c_half_range(n: int) -> range:
    """C's ``for (i = -1 * n / 2; i < n / 2; ++i)`` with int division truncating toward zero."""
    lo = -(n // 2)  # -1*n/2 in C truncates toward zero: -(n // 2) for n >= 0
    return range(lo, n // 2)


def identity_map(height: int, width: int) -> np.ndarray:
    """The identity source map: int32 (H, W, 2) with map[y, x] = (x, y)."""
    m = np.empty((height, width, 2), dtype=np.int32)
    m[..., 0] = np.arange(width, dtype=np.int32)[None, :]
    m[..., 1] = np.arange(height, dtype=np.int32)[:, None]
    return m


def _apply_literal(
    records: list[Record],
    height: int,
    width: int,
    field: np.ndarray | None,
    acc_old: np.ndarray | None,
    acc_new: np.ndarray | None,
) -> None:
    """Apply one frame's records pixel by pixel, as the C loader does.

    Writes (dst - src) into ``field`` if given; writes ``acc_new[dst] = acc_old[src]`` if the
    maps are given. Zero-displacement records are skipped; a pixel is written only if both its
    dst and src positions lie inside the frame; later records overwrite earlier ones.
    """
    for w, h, src_x, src_y, dst_x, dst_y in records:
        val_x = dst_x - src_x
        val_y = dst_y - src_y
        if val_x == 0 and val_y == 0:
            continue
        for dx in _c_half_range(w):
            for dy in _c_half_range(h):
                p_dst_x = dst_x + dx
                p_dst_y = dst_y + dy
                p_src_x = src_x + dx
                p_src_y = src_y + dy
                if (
                    0 <= p_dst_y < height
                    and 0 <= p_dst_x < width
                    and 0 <= p_src_y < height
                    and 0 <= p_src_x < width
                ):
                    if field is not None:
                        field[p_dst_y, p_dst_x, 0] = val_x
                        field[p_dst_y, p_dst_x, 1] = val_y
                    if acc_new is not None and acc_old is not None:
                        acc_new[p_dst_y, p_dst_x, 0] = acc_old[p_src_y, p_src_x, 0]
                        acc_new[p_dst_y, p_dst_x, 1] = acc_old[p_src_y, p_src_x, 1]


def _valid_interval(half: range, dst: int, src: int, size: int) -> tuple[int, int]:
    """[lo, hi) of offsets d in ``half`` with 0 <= dst + d < size and 0 <= src + d < size."""
    lo = max(half.start, -dst, -src)
    hi = min(half.stop, size - dst, size - src)
    return lo, max(lo, hi)


def _apply_sliced(
    records: list[Record],
    height: int,
    width: int,
    field: np.ndarray | None,
    acc_old: np.ndarray | None,
    acc_new: np.ndarray | None,
) -> None:
    """Same as ``_apply_literal`` but one rectangular slice assignment per record."""
    for w, h, src_x, src_y, dst_x, dst_y in records:
        val_x = dst_x - src_x
        val_y = dst_y - src_y
        if val_x == 0 and val_y == 0:
            continue
        x0, x1 = _valid_interval(_c_half_range(w), dst_x, src_x, width)
        y0, y1 = _valid_interval(_c_half_range(h), dst_y, src_y, height)
        if x0 >= x1 or y0 >= y1:
            continue
        dst = (slice(dst_y + y0, dst_y + y1), slice(dst_x + x0, dst_x + x1))
        if field is not None:
            field[dst[0], dst[1], 0] = val_x
            field[dst[0], dst[1], 1] = val_y
        if acc_new is not None and acc_old is not None:
            src = (slice(src_y + y0, src_y + y1), slice(src_x + x0, src_x + x1))
            acc_new[dst[0], dst[1], :] = acc_old[src[0], src[1], :]


Applier = Callable[..., None]


def ref_warp(reference_bgr: np.ndarray, src_map: np.ndarray) -> np.ndarray:
    """``reference`` sampled at a per-pixel source map (H, W, 2) of (x, y): out[y, x] =
    reference[src_map[y, x, 1], src_map[y, x, 0]] (same dtype as ``reference``)."""
    return reference_bgr[src_map[..., 1], src_map[..., 0]]


def _gop_outputs(
    gop: list[RefFrame],
    representation: int,
    accumulate: bool,
    literal: bool,
    upto: int | None = None,
) -> list[np.ndarray]:
    """The representation of frames 0..upto (all if None) of one GOP, in one pass."""
    if representation not in (PICTURE, MV, RESIDUAL):
        raise ValueError(f"representation must be 0, 1 or 2, not {representation!r}")
    apply: Applier = _apply_literal if literal else _apply_sliced
    n = len(gop) if upto is None else upto + 1
    height, width = gop[0].bgr.shape[:2]
    ident = identity_map(height, width)
    acc = ident.copy()  # accumulated source map into the I-frame
    outs: list[np.ndarray] = []
    for i in range(n):
        fr = gop[i]
        if representation == PICTURE:
            outs.append(fr.bgr.copy())
            continue
        has_mv = fr.records is not None
        field = np.zeros((height, width, 2), dtype=np.int32)
        if i > 0 and has_mv:
            if accumulate:
                new = acc.copy()
                apply(fr.records, height, width, None, acc, new)
                acc = new
            else:
                apply(fr.records, height, width, field, None, None)
        if representation == MV:
            if accumulate:
                outs.append((ident - acc).astype(np.int32) if i > 0 else field)
            else:
                outs.append(field)
            continue
        # residual
        res = np.zeros((height, width, 3), dtype=np.int32)
        if i > 0 and has_mv:
            if accumulate:
                ref, src = gop[0].bgr, acc
            else:
                ref, src = gop[i - 1].bgr, ident - field
            res = fr.bgr.astype(np.int32) - ref_warp(ref, src).astype(np.int32)
        outs.append(res)
    return outs


def ref_all(
    path: str | Path, representation: int, accumulate: bool, literal: bool = False
) -> list[list[np.ndarray]]:
    """Every frame of every GOP of ``path`` (``[gop][frame_index]``), from one decoding pass."""
    return [_gop_outputs(g, representation, accumulate, literal) for g in ref_decode(path)]


def ref_all_from_decoded(
    gops: list[list[RefFrame]], representation: int, accumulate: bool, literal: bool = False
) -> list[list[np.ndarray]]:
    """``ref_all`` on the result of ``ref_decode`` (to decode once for several representations)."""
    return [_gop_outputs(g, representation, accumulate, literal) for g in gops]


def ref_load(
    path: str | Path,
    gop_index: int,
    frame_index: int,
    representation: int,
    accumulate: bool,
    literal: bool = False,
) -> np.ndarray:
    """One frame's representation, as ``coviar.load`` returns it (valid indices only)."""
    gops = ref_decode(path)
    if not 0 <= gop_index < len(gops):
        raise IndexError(f"gop_index {gop_index} out of range [0, {len(gops)})")
    gop = gops[gop_index]
    if not 0 <= frame_index < len(gop):
        raise IndexError(f"frame_index {frame_index} out of range [0, {len(gop)})")
    return _gop_outputs(gop, representation, accumulate, literal, upto=frame_index)[-1]


def ref_src_map(path: str | Path, gop_index: int, frame_index: int, accumulate: bool) -> np.ndarray:
    """The source map (H, W, 2) of (x, y) used by the residual: identity - MV field (into the
    previous frame) or the accumulated map (into the I-frame). Equals identity - ref MV."""
    mv = ref_load(path, gop_index, frame_index, MV, accumulate)
    h, w = mv.shape[:2]
    return identity_map(h, w) - mv
