"""A local, self-contained web viewer for 3DGS `.ply` files.

The server validates the file with `splatting.ply.read_ply`, applies the activations through `Gaussians` (so the
viewer shows exactly what our renderer would) and hands the page a compact float32 buffer; the page only sorts and
draws. It binds to 127.0.0.1 only, answers only requests addressed to 127.0.0.1 or localhost (the Host header:
no DNS rebinding) and loads nothing from the internet.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import webbrowser
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import torch

from splatting.gaussians import SH_C0
from splatting.ply import PLY_FRAMES
from splatting.projection import covariances3d

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
STATIC_FILES = {"/": ("index.html", "text/html; charset=utf-8"),
                "/index.html": ("index.html", "text/html; charset=utf-8"),
                "/viewer.js": ("viewer.js", "text/javascript; charset=utf-8")}
FLOATS_PER_SPLAT = 13  # center xyz, rgba, 3D covariance (xx, xy, xz, yy, yz, zz)
# Log-scales above this are refused: exp(2 * 30) ~ 1e26 is the largest covariance the page's float32 projection
# (times focal^2 ~ 1e6) still handles without overflowing to infinity. Real splats stay far below it.
MAX_LOG_SCALE = 30.0
# The page is served only to these Host names: a web page elsewhere cannot reach it by DNS rebinding (pointing a
# name it controls at 127.0.0.1), because its requests carry its own name in the Host header.
ALLOWED_HOSTS = ("127.0.0.1", "localhost")


class ViewerError(ValueError):
    """The viewer cannot start (e.g. the port is taken); the message names the option."""

log = logging.getLogger("gsgan.viewer")


@dataclass
class Scene:
    """What the page receives: either packed splats or the reason the file was refused."""
    meta: dict
    payload: bytes = b""


def pack_splats(path: str, frame: str = "opencv") -> Scene:
    """Read and validate a splat .ply; return packed activated splats, or an error Scene (never raises for bad files)."""
    from splatting.ply import read_ply  # lazy: keeps `--help` fast

    name = os.path.basename(path)
    try:
        g = read_ply(path)
        g.validate()
    except (OSError, ValueError) as exc:
        reason = f"{name} is not a valid 3D Gaussian splat .ply: {exc}"
        return Scene(meta={"error": reason, "file": name})
    too_large = g.log_scales[0].amax(dim=-1) > MAX_LOG_SCALE
    if bool(too_large.any()):
        reason = (f"{name}: {int(too_large.sum()):,} of {g.num_gaussians:,} splats have log-scales up to "
                  f"{float(g.log_scales.max()):g} (scale_0..2 above {MAX_LOG_SCALE:g}, i.e. sizes beyond 1e13, would "
                  f"overflow the covariances to infinity); refusing to show the file")
        return Scene(meta={"error": reason, "file": name})
    with torch.no_grad():
        g = g.map(torch.Tensor.double)
        means = g.means[0]  # single scene: [N, ...]
        cov = covariances3d(g)[0]
        rgb = torch.clamp(SH_C0 * g.sh[0, :, 0, :] + 0.5, 0.0, 1.0)  # degree-0 colour, as splat viewers show it
        alpha = g.opacities()[0][:, None]
        iu = torch.tensor([0, 0, 0, 1, 1, 2]), torch.tensor([0, 1, 2, 1, 2, 2])
        packed = torch.cat([means, rgb, alpha, cov[:, iu[0], iu[1]]], dim=1).float().numpy()
    means = means.numpy()
    center, radius = _robust_bounds(means, alpha[:, 0].numpy())
    meta = {"file": name, "count": int(means.shape[0]), "frame": frame,
            "center": center.tolist(), "radius": radius, "floats_per_splat": FLOATS_PER_SPLAT}
    return Scene(meta=meta, payload=np.ascontiguousarray(packed, dtype="<f4").tobytes())


def _robust_bounds(means: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and radius of the visible object, ignoring faint splats and far outliers (e.g. a background shell)."""
    if means.shape[0] == 0:
        return np.zeros(3), 1.0
    keep = means[alpha > 0.05] if (alpha > 0.05).sum() >= 16 else means
    center = np.median(keep, axis=0)
    dist = np.linalg.norm(keep - center, axis=1)
    radius = float(np.quantile(dist, 0.9)) if dist.size else 1.0
    return center, max(radius, 1e-3)


def allowed_host(header: str | None) -> bool:
    """True for a Host header naming the loopback server ('127.0.0.1[:port]' or 'localhost[:port]')."""
    if not header:
        return False
    name, _, port = header.strip().rpartition(":") if ":" in header else (header.strip(), "", "")
    return name.lower() in ALLOWED_HOSTS and (port == "" or port.isdigit())


def make_handler(scene: Scene):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            if not allowed_host(self.headers.get("Host")):
                self._send(HTTPStatus.FORBIDDEN, "text/plain", b"forbidden: the viewer answers only to 127.0.0.1 "
                                                               b"and localhost")
                return
            route = self.path.split("?", 1)[0]
            if route in STATIC_FILES:
                fname, ctype = STATIC_FILES[route]
                with open(os.path.join(STATIC_DIR, fname), "rb") as f:
                    self._send(HTTPStatus.OK, ctype, f.read())
            elif route == "/scene.json":
                self._send(HTTPStatus.OK, "application/json", json.dumps(scene.meta).encode())
            elif route == "/scene.bin" and scene.payload:
                self._send(HTTPStatus.OK, "application/octet-stream", scene.payload)
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found")

        def _send(self, status, ctype, body: bytes):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):  # route request logs to logging, not stderr
            log.debug("%s - %s", self.address_string(), fmt % args)

    return Handler


def start_server(path: str, port: int = 8000, frame: str = "opencv") -> tuple[ThreadingHTTPServer, Scene]:
    """Start serving `path` on 127.0.0.1:port (0 = any free port) in a background thread."""
    if frame not in PLY_FRAMES:
        raise ValueError(f"frame must be one of {PLY_FRAMES}, got {frame!r}")
    try:  # bind first: a taken port is refused before a large file is read
        server = ThreadingHTTPServer(("127.0.0.1", port), BaseHTTPRequestHandler)
    except OSError as error:
        import errno

        if error.errno == errno.EADDRINUSE:
            raise ViewerError(f"--port {port}: 127.0.0.1:{port} is already in use (another viewer?); pick another "
                              f"port, or --port 0 for a free one") from None
        raise ViewerError(f"--port {port}: cannot listen on 127.0.0.1:{port} ({error.strerror or error})") from None
    try:
        scene = pack_splats(path, frame)
    except BaseException:
        server.server_close()
        raise
    server.RequestHandlerClass = make_handler(scene)
    threading.Thread(target=server.serve_forever, name="gsgan-viewer", daemon=True).start()
    return server, scene


def serve(path: str, port: int = 8000, frame: str = "opencv", open_browser: bool = True) -> int:
    """Blocking entry point used by `viewer.py` and `gen_videos.py view`; returns a process exit code."""
    server, scene = start_server(path, port, frame)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    if "error" in scene.meta:
        print(f"error: {scene.meta['error']}")
        print(f"(the page at {url} shows the same message; Ctrl+C to stop)")
    else:
        print(f"serving {scene.meta['count']:,} splats from {path} at {url}  (Ctrl+C to stop)")
    if open_browser:
        webbrowser.open(url)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
    return 1 if "error" in scene.meta else 0
