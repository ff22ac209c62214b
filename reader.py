"""The one reader of MIC's inputs: clips of an index.csv as tensors (training, evaluation,
prediction), TSN sampling, the crops, pytorch-coviar's normalisation, an on-disk decode cache.

``ClipDataset`` reads only what its caller uses, in one decode of the clip
(``coviar.load_clip``): the sampled residuals (or decoded frames for the RGB baseline), the
motion vectors with ``with_mv``, the apex frame (the reconstruction target) with ``apex``, the
I-frame (input of the identity branch) with ``iframe``. Residuals and motion vectors are computed
on the crop box only and turned into bytes as they are decoded, with the values the whole-frame
arrays would give.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

import coviar
from datasets import index_classes, read_index
from models import FACENET_SIZE, letterbox

PICTURE, MV, RESIDUAL = coviar.PICTURE, coviar.MV, coviar.RESIDUAL
RESIDUAL_STD = 0.226  # residuals: (x / 255 - 0.5) / 0.226
MV_RANGE = 20  # pytorch-coviar's clip_and_scale(mv, 20): v * 127.5 / 20, truncated
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCALES = (1.0, 0.875, 0.75, 0.66)  # multi-scale crop (TSN / pytorch-coviar GroupMultiScaleCrop)


class ClipError(RuntimeError):
    """A clip could not be loaded (the message names the file)."""


def sample_indices(num_frames: int, num_segments: int, train: bool, first: int = 1) -> list[int]:
    """TSN sampling of ``num_segments`` frame indices in ``[first, num_frames)``: the range is cut
    into equal segments; a random frame of each when training (torch's RNG), the centre one
    otherwise. Segments shorter than a frame repeat frames."""
    n = num_frames - first
    if n < 1:
        raise ValueError(f"no frame to sample in [{first}, {num_frames})")
    out = []
    for s in range(num_segments):
        lo, hi = n * s / num_segments, n * (s + 1) / num_segments
        t = lo + (hi - lo) * (torch.rand(()).item() if train else 0.5)
        out.append(first + min(int(t), n - 1))
    return out


def multiscale_box(
    h: int, w: int, train: bool, scales: Sequence[float] = SCALES
) -> tuple[int, int, int, int]:
    """Crop box (top, left, height, width). Training: TSN multi-scale crop, side lengths from
    ``scales`` × the shorter side (height and width at most one scale step apart) at a random
    offset. Test: the centred square of the shorter side."""
    base = min(h, w)
    if not train:
        return (h - base) // 2, (w - base) // 2, base, base
    sizes = [max(1, int(base * s)) for s in scales]
    pairs = [(a, b) for i, a in enumerate(sizes) for j, b in enumerate(sizes) if abs(i - j) <= 1]
    ch, cw = pairs[int(torch.randint(len(pairs), ()).item())]
    top = int(torch.randint(h - ch + 1, ()).item())
    left = int(torch.randint(w - cw + 1, ()).item())
    return top, left, ch, cw


#: pytorch-coviar's residual bytes clip(v + 128, 0, 255), as a ``coviar.load_clip`` table
RESIDUAL_BYTES = np.tile(np.clip(np.arange(-255, 256) + 128, 0, 255).astype(np.uint8), (3, 1))


def mv_bytes(v: np.ndarray, scale: float) -> np.ndarray:
    """Motion vectors (pixels of the source frame, one axis) -> uint8, as pytorch-coviar after
    resizing: first the displacement in pixels of the resized frame, ``v * scale`` (scale =
    size / crop side along that axis), then pytorch-coviar's ``clip_and_scale(v, 20)``
    (``v * 127.5 / 20`` truncated toward zero), ``+ 128``, clipped to [0, 255]."""
    return np.clip(np.trunc(v * scale * (127.5 / MV_RANGE)) + 128, 0, 255).astype(np.uint8)


def mv_table(scale_x: float, scale_y: float, reach: int) -> np.ndarray:
    """``mv_bytes`` of every displacement in [-reach, reach] for x and y: a ``coviar.load_clip``
    table (2, 2 * reach + 1)."""
    v = np.arange(-reach, reach + 1)
    return np.stack([mv_bytes(v, scale_x), mv_bytes(v, scale_y)])


def crop_frames(a: np.ndarray, box: tuple[int, int, int, int]) -> torch.Tensor:
    """(k, H, W, C) uint8 pictures cropped to ``box`` -> (k, C, h, w) (channels-last in
    memory)."""
    top, left, h, w = box
    a = np.ascontiguousarray(a[:, top : top + h, left : left + w])
    return torch.from_numpy(a).permute(0, 3, 1, 2)


def normalise(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Float model input from uint8-valued pixels, channels on dimension -3: residuals
    (``"residual"``, shifted by +128) ``(x / 255 - 0.5) / 0.226``; motion vectors (``"mv"``,
    ``mv_bytes``) ``x / 255 - 0.5`` as pytorch-coviar (no std); pictures (``"rgb"``)
    ``(x / 255 - mean) / std`` with ImageNet's mean and std. A new tensor (``x`` is left as it
    is, the new one is contiguous); the operations are done in place on it, in this order."""
    x = x.to(torch.float32, copy=True, memory_format=torch.contiguous_format).div_(255)
    if kind == "rgb":
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        return x.sub_(mean.view(3, 1, 1)).div_(std.view(3, 1, 1))
    if kind == "mv":
        return x.sub_(0.5)
    return x.sub_(0.5).div_(RESIDUAL_STD)


def resize_frames(t: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (k, C, h, w) -> uint8 (k, C, size, size), bilinear, antialiased (as the uint8
    image transforms of pytorch-coviar, and fast)."""
    if t.shape[-2:] == (size, size):
        return t
    if t.dtype == torch.uint8 and t.shape[1] == 2 and sys.byteorder == "little":
        # Motion vectors: torch's fast uint8 path takes 3 or 4 channels. Two frames side by side
        # in the channels, (x, y) of frame 2i then of frame 2i + 1, are resized as one 4-channel
        # frame; channels are resampled independently, so the values are those of each frame
        # (tested). Each pixel's (x, y) bytes are moved as one 16-bit word.
        k, h, w = t.shape[0], t.shape[2], t.shape[3]
        words = t.permute(0, 2, 3, 1).contiguous().numpy().view(np.uint16)[..., 0]
        pairs = np.zeros((-(-k // 2), h, w, 2), np.uint16)
        pairs[..., 0] = words[0::2]
        pairs[: k // 2, ..., 1] = words[1::2]
        out = resize_frames(torch.from_numpy(pairs.view(np.uint8)).permute(0, 3, 1, 2), size)
        return out.reshape(-1, 2, size, size)[:k]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class ClipDataset(Dataset):
    """Clips of an index.csv as MIC inputs.

    * ``root``: the indexed directory; ``index_csv`` defaults to ``root/index.csv``.
    * ``folds``: keep the rows whose ``fold`` is one of these (``datasets.PROTOCOLS`` names
      them: "0".."9" for CK+, "train"/"val" for AFEW, ...); None: every row.
    * ``train``: random TSN sampling + multi-scale crop (one box per clip) + horizontal flip
      (p = 0.5, mirrors every input frame, negates the MV x); otherwise centre sampling and the
      centred square of the shorter side; both resized to ``size`` × ``size``.
    * ``representation``: ``"residual"`` (MIC) or ``"rgb"`` (the RGB baseline: decoded frames
      sampled over all frames 0..n-1).
    * ``with_mv``, ``apex``, ``iframe``: also read the motion vectors of the sampled frames,
      the apex frame (the reconstruction target, where the row has one) and the I-frame (the
      identity branch's input, letterboxed to ``iframe_size``).
    * ``cache``: a ``DecodeCache`` or a directory for one (None: decode every time).

    Item (dict): ``input`` float32 (S, 3, size, size) RGB channel order; ``mv`` (with_mv)
    float32 (S, 2, size, size), channels (x, y); ``apex`` (apex) float32 (3, size, size) RGB in
    [0, 1], the centred square unflipped whatever the input's crop and flip (zeros when the
    clip has no apex) and ``has_apex`` bool; ``iframe`` (iframe) float32 (3, iframe_size,
    iframe_size) RGB in [0, 1] letterboxed on grey; ``label``, ``subject`` int64 tensors;
    ``index`` int.

    Normalisation (pytorch-coviar's, ``dataset.py``): residual ``(clip(v + 128, 0, 255) / 255
    - 0.5) / 0.226``; rgb ``(x / 255 - mean) / std`` with ImageNet mean/std; motion vectors
    ``mv_bytes`` then ``x / 255 - 0.5``: a vector of v pixels of the source frame becomes
    ``v * size / c`` pixels of the model input (c: the crop side along that axis), then
    ``clip(trunc(that * 127.5 / 20) + 128, 0, 255)``; the bytes are resized with the frame and
    a flip maps the x byte u to ``256 - u`` (pytorch-coviar's ``GroupRandomHorizontalFlip``).
    """

    def __init__(
        self,
        root: str | Path,
        index_csv: str | Path | None = None,
        folds: Sequence[str | int] | None = None,
        train: bool = False,
        num_segments: int = 8,
        size: int = 112,
        representation: str = "residual",
        with_mv: bool = False,
        accumulate: bool = False,
        apex: bool = True,
        iframe: bool = False,
        iframe_size: int = FACENET_SIZE,
        cache: DecodeCache | str | Path | None = None,
        scales: Sequence[float] = SCALES,
    ) -> None:
        if representation not in ("residual", "rgb"):
            raise ValueError(f"representation must be 'residual' or 'rgb', not {representation!r}")
        self.root = Path(root)
        index_csv = Path(index_csv) if index_csv else self.root / "index.csv"
        if not index_csv.exists():
            raise FileNotFoundError(
                f"{index_csv} not found: run `python datasets.py --dataset NAME --root {root}`"
            )
        rows = read_index(index_csv)  # one known dataset, every row valid
        self.dataset = rows[0]["dataset"]
        self.class_names: list[str] = list(index_classes(self.dataset, index_csv))
        self.num_classes = len(self.class_names)
        self.subjects: list[str] = sorted({r["subject"] for r in rows})
        self._subject_index = {s: i for i, s in enumerate(self.subjects)}
        if folds is not None:
            keep = {str(f) for f in folds}
            rows = [r for r in rows if r["fold"] in keep]
        if not rows:
            raise ValueError(f"{index_csv}: no clip in folds {folds}")
        self.rows = rows
        self.train, self.num_segments, self.size = train, num_segments, size
        self.representation, self.with_mv, self.accumulate = representation, with_mv, accumulate
        self.apex, self.iframe, self.iframe_size = apex, iframe, iframe_size
        self.cache = DecodeCache(cache) if isinstance(cache, str | Path) else cache
        self.scales = tuple(scales)

    def __len__(self) -> int:
        return len(self.rows)

    def _geometry(self, crop: str, h: int, w: int) -> dict[str, Any]:
        """The kept part of an (h, w) frame (``crop`` none/left/right half: ``left``,
        ``width``) and the input's crop box in it (drawn now when training)."""
        left, width = {"none": (0, w), "left": (0, w // 2), "right": (w // 2, w - w // 2)}[crop]
        top, x0, ch, cw = multiscale_box(h, width, self.train, self.scales)
        return {"h": h, "left": left, "width": width, "box": (top, left + x0, ch, cw)}

    def _read(
        self, row: dict[str, str], seg: list[int], pics: list[int]
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """One decode of the clip (or the cache): ``input`` (and ``mv``) bytes (k, ch, cw, C) of
        the crop box, ``pics`` whole BGR frames of ``pics``; and the frame geometry."""
        path, n = self.root / row["path"], int(row["num_frames"])
        rgb = self.representation == "rgb"
        want = {PICTURE: seg + pics} if rgb else {RESIDUAL: seg}
        if pics and not rgb:
            want[PICTURE] = pics
        if self.with_mv:
            want[MV] = seg
        geo: dict[str, Any] = {}
        try:
            if self.cache is None:  # the crop box drawn at the first frame, then bytes of it

                def boxes(h: int, w: int) -> dict[int, tuple[int, int, int, int]]:
                    geo.update(self._geometry(row["crop"], h, w))
                    return {RESIDUAL: geo["box"], MV: geo["box"]}

                def tables(h: int, w: int) -> dict[int, np.ndarray]:
                    _, _, ch, cw = geo["box"]
                    return {
                        RESIDUAL: RESIDUAL_BYTES,
                        MV: mv_table(self.size / cw, self.size / ch, max(h, w)),
                    }

                got = coviar.load_clip(path, 0, want, self.accumulate, crop=boxes, lut=tables)
            else:  # whole frames from the cache (residual bytes, int16 vectors), cropped here
                stored = {rep: None for rep in want}  # every frame, except the pictures of
                if not rgb and pics:  # a residual model: just the ones it uses
                    stored[PICTURE] = sorted(set(pics))
                got = self.cache.frames(path, want, stored, self.accumulate, n)
                geo = self._geometry(row["crop"], *next(iter(got.values())).shape[1:3])
                top, left, ch, cw = geo["box"]
                for rep in (RESIDUAL, MV):
                    if rep in got:
                        got[rep] = got[rep][:, top : top + ch, left : left + cw]
                if MV in got:
                    v = got[MV]
                    got[MV] = np.stack(
                        [mv_bytes(v[..., 0], self.size / cw), mv_bytes(v[..., 1], self.size / ch)],
                        axis=-1,
                    )
        except (OSError, ValueError, IndexError, RuntimeError) as exc:
            raise ClipError(f"cannot load clip {path}: {type(exc).__name__}: {exc}") from exc
        out = {}
        if rgb:
            top, left, ch, cw = geo["box"]
            out["input"] = got[PICTURE][: len(seg), top : top + ch, left : left + cw]
            out["pics"] = got[PICTURE][len(seg) :]
        else:
            out["input"] = got[RESIDUAL]
            if pics:
                out["pics"] = got[PICTURE]
        if self.with_mv:
            out["mv"] = got[MV]
        return out, geo

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        n, apex = int(row["num_frames"]), int(row["apex"])
        has_apex = self.apex and apex >= 0
        seg = sample_indices(
            n, self.num_segments, self.train, 0 if self.representation == "rgb" else 1
        )
        pics = ([0] if self.iframe else []) + ([apex] if has_apex else [])
        arrays, geo = self._read(row, seg, pics)  # draws the crop box (training)
        flip = self.train and torch.rand(()).item() < 0.5

        def spatial(a: np.ndarray) -> torch.Tensor:
            """Bytes (k, h, w, C) of the crop box -> resized, flipped: uint8 (k, C, size, size)."""
            t = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)
            t = resize_frames(t, self.size)
            return t.flip(-1) if flip else t

        x = normalise(spatial(arrays["input"])[:, [2, 1, 0]], self.representation)  # BGR -> RGB
        item: dict[str, Any] = {"input": x}
        if self.with_mv:
            mv = spatial(arrays["mv"]).float()
            if flip:  # mirrored motion: the x byte u -> 256 - u (pytorch-coviar), i.e. -x
                mv[:, 0] = 256 - mv[:, 0]
            item["mv"] = normalise(mv, "mv")
        h, left, width = geo["h"], geo["left"], geo["width"]
        if self.iframe:
            frame = crop_frames(arrays["pics"][:1], (0, left, h, width))[:, [2, 1, 0]]
            item["iframe"] = letterbox(frame, self.iframe_size)[0]
        if self.apex:  # L_rec's target: the centred square, never the input's crop and flip
            if has_apex:
                top, x0, ch, cw = multiscale_box(h, width, False)
                centre = (top, left + x0, ch, cw)
                target = resize_frames(crop_frames(arrays["pics"][-1:], centre), self.size)
                item["apex"] = (target[0, [2, 1, 0]].float() / 255).contiguous()
            else:
                item["apex"] = torch.zeros(3, self.size, self.size)
            item["has_apex"] = has_apex
        item["label"] = torch.tensor(int(row["label"]), dtype=torch.int64)
        item["subject"] = torch.tensor(self._subject_index[row["subject"]], dtype=torch.int64)
        item["index"] = i
        return item


class DecodeCache:
    """On-disk cache of the decoded representations of clips, decoded once (in one pass).

    ``DecodeCache(directory, short_side=None)``: one ``.npy`` per clip and representation:
    residuals as their bytes clip(v + 128, 0, 255) uint8 (n, H, W, 3), motion vectors as int16
    (n, H, W, 2) pixel displacements, pictures uint8 (k, H, W, 3) of the frames the dataset
    uses (every frame for the RGB baseline, else the I-frame and the apex), so that
    ``ClipDataset`` gives the same items with and without it. The key holds the clip's path,
    size and mtime, the representation, accumulate, ``short_side``, the pictures' frames and the
    layout's version. With ``short_side`` the frames are stored downscaled to that shorter side
    (bilinear, antialiased; choose at least ``size / min(scales)``), the motion vectors as
    float32 in pixels of the stored frame: a smaller cache and faster loading, at the cost of a
    second resampling. Files are written atomically, so DataLoader workers can share a
    directory; ``np.load(mmap_mode="r")`` reads only the sampled frames. A truncated or garbage
    file (unreadable, or of the wrong dtype, number of frames or channels; or files of a clip
    that disagree on the frame size) is deleted and rebuilt, with one ``RuntimeWarning`` naming
    it."""

    VERSION = 2  # of the layout; part of the key

    def __init__(self, directory: str | Path, short_side: int | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.short_side = short_side

    def _file(self, path: Path, rep: int, accumulate: bool, stored: list[int] | None) -> Path:
        st = path.stat()
        motion = accumulate if rep != PICTURE else None
        key = (
            f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{rep}|{motion}|{self.short_side}"
            f"|{stored}|v{self.VERSION}"
        )
        digest = hashlib.sha1(key.encode()).hexdigest()[:20]
        return self.directory / f"{path.stem}-{digest}.npy"

    def _dtype(self, rep: int) -> type:
        if rep != MV:
            return np.uint8
        return np.int16 if self.short_side is None else np.float32

    def _read(self, file: Path, rep: int, count: int) -> np.ndarray | None:
        """The stored array, or None if missing; a corrupt file is reported and deleted."""
        if not file.exists():
            return None
        try:
            a = np.load(file, mmap_mode="r")
            if (
                a.dtype != self._dtype(rep)
                or a.ndim != 4
                or a.shape[0] != count
                or a.shape[3] != (2 if rep == MV else 3)
            ):
                raise ValueError(f"{a.dtype} {a.shape}, not a {count}-frame array")
            return a
        except (ValueError, OSError, EOFError) as exc:
            warnings.warn(
                f"decode cache file {file} is corrupt ({exc}); rebuilding it",
                RuntimeWarning,
                stacklevel=4,
            )
            file.unlink(missing_ok=True)
            return None

    def frames(
        self,
        path: Path,
        want: dict[int, list[int]],
        stored: dict[int, list[int] | None],
        accumulate: bool,
        num_frames: int,
    ) -> dict[int, np.ndarray]:
        """The frames ``want[rep]`` of each representation of GOP 0 of ``path``, from the cache,
        the missing representations decoded now in one pass and stored: ``stored[rep]`` are the
        frames kept in the file (None: all ``num_frames``)."""
        frames_of = {rep: list(range(num_frames)) if f is None else f for rep, f in stored.items()}
        files = {rep: self._file(path, rep, accumulate, stored[rep]) for rep in want}
        arrays = {rep: self._read(files[rep], rep, len(frames_of[rep])) for rep in want}
        sizes = {a.shape[1:3] for a in arrays.values() if a is not None}
        if len(sizes) > 1:  # which one is wrong cannot be told: rebuild them all
            names = ", ".join(str(files[rep]) for rep, a in arrays.items() if a is not None)
            warnings.warn(
                f"decode cache files {names} disagree on the frame size ({sorted(sizes)}"
                "); rebuilding them",
                RuntimeWarning,
                stacklevel=3,
            )
            arrays = dict.fromkeys(arrays)
        missing = [rep for rep, a in arrays.items() if a is None]
        if missing:
            got = coviar.load_clip(
                str(path),
                0,
                {rep: frames_of[rep] for rep in missing},
                accumulate,
                lut={RESIDUAL: RESIDUAL_BYTES},
            )
            for rep in missing:
                a = self._shrink(got[rep], rep)
                tmp = files[rep].with_name(f"{files[rep].stem}.{os.getpid()}.tmp.npy")
                np.save(tmp, np.ascontiguousarray(a))
                os.replace(tmp, files[rep])
                arrays[rep] = np.load(files[rep], mmap_mode="r")
        out = {}
        for rep, a in arrays.items():
            position = {f: j for j, f in enumerate(frames_of[rep])}
            out[rep] = a[[position[f] for f in want[rep]]]
        return out

    def _shrink(self, a: np.ndarray, rep: int) -> np.ndarray:
        """``a`` as stored: motion vectors as int16, and with ``short_side`` every frame
        downscaled to it (motion vectors: float32, in pixels of the stored frame)."""
        h, w = a.shape[1:3]
        if self.short_side is None or min(h, w) <= self.short_side:
            return a.astype(self._dtype(rep), copy=False)
        scale = self.short_side / min(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        t = torch.from_numpy(a).permute(0, 3, 1, 2).float()
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
        if rep == MV:  # displacements in pixels of the stored frame
            t = t * torch.tensor([size[1] / w, size[0] / h]).view(1, 2, 1, 1)
            return t.permute(0, 2, 3, 1).numpy().astype(np.float32)
        return t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def worker_init(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn`` (also fine to call in any loading process): glibc keeps the
    memory this process frees (``mallopt``: allocations below 64 MiB from the heap, 32 MiB where
    an older glibc refuses more; no trim below 256 MiB free). An item allocates 10-20
    MB of arrays; by default glibc returns them to the kernel and the next item faults them in
    again, 1-3 ms of an item of about 10 (`benchmarks/loader.py`). Nothing happens where the C
    library is not glibc."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    if not mallopt(-3, 64 << 20):  # M_MMAP_THRESHOLD
        mallopt(-3, 32 << 20)
    mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of ``ClipDataset`` items into a batch (``DataLoader(collate_fn=collate)``)."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        else:
            dtype = torch.bool if isinstance(values[0], bool) else torch.int64
            out[key] = torch.tensor(values, dtype=dtype)
    return out
