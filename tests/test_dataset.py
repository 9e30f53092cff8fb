"""ImageFolderDataset: EG3D zip/folder loading, x-flip, max_size, fingerprints and one-line errors."""
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from splatting.cameras import eg3d_label, look_at, mirror_eg3d_labels
from training import synthetic_scenes as ss
from training.dataset import DatasetError, ImageFolderDataset


def _labels(n, seed=0):
    """n valid labels of cameras on a circle around the origin, looking at it."""
    angles = torch.linspace(0, 2, n, dtype=torch.float64) + seed
    origin = torch.stack([2.7 * torch.sin(angles), 0.3 * torch.ones(n, dtype=torch.float64),
                          2.7 * torch.cos(angles)], -1)
    return eg3d_label(look_at(origin, torch.zeros(3, dtype=torch.float64)), 4.2647).numpy()


def _images(n, res, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, res, res, 3), dtype=np.uint8)


def write_folder(root, n=4, res=16, labels=None, images=None, doc=None, modes=None):
    """A folder dataset; `doc` overrides dataset.json (None: valid; False: none)."""
    os.makedirs(root, exist_ok=True)
    labels = _labels(n) if labels is None else labels
    images = _images(n, res) if images is None else images
    names = []
    for i, img in enumerate(images):
        name = f"sub/img{i:03d}.png"
        os.makedirs(os.path.join(root, "sub"), exist_ok=True)
        pil = Image.fromarray(img) if not isinstance(img, Image.Image) else img
        pil.save(os.path.join(root, name))
        names.append(name)
    if doc is None:
        doc = {"labels": [[name, [float(v) for v in lab]] for name, lab in zip(names, labels)]}
    if doc is not False:
        with open(os.path.join(root, "dataset.json"), "w") as f:
            f.write(doc if isinstance(doc, str) else json.dumps(doc))
    return str(root)


def zip_folder(folder, dest):
    with zipfile.ZipFile(dest, "w") as zf:
        for base, _dirs, files in os.walk(folder):
            for fname in sorted(files):
                full = os.path.join(base, fname)
                zf.write(full, os.path.relpath(full, folder))
    return str(dest)


def test_folder_and_zip_load_the_same_items(tmp_path):
    images, labels = _images(5, 16), _labels(5)
    folder = write_folder(tmp_path / "ds", n=5, images=images, labels=labels)
    archive = zip_folder(folder, tmp_path / "ds.zip")
    for path in (folder, archive):
        ds = ImageFolderDataset(path)
        assert len(ds) == 5 and ds.resolution == 16 and ds.num_channels == 3
        assert ds.image_shape == [3, 16, 16] and ds.label_shape == [25] and ds.label_dim == 25 and ds.has_labels
        assert ds.name == "ds"
        assert ds.raw_labels.dtype == np.float32 and ds.raw_labels.shape == (5, 25)
        for i in range(5):
            img, lab = ds[i]
            assert img.dtype == np.uint8 and img.shape == (3, 16, 16)
            np.testing.assert_array_equal(img, images[i].transpose(2, 0, 1))
            assert lab.dtype == np.float32 and lab.shape == (25,)
            np.testing.assert_allclose(lab, labels[i], rtol=1e-6, atol=1e-6)
            np.testing.assert_array_equal(ds.get_label(i), lab)
        with pytest.raises(IndexError):
            ds[5]
    assert ImageFolderDataset(folder).fingerprint() == ImageFolderDataset(archive).fingerprint()


def test_xflip_mirrors_image_and_camera(tmp_path):
    folder = write_folder(tmp_path / "ds", n=3)
    plain, flipped = ImageFolderDataset(folder), ImageFolderDataset(folder, xflip=True)
    assert len(flipped) == 6
    for i in range(3):
        img, lab = plain[i]
        np.testing.assert_array_equal(flipped[i][0], img)
        np.testing.assert_array_equal(flipped[i + 3][0], img[:, :, ::-1])
        np.testing.assert_array_equal(flipped[i + 3][1], mirror_eg3d_labels(lab))
        assert flipped[i + 3][0].flags["C_CONTIGUOUS"]


def test_xflip_equals_rendering_the_mirrored_world():
    """The flipped image with the mirrored label is what the mirrored scene looks like from that camera."""
    label = ss.synth_labels("ffhq", 3, seed=5)[2]
    scene = ss.scene_for("ffhq", 5, 0)
    cam, k = label[:16].reshape(4, 4), label[16:].reshape(3, 3)
    direct = ss.render(scene, cam, k, 32)
    mirrored = mirror_eg3d_labels(label)
    other = ss.render(ss.mirror_scene_x(scene), mirrored[:16].reshape(4, 4), mirrored[16:].reshape(3, 3), 32)
    diff = np.abs(direct[:, ::-1].astype(int) - other.astype(int))
    assert diff.max() <= 2  # float rounding only; a wrong mirror would move whole features
    assert (direct.max(axis=2) > 8).mean() > 0.2


def test_max_size_is_a_seeded_subset(tmp_path):
    folder = write_folder(tmp_path / "ds", n=10, res=8)
    full = ImageFolderDataset(folder)
    a = ImageFolderDataset(folder, max_size=4, random_seed=1)
    b = ImageFolderDataset(folder, max_size=4, random_seed=1)
    c = ImageFolderDataset(folder, max_size=4, random_seed=2)
    assert len(a) == 4 and a.image_names == b.image_names and a.image_names != c.image_names
    assert a.image_names == sorted(a.image_names) and set(a.image_names) <= set(full.image_names)
    j = full.image_names.index(a.image_names[1])
    np.testing.assert_array_equal(a[1][0], full[j][0])
    np.testing.assert_array_equal(a.raw_labels[1], full.raw_labels[j])
    assert len(ImageFolderDataset(folder, max_size=100)) == 10
    assert len(ImageFolderDataset(folder, max_size=4, xflip=True)) == 8


def test_resolution_mismatch(tmp_path):
    folder = write_folder(tmp_path / "ds", res=16)
    assert ImageFolderDataset(folder, resolution=16).resolution == 16
    with pytest.raises(DatasetError, match="16x16 but resolution=32"):
        ImageFolderDataset(folder, resolution=32)


def test_without_labels(tmp_path):
    folder = write_folder(tmp_path / "ds", n=3, doc=False)
    ds = ImageFolderDataset(folder, use_labels=False)
    assert len(ds) == 3 and ds.label_shape == [0] and not ds.has_labels
    assert ds[0][1].shape == (0,) and ds.raw_labels.shape == (3, 0)
    null = write_folder(tmp_path / "null", n=2, doc={"labels": None})
    assert len(ImageFolderDataset(null, use_labels=False)) == 2
    with pytest.raises(DatasetError, match=r'expected an object \{"labels"'):
        ImageFolderDataset(null)


def test_fingerprint_tracks_content(tmp_path):
    folder = write_folder(tmp_path / "ds", n=3)
    before = ImageFolderDataset(folder).fingerprint()
    labels = _labels(3, seed=1)
    folder2 = write_folder(tmp_path / "ds2", n=3, labels=labels)
    assert ImageFolderDataset(folder2).fingerprint() != before
    assert ImageFolderDataset(write_folder(tmp_path / "ds3", n=3)).fingerprint() == before


def test_zip_works_with_dataloader_workers_and_pickle(tmp_path):
    archive = zip_folder(write_folder(tmp_path / "ds", n=6, res=8), tmp_path / "ds.zip")
    ds = ImageFolderDataset(archive, xflip=True)
    ds[0]  # opens the zip in this process
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[7][0], ds[7][0])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    got = torch.cat([images for images, _ in loader])
    want = torch.stack([torch.from_numpy(ds[i][0]) for i in range(len(ds))])
    assert torch.equal(got, want)


# ----------------------------------------------------------------------------------------------------------
# Errors: one line, naming the file/field and what was expected.

def _bad(tmp_path, match, **kwargs):
    folder = write_folder(tmp_path / "bad", **kwargs)
    with pytest.raises(DatasetError, match=match) as info:
        ds = ImageFolderDataset(folder)
        for i in range(len(ds)):
            ds[i]
    assert "\n" not in str(info.value)
    return str(info.value)


def test_error_missing_dataset_json(tmp_path):
    assert "dataset.json: missing" in _bad(tmp_path, "missing", doc=False)


def test_error_malformed_dataset_json(tmp_path):
    _bad(tmp_path, "not valid JSON", doc="{labels: oops")
    _bad(tmp_path, r'expected an object \{"labels"', doc={"lables": []})
    _bad(tmp_path, r"labels\[0\]: expected \[relative_path", doc={"labels": [["a.png"]]})


def test_error_label_not_25_numbers(tmp_path):
    msg = _bad(tmp_path, "expected a label of 25 numbers", doc={"labels": [["sub/img000.png", [0.0] * 24]]})
    assert "sub/img000.png" in msg and "24 values" in msg
    _bad(tmp_path, "non-number", doc={"labels": [["sub/img000.png", ["x"] * 25]]})


def test_error_label_non_finite(tmp_path):
    labels = _labels(4)
    labels[2, 5] = np.nan
    assert "img002.png" in _bad(tmp_path, "non-finite", labels=labels)


def test_error_label_not_a_camera(tmp_path):
    labels = _labels(4)
    labels[1, :16] = labels[1, :16].reshape(4, 4).T.reshape(-1)  # transposed cam2world
    assert "img001.png" in _bad(tmp_path, "last row 0 0 0 1", labels=labels)


def test_error_image_listed_but_missing(tmp_path):
    doc = {"labels": [["sub/img000.png", list(map(float, _labels(1)[0]))], ["sub/nope.png", [0.0] * 25]]}
    labels = _labels(2)
    doc["labels"][1][1] = list(map(float, labels[1]))
    assert "'sub/nope.png' is listed in dataset.json but missing" in _bad(tmp_path, "missing", n=1, doc=doc)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_error_image_not_rgb(tmp_path, mode):
    images = [Image.fromarray(im) for im in _images(3, 8)]
    images[0] = images[0].convert(mode)
    assert f"expected an RGB image, got mode {mode}" in _bad(tmp_path, "RGB", n=3, res=8, images=images)


def test_error_later_image_not_rgb_is_caught_when_read(tmp_path):
    images = [Image.fromarray(im) for im in _images(3, 8)]
    images[2] = images[2].convert("L")
    folder = write_folder(tmp_path / "ds", n=3, images=images)
    ds = ImageFolderDataset(folder)
    ds[0]
    with pytest.raises(DatasetError, match="img002.png: expected an RGB image"):
        ds[2]


def test_error_image_shapes(tmp_path):
    rect = [Image.fromarray(np.zeros((8, 16, 3), np.uint8))] * 2
    _bad(tmp_path, "expected a square image, got 16x8", n=2, images=rect)
    odd = [Image.fromarray(np.zeros((12, 12, 3), np.uint8))] * 2
    _bad(tmp_path, "power-of-two resolution, got 12x12", n=2, images=odd)
    mixed = [Image.fromarray(np.zeros((16, 16, 3), np.uint8)), Image.fromarray(np.zeros((8, 8, 3), np.uint8))]
    _bad(tmp_path, "img001.png: expected 16x16 like the rest of the dataset, got 8x8", n=2, images=mixed)


def test_error_corrupt_and_empty(tmp_path):
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"PK\x03\x04 this is not really a zip file")
    with pytest.raises(DatasetError, match="corrupt.zip: not a readable zip file"):
        ImageFolderDataset(str(corrupt))
    _bad(tmp_path, "empty dataset", doc={"labels": []})
    with pytest.raises(DatasetError, match="no such folder"):
        ImageFolderDataset(str(tmp_path / "nowhere"))


def test_error_corrupt_image_bytes(tmp_path):
    folder = write_folder(tmp_path / "ds", n=2)
    with open(os.path.join(folder, "sub/img001.png"), "wb") as f:
        f.write(b"\x89PNG garbage")
    ds = ImageFolderDataset(folder)
    with pytest.raises(DatasetError, match="img001.png: not a readable image"):
        ds[1]


def test_error_label_outside_float32(tmp_path):
    labels = _labels(3)
    labels[1, 3] = 1e308  # finite as a float64, inf once the labels become float32
    message = _bad(tmp_path, "out of the float32 range", labels=labels)
    assert "img001.png" in message and "label entry 3 = 1e+308" in message


def test_error_dangling_symlink(tmp_path):
    folder = write_folder(tmp_path / "ds", n=2)
    os.symlink(os.path.join(folder, "sub", "gone.png"), os.path.join(folder, "sub", "link.png"))
    with pytest.raises(DatasetError) as info:
        ImageFolderDataset(folder)
    message = str(info.value)
    assert message == (f"{folder}: 'sub/link.png' is a dangling symbolic link (its target "
                       f"{os.path.join(folder, 'sub', 'gone.png')} does not exist)")


def _dataset_with_bad_item(tmp_path, kind: str) -> ImageFolderDataset:
    """A dataset whose item 3 is unreadable (corrupt bytes) or mis-sized; item 0, read when it is built, is fine."""
    images = [Image.fromarray(im) for im in _images(4, 16)]
    if kind == "mis-sized":
        images[3] = images[3].resize((8, 8))
    folder = write_folder(tmp_path / kind, n=4, images=images)
    if kind == "corrupt":
        with open(os.path.join(folder, "sub/img003.png"), "r+b") as f:
            f.seek(40)
            f.write(b"\0" * 64)
    return ImageFolderDataset(folder)


@pytest.mark.parametrize("kind", ["corrupt", "mis-sized"])
def test_error_met_in_a_dataloader_worker_is_the_same_line(tmp_path, kind):
    ds = _dataset_with_bad_item(tmp_path, kind)
    with pytest.raises(DatasetError) as in_main:
        ds[3]
    expected = str(in_main.value)
    assert "img003.png" in expected and "\n" not in expected
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, shuffle=False)
    with pytest.raises(DatasetError) as in_worker:
        for _ in loader:
            pass
    assert str(in_worker.value) == expected
    assert str(pickle.loads(pickle.dumps(in_worker.value))) == expected  # and so across processes
