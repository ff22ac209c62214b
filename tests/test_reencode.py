"""`reencode.sh` on the inputs real data sets hold: frame folders of every image format (mixed,
odd sizes, sizes that change, odd names), long clips, symbolic links, interruptions (copies and
conversions, SIGINT/SIGTERM, a killed run), and an environment without `.venv` or python3."""

from __future__ import annotations

import filecmp
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from tests.clips import has_libx264, make_clip, on_cores

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "reencode.sh"
BASH = shutil.which("bash") or "/bin/bash"
PIL_FORMAT = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "bmp": "BMP"}

pytestmark = pytest.mark.skipif(not Path(BASH).exists(), reason="needs bash")


def reencode(
    src: Path, out: Path, *args: str, env: dict | None = None, script: Path = SCRIPT
) -> subprocess.CompletedProcess:
    """Run reencode.sh IN OUT (with a time limit: a hang is a failure)."""
    return subprocess.run(
        [BASH, str(script), *args, str(src), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def grey_frames(
    folder: Path, names: list[str], sizes: list[tuple[int, int]] | None = None
) -> list[int]:
    """Write one flat grey frame per name (format from the extension), each a different level
    rising in list order; return the levels."""
    folder.mkdir(parents=True, exist_ok=True)
    levels = [20 + 17 * i for i in range(len(names))]
    for i, name in enumerate(names):
        w, h = sizes[i] if sizes else (61, 45)
        img = Image.fromarray(np.full((h, w, 3), levels[i], np.uint8))
        img.save(folder / name, format=PIL_FORMAT[name.rsplit(".", 1)[1].lower()])
    return levels


def decoded(path: Path) -> tuple[list[float], list[tuple[int, int]], int]:
    """Mean grey level and size of every decoded frame of `path`, and its number of key frames."""
    with av.open(str(path)) as c:
        keys = sum(p.is_keyframe for p in c.demux(c.streams.video[0]) if p.size)
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    return (
        [float(f.to_ndarray(format="gray").mean()) for f in frames],
        [(f.width, f.height) for f in frames],
        keys,
    )


def assert_in_order(means: list[float], n: int) -> None:
    """n frames whose grey levels rise strictly, i.e. the frames came in the written order."""
    assert len(means) == n
    assert all(b - a > 8 for a, b in zip(means, means[1:], strict=False)), means


FOLDERS: dict[str, Callable[[int], str]] = {
    "jpg": lambda i: f"{i:05d}.jpg",
    "jpeg": lambda i: f"{i:05d}.jpeg",
    "png-ckplus": lambda i: f"S005_001_{i:08d}.png",
    "bmp": lambda i: f"{i:05d}.bmp",
    "upper-case": lambda i: f"{i:05d}.JPG",
    "mixed": lambda i: f"{i:05d}." + ["png", "jpg", "bmp", "jpeg", "PNG", "JPG"][i % 6],
    "unpadded-numbers": lambda i: f"frame{i}.jpg",  # frame2 before frame10
}


@pytest.mark.parametrize("kind", sorted(FOLDERS))
def test_frame_folders_of_every_format(tmp_path, kind):
    """JPEG (the DFEW/FERV39k/MAFW case that failed), PNG, BMP, mixed and upper-case extensions:
    every frame, in name order, one GOP; an odd size is padded and said so."""
    names = [FOLDERS[kind](i) for i in range(1, 13)]
    grey_frames(tmp_path / "in" / "clips" / "001", names)
    run = reencode(tmp_path / "in", tmp_path / "out")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "converted 1" in run.stdout and "odd size 61x45 padded to even" in run.stdout
    means, sizes, keys = decoded(tmp_path / "out" / "clips" / "001.mp4")
    assert_in_order(means, 12)
    assert set(sizes) == {(62, 46)} and keys == 1


@pytest.mark.parametrize("mixed", [False, True], ids=["one-format", "mixed-formats"])
def test_frames_of_different_sizes_are_scaled_to_the_first(tmp_path, mixed):
    """A folder whose frames change size mid-way: every frame is scaled to the first frame's
    size (the documented choice), in order, and the progress line says so."""
    ext = ["jpg", "png", "bmp"] if mixed else ["jpg"]
    names = [f"{i:03d}.{ext[i % len(ext)]}" for i in range(8)]
    sizes = [(64, 48)] * 3 + [(80, 60), (50, 30)] + [(64, 48)] * 3
    grey_frames(tmp_path / "in" / "seq", names, sizes)
    run = reencode(tmp_path / "in", tmp_path / "out")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "frame sizes differ (50x30, 64x48, 80x60): scaled to the first one, 64x48" in run.stdout
    means, out_sizes, _ = decoded(tmp_path / "out" / "seq.mp4")
    assert_in_order(means, 8)
    assert set(out_sizes) == {(64, 48)}


def test_frame_names_with_quotes_and_special_characters(tmp_path):
    """Quotes, %d, glob characters, backslashes and spaces in frame and folder names."""
    names = ["a'1.jpg", "b %d 2.jpg", "c%03d.jpg", "d*[1].png", "e\\f.jpg", "f g.jpg"]
    grey_frames(tmp_path / "in" / "it's [x] %d", names)
    run = reencode(tmp_path / "in", tmp_path / "out")
    assert run.returncode == 0, run.stdout + run.stderr
    assert_in_order(decoded(tmp_path / "out" / "it's [x] %d.mp4")[0], len(names))


def test_frames_directly_in_in_become_a_clip_named_after_it(tmp_path):
    grey_frames(tmp_path / "S010", ["1.png", "2.png", "3.png"])
    run = reencode(tmp_path / "S010", tmp_path / "out")
    assert run.returncode == 0, run.stdout + run.stderr
    assert_in_order(decoded(tmp_path / "out" / "S010.mp4")[0], 3)


def test_an_unreadable_frame_fails_its_folder(tmp_path):
    """A frame that does not decode is never dropped silently: the folder fails, named."""
    names = [f"{i:05d}.jpg" for i in range(6)]
    grey_frames(tmp_path / "in" / "seq", names)
    (tmp_path / "in" / "seq" / names[3]).write_bytes(b"\xff\xd8 not a jpeg at all" * 10)
    run = reencode(tmp_path / "in", tmp_path / "out")
    assert run.returncode == 1
    assert "failed 1" in run.stdout and "seq.mp4" in run.stderr
    assert not (tmp_path / "out" / "seq.mp4").exists()


def test_a_changed_frame_folder_is_converted_again(tmp_path):
    """Removing a frame (which leaves every remaining frame older than the output) or adding one
    makes the output stale."""
    seq = tmp_path / "in" / "seq"
    grey_frames(seq, [f"{i}.png" for i in range(5)])
    assert reencode(tmp_path / "in", tmp_path / "out").returncode == 0
    out = tmp_path / "out" / "seq.mp4"
    assert "skipped 1" in reencode(tmp_path / "in", tmp_path / "out").stdout
    past = out.stat().st_mtime + 1  # folder times of 1 s resolution would otherwise tie
    (seq / "4.png").unlink()
    os.utime(seq, (past, past))
    run = reencode(tmp_path / "in", tmp_path / "out")
    assert "converted 1" in run.stdout, run.stdout
    assert len(decoded(out)[0]) == 4


def test_a_long_clip_is_one_gop(tmp_path):
    """A 400-frame video that has a key frame every 12 frames and a 330-frame folder both become
    a single GOP (the seed's -g 300 gave two)."""
    make_clip(
        tmp_path / "in" / "long.avi", width=64, height=48, frames=400, gop=12, container="avi"
    )
    folder = tmp_path / "in" / "frames"
    folder.mkdir()
    for i in range(330):
        Image.fromarray(np.full((16, 16, 3), i % 230, np.uint8)).save(folder / f"{i:04d}.png")
    run = reencode(tmp_path / "in", tmp_path / "out")
    assert run.returncode == 0, run.stdout + run.stderr
    for name, n in (("long.mp4", 400), ("frames.mp4", 330)):
        means, _, keys = decoded(tmp_path / "out" / name)
        assert (len(means), keys) == (n, 1), name


def test_a_short_clip_is_what_the_seed_command_made(tmp_path):
    """For a clip of up to 300 frames the output is byte for byte the seed's command's: -g INT_MAX
    with -strict:v experimental changes nothing but the GOP length of longer clips."""
    src = make_clip(
        tmp_path / "in" / "c.mp4", width=80, height=64, frames=40, container="mp4", content="rotate"
    )
    assert reencode(tmp_path / "in", tmp_path / "out").returncode == 0
    seed = tmp_path / "seed.m4v"  # -threads 1, as reencode.sh: see the next test
    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-nostdin",
            "-y",
            "-i",
            str(src),
            "-an",
            "-vf",
            "setsar=1:1,pad=ceil(iw/2)*2:ceil(ih/2)*2",
            "-threads",
            "1",
            "-q:v",
            "1",
            "-g",
            "300",
            "-sc_threshold",
            "1000000000",
            "-c:v",
            "mpeg4",
            "-f",
            "rawvideo",
            str(seed),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert (tmp_path / "out" / "c.mp4").read_bytes() == seed.read_bytes()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_the_bytes_do_not_depend_on_the_cores(tmp_path):
    """A video and a frame folder re-encoded on one CPU and on two give the same bytes: the
    mpeg4 encoder's automatic threads (one per CPU) would cut every frame into one slice per
    thread."""
    make_clip(
        tmp_path / "in" / "c.mp4",
        width=160,
        height=128,
        frames=12,
        container="mp4",
        content="rotate",
    )
    grey_frames(tmp_path / "in" / "frames", [f"{i}.png" for i in range(6)], [(160, 128)] * 6)
    cores = sorted(os.sched_getaffinity(0))[:2]
    for cpus in ({cores[0]}, set(cores)):
        with on_cores(cpus):
            run = reencode(tmp_path / "in", tmp_path / f"out{len(cpus)}")
        assert run.returncode == 0, run.stdout + run.stderr
    for name in ("c.mp4", "frames.mp4"):
        one, two = (tmp_path / f"out{k}" / name for k in (1, 2))
        assert one.read_bytes() == two.read_bytes(), name


@pytest.mark.skipif(not has_libx264(), reason="PyAV built without libx264")
def test_odd_size_note_comes_from_the_stream(tmp_path):
    """An H.264 input of even size gets no note (its codec tag 0x31637661 is no size); an odd
    61x45 input is padded to 62x46 and said so."""
    make_clip(
        tmp_path / "in" / "even.mp4", width=64, height=48, frames=6, codec="h264", container="mp4"
    )
    make_clip(
        tmp_path / "in" / "odd.mkv", width=61, height=45, frames=5, codec="ffv1", container="mkv"
    )  # lossless, takes odd sizes
    run = reencode(tmp_path / "in", tmp_path / "out")
    assert run.returncode == 0, run.stdout + run.stderr
    line = {
        name: next(ln for ln in run.stdout.splitlines() if f"converted {name}" in ln)
        for name in ("even.mp4", "odd.mp4")
    }
    assert line["even.mp4"].endswith("converted even.mp4")
    assert line["odd.mp4"].endswith("converted odd.mp4 (odd size 61x45 padded to even)")
    assert decoded(tmp_path / "out" / "odd.mp4")[1][0] == (62, 46)


def test_symbolic_links_are_followed_and_loops_listed(tmp_path):
    """IN itself a link; linked videos, frame folders and files inside IN are converted or copied;
    a loop, a broken link and a link to OUT are listed as ignored with the reason, and nothing
    hangs; a second run finds everything up to date."""
    real, outside = tmp_path / "real", tmp_path / "outside"
    make_clip(real / "clips" / "a.avi", width=48, height=32, frames=5, container="avi")
    grey_frames(real / "frames" / "seq", ["1.jpg", "2.jpg", "3.jpg"])
    (real / "labels").mkdir()
    (real / "labels" / "l.txt").write_text("3\n")
    make_clip(outside / "v.avi", width=48, height=32, frames=7, container="avi")
    grey_frames(outside / "seq2", ["1.png", "2.png"])
    (outside / "meta.txt").write_text("meta\n")
    links = real / "links"
    links.mkdir()
    for name in ("v.avi", "seq2", "meta.txt"):
        (links / name).symlink_to(outside / name)
    (links / "loop").symlink_to("..")
    (links / "broken.txt").symlink_to("missing.txt")
    (links / "to-out").symlink_to(tmp_path / "out")  # OUT itself, which must not be read
    (tmp_path / "in").symlink_to(real)
    run = reencode(tmp_path / "in", tmp_path / "out")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "converted 4 copied 2 skipped 0 ignored 3 failed 0" in run.stdout
    assert "links/loop (symbolic link loop" in run.stdout
    assert "links/broken.txt (broken symbolic link)" in run.stdout
    assert "links/to-out (OUT itself, reached through a symbolic link)" in run.stdout
    assert "ignored:" in run.stderr
    out = tmp_path / "out"
    assert len(decoded(out / "links" / "v.mp4")[0]) == 7
    assert len(decoded(out / "links" / "seq2.mp4")[0]) == 2
    assert (out / "links" / "meta.txt").read_text() == "meta\n"
    assert not (out / "links" / "loop").exists() and not (out / "links" / "to-out").exists()
    again = reencode(tmp_path / "in", tmp_path / "out")
    assert "converted 0 copied 0 skipped 6 ignored 3 failed 0" in again.stdout


@pytest.mark.parametrize("content", ["empty", "folders-only", "broken-link-only"])
def test_nothing_found_is_an_error(tmp_path, content):
    src = tmp_path / "in"
    (src / "a" / "b").mkdir(parents=True)
    if content == "broken-link-only":
        (src / "a" / "x.avi").symlink_to("missing.avi")
    run = reencode(src, tmp_path / "out")
    assert run.returncode == 2
    assert "nothing to convert" in run.stderr and ".avi" in run.stderr and ".jpg" in run.stderr
    if content == "broken-link-only":
        assert "x.avi (broken symbolic link)" in run.stderr


def test_two_inputs_with_one_output_fail_both_named(tmp_path):
    make_clip(tmp_path / "in" / "a.avi", width=48, height=32, frames=4, container="avi")
    make_clip(tmp_path / "in" / "a.mkv", width=48, height=32, frames=6, container="mkv")
    run = reencode(tmp_path / "in", tmp_path / "out")
    assert run.returncode == 1
    assert "a.mkv and a.avi both map here" in run.stderr


# Interruptions. Each run starts in its own session, so that the test can see every process it
# started (the session id is the script's PID) and kill them all as a crash would.


def session_running(sid: int) -> list[int]:
    """PIDs of the processes of session `sid` still running (zombies, which this machine's init
    may never reap, are finished)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def wait_for(cond: Callable[[], bool], what: str, limit: float = 60) -> None:
    end = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def start(
    src: Path, out: Path, tmp_path: Path, *args: str, env: dict | None = None
) -> tuple[subprocess.Popen, Path, Path]:
    """Start reencode.sh in a new session; return it and the files its stdout/stderr go to."""
    so, se = tmp_path / "stdout", tmp_path / "stderr"
    with so.open("w") as o, se.open("w") as e:
        proc = subprocess.Popen(
            [BASH, str(SCRIPT), *args, str(src), str(out)],
            stdout=o,
            stderr=e,
            env=env,
            start_new_session=True,
        )
    return proc, so, se


def slow_cp_env(tmp_path: Path) -> tuple[dict, Path]:
    """An environment whose `cp` writes the first KiB of its source and then hangs, as a copy of
    a huge file does when it is interrupted; the returned marker file appears once it has."""
    fake = tmp_path / "fakebin"
    fake.mkdir()
    mark = tmp_path / "copy-started"
    (fake / "cp").write_text(
        "#!/bin/sh\n"
        'eval "dst=\\${$#}"; eval "src=\\${$(($# - 1))}"\n'
        'head -c 1024 "$src" >"$dst"\n'
        f"touch '{mark}'\n"
        "exec sleep 60\n"
    )
    (fake / "cp").chmod(0o755)
    return {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}, mark


def parts(out: Path) -> list[Path]:
    return sorted(out.rglob("*.part.*"))


def conversions(stdout: str) -> int:
    """The progress lines that say `converted`."""
    return sum(ln.startswith("[") and "] converted " in ln for ln in stdout.splitlines())


def test_an_interrupted_copy_is_never_taken_as_done(tmp_path):
    """SIGTERM while a large file is being copied: the run stops (143), leaves neither the
    destination nor a partial file, and the rerun copies the whole file."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "big.bin").write_bytes(np.random.default_rng(0).bytes(1 << 16))
    env, mark = slow_cp_env(tmp_path)
    proc, so, se = start(src, out, tmp_path, env=env)
    wait_for(mark.exists, "the copy to start")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143, so.read_text() + se.read_text()
    wait_for(lambda: not session_running(proc.pid), "every process of the run to stop", 10)
    assert not (out / "big.bin").exists() and not parts(out)
    run = reencode(src, out)
    assert run.returncode == 0 and "copied 1" in run.stdout, run.stdout + run.stderr
    assert filecmp.cmp(src / "big.bin", out / "big.bin", shallow=False)


def test_a_killed_run_leaves_only_part_files_which_the_next_run_removes(tmp_path):
    """Everything SIGKILLed mid-copy (a crash): only big.bin.part.PID is left; the next run removes
    it and copies the whole file. Files that merely look alike stay: a user's own
    notes.part.999999999 (an output), x.part.old (not our pattern), one of a live process."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "big.bin").write_bytes(np.random.default_rng(0).bytes(1 << 16))
    (src / "notes.part.999999999").write_text("mine\n")
    out.mkdir()
    (out / "x.part.old").write_text("keep\n")
    live = out / f"y.part.{os.getpid()}"
    live.write_text("being written\n")
    env, mark = slow_cp_env(tmp_path)
    proc, _, _ = start(src, out, tmp_path, "-j", "1", env=env)
    wait_for(mark.exists, "the copy to start")
    for pid in session_running(proc.pid):
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (out / "big.bin").exists()
    assert [p.name for p in parts(out) if p.name.startswith("big.bin.part.")]
    run = reencode(src, out)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "removed 1 unfinished output" in run.stdout
    assert filecmp.cmp(src / "big.bin", out / "big.bin", shallow=False)
    assert parts(out) == sorted([out / "notes.part.999999999", out / "x.part.old", live])
    assert (out / "notes.part.999999999").read_text() == "mine\n"
    again = reencode(src, out)
    assert "removed" not in again.stdout and (out / "notes.part.999999999").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_whole_run(tmp_path, sig):
    """A signal mid-run over many small items (Ctrl-C reaches the process group; SIGTERM, as from
    `kill`, the script alone): no job is started after it, running ones stop, a summary is
    printed, the status is 128 + signal, every output on disk is complete, and the rerun does
    the rest."""
    src, out = tmp_path / "in", tmp_path / "out"
    n = 40
    for k in range(n):
        grey_frames(src / f"c{k:02d}", ["1.png", "2.png", "3.png"])
    proc, so, se = start(src, out, tmp_path, "-j", "2")
    wait_for(lambda: conversions(so.read_text()) >= 3, "3 conversions")
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    assert proc.wait(timeout=60) == 128 + sig, so.read_text() + se.read_text()
    assert not session_running(proc.pid)
    stdout = so.read_text()
    done = conversions(stdout)
    assert f"converted {done} copied 0 skipped 0 ignored 0 failed 0, not done {n - done}" in stdout
    assert f"interrupted by {sig.name}" in se.read_text()
    time.sleep(0.5)  # nothing may still be writing
    outputs = sorted(out.glob("*.mp4"))
    assert len(outputs) == done < n and not parts(out)
    for path in outputs:
        assert len(decoded(path)[0]) == 3
    run = reencode(src, out)
    assert run.returncode == 0
    assert f"converted {n - done} copied 0 skipped {done} " in run.stdout


# ffmpeg discovery.


def bare_path(tmp_path: Path) -> str:
    """A PATH with the system's tools but no python3 (nor any python) and no ffmpeg."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in ("/usr/local/bin", "/usr/bin", "/bin"):
        if not Path(d).is_dir():
            continue
        for tool in Path(d).iterdir():
            link = bin_dir / tool.name
            if not tool.name.startswith(("python", "ffmpeg")) and not link.exists():
                link.symlink_to(tool)
    return str(bin_dir)


def test_ffmpeg_found_through_python_without_venv_or_python3(tmp_path):
    """The script copied away from .venv, no python3 nor ffmpeg on PATH: it says what it tried;
    with PYTHON (the caller's interpreter, which has imageio-ffmpeg) it works."""
    script = tmp_path / "tools" / "reencode.sh"
    script.parent.mkdir()
    shutil.copy(SCRIPT, script)
    make_clip(tmp_path / "in" / "a.avi", width=48, height=32, frames=4, container="avi")
    env = {"PATH": bare_path(tmp_path), "HOME": str(tmp_path)}
    run = reencode(tmp_path / "in", tmp_path / "out", env=env, script=script)
    assert run.returncode == 2 and "no ffmpeg found" in run.stderr and "PYTHON" in run.stderr
    run = reencode(
        tmp_path / "in", tmp_path / "out", env={**env, "PYTHON": sys.executable}, script=script
    )
    assert run.returncode == 0 and "converted 1" in run.stdout, run.stdout + run.stderr
    bad = reencode(
        tmp_path / "in", tmp_path / "out", env={**env, "FFMPEG": "/no/such/ffmpeg"}, script=script
    )
    assert bad.returncode == 2 and "FFMPEG=/no/such/ffmpeg is not an executable" in bad.stderr


# What must never happen: outputs over inputs, a user's file removed, a stale output kept, a
# damaged input converted silently, a failure misnamed.


def test_in_inside_out_is_refused(tmp_path):
    """IN inside OUT would write outputs over inputs (o/sub/sub/labels.txt -> o/sub/labels.txt):
    refused before anything is written, as OUT inside IN is."""
    out = tmp_path / "o"
    src = out / "sub"
    (src / "sub").mkdir(parents=True)
    (src / "labels.txt").write_text("mine\n")
    (src / "sub" / "labels.txt").write_text("other\n")
    make_clip(src / "sub" / "keep.avi", width=48, height=32, frames=4, container="avi")
    run = reencode(src, out)
    assert run.returncode == 2 and "IN must lie outside OUT" in run.stderr, run.stdout + run.stderr
    assert (src / "labels.txt").read_text() == "mine\n"
    assert sorted(p.name for p in src.rglob("*")) == ["keep.avi", "labels.txt", "labels.txt", "sub"]


def test_only_its_own_leftovers_are_removed(tmp_path):
    """Only `<an output this run writes>.part.<PID>` of a dead process is a leftover: a user's
    downloads/MAFW.tar.part.01 (PID 01 is no PID) or other.part.4242424 (no output of IN) stay."""
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "downloads").mkdir(parents=True)
    (src / "downloads" / "MAFW.tar").write_text("tar\n")
    (src / "a.txt").write_text("a\n")
    (out / "downloads").mkdir(parents=True)
    mine = [out / "downloads" / "MAFW.tar.part.01", out / "downloads" / "other.part.4242424"]
    for p in mine:
        p.write_text("mine\n")
    (out / "a.txt.part.999999999").write_text("half")  # PIDs never reach 999999999
    run = reencode(src, out)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "removed 1 unfinished output" in run.stdout
    assert parts(out) == sorted(mine) and all(p.read_text() == "mine\n" for p in mine)


def test_an_input_replaced_by_an_older_one_is_rebuilt(tmp_path):
    """`cp -p` of an older file over an input (a longer clip, another label file, another frame)
    leaves the input older than its output: still rebuilt, as what the output was made from is
    recorded; an unchanged input is skipped."""
    src, out = tmp_path / "in", tmp_path / "out"
    older = tmp_path / "older"
    make_clip(older / "long.avi", width=48, height=32, frames=9, container="avi")
    (older / "labels.txt").write_text("7\n")
    grey_frames(older, ["9.png"])
    make_clip(src / "a.avi", width=48, height=32, frames=4, container="avi")
    (src / "labels.txt").write_text("3\n")
    grey_frames(src / "seq", ["1.png", "2.png", "3.png"])
    assert reencode(src, out).returncode == 0
    assert "converted 0 copied 0 skipped 3 " in reencode(src, out).stdout
    shutil.copy2(older / "long.avi", src / "a.avi")
    shutil.copy2(older / "labels.txt", src / "labels.txt")
    shutil.copy2(older / "9.png", src / "seq" / "2.png")
    run = reencode(src, out)
    assert "converted 2 copied 1 skipped 0 " in run.stdout, run.stdout + run.stderr
    assert len(decoded(out / "a.mp4")[0]) == 9
    assert (out / "labels.txt").read_text() == "7\n"
    means = decoded(out / "seq.mp4")[0]
    assert abs(means[1] - means[0]) < 1 < means[2] - means[1]  # 9.png has 1.png's grey level


def noise_jpeg(path: Path, seed: int) -> None:
    """A 128x96 JPEG of noise (quality 90), as a real photograph compresses: tens of KiB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def test_a_jpeg_cut_in_half_fails_its_folder(tmp_path):
    """A frame that decodes only partly (its lower half grey, ffmpeg logs a decode error) fails
    its folder, named with ffmpeg's message, rather than being converted."""
    seq = tmp_path / "in" / "seq"
    for i in range(4):
        noise_jpeg(seq / f"{i}.jpg", i)
    cut = seq / "2.jpg"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    run = reencode(tmp_path / "in", tmp_path / "out")
    assert run.returncode == 1 and "failed 1" in run.stdout, run.stdout + run.stderr
    assert "seq.mp4: error in ffmpeg's log: [mjpeg] overread" in run.stderr, run.stderr
    assert not (tmp_path / "out" / "seq.mp4").exists()


def test_too_large_a_frame_says_so(tmp_path):
    """MPEG-4 Part 2 takes sides below 8192: the reason is the encoder's, not the consequence
    ffmpeg logs last ("Nothing was written into output file")."""
    grey_frames(tmp_path / "in" / "wide", ["1.png"], [(9000, 16)])
    run = reencode(tmp_path / "in", tmp_path / "out")
    assert run.returncode == 1
    assert "wide.mp4: [mpeg4] dimensions too large for MPEG-4" in run.stderr, run.stderr


def test_a_full_disk_says_so(tmp_path):
    """The real ffmpeg writing to /dev/full (every write fails with ENOSPC, as on a full disk):
    the reason given is "no space left on device"."""
    make_clip(tmp_path / "in" / "a.avi", width=48, height=32, frames=6, container="avi")
    full = tmp_path / "ffmpeg-on-a-full-disk"
    full.write_text(
        f'#!/bin/bash\nexec {imageio_ffmpeg.get_ffmpeg_exe()} "${{@:1:$#-1}}" /dev/full\n'
    )
    full.chmod(0o755)
    run = reencode(tmp_path / "in", tmp_path / "out", env={**os.environ, "FFMPEG": str(full)})
    assert run.returncode == 1, run.stdout + run.stderr
    assert "a.mp4: no space left on device\n" in run.stderr, run.stderr


def test_names_with_line_breaks_keep_the_list_whole(tmp_path):
    """A frame folder whose name holds a line break is converted; one holding a frame whose name
    does fails; either way every progress line counts [k/3] and the failure list is one line per
    failure."""
    src = tmp_path / "in"
    grey_frames(src / "a\nb", ["1.png", "2.png"])
    grey_frames(src / "c\nd", ["1.png", "x\ny.png"])
    (src / "e.txt").write_text("e\n")
    run = reencode(src, tmp_path / "out")
    assert run.returncode == 1
    progress = [ln for ln in run.stdout.splitlines() if ln.startswith("[")]
    assert sorted(ln.split()[0] for ln in progress) == ["[1/3]", "[2/3]", "[3/3]"], run.stdout
    assert "converted 1 copied 1 skipped 0 ignored 0 failed 1" in run.stdout
    failures = run.stderr.splitlines()[-2:]
    assert failures[0] == "reencode.sh: failed:", run.stderr
    assert failures[1].endswith("/c\\nd.mp4: a frame name holds a line break: x\\ny.png")
    assert len(decoded(tmp_path / "out" / "a\nb.mp4")[0]) == 2
