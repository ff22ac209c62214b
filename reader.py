"""The one reader of MIC's inputs: clips of an index.csv as tensors (training, evaluation,
prediction), TSN sampling, the crops, pytorch-coviar's normalisation, an on-disk decode cache.

``ClipDataset`` reads only what its caller uses: the sampled residuals (or decoded frames for
the RGB baseline), the motion vectors with ``with_mv``, the apex frame (the reconstruction
target) with ``apex``, the I-frame (input of the identity branch) with ``iframe``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

import coviar
from datasets import CLASSES, read_index
from models import FACENET_SIZE, letterbox

PICTURE, MV, RESIDUAL = coviar.PICTURE, coviar.MV, coviar.RESIDUAL
RESIDUAL_STD = 0.226  # pytorch-coviar: (x / 255 - 0.5) / 0.226 for residuals (and our MVs)
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


def _quantise(a: np.ndarray) -> np.ndarray:
    """Residuals / MVs (int32) -> uint8 clip(v + 128, 0, 255), pytorch-coviar's first step;
    pictures (uint8) unchanged."""
    if a.dtype == np.uint8:
        return a
    return np.clip(a + 128, 0, 255).astype(np.uint8)


def crop_frames(a: np.ndarray, box: tuple[int, int, int, int]) -> torch.Tensor:
    """(k, H, W, C) array cropped to ``box`` -> uint8 (k, C, h, w) (channels-last in memory);
    int32 arrays (residuals, MVs) are ``_quantise``d."""
    top, left, h, w = box
    a = np.ascontiguousarray(_quantise(a[:, top : top + h, left : left + w]))
    return torch.from_numpy(a).permute(0, 3, 1, 2)


def normalise(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Float model input from uint8-valued RGB (or MV) pixels, as pytorch-coviar: residuals and
    motion vectors (already shifted by +128) ``(x / 255 - 0.5) / 0.226``; pictures (``"rgb"``)
    ``(x / 255 - mean) / std`` with ImageNet's mean and std. Channels on dimension -3."""
    x = x.float() / 255
    if kind == "rgb":
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        return (x - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    return (x - 0.5) / RESIDUAL_STD


def resize_frames(t: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (k, C, h, w) -> uint8 (k, C, size, size), bilinear, antialiased (as the uint8
    image transforms of pytorch-coviar, and fast)."""
    if t.shape[-2:] == (size, size):
        return t
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
      the apex frame (the reconstruction target, where the dataset has one) and the I-frame
      (the identity branch's input, letterboxed to ``iframe_size``).
    * ``cache``: a ``DecodeCache`` or a directory for one (None: decode every time).

    Item (dict): ``input`` float32 (S, 3, size, size) RGB channel order; ``mv`` (with_mv)
    float32 (S, 2, size, size), channels (x, y); ``apex`` (apex) float32 (3, size, size) RGB in
    [0, 1], the centred square unflipped whatever the input's crop and flip (zeros when the
    clip has no apex) and ``has_apex`` bool; ``iframe`` (iframe) float32 (3, iframe_size,
    iframe_size) RGB in [0, 1] letterboxed on grey; ``label``, ``subject`` int64 tensors;
    ``index`` int. Normalisation (pytorch-coviar): residual ``(clip(v + 128, 0, 255) / 255 -
    0.5) / 0.226``; rgb ``(x / 255 - mean) / std`` with ImageNet mean/std.
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
        rows = read_index(index_csv)
        names = {r["dataset"] for r in rows}
        if len(names) != 1 or next(iter(names)) not in CLASSES:
            raise ValueError(f"{index_csv}: expected one known dataset, found {sorted(names)}")
        self.dataset = names.pop()
        self.class_names: list[str] = list(CLASSES[self.dataset])
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

    def _load(self, path: Path, frames: list[int], rep: int, num_frames: int) -> np.ndarray:
        """The frames' representation ``rep`` (k, H, W, C): coviar's arrays, or their uint8
        ``_quantise``d copies from the cache (``crop_frames`` treats both alike)."""
        if self.cache is not None:
            return self.cache.frames(path, rep, self.accumulate, num_frames)[frames]
        return coviar.load_many(str(path), 0, frames, rep, self.accumulate)

    def _decode(
        self, path: Path, num_frames: int, seg: list[int], pics: list[int]
    ) -> dict[str, np.ndarray]:
        try:
            out = {}
            if self.representation == "rgb":
                both = self._load(path, seg + pics, PICTURE, num_frames)
                out["input"], out["pics"] = both[: len(seg)], both[len(seg) :]
            else:
                out["input"] = self._load(path, seg, RESIDUAL, num_frames)
                if pics:
                    out["pics"] = self._load(path, pics, PICTURE, num_frames)
            if self.with_mv:
                out["mv"] = self._load(path, seg, MV, num_frames)
        except (OSError, ValueError, IndexError, RuntimeError) as exc:
            raise ClipError(f"cannot load clip {path}: {type(exc).__name__}: {exc}") from exc
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        path = self.root / row["path"]
        n, apex = int(row["num_frames"]), int(row["apex"])
        has_apex = self.apex and apex >= 0
        seg = sample_indices(
            n, self.num_segments, self.train, 0 if self.representation == "rgb" else 1
        )
        pics = ([0] if self.iframe else []) + ([apex] if has_apex else [])
        arrays = self._decode(path, n, seg, pics)
        h, w = arrays["input"].shape[1:3]
        half = {"none": (0, w), "left": (0, w // 2), "right": (w // 2, w - w // 2)}
        left, width = half[row["crop"]]

        def box_of(train: bool) -> tuple[int, int, int, int]:
            top, x0, ch, cw = multiscale_box(h, width, train, self.scales)
            return top, left + x0, ch, cw

        box = box_of(self.train)
        flip = self.train and torch.rand(()).item() < 0.5

        def spatial(a: np.ndarray) -> torch.Tensor:
            """Crop, resize, flip; float32 in [0, 255]."""
            t = resize_frames(crop_frames(a, box), self.size).float()
            return t.flip(-1) if flip else t

        x = normalise(spatial(arrays["input"])[:, [2, 1, 0]], self.representation)  # BGR -> RGB
        item: dict[str, Any] = {"input": x.contiguous()}
        if self.with_mv:
            mv = spatial(arrays["mv"])
            if flip:  # mirrored motion: x displacement v - 128 -> 128 - v
                mv[:, 0] = (256 - mv[:, 0]).clamp(0, 255)
            item["mv"] = normalise(mv, "mv").contiguous()
        if self.iframe:
            frame = crop_frames(arrays["pics"][:1], (0, left, h, width))[:, [2, 1, 0]]
            item["iframe"] = letterbox(frame, self.iframe_size)[0]
        if self.apex:  # L_rec's target: the centred square, never the input's crop and flip
            if has_apex:
                target = resize_frames(crop_frames(arrays["pics"][-1:], box_of(False)), self.size)
                item["apex"] = (target[0, [2, 1, 0]].float() / 255).contiguous()
            else:
                item["apex"] = torch.zeros(3, self.size, self.size)
            item["has_apex"] = has_apex
        item["label"] = torch.tensor(int(row["label"]), dtype=torch.int64)
        item["subject"] = torch.tensor(self._subject_index[row["subject"]], dtype=torch.int64)
        item["index"] = i
        return item


class DecodeCache:
    """On-disk cache of every frame of a clip's representation, decoded once.

    ``DecodeCache(directory, short_side=None)``: one ``.npy`` uint8 (n, H, W, C) per clip and
    representation (after ``_quantise``, so identical to what ``ClipDataset`` computes
    without a cache), keyed by path, size, mtime, representation and accumulate. With
    ``short_side`` the frames are stored downscaled to that shorter side (bilinear, antialiased;
    choose at least ``size / min(scales)``): a smaller cache and faster loading, at the cost of
    a second resampling. Files are written atomically, so DataLoader workers can share a
    directory; ``np.load(mmap_mode="r")`` reads only the sampled frames."""

    def __init__(self, directory: str | Path, short_side: int | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.short_side = short_side

    def _file(self, path: Path, rep: int, accumulate: bool) -> Path:
        st = path.stat()
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{rep}|{accumulate}|{self.short_side}"
        digest = hashlib.sha1(key.encode()).hexdigest()[:20]
        return self.directory / f"{path.stem}-{digest}.npy"

    def frames(self, path: Path, rep: int, accumulate: bool, num_frames: int) -> np.ndarray:
        """All ``num_frames`` frames of GOP 0 of ``path`` as uint8 (n, H, W, C), from the cache
        or decoded (and stored) now."""
        file = self._file(path, rep, accumulate)
        if file.exists():
            return np.load(file, mmap_mode="r")
        a = _quantise(coviar.load_many(str(path), 0, range(num_frames), rep, accumulate))
        h, w = a.shape[1:3]
        if self.short_side is not None and min(h, w) > self.short_side:
            scale = self.short_side / min(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            t = torch.from_numpy(a).permute(0, 3, 1, 2).float()
            t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
            a = t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        tmp = file.with_name(f"{file.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, np.ascontiguousarray(a))
        os.replace(tmp, file)
        return np.load(file, mmap_mode="r")


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
