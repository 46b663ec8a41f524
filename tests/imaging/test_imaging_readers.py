"""Imaging readers and preprocessing, on the bundled MedMNIST files and small image folders written per test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from domains.imaging.readers import (
    LABEL_NAMES,
    POSITIVE_LABEL,
    ImageRecord,
    bundled,
    read_any,
    read_folder,
    read_images,
    read_medmnist,
)
from domains.imaging.transforms import Preprocess
from workbench.errors import InputError

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


def save_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def grey(seed: int, shape: tuple[int, int] = (28, 28)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """Four 28x28 grey PNGs: a.png, b.png, c.png, d.png."""
    d = tmp_path / "imgs"
    d.mkdir()
    for i, name in enumerate("abcd"):
        save_png(d / f"{name}.png", grey(i))
    return d


# --------------------------------------------------------------------------------------------------- bundled npz


def test_bundled_pneumoniamnist_counts_labels_ids() -> None:
    recs = read_medmnist(bundled("pneumoniamnist"))
    assert len(recs) == 2428 + 270 + 468
    by_split = {s: [r for r in recs if r.meta["split"] == s] for s in ("train", "val", "test")}
    assert [len(v) for v in by_split.values()] == [2428, 270, 468]
    for split, rs in by_split.items():
        labels = np.array([r.meta["label"] for r in rs])
        assert (labels == 0).sum() == (labels == 1).sum() == len(rs) // 2  # class-balanced subsample
    first = recs[0]
    assert isinstance(first, ImageRecord)
    assert first.id == "pneumoniamnist:train:00000"
    assert by_split["test"][-1].id == "pneumoniamnist:test:00467"
    assert first.image.shape == (1, 28, 28) and first.image.dtype == np.uint8
    names = {r.meta["label"]: r.meta["label_name"] for r in recs}
    assert names == {0: "normal", 1: "pneumonia"} == LABEL_NAMES["pneumoniamnist"]
    assert POSITIVE_LABEL["pneumoniamnist"] in names.values()
    raw = np.load(bundled("pneumoniamnist.npz"))
    np.testing.assert_array_equal(by_split["val"][5].image[0], raw["val_images"][5])
    assert by_split["val"][5].meta["label"] == int(raw["val_labels"][5, 0])


def test_bundled_breastmnist_official_split_and_options() -> None:
    recs = read_medmnist(bundled("breastmnist"), splits=("test",))
    assert len(recs) == 156
    labels = np.array([r.meta["label"] for r in recs])
    assert np.bincount(labels).tolist() == [42, 114]
    assert {r.meta["label_name"] for r in recs} == {"malignant", "normal_or_benign"}
    assert POSITIVE_LABEL["breastmnist"] == LABEL_NAMES["breastmnist"][0]
    few = read_medmnist(bundled("breastmnist"), limit=3, name="bm")
    assert [r.id for r in few] == [f"bm:{s}:{i:05d}" for s in ("train", "val", "test") for i in range(3)]
    assert few[0].meta["label_name"] is None  # unknown dataset name: no label names
    assert len(read_any(bundled("breastmnist"), splits=("val",))) == 78


def test_bundled_unknown_name() -> None:
    with pytest.raises(InputError, match=r"unknown bundled imaging dataset 'chestmnist'.*breastmnist, pneumoniamnist"):
        bundled("chestmnist")


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def _good(n: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for split in ("train", "val", "test"):
        out[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        out[f"{split}_labels"] = rng.integers(0, 2, (n, 1), dtype=np.uint8)
    return out


def test_medmnist_colour_and_float_labels(tmp_path: Path) -> None:
    arrays = _good()
    arrays["train_images"] = np.random.default_rng(1).integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)
    arrays["train_labels"] = np.array([0.0, 1.0, 1.0, 0.0])
    recs = read_medmnist(_npz(tmp_path / "rgb.npz", **arrays), splits=("train",))
    assert recs[0].image.shape == (3, 28, 28)
    np.testing.assert_array_equal(recs[2].image, np.moveaxis(arrays["train_images"][2], -1, 0))
    assert [r.meta["label"] for r in recs] == [0, 1, 1, 0]
    assert recs[0].id == "rgb:train:00000"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop("val_labels"), r"bad\.npz: missing key 'val_labels'"),
        (lambda a: a.update(test_labels=np.zeros(3, np.uint8)),
         r"bad\.npz: key 'test_images' holds 4 images but 'test_labels' holds 3"),
        (lambda a: a.update(train_images=np.zeros((4, 28), np.uint8)),
         r"bad\.npz: key 'train_images' has 2 dimensions"),
        (lambda a: a.update(train_labels=np.array([0.5, 1, 0, 1])),
         r"bad\.npz: key 'train_labels' holds non-integer labels"),
        (lambda a: a.update(val_labels=np.zeros((4, 3), np.uint8)), r"bad\.npz: key 'val_labels' has shape \(4, 3\)"),
        (lambda a: a.update(train_images=np.full((4, 28, 28), 2.0)), r"bad\.npz: key 'train_images': float images"),
    ],
)
def test_medmnist_malformed(tmp_path: Path, change, message: str) -> None:
    arrays = _good()
    change(arrays)
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError, match=message):
        read_medmnist(path)


def test_medmnist_not_npz_and_missing(tmp_path: Path) -> None:
    text = tmp_path / "fake.npz"
    text.write_text("not a zip archive\n")
    with pytest.raises(InputError, match=r"fake\.npz: not a readable \.npz"):
        read_medmnist(text)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(InputError, match=r"single\.npy: not an \.npz archive"):
        read_medmnist(single)
    with pytest.raises(InputError, match="no such file"):
        read_medmnist(tmp_path / "absent.npz")
    with pytest.raises(InputError, match="limit must be a positive integer"):
        read_medmnist(bundled("breastmnist"), limit=0)


# --------------------------------------------------------------------------------------------------- folders


def test_folder_with_integer_labels_split_and_meta(folder: Path, tmp_path: Path) -> None:
    table = tmp_path / "labels.csv"
    table.write_text("image,label,fold,site\na.png,1,train,x\nb,0,train,y\nc.png,1,test,x\nd,0,val,z\n")
    recs = read_folder(folder, labels=table, split_col="fold", meta_cols=["site"])
    assert [r.id for r in recs] == ["a.png", "b.png", "c.png", "d.png"]
    assert [r.meta["label"] for r in recs] == [1, 0, 1, 0]
    assert [r.meta["split"] for r in recs] == ["train", "train", "test", "val"]
    assert [r.meta["site"] for r in recs] == ["x", "y", "x", "z"]
    assert all(r.meta["label_name"] is None for r in recs)
    assert recs[1].image.shape == (1, 28, 28) and recs[1].image.dtype == np.uint8
    np.testing.assert_array_equal(recs[1].image[0], grey(1))
    unlabelled = read_folder(folder)
    assert [r.meta["label"] for r in unlabelled] == [None] * 4 and unlabelled[0].meta["split"] is None
    assert [r.id for r in read_any(folder)] == ["a.png", "b.png", "c.png", "d.png"]


def test_folder_string_labels_tsv(folder: Path, tmp_path: Path) -> None:
    table = tmp_path / "labels.tsv"
    table.write_text("file\tdiagnosis\na\tpneumonia\nb\tnormal\nc\tpneumonia\nd\tcovid\n")
    recs = read_folder(folder, labels=table, id_col="file", label_col="diagnosis")
    assert [r.meta["label_name"] for r in recs] == ["pneumonia", "normal", "pneumonia", "covid"]
    assert [r.meta["label"] for r in recs] == [2, 1, 2, 0]  # codes in sorted order: covid, normal, pneumonia


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("a,1\nb,0\nc,1\n", r"1 image\(s\) in .* without a label row: d\.png"),
        ("a,1\nb,0\nc,1\nd,0\ne,1\nf,0\n", r"2 label row\(s\) without an image in .*: e, f"),
        ("a,1\nb,0\nc,1\nd,0\na.png,1\n", r"image 'a\.png' has more than one label row"),
        ("a,1\nb,\nc,1\nd,0\n", r"empty 'label' cell in 1 row\(s\), line\(s\) 3"),
    ],
)
def test_folder_label_mismatches(folder: Path, tmp_path: Path, rows: str, message: str) -> None:
    table = tmp_path / "labels.csv"
    table.write_text("image,label\n" + rows)
    with pytest.raises(InputError, match=message):
        read_folder(folder, labels=table)


def test_folder_missing_label_column(folder: Path, tmp_path: Path) -> None:
    table = tmp_path / "labels.csv"
    table.write_text("image,class\na,1\n")
    with pytest.raises(InputError, match=r"missing column\(s\) 'label'"):
        read_folder(folder, labels=table)


def test_folder_corrupt_file(folder: Path) -> None:
    (folder / "e.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    good = (folder / "a.png").read_bytes()
    (folder / "f.png").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(InputError, match=r"2 unreadable image file\(s\): e\.png .*f\.png"):
        read_folder(folder)


def test_folder_mixed_shapes(folder: Path) -> None:
    save_png(folder / "big.png", grey(9, (32, 32)))
    save_png(folder / "rgb.png", np.zeros((28, 28, 3), np.uint8))
    expected = r"images differ in shape.*1x28x28 \(4 file\(s\).*1x32x32 \(1 file\(s\), e\.g\. big\.png\)"
    with pytest.raises(InputError, match=expected):
        read_folder(folder)


def test_folder_empty_and_missing(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no image files"):
        read_folder(tmp_path)
    with pytest.raises(InputError, match="no such folder"):
        read_folder(tmp_path / "nope")


def test_sixteen_bit_tiff_rgba_and_jpeg(tmp_path: Path) -> None:
    deep = (np.arange(20 * 24).reshape(20, 24) * 130).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.tif")
    rgba = np.random.default_rng(3).integers(0, 256, (10, 12, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(grey(4, (16, 16))).convert("RGB").save(tmp_path / "photo.jpg")
    recs = read_images([tmp_path / "deep.tif", tmp_path / "rgba.png", tmp_path / "photo.jpg"])
    assert [r.id for r in recs] == ["deep.tif", "rgba.png", "photo.jpg"]
    assert recs[0].image.dtype == np.uint16 and recs[0].image.shape == (1, 20, 24)
    np.testing.assert_array_equal(recs[0].image[0], deep)
    assert recs[0].image.max() > 255
    assert recs[1].image.dtype == np.uint8 and recs[1].image.shape == (3, 10, 12)
    np.testing.assert_array_equal(recs[1].image, np.moveaxis(rgba[..., :3], -1, 0))
    assert recs[2].image.shape == (3, 16, 16)
    assert read_any(tmp_path / "deep.tif")[0].image.dtype == np.uint16
    with pytest.raises(InputError, match="takes no options"):
        read_any(tmp_path / "deep.tif", limit=2)
    with pytest.raises(InputError, match="not found"):
        read_images([tmp_path / "absent.png"])
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(InputError, match="not PNG / JPEG / TIFF"):
        read_images([tmp_path / "x.bmp"])
    with pytest.raises(InputError, match="unknown image input"):
        read_any(tmp_path / "x.bmp")


# --------------------------------------------------------------------------------------------------- preprocessing


def test_preprocess_grey_scaling_and_normalisation() -> None:
    images = np.zeros((2, 1, 28, 28), np.uint8)
    images[0] = 255
    out = Preprocess()(images)
    assert out.shape == (2, 1, 28, 28) and str(out.dtype) == "torch.float32"
    assert float(out[0].min()) == pytest.approx(1.0) and float(out[1].max()) == pytest.approx(-1.0)
    deep = np.full((1, 28, 28), 65535, np.uint16)
    assert float(Preprocess()([deep]).max()) == pytest.approx(1.0)
    floats = np.full((1, 28, 28), 0.25, np.float32)
    assert float(Preprocess(mean=(0.0,), std=(1.0,))([floats]).mean()) == pytest.approx(0.25)
    # (N, H, W) arrays are grey batches
    assert Preprocess()(np.zeros((3, 28, 28), np.uint8)).shape == (3, 1, 28, 28)


def test_preprocess_channels() -> None:
    g = np.arange(28 * 28, dtype=np.float32).reshape(1, 28, 28) / (28 * 28)
    rgb = Preprocess(channels=3, mean=(0.0,), std=(1.0,))([g])
    assert rgb.shape == (1, 3, 28, 28)
    assert np.allclose(rgb[0, 0].numpy(), g[0]) and np.allclose(rgb[0, 2].numpy(), g[0])
    colour = np.stack([np.zeros((28, 28)), np.full((28, 28), 0.3), np.full((28, 28), 0.9)]).astype(np.float32)
    back = Preprocess(mean=(0.0,), std=(1.0,))([colour])
    assert back.shape == (1, 1, 28, 28) and float(back.mean()) == pytest.approx(0.4)
    per_channel = Preprocess(channels=3, mean=(0.0, 0.3, 0.9), std=(1.0, 1.0, 1.0))([colour])
    assert float(per_channel.abs().max()) == pytest.approx(0.0, abs=1e-6)


def test_preprocess_resize_and_mixed_sizes() -> None:
    big = np.full((1, 64, 48), 128, np.uint8)
    small = grey(5)[None]
    out = Preprocess()([big, small])
    assert out.shape == (2, 1, 28, 28)
    assert np.allclose(out[0].numpy(), 128 / 255 * 2 - 1, atol=1e-5)  # flat image stays flat after antialiased resize
    assert np.allclose(out[1].numpy(), small[0] / 255 * 2 - 1, atol=1e-6)  # 28x28: untouched
    up = Preprocess(size=56)([small])
    assert up.shape == (1, 1, 56, 56)
    assert Preprocess()([]).shape == (0, 1, 28, 28)


def test_preprocess_bad_inputs_and_dict_round_trip() -> None:
    with pytest.raises(InputError, match=r"image 0 has 28 channels"):
        Preprocess()([np.zeros((28, 28, 3), np.uint8)])  # channel-last by mistake
    with pytest.raises(InputError, match=r"must be \(N, C, H, W\) or \(N, H, W\)"):
        Preprocess()(np.zeros(5, np.uint8))
    with pytest.raises(InputError, match="image 1 has shape"):
        Preprocess()([np.zeros((28, 28), np.uint8), np.zeros((1, 1, 28, 28), np.uint8)])
    with pytest.raises(InputError, match="unsupported image type int64"):
        Preprocess()([np.zeros((1, 28, 28), np.int64)])
    with pytest.raises(InputError, match="channels must be 1 or 3"):
        Preprocess(channels=2)
    with pytest.raises(InputError, match="mean needs 1 or 3 values"):
        Preprocess(channels=3, mean=(0.1, 0.2))
    with pytest.raises(InputError, match="std values must be positive"):
        Preprocess(std=(0.0,))
    p = Preprocess(size=32, channels=3, mean=(0.1, 0.2, 0.3), std=(0.5,))
    assert Preprocess.from_dict(p.to_dict()) == p
    assert p.to_dict()["mean"] == [0.1, 0.2, 0.3]
    with pytest.raises(InputError, match="unknown field"):
        Preprocess.from_dict({"size": 28, "colour": True})
