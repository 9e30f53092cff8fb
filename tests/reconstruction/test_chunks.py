"""pixelSplat chunk format: round trip, every malformed-input path, cameras, images, the crop shim and the flip."""
from __future__ import annotations

import io
import json
import math
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from reconstruction.chunks import (ChunkError, ChunkStore, decode_image, flip_views, fov_degrees, load_chunk,
                                   pack_cameras, parse_cameras, read_index, rescale_and_crop, write_chunks)
from reconstruction.views import to_cameras
from splatting import Gaussians, render
from splatting.cameras import look_at, rigid_inverse


# --------------------------------------------------------------------------------------------------------------
# Test data (shared with test_dataset.py).

def encode(array: np.ndarray, fmt: str = "PNG") -> torch.Tensor:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def random_rotation(generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def make_example(key: str, num_frames: int, height: int = 8, width: int = 12, seed: int = 0, fmt: str = "PNG",
                 fx: float = 0.9, fy: float = 1.2) -> dict:
    """A scene of random frames, cameras on a line with random orientations."""
    generator = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4, dtype=torch.float64).repeat(num_frames, 1, 1)
    for i in range(num_frames):
        c2w[i, :3, :3] = random_rotation(generator)
        c2w[i, :3, 3] = torch.tensor([0.1 * i, 0.0, -2.0]) + 0.01 * torch.randn(3, generator=generator,
                                                                                   dtype=torch.float64)
    k = torch.tensor([[fx, 0, 0.48], [0, fy, 0.53], [0, 0, 1]]).repeat(num_frames, 1, 1)
    rng = np.random.default_rng(seed)
    images = [encode(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), fmt) for _ in range(num_frames)]
    return {"key": key, "url": f"https://example.com/{key}", "timestamps": torch.arange(num_frames) * 33_366,
            "cameras": pack_cameras(c2w, k), "images": images}


def save_raw(path, obj) -> str:
    torch.save(obj, str(path))
    return str(path)


# --------------------------------------------------------------------------------------------------------------
# Round trip and writing.

def test_round_trip_exact(tmp_path):
    examples = [make_example(f"{i:016x}", 3 + i, seed=i, fmt="JPEG" if i % 2 else "PNG") for i in range(5)]
    paths = write_chunks(tmp_path, "train", examples, max_chunk_bytes=2 * sum(
        im.numel() for im in examples[0]["images"]))
    assert len(paths) >= 2 and all(os.path.isfile(p) for p in paths)
    assert [os.path.basename(p) for p in paths] == [f"{i:06d}.torch" for i in range(len(paths))]
    index = read_index(tmp_path, "train")
    assert list(index) == [e["key"] for e in examples]
    with open(tmp_path / "train" / "index.json") as handle:
        assert json.load(handle) == index
    store = ChunkStore(tmp_path, "train")
    assert store.keys() == [e["key"] for e in examples]
    for original in examples:
        back = store.get(original["key"])
        assert back["url"] == original["url"]
        assert back["cameras"].dtype == torch.float32 and torch.equal(back["cameras"], original["cameras"])
        assert back["timestamps"].dtype == torch.int64 and torch.equal(back["timestamps"], original["timestamps"])
        assert len(back["images"]) == len(original["images"])
        for a, b in zip(back["images"], original["images"]):
            assert a.dtype == torch.uint8 and torch.equal(a, b)
    # Every chunk stays within the byte budget unless it holds a single example.
    for path in paths:
        chunk = load_chunk(path)
        size = sum(im.numel() for e in chunk for im in e["images"])
        assert len(chunk) == 1 or size <= 2 * sum(im.numel() for im in examples[0]["images"])


def test_write_rejects_duplicate_keys_and_bad_examples(tmp_path):
    with pytest.raises(ChunkError, match="example 1: duplicate key 'a'"):
        write_chunks(tmp_path, "train", [make_example("a", 2), make_example("a", 2)])
    bad = make_example("b", 3)
    bad["cameras"] = bad["cameras"][:, :17]
    with pytest.raises(ChunkError, match=r"example 0 \(key 'b'\): field 'cameras': expected a float tensor "
                                         r"\[N, 18\], got \[3, 17\]"):
        write_chunks(tmp_path, "test", [bad])
    assert not os.path.exists(tmp_path / "test" / "index.json")
    with pytest.raises(ChunkError, match="max_chunk_bytes"):
        write_chunks(tmp_path, "train", [], max_chunk_bytes=0)


def test_rewrite_replaces_index(tmp_path):
    write_chunks(tmp_path, "train", [make_example("a", 2), make_example("b", 2)])
    write_chunks(tmp_path, "train", [make_example("c", 2)])
    assert read_index(tmp_path, "train") == {"c": "000000.torch"}


# --------------------------------------------------------------------------------------------------------------
# Malformed chunks.

def _example_with(**changes) -> dict:
    example = make_example("abc", 5)
    example.update(changes)
    return example


@pytest.mark.parametrize("changes, message", [
    ({"cameras": torch.zeros(5, 17)}, r"example 0 \(key 'abc'\): field 'cameras': expected a float tensor "
                                      r"\[N, 18\], got \[5, 17\]"),
    ({"cameras": torch.zeros(5, 18, dtype=torch.int64)}, "field 'cameras': expected a float tensor"),
    ({"cameras": torch.full((5, 18), float("nan"))}, "field 'cameras': contains non-finite"),
    ({"timestamps": torch.arange(4)}, r"field 'timestamps': expected an integer tensor \[5\]"),
    ({"timestamps": torch.zeros(5)}, "field 'timestamps'"),
    ({"url": None}, "field 'url': expected a str"),
    ({"key": ""}, "example 0: field 'key': expected a non-empty str"),
    ({"key": 7}, "field 'key'"),
    ({"images": "nope"}, "field 'images': expected a list of 5"),
    ({"images": [torch.zeros(3, dtype=torch.uint8)] * 4}, "field 'images': expected a list of 5 .* got 4 entries"),
    ({"images": [torch.zeros(3, dtype=torch.float32)] * 5}, "field 'images': frame 0: expected a non-empty uint8"),
    ({"images": [torch.zeros(2, 3, dtype=torch.uint8)] * 5}, "frame 0: expected a non-empty uint8 1-D"),
])
def test_load_rejects_malformed_fields(tmp_path, changes, message):
    path = save_raw(tmp_path / "000000.torch", [make_example("ok", 2), _example_with(**changes)])
    with pytest.raises(ChunkError, match=message.replace("example 0", "example 1")):
        load_chunk(path)


def test_load_rejects_missing_field(tmp_path):
    example = make_example("abc", 2)
    del example["timestamps"]
    with pytest.raises(ChunkError, match=r"example 0 \(key 'abc'\): missing field\(s\) \['timestamps'\]"):
        load_chunk(save_raw(tmp_path / "x.torch", [example]))


def test_load_rejects_non_list_and_non_dict(tmp_path):
    with pytest.raises(ChunkError, match="x.torch: expected a list of example dicts, got a dict"):
        load_chunk(save_raw(tmp_path / "x.torch", {"key": "a"}))
    with pytest.raises(ChunkError, match="example 0: expected a dict"):
        load_chunk(save_raw(tmp_path / "y.torch", [torch.zeros(3)]))
    with pytest.raises(ChunkError, match="no such chunk file"):
        load_chunk(tmp_path / "missing.torch")


class _RunsCode:
    """An object whose unpickling would run a shell command (writes a marker file)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_load_refuses_code_and_garbage(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.torch"
    torch.save([_RunsCode(str(marker))], str(path))
    assert not marker.exists()
    with pytest.raises(ChunkError, match="refused to load it as a chunk .*nothing in it was executed"):
        load_chunk(path)
    assert not marker.exists()
    # Through the store as well.
    (tmp_path / "train").mkdir()
    os.replace(path, tmp_path / "train" / "000000.torch")
    (tmp_path / "train" / "index.json").write_text(json.dumps({"k": "000000.torch"}))
    with pytest.raises(ChunkError, match="refused"):
        ChunkStore(tmp_path, "train").get("k")
    assert not marker.exists()
    garbage = tmp_path / "garbage.torch"
    garbage.write_bytes(os.urandom(1000))
    with pytest.raises(ChunkError, match="refused to load it as a chunk"):
        load_chunk(garbage)


# --------------------------------------------------------------------------------------------------------------
# index.json and the store.

def test_read_index_errors(tmp_path):
    with pytest.raises(ChunkError, match=r"train/index.json: no such file"):
        read_index(tmp_path, "train")
    write_chunks(tmp_path, "train", [make_example("a", 2)])
    index_path = tmp_path / "train" / "index.json"
    index_path.write_text(json.dumps({"a": "000000.torch", "x": "000007.torch"}))
    with pytest.raises(ChunkError, match=r"train/index.json: key 'x' names chunk 000007.torch, which does not "
                                         r"exist"):
        read_index(tmp_path, "train")
    index_path.write_text("{not json")
    with pytest.raises(ChunkError, match="index.json: not valid JSON"):
        read_index(tmp_path, "train")
    index_path.write_text("[1, 2]")
    with pytest.raises(ChunkError, match="expected a JSON object"):
        read_index(tmp_path, "train")
    index_path.write_text(json.dumps({"a": "../000000.torch"}))
    with pytest.raises(ChunkError, match="key 'a': expected a chunk file name"):
        read_index(tmp_path, "train")


def test_store_lru_bound_and_pickling(tmp_path):
    examples = [make_example(f"k{i}", 2, seed=i) for i in range(6)]
    write_chunks(tmp_path, "train", examples, max_chunk_bytes=1)  # one example per chunk
    store = ChunkStore(tmp_path, "train", cache_chunks=2)
    assert len(store.keys_by_chunk()) == 6 and store.chunk_of("k3") == "000003.torch"
    for key in ["k0", "k1", "k0", "k2", "k1", "k1", "k3", "k3"]:
        store.get(key)
        assert len(store.cached_chunks()) <= 2
    # k0 load, k1 load, k0 hit, k2 load (evicts k1), k1 load (evicts k0), k1 hit, k3 load, k3 hit
    assert (store.loads, store.hits) == (5, 3)
    assert store.cached_chunks() == ["000001.torch", "000003.torch"]
    clone = pickle.loads(pickle.dumps(store))
    assert clone.cached_chunks() == [] and clone.keys() == store.keys()
    assert len(pickle.dumps(store)) < 4096  # no chunk data travels to workers
    assert torch.equal(clone.get("k5")["cameras"], examples[5]["cameras"])
    with pytest.raises(ChunkError, match="no example with key 'nope'"):
        store.get("nope")
    with pytest.raises(ChunkError, match="cache_chunks"):
        ChunkStore(tmp_path, "train", cache_chunks=0)


def test_store_detects_key_missing_from_its_chunk(tmp_path):
    write_chunks(tmp_path, "train", [make_example("a", 2)])
    (tmp_path / "train" / "index.json").write_text(json.dumps({"a": "000000.torch", "b": "000000.torch"}))
    with pytest.raises(ChunkError, match="key 'b' names chunk 000000.torch, but that chunk has no example"):
        ChunkStore(tmp_path, "train").get("b")


# --------------------------------------------------------------------------------------------------------------
# Cameras.

def test_parse_pack_cameras():
    example = make_example("a", 6, seed=3)
    stored = example["cameras"]
    c2w, k = parse_cameras(stored)
    assert c2w.dtype == torch.float32 and k.dtype == torch.float32
    w2c = torch.eye(4).repeat(6, 1, 1)
    w2c[:, :3] = stored[:, 6:].reshape(6, 3, 4)
    assert torch.equal(c2w, rigid_inverse(w2c))  # exactly the rigid inverse of what is stored
    assert torch.allclose(c2w @ w2c, torch.eye(4).expand(6, 4, 4), atol=1e-5)
    assert torch.allclose(k[:, 0, 0], stored[:, 0]) and torch.allclose(k[:, 1, 2], stored[:, 3])
    assert torch.equal(k[:, 2], torch.tensor([0.0, 0.0, 1.0]).expand(6, 3))
    assert torch.allclose(pack_cameras(c2w, k), stored, atol=1e-6)
    assert torch.equal(stored[:, 4:6], torch.zeros(6, 2))


def test_parse_cameras_errors():
    cams = make_example("a", 2)["cameras"].clone()
    cams[1, 6] *= 3  # scales one row of the rotation: not rigid
    with pytest.raises(ChunkError, match="frame 1: the world-to-camera rotation is not a rotation"):
        parse_cameras(cams, "x.torch: key 'a'")
    with pytest.raises(ChunkError, match=r"expected a float tensor \[N, 18\]"):
        parse_cameras(torch.zeros(2, 16))
    with pytest.raises(ChunkError, match=r"pack_cameras: intrinsics: expected a float tensor \[2, 3, 3\]"):
        pack_cameras(torch.eye(4).repeat(2, 1, 1), torch.eye(3)[None])


def test_fov_degrees():
    k = torch.tensor([[[0.5, 0, 0.5], [0, 1 / (2 * math.tan(math.radians(30))), 0.5], [0, 0, 1]]])
    assert torch.allclose(fov_degrees(k), torch.tensor([[90.0, 60.0]]), atol=1e-4)


# --------------------------------------------------------------------------------------------------------------
# Images.

def test_decode_image_modes():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert torch.equal(decode_image(encode(rgb), "f"), torch.from_numpy(rgb).permute(2, 0, 1))
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    decoded = decode_image(encode(gray), "f")
    assert decoded.shape == (3, 5, 7) and torch.equal(decoded[0], torch.from_numpy(gray))
    assert torch.equal(decoded[0], decoded[2])
    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    assert torch.equal(decode_image(encode(rgba), "f"), torch.from_numpy(rgba[..., :3]).permute(2, 0, 1))
    jpeg = decode_image(encode(rgb, "JPEG"), "f")
    assert jpeg.shape == (3, 5, 7) and jpeg.dtype == torch.uint8


def test_decode_image_failure_names_where():
    data = encode(np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ChunkError, match=r"c.torch: key 'k': frame 3: image does not decode"):
        decode_image(torch.tensor([1, 2, 3, 4], dtype=torch.uint8), "c.torch: key 'k': frame 3")
    with pytest.raises(ChunkError, match="image does not decode"):
        decode_image(data[:30], "truncated")
    with pytest.raises(ChunkError, match="expected encoded image bytes"):
        decode_image(torch.zeros(3, 4), "f")


def _project(k_norm: torch.Tensor, point: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Continuous pixel position (pixel edges at integers) of a camera-space point."""
    u = (k_norm[0, 0] * point[0] / point[2] + k_norm[0, 2]) * width
    v = (k_norm[1, 1] * point[1] / point[2] + k_norm[1, 2]) * height
    return torch.stack([u, v])


def test_rescale_and_crop_official_shape_and_intrinsics():
    h_in, w_in = 360, 640
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (h_in, w_in, 3), dtype=np.uint8)
    images = torch.from_numpy(frame).permute(2, 0, 1)[None]
    k = torch.tensor([[[0.8, 0, 0.47], [0, 1.4, 0.52], [0, 0, 1]]])
    out, k_out = rescale_and_crop(images.float() / 255, k, (256, 256))
    assert out.shape == (1, 3, 256, 256) and out.dtype == torch.float32
    # Same as PIL's Lanczos to 256x455, then the centre 256x256 crop (columns 99..354).
    expected = np.array(Image.fromarray(frame).resize((455, 256), Image.LANCZOS))[:, 99:355]
    assert torch.equal((out[0] * 255).round().to(torch.uint8), torch.from_numpy(expected).permute(2, 0, 1))
    out_u8, k_u8 = rescale_and_crop(images, k, (256, 256))
    assert torch.equal(out_u8, out) and torch.equal(k_u8, k_out)
    # A 3D point lands where the resize + crop moves its pixel.
    for point in torch.tensor([[0.3, -0.2, 2.0], [-1.0, 0.5, 3.0], [0.0, 0.0, 1.0]]):
        before = _project(k[0], point, w_in, h_in)
        after = _project(k_out[0], point, 256, 256)
        mapped = torch.stack([before[0] * 455 / w_in - 99, before[1] * 256 / h_in - 0])
        assert torch.allclose(after, mapped, atol=1e-3)


def test_rescale_and_crop_moves_content_with_intrinsics():
    """A bright dot drawn at a projected point is found at the re-projected point after the shim."""
    h_in, w_in, shape = 120, 200, (48, 64)
    k = torch.tensor([[[0.7, 0, 0.44], [0, 1.1, 0.56], [0, 0, 1]]])
    point = torch.tensor([0.25, -0.1, 2.0])
    u, v = _project(k[0], point, w_in, h_in).tolist()
    frame = np.zeros((h_in, w_in, 3), dtype=np.uint8)
    frame[int(v) - 2:int(v) + 3, int(u) - 2:int(u) + 3] = 255
    centre_in = (int(u) + 0.5, int(v) + 0.5)
    images = torch.from_numpy(frame).permute(2, 0, 1)[None]
    out, k_out = rescale_and_crop(images, k, shape)
    weight = out[0, 0]
    ys, xs = torch.meshgrid(torch.arange(shape[0]) + 0.5, torch.arange(shape[1]) + 0.5, indexing="ij")
    found = torch.tensor([(weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()])
    scale = max(shape[0] / h_in, shape[1] / w_in)
    w_s, h_s = round(w_in * scale), round(h_in * scale)
    left, top = (w_s - shape[1]) // 2, (h_s - shape[0]) // 2
    expected = torch.tensor([centre_in[0] * w_s / w_in - left, centre_in[1] * h_s / h_in - top])
    assert torch.allclose(found, expected, atol=0.3)
    # and k_out re-projects the dot's 3D point to the same place (up to the dot's integer snapping)
    projected = _project(k_out[0], point, shape[1], shape[0])
    assert torch.allclose(projected, expected, atol=0.6)


def test_rescale_and_crop_identity_and_errors():
    images = torch.rand(2, 3, 16, 20)
    k = torch.tensor([[0.9, 0, 0.5], [0, 1.1, 0.5], [0, 0, 1]]).repeat(2, 1, 1)
    out, k_out = rescale_and_crop(images, k, (16, 20))
    assert torch.equal(out, images) and torch.equal(k_out, k)
    out, k_out = rescale_and_crop(images, k, (16, 10))  # crop only
    assert torch.equal(out, images[..., 5:15])
    assert torch.allclose(k_out[:, 0, 0], k[:, 0, 0] * 2) and torch.allclose(k_out[:, 0, 2], k[:, 0, 2] * 2 - 0.5)
    with pytest.raises(ChunkError, match="intrinsics"):
        rescale_and_crop(images, k[:1], (8, 8))
    with pytest.raises(ChunkError, match=r"images: expected a tensor \[N, 3, h, w\]"):
        rescale_and_crop(images[:, :2], k, (8, 8))


# --------------------------------------------------------------------------------------------------------------
# Flip.

def _views(c2w: torch.Tensor, k: torch.Tensor, height: int, width: int) -> dict:
    v = c2w.shape[0]
    return {"image": torch.zeros(v, 3, height, width), "intrinsics": k, "extrinsics": c2w,
            "near": torch.ones(v), "far": torch.full((v,), 100.0), "index": torch.arange(v)}


def _render(gaussians: Gaussians, views: dict) -> torch.Tensor:
    batched = {name: value[None] for name, value in views.items()}
    return render(gaussians, to_cameras(batched), backend="reference").color[0]


def test_flip_renders_mirror_images():
    generator = torch.Generator().manual_seed(0)
    n = 40
    means = torch.randn(1, n, 3, generator=generator) * 0.4
    gaussians = Gaussians(means=means, log_scales=torch.full((1, n, 3), -2.5),
                          quats=torch.tensor([1.0, 0, 0, 0]).repeat(1, n, 1),
                          opacity_logits=torch.full((1, n), 1.0), sh=torch.rand(1, n, 1, 3, generator=generator))
    mirrored = Gaussians(means=means * torch.tensor([-1.0, 1, 1]), log_scales=gaussians.log_scales,
                         quats=gaussians.quats, opacity_logits=gaussians.opacity_logits, sh=gaussians.sh)
    origins = torch.tensor([[1.2, -0.4, 2.5], [-0.7, 0.3, 2.8]])
    c2w = look_at(origins, torch.tensor([0.1, 0.0, 0.0]))  # OpenCV cameras looking at the scene
    k = torch.tensor([[[0.9, 0, 0.43], [0, 1.2, 0.55], [0, 0, 1]], [[1.1, 0, 0.58], [0, 1.0, 0.47], [0, 0, 1]]])
    views = _views(c2w, k, 24, 32)
    original = _render(gaussians, views)
    assert original.abs().sum() > 1.0  # the scene is in view
    views["image"] = original
    flipped = flip_views(views)
    assert torch.equal(flipped["image"], original.flip(-1))
    assert torch.allclose(flipped["intrinsics"][:, 0, 2], 1 - k[:, 0, 2])
    rendered = _render(mirrored, flipped)
    assert torch.allclose(rendered, original.flip(-1), atol=1e-4)
    twice = flip_views(flipped)
    for name in ("image", "intrinsics", "extrinsics", "near", "far", "index"):
        assert torch.allclose(twice[name].float(), views[name].float())
    # Still a proper rigid camera (rotation determinant +1).
    assert torch.allclose(torch.det(flipped["extrinsics"][:, :3, :3]), torch.ones(2), atol=1e-5)

