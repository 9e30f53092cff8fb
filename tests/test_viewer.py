"""The local splat viewer: server validation and a real headless-Chromium render of a generated .ply."""
import json
import math
import os
import queue
import shutil
import subprocess
import sys
import threading
import urllib.request

import numpy as np
import pytest
import torch

from splatting import Gaussians
from splatting.ply import write_ply
from viewer.server import pack_splats, start_server

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic", "--use-angle=swiftshader",
                  "--enable-unsafe-swiftshader", "--hide-scrollbars"]
BACKGROUND_RGB = np.array([30, 30, 30])  # viewer.js BACKGROUND (0.118 * 255)


def _blob(n=3000, seed=0) -> Gaussians:
    """A coloured ellipsoidal blob around the origin, like a tiny generated head."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(1, n, 3, generator=g) * torch.tensor([0.18, 0.22, 0.16])
    sh = (torch.rand(1, n, 1, 3, generator=g) - 0.5) * 3.0
    return Gaussians(means=means, log_scales=torch.full((1, n, 3), math.log(0.02)),
                     quats=torch.randn(1, n, 4, generator=g), opacity_logits=torch.full((1, n), 2.0), sh=sh)


@pytest.fixture
def blob_ply(tmp_path):
    path = tmp_path / "blob.ply"
    write_ply(str(path), _blob())
    return str(path)


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read()


def test_server_serves_packed_scene_on_loopback(blob_ply):
    server, scene = start_server(blob_ply, port=0)
    try:
        host, port = server.server_address
        assert host == "127.0.0.1"
        status, body = _get(f"http://127.0.0.1:{port}/scene.json")
        meta = json.loads(body)
        assert status == 200 and meta["count"] == 3000 and "error" not in meta
        _, payload = _get(f"http://127.0.0.1:{port}/scene.bin")
        packed = np.frombuffer(payload, dtype="<f4").reshape(3000, meta["floats_per_splat"])
        assert np.allclose(packed[:, :3], _blob().means[0].numpy(), atol=1e-6)
        assert ((packed[:, 3:7] >= 0) & (packed[:, 3:7] <= 1)).all()  # activated colour and opacity
        _, html = _get(f"http://127.0.0.1:{port}/")
        assert b"viewer.js" in html and b"http" not in html.replace(b"http://127.0.0.1", b"")  # no CDN
    finally:
        server.shutdown()


@pytest.mark.parametrize("content, expected", [
    (b"not a ply at all", "not a valid 3D Gaussian splat .ply"),
    (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nproperty float z\n"
     b"end_header\n0 0 0\n", "not a valid 3D Gaussian splat .ply"),
])
def test_invalid_files_are_refused_with_a_clear_message(tmp_path, content, expected):
    bad = tmp_path / "bad.ply"
    bad.write_bytes(content)
    scene = pack_splats(str(bad))
    assert expected in scene.meta["error"] and "bad.ply" in scene.meta["error"]
    assert scene.payload == b""


def _first_line(proc, timeout):
    """The first line `proc` prints, read in a thread so a silent, still-running server fails the test in `timeout`
    seconds instead of blocking it."""
    lines = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"the viewer printed nothing within {timeout} s")


def test_cli_prints_the_refusal_on_the_console(tmp_path):
    bad = tmp_path / "mesh.ply"
    bad.write_bytes(b"garbage")
    proc = subprocess.Popen([sys.executable, "-m", "viewer", str(bad), "--port", "0", "--no-browser"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        first_line = _first_line(proc, timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert first_line.startswith("error: mesh.ply is not a valid 3D Gaussian splat .ply")


def _chromium(args, tmp_path, url):
    if CHROMIUM is None:
        pytest.skip("headless Chromium not found (Debian: apt-get install chromium; _scripts/test.sh installs it "
                    "when CI=true and it runs as root)")
    cmd = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}",
           "--window-size=480,360", "--virtual-time-budget=20000", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_browser_renders_a_non_blank_first_frame(blob_ply, tmp_path):
    server, _ = start_server(blob_ply, port=0)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        dom = _chromium(["--dump-dom"], tmp_path, url).stdout
        assert 'data-state="ready"' in dom, dom[-2000:]
        shot = tmp_path / "shot.png"
        _chromium([f"--screenshot={shot}"], tmp_path, url)
    finally:
        server.shutdown()
    from PIL import Image
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    covered = (np.abs(rgb - BACKGROUND_RGB).sum(-1) > 24).mean()
    assert 0.03 < covered < 0.8, f"object covers {covered:.1%} of the canvas"


def test_browser_shows_the_refusal_in_the_page(tmp_path):
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"definitely not a ply")
    server, _ = start_server(str(bad), port=0)
    try:
        dom = _chromium(["--dump-dom"], tmp_path, f"http://127.0.0.1:{server.server_address[1]}/").stdout
    finally:
        server.shutdown()
    assert 'data-state="error"' in dom and "not a valid 3D Gaussian splat .ply" in dom


def _get_with_host(port, host):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", "/scene.json", skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_server_answers_only_to_loopback_host_names(blob_ply):
    """DNS rebinding: a page on evil.example resolved to 127.0.0.1 sends Host: evil.example:PORT."""
    server, _ = start_server(blob_ply, port=0)
    try:
        port = server.server_address[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", "127.0.0.1"):
            assert _get_with_host(port, host)[0] == 200, host
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", "", None,
                     f"localhost:{port}x"):
            status, body = _get_with_host(port, host)
            assert status == 403 and b"127.0.0.1" in body and b"count" not in body, host
    finally:
        server.shutdown()
        server.server_close()


def test_port_in_use_is_one_line_error(blob_ply, tmp_path):
    from click.testing import CliRunner

    from viewer.cli import view
    from viewer.server import ViewerError

    server, _ = start_server(blob_ply, port=0)
    try:
        port = server.server_address[1]
        with pytest.raises(ViewerError, match=f"--port {port}: 127.0.0.1:{port} is already in use"):
            start_server(blob_ply, port=port)
        result = CliRunner().invoke(view, [blob_ply, "--port", str(port), "--no-browser"])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: --port") and "already in use" in lines[0]
    finally:
        server.shutdown()
        server.server_close()


def test_huge_scales_are_refused_not_shipped_as_infinite_covariances(tmp_path):
    g = _blob(n=100)
    g.log_scales[0, :3, 1] = 60.0  # exp(60)^2 overflows float32
    path = tmp_path / "huge.ply"
    write_ply(str(path), g)
    scene = pack_splats(str(path))
    assert scene.payload == b""
    assert scene.meta["error"].startswith("huge.ply: 3 of 100 splats have log-scales up to 60")
    fine = tmp_path / "fine.ply"
    g.log_scales[0, :3, 1] = 25.0  # large but representable: packed finite
    write_ply(str(fine), g)
    scene = pack_splats(str(fine))
    assert "error" not in scene.meta
    assert np.isfinite(np.frombuffer(scene.payload, dtype="<f4")).all()
