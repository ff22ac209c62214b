"""Mutation fuzzer of the compressed-domain reader `coviar` on damaged MPEG-4 Part 2 streams.

Valid clips (raw .m4v streams of several sizes, GOP lengths, +mv4/+qpel, B-frames, and one .avi
and one .mp4) are damaged by stacked mutations (bit flips, byte overwrites, truncation, chunk
duplication and deletion, header and start-code corruption, splices, a foreign VOL header
inserted mid-stream, the VOL's frame width and height rewritten) and fed to `get_num_frames`,
`get_num_gops`, `gop_lengths`, `load` and `load_many` (all representations, accumulate both
ways, in-range and out-of-range indices).

Acceptable per call: a normal return with the right type, shape, dtype and value range, or
FileNotFoundError / ValueError / IndexError. Also checked: `load` agrees with `load_many`, the
representations of one frame agree in size, and `warp(reference, src map) + residual == picture`
exactly. Anything else is a finding: another exception type, a wrong output, a crash of the
process (segfault, abort) or a hang (no answer within --timeout seconds). The calls run in a
worker process, restarted after a crash or a hang, so nothing stops the campaign; each finding's
input is saved under --out with a JSON description. Inputs are reproducible from (seed, index):
`--replay SEED:INDEX` reruns one in a worker, `--repro FILE --op-seed N` in this process.

    .venv/bin/python benchmarks/fuzz_coviar.py --seconds 600 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import itertools
import json
import os
import queue
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ACCEPTED = (FileNotFoundError, ValueError, IndexError)
CHANNELS = {0: 3, 1: 2, 2: 3}
DTYPES = {0: np.uint8, 1: np.int32, 2: np.int32}
MAX_INPUT_BYTES = 1 << 20
MAX_WORKER_BYTES = 4 << 30  # address space of the worker (about 0.4 GiB used)

# name, make_clip keyword arguments
SEED_CLIPS: list[tuple[str, dict[str, Any]]] = [
    ("p64x48", {"width": 64, "height": 48, "frames": 10}),
    ("gop4", {"width": 64, "height": 48, "frames": 12, "gop": 4}),
    ("odd50x38_mv4", {"width": 50, "height": 38, "frames": 8, "content": "rotate", "mv4": True}),
    ("qpel48x32", {"width": 48, "height": 32, "frames": 8, "gop": 5, "qpel": True}),
    ("q12_80x64", {"width": 80, "height": 64, "frames": 9, "gop": 3, "q": 12, "seed": 3}),
    ("static32", {"width": 32, "height": 32, "frames": 6, "gop": 3, "content": "static"}),
    ("bframes", {"width": 64, "height": 48, "frames": 10, "bframes": 2}),
    ("avi", {"width": 48, "height": 32, "frames": 8, "gop": 4, "container": "avi"}),
    ("mp4", {"width": 48, "height": 32, "frames": 8, "gop": 4, "container": "mp4"}),
]
START_CODES = bytes([0x00, 0x20, 0xB0, 0xB1, 0xB2, 0xB3, 0xB5, 0xB6, 0xB7, 0xFF])


@dataclass
class Seed:
    """A valid clip to mutate."""

    name: str
    data: bytes
    suffix: str


def make_seeds(directory: Path) -> list[Seed]:
    """Encode the seed clips into `directory` and return them."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests.clips import make_clip

    seeds = []
    for name, kw in SEED_CLIPS:
        path = make_clip(directory / f"{name}.{kw.get('container', 'm4v')}", **kw)
        seeds.append(Seed(name, path.read_bytes(), path.suffix))
    return seeds


# ---------------------------------------------------------------- mutations (parent side)


def _start_codes(d: bytearray) -> list[int]:
    """Offsets of the MPEG-4 start-code prefixes 00 00 01 in `d`."""
    out, i = [], d.find(b"\x00\x00\x01")
    while i >= 0:
        out.append(i)
        i = d.find(b"\x00\x00\x01", i + 1)
    return out


def _bit_flips(rng: random.Random, d: bytearray, seeds: list[Seed]) -> None:
    for _ in range(rng.randint(1, 8)):
        d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)


def _overwrite(rng: random.Random, d: bytearray, seeds: list[Seed]) -> None:
    pos, n = rng.randrange(len(d)), rng.randint(1, 16)
    n = min(n, len(d) - pos)
    fill = rng.choice([b"\x00", b"\xff", b"\x7f", b"\x80", b"\x01"])
    d[pos : pos + n] = fill * n if rng.random() < 0.5 else rng.randbytes(n)


def _truncate(rng: random.Random, d: bytearray, seeds: list[Seed]) -> None:
    del d[rng.randrange(len(d)) :]


def _duplicate(rng: random.Random, d: bytearray, seeds: list[Seed]) -> None:
    a = rng.randrange(len(d))
    chunk = d[a : a + rng.randint(1, 4096)]
    b = rng.randrange(len(d) + 1)
    d[b:b] = chunk


def _delete(rng: random.Random, d: bytearray, seeds: list[Seed]) -> None:
    a = rng.randrange(len(d))
    del d[a : a + rng.randint(1, 2048)]


def _header(rng: random.Random, d: bytearray, seeds: list[Seed]) -> None:
    """Flip bits or overwrite bytes among the first 48 (VOS / VO / VOL headers, container
    headers)."""
    end = min(len(d), 48)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(end)
        if rng.random() < 0.5:
            d[pos] ^= 1 << rng.randrange(8)
        else:
            d[pos] = rng.randrange(256)


def _start_code(rng: random.Random, d: bytearray, seeds: list[Seed]) -> None:
    """Change a start code's value, or damage the header bytes that follow it (VOP coding
    type, time increment, quantiser, f_code)."""
    codes = [i for i in _start_codes(d) if i + 4 < len(d)]
    if not codes:
        return _bit_flips(rng, d, seeds)
    i = rng.choice(codes) + 3
    if rng.random() < 0.4:
        d[i] = rng.choice(START_CODES)
    else:
        for _ in range(rng.randint(1, 3)):
            pos = min(i + rng.randint(1, 6), len(d) - 1)
            d[pos] ^= 1 << rng.randrange(8)


def _splice(rng: random.Random, d: bytearray, seeds: list[Seed]) -> None:
    other = rng.choice(seeds).data
    d[rng.randrange(len(d) + 1) :] = other[rng.randrange(len(other)) :]


def _foreign_header(rng: random.Random, d: bytearray, seeds: list[Seed]) -> None:
    """Insert the stream headers of another raw clip (another frame size, flags) before a
    start code: a change of resolution or coding tools mid-stream."""
    other = rng.choice([s for s in seeds if s.suffix == ".m4v"]).data
    header = other[: max(other.find(b"\x00\x00\x01\xb6"), 0)]
    at = rng.choice(_start_codes(d) or [0])
    d[at:at] = header


def _get_bits(d: bytearray, pos: int, n: int) -> int:
    """The `n` bits of `d` from bit `pos` (MSB first); IndexError past the end."""
    v = 0
    for b in range(pos, pos + n):
        v = (v << 1) | (d[b // 8] >> (7 - b % 8)) & 1
    return v


def _set_bits(d: bytearray, pos: int, n: int, v: int) -> None:
    """Write `v` into the `n` bits of `d` from bit `pos` (MSB first)."""
    for k, b in enumerate(range(pos, pos + n)):
        bit = (v >> (n - 1 - k)) & 1
        d[b // 8] = (d[b // 8] & ~(0x80 >> b % 8)) | (bit << (7 - b % 8))


def _vol_size_bit(d: bytearray) -> int | None:
    """Bit offset of video_object_layer_width in the first VOL header of a raw stream (ISO/IEC
    14496-2 6.2.3, rectangular shape), or None."""
    at = next((i for i in _start_codes(d) if i + 4 < len(d) and d[i + 3] & 0xF0 == 0x20), None)
    if at is None:
        return None
    pos = 8 * (at + 4)

    def read(n: int) -> int:
        nonlocal pos
        pos += n
        return _get_bits(d, pos - n, n)

    try:
        read(9)  # random_accessible_vol, video_object_type_indication
        if read(1):  # is_object_layer_identifier: verid, priority
            read(7)
        if read(4) == 15:  # aspect_ratio_info: extended PAR
            read(16)
        if read(1):  # vol_control_parameters: chroma_format, low_delay, vbv_parameters
            read(3)
            if read(1):
                read(79)
        if read(2) != 0:  # video_object_layer_shape: not rectangular
            return None
        resolution = read(18) >> 1  # marker, vop_time_increment_resolution, marker
        if read(1):  # fixed_vop_rate: fixed_vop_time_increment
            read(max(1, (resolution - 1).bit_length()))
        read(1)  # marker
        _get_bits(d, pos, 27)  # width, marker, height
    except IndexError:
        return None
    return pos


def _vol_size(rng: random.Random, d: bytearray, seeds: list[Seed]) -> None:
    """Rewrite the frame width and height of the VOL header: tiny, odd, off by one, large."""
    pos = _vol_size_bit(d)
    if pos is None:
        return _header(rng, d, seeds)
    sizes = [1, 2, 3, 7, 15, 16, 17, 33, 63, 64, 65, 255, 1023, 4097, 8191]
    _set_bits(d, pos, 13, rng.choice(sizes))  # width
    _set_bits(d, pos + 14, 13, rng.choice(sizes))  # height, after a marker bit


MUTATIONS: dict[str, Callable[[random.Random, bytearray, list[Seed]], None]] = {
    "bit_flips": _bit_flips,
    "overwrite": _overwrite,
    "truncate": _truncate,
    "duplicate": _duplicate,
    "delete": _delete,
    "header": _header,
    "start_code": _start_code,
    "splice": _splice,
    "foreign_header": _foreign_header,
    "vol_size": _vol_size,
}


def mutate(rng: random.Random, seeds: list[Seed]) -> tuple[Seed, bytes, list[str]]:
    """A seed and its data damaged by 1 to 3 stacked mutations, with their names."""
    seed = rng.choice(seeds)
    d, names = bytearray(seed.data), []
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
        if not d:
            break
        name = rng.choice(list(MUTATIONS))
        MUTATIONS[name](rng, d, seeds)
        names.append(name)
    return seed, bytes(d[:MAX_INPUT_BYTES]), names


# ---------------------------------------------------------------- calls and checks (worker side)


class Finding(Exception):
    """A wrong output or an inconsistency between calls (not an exception of coviar)."""


def _outcome(e: BaseException) -> str:
    """Name of an exception type, module-qualified unless it is a builtin."""
    t = type(e)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


class Exerciser:
    """Runs calls on one input, counting outcomes and collecting findings."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.findings: list[dict[str, str]] = []

    def call(
        self, fn: Callable[..., Any], *args: Any, check: Callable[[Any], None] | None = None
    ) -> Any:
        """`fn(path, *args)`; the result (checked by `check`), or None after an acceptable
        exception or a finding."""
        desc = f"{fn.__name__}{args!r}"
        try:
            result = fn(self.path, *args)
            if check is not None:
                check(result)
        except ACCEPTED as e:
            self.outcomes[f"{fn.__name__}: {_outcome(e)}"] += 1
            return None
        except Finding as e:
            self.report("wrong-output", desc, str(e))
            return None
        except Exception as e:  # every other exception is a finding
            tb = traceback.extract_tb(e.__traceback__)
            where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"
            self.report(
                f"exception {_outcome(e)} at {where}",
                desc,
                f"{e!r}\n{''.join(traceback.format_exception(e))}",
            )
            return None
        self.outcomes[f"{fn.__name__}: ok"] += 1
        return result

    def report(self, kind: str, call: str, detail: str) -> None:
        """Record a finding."""
        self.outcomes[f"FINDING {kind}"] += 1
        self.findings.append({"kind": kind, "call": call, "detail": detail[-4000:]})


def _check_count(n: Any) -> None:
    if not isinstance(n, int) or n < 0:
        raise Finding(f"count {n!r} is not an int >= 0")


def _check_lengths(lengths: Any, frames: int | None, gops: int | None) -> None:
    """`gop_lengths`: positive ints, one per GOP, at most `frames` in all (packets before the
    first key frame are in no GOP, and then it must have raised)."""
    if not isinstance(lengths, list) or not all(isinstance(n, int) and n > 0 for n in lengths):
        raise Finding(f"gop lengths {lengths!r} are not a list of ints > 0")
    if gops is not None and len(lengths) != gops:
        raise Finding(f"{len(lengths)} gop lengths for {gops} GOPs")
    if frames is not None and sum(lengths) != frames:
        raise Finding(f"gop lengths sum to {sum(lengths)}, not the {frames} frames")


def check_stack(out: Any, k: int, rep: int) -> None:
    """`out` is what `load_many` of `k` frames of representation `rep` must return."""
    if not isinstance(out, np.ndarray):
        raise Finding(f"returned {type(out).__name__}, not an ndarray")
    if out.dtype != DTYPES[rep] or out.ndim != 4 or out.shape[0] != k:
        raise Finding(f"dtype {out.dtype} shape {out.shape} for {k} frames of rep {rep}")
    _, h, w, c = out.shape
    if c != CHANNELS[rep] or h <= 0 or w <= 0:
        raise Finding(f"shape {out.shape} for rep {rep}")
    if rep == 1 and out.size and (np.abs(out[..., 0]).max() >= w or np.abs(out[..., 1]).max() >= h):
        raise Finding(f"motion vector beyond the frame ({w}x{h})")
    if rep == 2 and out.size and np.abs(out).max() > 255:
        raise Finding("residual beyond +-255")


def _warp_check(pic: np.ndarray, ref: np.ndarray, mv: np.ndarray, res: np.ndarray) -> None:
    """warp(ref, identity - mv) + res == pic where the frame has motion data (mv or res not 0)."""
    if not (mv.any() or res.any()):
        return  # frame 0 or no motion-vector side data: both all zeros by definition
    if not pic.shape[:2] == ref.shape[:2] == mv.shape[:2] == res.shape[:2]:
        raise Finding(f"sizes differ: {pic.shape} {ref.shape} {mv.shape} {res.shape}")
    h, w = mv.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    sx, sy = xs - mv[..., 0], ys - mv[..., 1]
    if sx.min() < 0 or sx.max() >= w or sy.min() < 0 or sy.max() >= h:
        raise Finding("source map outside the frame")
    if not np.array_equal(ref[sy, sx].astype(np.int32) + res, pic.astype(np.int32)):
        raise Finding("warp(reference, map) + residual != picture")


def exercise(path: str, op_seed: int) -> tuple[collections.Counter[str], list[dict[str, str]]]:
    """Run the calls chosen by `op_seed` on `path`; return (outcome counts, findings)."""
    import coviar

    rng = random.Random(op_seed)
    ex = Exerciser(path)
    frames = ex.call(coviar.get_num_frames, check=_check_count)
    gops = ex.call(coviar.get_num_gops, check=_check_count)
    ex.call(coviar.gop_lengths, check=lambda n: _check_lengths(n, frames, gops))
    g = rng.randrange(gops) if gops else 0
    if rng.random() < 0.1:
        g = (gops or 0) + rng.randint(0, 2)  # out of range
    per_gop = max(1, (frames or 8) // max(gops or 1, 1))
    idx = [rng.randrange(per_gop + 1) for _ in range(rng.randint(1, 4))]
    results: dict[tuple[int, bool], np.ndarray] = {}
    for rep in (0, 1, 2):
        for acc in (False, True):
            out = ex.call(
                coviar.load_many,
                g,
                idx,
                rep,
                acc,
                check=lambda o, rep=rep: check_stack(o, len(idx), rep),
            )
            if out is not None:
                results[rep, acc] = out
    sizes = {r.shape[1:3] for r in results.values()}
    if len(sizes) > 1:
        ex.report(
            "inconsistent", f"load_many{(g, idx)}", f"representations differ in size: {sizes}"
        )
    if results:
        (rep, acc), many = rng.choice(sorted(results.items(), key=lambda kv: kv[0]))
        j = rng.randrange(len(idx))

        def same(one: Any) -> None:
            if not np.array_equal(one, many[j]):
                raise Finding(f"load differs from load_many{(g, idx, rep, acc)}[{j}]")

        n = len(ex.findings)
        if ex.call(coviar.load, g, idx[j], rep, acc, check=same) is None and len(ex.findings) == n:
            ex.report("inconsistent", f"load{(g, idx[j], rep, acc)}", "raised; load_many passed")
    for acc in (False, True):
        js = [j for j, i in enumerate(idx) if i > 0 and (1, acc) in results and (2, acc) in results]
        if js:
            j = rng.choice(js)
            ref_i = 0 if acc else idx[j] - 1
            n = len(ex.findings)
            pics = ex.call(
                coviar.load_many, g, [ref_i, idx[j]], 0, False, check=lambda o: check_stack(o, 2, 0)
            )
            if pics is None and len(ex.findings) == n:
                ex.report(
                    "inconsistent",
                    f"load_many{(g, [ref_i, idx[j]], 0)}",
                    "pictures failed; motion vectors and residuals passed",
                )
            if pics is None:
                continue
            try:
                _warp_check(pics[1], pics[0], results[1, acc][j], results[2, acc][j])
            except Finding as e:
                ex.report("inconsistent", f"warp check {(g, idx[j], acc)}", str(e))
    for bad in ((g, 10**6), (g, -1), (-1, 0)):
        rep, acc = rng.randrange(3), rng.random() < 0.5

        def must_raise(out: Any) -> None:
            raise Finding(f"returned {type(out).__name__} for out-of-range indices")

        ex.call(coviar.load, *bad, rep, acc, check=must_raise)
    return ex.outcomes, ex.findings


def worker() -> None:
    """Answer one JSON line on stdout per JSON request line on stdin."""
    import faulthandler

    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else printed on stdout lands in the stderr log
    faulthandler.enable()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # a runaway allocation becomes a MemoryError (a finding), not a threat to the machine
    resource.setrlimit(resource.RLIMIT_AS, (MAX_WORKER_BYTES, MAX_WORKER_BYTES))
    import coviar  # noqa: F401 - imported before the first input, out of its time

    for line in sys.stdin:
        req = json.loads(line)
        outcomes, findings = exercise(req["path"], req["op_seed"])
        proto.write(json.dumps({"outcomes": outcomes, "findings": findings}) + "\n")
        proto.flush()


# ---------------------------------------------------------------- campaign (parent side)


class Worker:
    """A worker process with a per-input deadline."""

    def __init__(self, workdir: Path) -> None:
        self.log = workdir / "worker-stderr.log"
        self.log.write_bytes(b"")
        err = open(self.log, "ab")  # append mode: the parent truncates it before each input
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        err.close()
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def run(self, path: Path, op_seed: int, timeout: float) -> dict[str, Any]:
        """The worker's answer for one input, or {"crash": ...} / {"hang": ...}."""
        assert self.proc.stdin is not None
        os.truncate(self.log, 0)
        try:
            self.proc.stdin.write(json.dumps({"path": str(path), "op_seed": op_seed}) + "\n")
            self.proc.stdin.flush()
            line = self.lines.get(timeout=timeout)
        except BrokenPipeError:
            line = None
        except queue.Empty:
            self.proc.send_signal(signal.SIGABRT)  # faulthandler writes where it is stuck
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.stop()
            return {"hang": f"no answer within {timeout} s", "log": self._log_tail()}
        if line is None:
            code = self.proc.wait()
            return {"crash": f"worker exited with status {code}", "log": self._log_tail()}
        return json.loads(line)

    def _log_tail(self) -> str:
        return self.log.read_bytes()[-6000:].decode(errors="replace")

    def stop(self) -> None:
        """Kill the worker (it is this process's own child)."""
        self.proc.kill()
        self.proc.wait()


@dataclass
class Summary:
    """What a campaign did and found."""

    inputs: int = 0
    seconds: float = 0.0
    calls: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    findings: dict[str, list[str]] = field(default_factory=dict)  # signature -> saved inputs
    restarts: int = 0


def _signature(finding: dict[str, str]) -> str:
    """What tells two findings apart: their kind and, for crashes and hangs, the exit status and
    the innermost frame of faulthandler's dump (most recent call first)."""
    kind = finding["kind"]
    if kind in ("crash", "hang"):
        frames = [ln.strip() for ln in finding["detail"].splitlines() if ln.startswith("  File")]
        where = frames[0] if frames else "no Python frame"
        return f"{kind}: {finding['call']}: {where}"
    if kind in ("wrong-output", "inconsistent"):
        return f"{kind}: {finding['detail'].splitlines()[0][:80]}"
    return kind


def _log(message: str) -> None:
    print(message, flush=True)


def _save(out: Path, finding: dict[str, str], data: bytes, meta: dict[str, Any]) -> str:
    """Write a finding's input and its description under `out`; return the input's path."""
    name = f"{hashlib.sha1(meta['signature'].encode()).hexdigest()[:10]}_{meta['index']}"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}{Path(meta['clip_file']).suffix}"
    path.write_bytes(data)
    (out / f"{name}.json").write_text(json.dumps({**meta, **finding}, indent=1))
    return str(path)


def fuzz(
    seconds: float,
    seed: int = 0,
    count: int = 0,
    out: Path | None = None,
    timeout: float = 10.0,
    replay: Sequence[tuple[int, int]] = (),
    log: Callable[[str], None] = _log,
) -> Summary:
    """Fuzz for `seconds` (and at most `count` inputs, 0: no limit): first the inputs `replay`
    (pairs of campaign seed and input number, as a finding's .json names them), then inputs 0, 1,
    2, ... of campaign `seed`. Save the inputs of findings under `out` (at most 5 per signature);
    return the summary."""
    out = Path(out or Path(tempfile.gettempdir()) / "coviar_fuzz_findings")
    summary = Summary()
    start = last_log = time.monotonic()
    schedule = itertools.chain(replay, ((seed, i) for i in itertools.count()))
    with tempfile.TemporaryDirectory(prefix="coviar_fuzz_") as tmp:
        work = Path(tmp)
        seeds = make_seeds(work)
        w = Worker(work)
        try:
            for campaign, i in schedule:
                if time.monotonic() - start >= seconds or (count and summary.inputs >= count):
                    break
                rng = random.Random(f"{campaign}:{i}")
                parent, data, names = mutate(rng, seeds)
                op_seed = rng.getrandbits(32)
                path = work / f"input{parent.suffix}"
                path.write_bytes(data)
                answer = w.run(path, op_seed, timeout)
                if "crash" in answer or "hang" in answer:
                    kind = "crash" if "crash" in answer else "hang"
                    findings = [{"kind": kind, "call": answer[kind], "detail": answer["log"]}]
                    w = Worker(work)
                    summary.restarts += 1
                    summary.outcomes[f"FINDING {kind}"] += 1
                else:
                    findings = answer["findings"]
                    summary.outcomes.update(answer["outcomes"])
                    summary.calls += sum(answer["outcomes"].values())
                for f in findings:
                    sig = _signature(f)
                    saved = summary.findings.setdefault(sig, [])
                    if not saved:
                        log(f"NEW FINDING [{sig}] input {campaign}:{i} ({parent.name}: {names})")
                    if len(saved) < 5:
                        meta = {
                            "signature": sig,
                            "seed": campaign,
                            "index": i,
                            "op_seed": op_seed,
                            "clip": parent.name,
                            "clip_file": f"{parent.name}{parent.suffix}",
                            "mutations": names,
                        }
                        saved.append(_save(out, f, data, meta))
                summary.inputs += 1
                if time.monotonic() - last_log > 60:
                    last_log = time.monotonic()
                    log(
                        f"  {summary.inputs} inputs, {summary.calls} calls, "
                        f"{len(summary.findings)} finding signatures, {last_log - start:.0f} s"
                    )
        finally:
            w.stop()
    summary.seconds = time.monotonic() - start
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command line: a campaign (exit status 1 if anything was found), a replay, or a worker."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600, help="time budget")
    ap.add_argument("--seed", type=int, default=0, help="campaign seed (inputs are reproducible)")
    ap.add_argument("--count", type=int, default=0, help="stop after this many inputs (0: none)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per input: a hang")
    ap.add_argument("--out", type=Path, help="folder for the inputs of findings")
    ap.add_argument(
        "--replay",
        action="append",
        default=[],
        metavar="SEED:INDEX",
        help="run this input of that campaign first (repeatable)",
    )
    ap.add_argument("--repro", type=Path, help="replay one saved input in this process")
    ap.add_argument("--op-seed", type=int, default=0, help="the calls to replay (see its .json)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker()
        return 0
    if args.repro:
        outcomes, findings = exercise(str(args.repro), args.op_seed)
        print(json.dumps({"outcomes": outcomes, "findings": findings}, indent=1))
        return 1 if findings else 0
    replay = [(int(c), int(i)) for c, i in (r.split(":") for r in args.replay)]
    s = fuzz(args.seconds, args.seed, args.count, args.out, args.timeout, replay)
    print(
        f"\n{s.inputs} inputs, {s.calls} calls in {s.seconds:.0f} s "
        f"({s.inputs / max(s.seconds, 1e-9):.1f} inputs/s), {s.restarts} worker restarts"
    )
    for name, n in sorted(s.outcomes.items()):
        print(f"  {n:8d}  {name}")
    print(f"{len(s.findings)} finding signatures" + (":" if s.findings else ""))
    for sig, saved in s.findings.items():
        print(f"  [{sig}] e.g. {saved[0]}")
    return 1 if s.findings else 0


if __name__ == "__main__":
    sys.exit(main())
