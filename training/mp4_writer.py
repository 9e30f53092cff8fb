"""All-or-nothing H.264 mp4 files: frames piped to an ffmpeg process we own, the result renamed into place only
when ffmpeg says it succeeded.

Why not imageio-ffmpeg's writer: it never checks ffmpeg's exit status, so a rejected bitrate or a full disk gave
a 0-byte "video" that then replaced a good one; and on SIGTERM its ffmpeg outlived Python and finished a hidden
temp file. Here the exit status and the output size are checked, stderr is kept for the error message, and any
exception (KeyboardInterrupt included) kills and reaps ffmpeg before the temp file is removed. Stop signals wait
while ffmpeg starts and while the temp file is created, so that no interrupt falls between making either and
recording it.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import tempfile
from fractions import Fraction

import numpy as np

from torch_utils.run_control import stop_signals_deferred

MIN_FPS, MAX_FPS = 0.1, 1000.0
MIN_BITRATE, MAX_BITRATE = 1_000, 1_000_000_000  # bits/s; libx264 produces no packets below ~1 kbit/s
_BITRATE = re.compile(r"(\d+(?:\.\d+)?)([kKmMgG]?)")
_UNITS = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


class VideoError(ValueError):
    """A bad video option, or an encoder that failed (the message says which file and why)."""


def check_fps(fps) -> float:
    """fps as a float in [MIN_FPS, MAX_FPS]; VideoError otherwise."""
    try:
        value = float(fps)
    except (TypeError, ValueError):
        value = math.nan
    if not MIN_FPS <= value <= MAX_FPS:  # also refuses NaN
        raise VideoError(f"fps: expected a number from {MIN_FPS:g} to {MAX_FPS:g}, got {fps!r}")
    return value


def check_bitrate(bitrate) -> str:
    """An ffmpeg bitrate like 10M, 800k or 2500000 between 1k and 1G bits/s; VideoError otherwise."""
    match = _BITRATE.fullmatch(str(bitrate).strip())
    bits = float(match[1]) * _UNITS[match[2].lower()] if match else math.nan
    if not MIN_BITRATE <= bits <= MAX_BITRATE:
        raise VideoError(f"bitrate: expected bits per second like 10M, 800k or 2500000 (1k to 1G), got {bitrate!r}")
    return str(bitrate).strip()


def ffmpeg_executable() -> str:
    """The ffmpeg binary bundled with imageio-ffmpeg (or the one IMAGEIO_FFMPEG_EXE names)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


class AtomicMp4Writer:
    """H.264 (yuv420p) mp4 written to a hidden temp file next to `path` and renamed into place only on success.

    Use as a context manager: an exception or KeyboardInterrupt inside the block, or an encoder that fails, removes
    the temp file and leaves any existing `path` untouched. Every frame must have the size of the first.
    """

    def __init__(self, path: str, fps: float = 60, bitrate: str = "10M"):
        self.path = os.fspath(path)
        self.fps, self.bitrate = check_fps(fps), check_bitrate(bitrate)
        self._tmp: str | None = None
        self._process: subprocess.Popen | None = None
        self._stderr = None
        self._size: tuple[int, int] | None = None
        self.frames_written = 0

    def __enter__(self) -> "AtomicMp4Writer":
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            with stop_signals_deferred():  # an interrupt cannot fall between creating the temp file and naming it
                fd, self._tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".mp4", dir=directory)
                os.close(fd)
        except BaseException:  # e.g. the deferred Ctrl+C: __exit__ will not run for a failed __enter__
            self._remove_tmp()
            raise
        return self

    def _start(self, width: int, height: int) -> None:
        fps = Fraction(self.fps).limit_denominator(1001)
        self._stderr = tempfile.TemporaryFile()
        # Deferred stop signals: a SIGTERM while Popen waits for the exec would otherwise raise before
        # self._process names the child, and nothing would kill it; the first ffmpeg_executable() runs
        # `ffmpeg -version`, which an interrupted subprocess.call kills but leaves unreaped.
        with stop_signals_deferred():
            cmd = [ffmpeg_executable(), "-hide_banner", "-nostats", "-loglevel", "error", "-y",
                   "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
                   "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-b:v", self.bitrate, "-movflags", "+faststart",
                   "-f", "mp4", self._tmp]
            # Own session: a Ctrl+C in the terminal reaches only Python, which then stops ffmpeg itself.
            self._process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                             stderr=self._stderr, start_new_session=True)
        self._size = (width, height)

    def _failure(self, what: str) -> VideoError:
        self._stderr.seek(0)
        lines = [line.strip() for line in self._stderr.read().decode(errors="replace").splitlines() if line.strip()]
        detail = f": {lines[-1]}" if lines else ""
        return VideoError(f"{self.path}: {what}{detail}; the previous file (if any) was left unchanged")

    def append(self, frame: np.ndarray) -> None:
        """frame: uint8 [H, W, 3]; odd sizes are padded by one edge pixel (yuv420p needs even sizes)."""
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"AtomicMp4Writer.append: expected uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
        h, w = frame.shape[:2]
        if h % 2 or w % 2:
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        if self._process is None:
            self._start(frame.shape[1], frame.shape[0])
        elif (frame.shape[1], frame.shape[0]) != self._size:
            raise ValueError(f"AtomicMp4Writer.append: frame {frame.shape[1]}x{frame.shape[0]} differs from the "
                             f"first frame's {self._size[0]}x{self._size[1]}")
        try:
            self._process.stdin.write(np.ascontiguousarray(frame).tobytes())
        except (BrokenPipeError, OSError):
            self._process.wait()
            raise self._failure(f"the encoder stopped (exit status {self._process.returncode})") from None
        self.frames_written += 1

    def _finish(self) -> None:
        """Close ffmpeg's input, wait for it, and check that it wrote a video."""
        try:
            self._process.stdin.close()
        except OSError:  # a dead encoder: its exit status says why
            pass
        status = self._process.wait()
        if status != 0:
            raise self._failure(f"the encoder failed (exit status {status})")
        if os.path.getsize(self._tmp) == 0:
            raise self._failure("the encoder wrote nothing")

    def _kill(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()  # reaped: no defunct ffmpeg
        try:
            self._process.stdin.close()
        except OSError:
            pass

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                if self.frames_written == 0:
                    raise ValueError(f"{self.path}: no frames to write")
                self._finish()
                os.chmod(self._tmp, 0o644)
                os.replace(self._tmp, self.path)
        finally:
            self._kill()
            if self._stderr is not None:
                self._stderr.close()
            self._remove_tmp()
        return False

    def _remove_tmp(self) -> None:
        if self._tmp is not None and os.path.exists(self._tmp):
            os.remove(self._tmp)
