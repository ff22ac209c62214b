"""Which files of a raw tree are videos and frame folders, the order of a folder's frames (as
reencode.sh encodes them) and the ffmpeg reencode.sh runs: shared by datasets.py (indexing),
faces.py (cropping), predict.py and train.py."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

VIDEO_EXTS = frozenset(
    {".avi", ".mp4", ".m4v", ".mkv", ".mov", ".mpg", ".mpeg", ".wmv", ".flv", ".webm"}
)
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


def ascii_digits(text: str) -> bool:
    """Whether ``text`` is ASCII digits only ("²".isdigit() is True, yet int("²") fails)."""
    return text.isascii() and text.isdigit()


def is_frame_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() in IMAGE_EXTS for p in path.iterdir())


def visible_paths(paths: Iterable[Path]) -> list[Path]:
    """Sorted paths without hidden files (.DS_Store, ._*)."""
    return sorted(p for p in paths if not p.name.startswith("."))


def frame_files(folder: Path) -> list[Path]:
    """The image frames of a frame folder in the order reencode.sh encodes them (``sort -V``:
    numbers compared as numbers, so 2.jpg comes before 10.jpg), hidden files left out."""

    def key(p: Path) -> list:
        return [
            (0, int(t), "") if ascii_digits(t) else (1, 0, t) for t in re.split(r"([0-9]+)", p.name)
        ]

    return sorted(
        (p for p in visible_paths(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTS), key=key
    )


def reencode_env() -> dict[str, str]:
    """The environment to run reencode.sh in: this process's, with $FFMPEG set, unless the user
    set it, to the ffmpeg of this interpreter's imageio-ffmpeg (so that the script needs no
    .venv beside it); without imageio-ffmpeg, reencode.sh looks further ($PYTHON, .venv, PATH)."""
    env = dict(os.environ)
    if "FFMPEG" not in env:
        try:
            import imageio_ffmpeg

            env["FFMPEG"] = imageio_ffmpeg.get_ffmpeg_exe()
        except (ImportError, RuntimeError):
            pass
    return env
