"""`coviar`: I-frames, motion vectors and residuals of MPEG-4 Part 2 video.

A drop-in for pytorch-coviar's loader (Wu et al., CVPR 2018) with the same semantics
(chaoyuaw/pytorch-coviar, ``data_loader/coviar_data_loader.c``): decoding is PyAV's bundled FFmpeg,
the per-pixel work is done by the C kernels in `coviar._kernels`. Differences from the original:
containers (.mp4 .avi .mkv) are read as well as raw streams, `get_num_frames` is the true count
(the original is one short), every failure raises a Python exception, `load_many` decodes a GOP
once for many frames, and `load_clip` returns several representations (optionally cropped) from
that one decode.
"""

from __future__ import annotations

import functools
import operator
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import av
import numpy as np
from av.sidedata.sidedata import SideDataContainer
from av.video.reformatter import VideoReformatter

from coviar import _kernels

__all__ = [
    "PICTURE",
    "MV",
    "RESIDUAL",
    "MAX_RESULT_BYTES",
    "get_num_frames",
    "get_num_gops",
    "gop_lengths",
    "load",
    "load_clip",
    "load_many",
]

PICTURE, MV, RESIDUAL = 0, 1, 2
_CHANNELS = {PICTURE: 3, MV: 2, RESIDUAL: 3}
_HINT = "re-encode it with reencode.sh (MPEG-4 Part 2, no B-frames)"


def _open(
    path: str | bytes | os.PathLike,
) -> tuple[av.container.InputContainer, av.VideoStream]:
    """Open `path` and return its container and first video stream, or raise a clear error."""
    p = Path(_path(path))
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such video file")
    if p.stat().st_size == 0:
        raise ValueError(f"{p}: empty file; {_HINT}")
    with open(p, "rb") as f:
        # A raw MPEG-4 Part 2 stream (what reencode.sh writes) starts with the visual object
        # sequence start code; naming its format skips FFmpeg's format probing, which decodes
        # much of the stream (as long as decoding a short clip). Same demuxer, same packets.
        raw = f.read(4) == b"\x00\x00\x01\xb0"
    try:
        # metadata_errors: coviar reads no tags, so a damaged one must not make the video unreadable
        container = av.open(str(p), format="m4v" if raw else None, metadata_errors="replace")
    except av.error.FFmpegError as e:  # not a media file at all
        raise ValueError(f"{p}: not a readable video ({e}); {_HINT}") from e
    if not container.streams.video:
        container.close()
        raise ValueError(f"{p}: holds no video stream; {_HINT}")
    stream = container.streams.video[0]
    ctx = stream.codec_context  # None when FFmpeg knows no decoder for the stream's codec id
    codec = ctx.name if ctx is not None else "unknown"
    if codec != "mpeg4":
        container.close()
        raise ValueError(f"{p}: codec {codec!r} is not MPEG-4 Part 2; {_HINT}")
    return container, stream


def _packets(path: str | bytes | os.PathLike) -> Iterator[av.Packet]:
    """The video packets of `path` that hold data (demuxing only, no decoding)."""
    container, stream = _open(path)
    with container:
        try:
            for packet in container.demux(stream):
                if packet.size:
                    yield packet
        except av.error.FFmpegError as e:
            raise ValueError(f"{path}: damaged stream ({e}); {_HINT}") from e


def get_num_frames(path: str | bytes | os.PathLike) -> int:
    """Number of frames of the video (all GOPs), counted from its packets without decoding."""
    return sum(1 for _ in _packets(path))


def get_num_gops(path: str | bytes | os.PathLike) -> int:
    """Number of GOPs, i.e. of key frames."""
    return sum(1 for p in _packets(path) if p.is_keyframe)


def gop_lengths(path: str | bytes | os.PathLike) -> list[int]:
    """Frames of each GOP, counted from the packets without decoding (one pass over the file:
    ``len`` is `get_num_gops`, GOP 0's length the frames `load` reaches in GOP 0). ValueError
    when the stream does not start with a key frame (its first GOP would lose frames)."""
    lengths: list[int] = []
    for packet in _packets(path):
        if packet.is_keyframe:
            lengths.append(0)
        elif not lengths:
            raise ValueError(f"{_path(path)}: does not start with an I-frame; {_HINT}")
        lengths[-1] += 1
    return lengths


def _gop_frames(path: str | os.PathLike, gop_index: int) -> Iterator[av.VideoFrame]:
    """Decode the frames of GOP `gop_index` in order; earlier GOPs are skipped undecoded."""
    if gop_index < 0:
        raise IndexError(f"{path}: negative GOP index {gop_index}")
    container, stream = _open(path)
    ctx = stream.codec_context
    ctx.options = {"flags2": "+export_mvs"}
    gop, pos = -1, 0

    def checked(frames: list[av.VideoFrame]) -> Iterator[av.VideoFrame]:
        nonlocal pos
        for frame in frames:
            if ctx.has_b_frames or frame.pict_type == av.video.frame.PictureType.B:
                raise ValueError(f"{path}: has B-frames, which coviar cannot read; {_HINT}")
            if pos == 0 and not frame.key_frame:
                raise ValueError(f"{path}: GOP {gop_index} does not start with an I-frame")
            pos += 1
            yield frame

    with container:
        try:
            for packet in container.demux(stream):
                if not packet.size:
                    continue
                if packet.is_keyframe:
                    gop += 1
                    if gop > gop_index:
                        break
                if gop == gop_index:
                    yield from checked(ctx.decode(packet))
            if gop >= gop_index:
                yield from checked(ctx.decode(None))
        except av.error.FFmpegError as e:
            raise ValueError(f"{path}: damaged stream ({e}); {_HINT}") from e
    if gop < 0:
        raise ValueError(f"{path}: holds no decodable video frame; {_HINT}")
    if gop < gop_index:
        raise IndexError(f"{path}: GOP {gop_index} out of range ({gop + 1} GOPs)")


def _records(frame: av.VideoFrame) -> np.ndarray | None:
    """The frame's motion-vector records as int32 (n, 6) (w, h, src_x, src_y, dst_x, dst_y).

    None when the frame carries no motion-vector side data (an I-frame). Read through a
    SideDataContainer of our own: ``frame.side_data`` caches one on the frame, a reference
    cycle that keeps every such frame (and its picture buffers) alive until the garbage
    collector runs."""
    sd = SideDataContainer(frame).get("MOTION_VECTORS")
    return None if sd is None else _kernels.records(sd)


def _bgr(frame: av.VideoFrame, reformatter: VideoReformatter) -> np.ndarray:
    """BGR24 uint8 (H, W, 3), converted by swscale with bicubic interpolation as the original.

    One `reformatter` per call keeps swscale's context between frames, single-threaded: the same
    pixels as `frame.to_ndarray(format=..., interpolation=...)`, which sets up a threaded context
    per frame at about 15 times the cost of the conversion itself."""
    out = reformatter.reformat(frame, format="bgr24", interpolation="BICUBIC", threads=1)
    return np.ascontiguousarray(out.to_ndarray())


def _identity_map(height: int, width: int) -> np.ndarray:
    """Map of every pixel of a (height, width) frame to itself, int32 (h, w, 2) as (x, y): a new
    array (copied from a cached one: clips of a dataset share their size)."""
    return _identity(height, width, 0, 0).copy()


@functools.lru_cache(maxsize=8)
def _identity(height: int, width: int, top: int, left: int) -> np.ndarray:
    """The (x, y) of every pixel of the box (top, left, height, width), read-only (cached)."""
    out = np.empty((height, width, 2), np.int32)
    out[..., 0] = np.arange(left, left + width, dtype=np.int32)
    out[..., 1] = np.arange(top, top + height, dtype=np.int32)[:, None]
    out.flags.writeable = False
    return out


def _path(path: str | bytes | os.PathLike) -> str:
    """`path` as a str (a bytes path is decoded as the file system does), else TypeError."""
    if not isinstance(path, str | bytes | os.PathLike):
        raise TypeError(f"path must be str, bytes or os.PathLike, not {type(path).__name__}")
    return os.fsdecode(os.fspath(path))


def _flag(accumulate: object) -> bool:
    """`accumulate` as a bool: True/False or 0/1 only (a string such as "no" is a TypeError)."""
    if isinstance(accumulate, bool | np.bool_):
        return bool(accumulate)
    if isinstance(accumulate, int | np.integer):
        if accumulate in (0, 1):
            return bool(accumulate)
        raise ValueError(f"accumulate must be True/False (or 0/1), not {accumulate}")
    raise TypeError(f"accumulate must be a bool, not {type(accumulate).__name__}")


def _indices(path: str, frame_indices: Sequence[int]) -> np.ndarray:
    """The frame indices as a 1-d int64 array, checked (non-empty, integers, not negative)."""
    idx = np.asarray(frame_indices)
    if idx.ndim != 1:
        raise ValueError(f"frame indices must be a flat sequence, not of shape {idx.shape}")
    if idx.size == 0:
        raise ValueError("frame_indices is empty")
    if idx.dtype.kind not in "iu":
        raise TypeError(f"frame indices must be integers, not {idx.dtype}")
    if idx.min() < 0:
        raise IndexError(f"{path}: negative frame index {idx.min()}")
    return idx.astype(np.int64, copy=False)


def _memory_bytes() -> int:
    """Physical memory of the machine (bytes); 16 GiB where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 16 << 30


#: A call whose result would take more than this (half the machine's memory) is refused before
#: anything is allocated: it is a mistake (e.g. 10**7 frame indices), not a request to honour.
MAX_RESULT_BYTES = _memory_bytes() // 2

Box = tuple[int, int, int, int]  # (top, left, height, width)
Crop = Mapping[int, Box] | Callable[[int, int], Mapping[int, Box]]
Tables = Mapping[int, np.ndarray] | Callable[[int, int], Mapping[int, np.ndarray]]


def load_clip(
    path: str | bytes | os.PathLike,
    gop_index: int,
    frames: Mapping[int, Sequence[int]],
    accumulate: bool,
    crop: Crop | None = None,
    lut: Tables | None = None,
) -> dict[int, np.ndarray]:
    """Several representations of frames of one GOP from a single decode of it.

    `frames` maps a representation (PICTURE, MV, RESIDUAL) to its frame indices (in any order,
    repeats allowed); the result maps each to an array (k, H, W, C) exactly as `load_many` of
    that representation alone.

    `crop` maps representations to a box (top, left, height, width) of the frame: those
    representations are computed on the box only, with the values of the whole-frame result
    cropped (the motion-vector field and the residual are never computed outside the box; the
    accumulated map is, since it composes whole frames).

    `lut` maps MV and/or RESIDUAL to a uint8 lookup table (C, L), L odd: each value v of
    channel c becomes ``table[c, clip(v + L // 2, 0, L - 1)]``, frame by frame, so the result is
    uint8 and no int32 array of the clip is built (e.g. pytorch-coviar's residual bytes
    ``clip(v + 128, 0, 255)``: ``table[c, i] = clip(i - L // 2 + 128, 0, 255)``).

    Either may instead be a function of the frame's (height, width) that returns the mapping,
    called once at the first frame (`crop` first), for boxes and tables that depend on the frame
    size (a random crop of it, say) without opening the file twice.

    Errors: FileNotFoundError, ValueError (unreadable file, not MPEG-4 Part 2, B-frames, a box
    outside the frame, a bad table, a result larger than MAX_RESULT_BYTES), IndexError (GOP or
    frame out of range), TypeError (an argument of the wrong type, e.g. accumulate="no").
    """
    path = _path(path)
    accumulate = _flag(accumulate)
    gop_index = operator.index(gop_index)
    want: dict[int, np.ndarray] = {}
    for rep, indices in frames.items():
        if rep not in _CHANNELS or isinstance(rep, bool):
            raise ValueError(f"representation must be 0, 1 or 2, not {rep!r}")
        want[rep] = _indices(path, indices)
    if not want:
        raise ValueError("no representation asked for")
    tables: dict[int, np.ndarray] = {}
    last = max(int(idx.max()) for idx in want.values())
    motion = [rep for rep in (MV, RESIDUAL) if rep in want]
    store: dict[int, np.ndarray] = {}  # rep -> (distinct frames, h, w, C), frames ascending
    slot: dict[int, dict[int, int]] = {}  # rep -> {frame: its index in store[rep]}
    bgr: dict[int, np.ndarray] = {}
    boxes: dict[int, Box] = {}
    recs: dict[int, np.ndarray | None] = {}  # accumulate: every frame's records, composed after
    reformatter = VideoReformatter()
    count = 0
    for pos, frame in enumerate(_gop_frames(path, gop_index)):
        count = pos + 1
        height, width = frame.height, frame.width
        if pos == 0:  # sizes known: check the boxes and the result's size before any work
            given = crop(height, width) if callable(crop) else (crop or {})
            tables = _tables(lut(height, width) if callable(lut) else (lut or {}))
            boxes = _boxes(path, given, height, width, want, tables)
            for rep, idx in want.items():
                frames_of = np.unique(idx).tolist()
                slot[rep] = {f: j for j, f in enumerate(frames_of)}
                _, _, h, w = boxes[rep]
                dtype = np.uint8 if rep == PICTURE or rep in tables else np.int32
                store[rep] = np.empty((len(frames_of), h, w, _CHANNELS[rep]), dtype)
            # Frames whose BGR picture is needed: the pictures asked for, the residuals' frames
            # and their references (the I-frame when accumulated, else the previous frame).
            need_bgr = set(slot.get(PICTURE, ()))
            held = {}  # accumulate: the residual's box of its frames, kept (residuals made last)
            if RESIDUAL in want:
                res = set(slot[RESIDUAL])
                need_bgr |= res | ({0} if accumulate else {i - 1 for i in res if i > 0})
                if accumulate:
                    _, _, h, w = boxes[RESIDUAL]
                    held = dict(
                        zip(
                            sorted(res - {0}),
                            np.empty((len(res - {0}), h, w, 3), np.uint8),
                            strict=True,
                        )
                    )
            need_rec = set().union(*(slot[rep] for rep in motion))
        if pos in need_bgr:
            try:
                bgr[pos] = _bgr(frame, reformatter)
            except av.error.FFmpegError as e:  # swscale refuses the colour tags of a bad header
                msg = f"frame {pos} of GOP {gop_index} cannot be converted to BGR ({e})"
                raise ValueError(f"{path}: {msg}; {_HINT}") from e
        if pos in slot.get(PICTURE, ()):
            top, left, h, w = boxes[PICTURE]
            store[PICTURE][slot[PICTURE][pos]] = bgr[pos][top : top + h, left : left + w]
        if pos in held:
            top, left, h, w = boxes[RESIDUAL]
            held[pos][...] = bgr[pos][top : top + h, left : left + w]
        if motion:
            rec = _records(frame) if pos > 0 and (accumulate or pos in need_rec) else None
            if accumulate:
                recs[pos] = rec
            else:
                for rep in motion:
                    if pos in slot[rep]:
                        _motion(
                            rep,
                            pos,
                            rec,
                            None,
                            bgr,
                            boxes[rep],
                            (height, width),
                            None,
                            tables.get(rep),
                            store[rep][slot[rep][pos]],
                        )
        for k in [k for k in bgr if k < pos and not (accumulate and k == 0)]:
            del bgr[k]  # no later frame refers to it
        if pos == last:
            break
    else:
        raise IndexError(f"{path}: frame {last} out of range (GOP {gop_index} has {count} frames)")
    if accumulate and motion:
        pictures = {**held, 0: bgr[0]} if RESIDUAL in want else {}
        _accumulated(recs, motion, slot, boxes, (height, width), pictures, tables, store)
    result = {}
    for rep, idx in want.items():
        ascending = len(idx) == len(slot[rep]) and bool(np.all(idx[1:] > idx[:-1]))
        result[rep] = store[rep] if ascending else store[rep][np.searchsorted(list(slot[rep]), idx)]
    return result


def _accumulated(
    recs: Mapping[int, np.ndarray | None],
    motion: Sequence[int],
    slot: Mapping[int, Mapping[int, int]],
    boxes: Mapping[int, Box],
    size: tuple[int, int],
    bgr: Mapping[int, np.ndarray],
    tables: Mapping[int, np.ndarray],
    store: Mapping[int, np.ndarray],
) -> None:
    """The accumulated vectors and residuals of `load_clip`, from every frame's records `recs`.

    The map into the I-frame is composed frame by frame, but only on the box of it that is read
    later: the boxes asked for at that frame and, going back from the last frame, the pixels that
    a later frame's box is moved from (`_kernels.source_box`); a crop of a large frame composes
    a fraction of it. The values are those of the whole-frame map."""
    height, width = size
    need: dict[int, Box] = {}  # frame -> the box of its map that must be right
    box = None  # none yet: no later frame reads the map
    for pos in range(max(recs), 0, -1):
        for rep in motion:
            if pos in slot[rep]:
                box = boxes[rep] if box is None else _union(box, boxes[rep])
        if box is not None:
            need[pos] = box
            if recs[pos] is not None:
                box = _kernels.source_box(recs[pos], height, width, *box)
    acc = _identity_map(height, width)
    work = None  # accumulated vectors: the (x, y) of every pixel of MV's box
    if MV in motion:
        top, left, h, w = boxes[MV]
        work = _identity(h, w, top, left)
    for pos in range(max(recs) + 1):
        rec = recs.get(pos)
        if rec is not None and pos in need:
            _kernels.accumulate(rec, acc, *need[pos])  # in place: new[dst] = old[src]
        for rep in motion:
            if pos in slot[rep]:
                _motion(
                    rep,
                    pos,
                    rec,
                    acc,
                    bgr,
                    boxes[rep],
                    size,
                    work if rep == MV else None,
                    tables.get(rep),
                    store[rep][slot[rep][pos]],
                )


def _union(a: Box, b: Box) -> Box:
    """The smallest box (top, left, height, width) holding both."""
    top, left = min(a[0], b[0]), min(a[1], b[1])
    return (top, left, max(a[0] + a[2], b[0] + b[2]) - top, max(a[1] + a[3], b[1] + b[3]) - left)


def _tables(lut: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """The lookup tables of `load_clip`, checked: uint8 (channels, odd length) for MV/RESIDUAL."""
    tables = {}
    for rep, table in lut.items():
        if rep not in (MV, RESIDUAL):
            raise ValueError(f"a lookup table applies to MV (1) or RESIDUAL (2), not {rep!r}")
        t = np.ascontiguousarray(table)
        shape_ok = t.ndim == 2 and t.shape[0] == _CHANNELS[rep] and t.shape[1] % 2 == 1
        if t.dtype != np.uint8 or not shape_ok:
            raise ValueError(
                f"the lookup table of representation {rep} must be uint8 of shape "
                f"({_CHANNELS[rep]}, odd length), not {t.dtype} {t.shape}"
            )
        tables[rep] = t
    return tables


def _boxes(
    path: str,
    given: Mapping[int, Box],
    height: int,
    width: int,
    want: Mapping[int, np.ndarray],
    tables: Mapping[int, np.ndarray],
) -> dict[int, Box]:
    """The box of each representation asked for (the whole frame where `given` names none),
    checked; and the size of the result checked against MAX_RESULT_BYTES."""
    boxes: dict[int, Box] = {}
    total = 0
    for rep, idx in want.items():
        box = tuple(operator.index(v) for v in given.get(rep, (0, 0, height, width)))
        top, left, h, w = box
        if not (0 <= top and 0 <= left and 0 < h <= height - top and 0 < w <= width - left):
            raise ValueError(f"{path}: crop box {box} is not inside the {width}x{height} frame")
        boxes[rep] = box
        total += len(idx) * h * w * _CHANNELS[rep] * (1 if rep == PICTURE or rep in tables else 4)
    if total > MAX_RESULT_BYTES:
        raise ValueError(
            f"{path}: the result would take {total / 2**30:.1f} GiB (more than "
            f"{MAX_RESULT_BYTES / 2**30:.1f} GiB, half the memory); ask for fewer frames"
        )
    return boxes


def _motion(
    rep: int,
    pos: int,
    rec: np.ndarray | None,
    acc: np.ndarray | None,
    bgr: dict[int, np.ndarray],
    box: Box,
    size: tuple[int, int],
    work: np.ndarray | None,
    table: np.ndarray | None,
    dst: np.ndarray,
) -> None:
    """Write into `dst` the motion vectors or residual of frame `pos` on `box` (through `table`
    when given), from its records, the accumulated map `acc` (None: relative to the previous
    frame) and the decoded pictures; `work` is the identity map of the box (accumulated
    vectors only)."""
    top, left, h, w = box
    if pos == 0 or rec is None:  # the I-frame, or a frame without vectors: zeros
        dst[...] = 0 if table is None else table[:, table.shape[1] // 2]
    elif acc is None:  # relative to the previous frame: straight from the records
        if rep == RESIDUAL:  # (without building their field)
            _kernels.residual_mv(bgr[pos], bgr[pos - 1], rec, top, left, dst, table)
        else:
            _kernels.mv_field(rec, *size, top, left, h, w, dst, table)
    elif rep == RESIDUAL:  # accumulated: the I-frame through the map (read at the box; the
        # current frame is the whole frame or its box)
        _kernels.residual(bgr[pos], bgr[0], acc, top, left, dst, table)
    else:  # accumulated vectors: (x, y) - map, `work` holding the box's (x, y)
        if table is None:
            np.subtract(work, acc[top : top + h, left : left + w], out=dst)
        else:
            _kernels.lookup(work - acc[top : top + h, left : left + w], table, dst)


def load_many(
    path: str | bytes | os.PathLike,
    gop_index: int,
    frame_indices: Sequence[int],
    representation: int,
    accumulate: bool,
) -> np.ndarray:
    """Load several frames of one GOP, decoding it once: an array (k, H, W, C).

    representation 0: BGR uint8 pictures; 1: motion vectors int32 (dst - src, per pixel);
    2: residuals int32 BGR (current frame minus the reference sampled at the source pixel).
    With `accumulate`, vectors and residuals refer to the GOP's I-frame instead of the previous
    frame. Frame 0 and frames without motion-vector side data give zeros for 1 and 2. One
    representation of `load_clip`.
    """
    return load_clip(path, gop_index, {representation: frame_indices}, accumulate)[representation]


def load(
    path: str | bytes | os.PathLike,
    gop_index: int,
    frame_index: int,
    representation: int,
    accumulate: bool,
) -> np.ndarray:
    """Load one frame's representation, (H, W, C); see `load_many`."""
    return load_many(path, gop_index, [frame_index], representation, accumulate)[0]
