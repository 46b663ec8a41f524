"""Image concepts: measured properties, frame regions, labels aligned to an image store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import workbench
from domains.imaging.annotations import grey_images, image_labels, image_properties, position_values
from domains.imaging.readers import ImageRecord, bundled, read_medmnist
from workbench.errors import InputError


def _rec(i: int, image: np.ndarray, label: int | None = 0) -> ImageRecord:
    return ImageRecord(f"img{i}", image[None].astype(np.uint8), {"split": "train", "label": label, "label_name": None})


def test_properties_measure_what_they_say() -> None:
    dark = np.full((28, 28), 20)
    bright = np.full((28, 28), 230)
    left = np.zeros((28, 28))
    left[:, :7] = 255
    checker = np.tile((np.arange(28) // 4) % 2 * 255, (28, 1))  # vertical stripes 4 px wide: many edges
    props = image_properties([_rec(0, dark), _rec(1, bright), _rec(2, left), _rec(3, checker)])
    assert props.loc["img0", "mean_intensity"] == pytest.approx(20 / 255)
    assert props.loc["img1", "mean_intensity"] == pytest.approx(230 / 255)
    assert props.loc["img0", "contrast"] == pytest.approx(0.0) and props.loc["img3", "contrast"] > 0.4
    assert props.loc["img2", "centroid_x"] == pytest.approx(3.5 / 28, abs=1e-6)
    assert props.loc["img2", "centroid_y"] == pytest.approx(0.5)
    assert props.loc["img3", "edge_density"] > props.loc["img2", "edge_density"] > props.loc["img0", "edge_density"]
    with pytest.raises(InputError, match="different sizes"):
        grey_images([_rec(0, dark), _rec(1, np.zeros((14, 14)))])


def test_position_values_regions_and_patches() -> None:
    import pandas as pd

    img = np.zeros((1, 28, 28), np.float32)
    img[0, :4, :4] = 1.0  # top-left cell bright
    obs = pd.DataFrame({"y": np.repeat(np.arange(7), 7), "x": np.tile(np.arange(7), 7)})
    vals = position_values(obs, img, (7, 7), np.zeros(49, dtype=np.int64))
    assert vals.loc[0, "frame_row"] == "top" and vals.loc[0, "frame_col"] == "left" and vals.loc[0, "frame"] == "border"
    assert vals.loc[24, "frame_row"] == "middle" and vals.loc[24, "frame_col"] == "centre" and vals.loc[24, "frame"] == "interior"
    assert vals.loc[48, "frame_row"] == "bottom" and vals.loc[48, "frame_col"] == "right"
    assert vals.loc[0, "patch_intensity"] == "high"
    with pytest.raises(InputError, match="grid"):
        position_values(obs, img, (3, 3), np.zeros(49, dtype=np.int64))


def test_image_labels_on_a_store(tiny_vision_card: Path, tmp_path: Path) -> None:
    recs = read_medmnist(bundled("breastmnist"), splits=("test",), limit=12)
    store = workbench.extract(str(tiny_vision_card), recs, layers=["layer3"], out=tmp_path / "s", progress=False)
    labels, props = image_labels(store, recs)
    assert labels.n_tokens == store.n_tokens
    assert list(props.index) == store.sequences["sequence_id"].tolist()
    seq = labels.sequence_concepts.set_index("concept")
    names = {r.meta["label_name"] for r in recs}
    assert {f"label={n}" for n in names} <= set(seq.index)
    assert seq.loc[[c for c in seq.index if c.startswith("label=")], "n_sequences"].sum() == len(recs)
    tok = labels.token_concepts.set_index("concept")
    assert set(tok["source"]) == {"dataset", "measured"}
    assert tok.loc[[c for c in tok.index if c.startswith("frame_row=")], "n_tokens"].sum() == store.n_tokens
    # every position of a malignant image carries label=malignant
    j = list(tok.index).index("label=malignant")
    malignant = np.asarray([r.meta["label_name"] == "malignant" for r in recs])
    per_token = np.repeat(malignant, 49)
    assert (labels.tokens[:, j].toarray().ravel() == per_token).all()
    with pytest.raises(InputError, match="no record"):
        image_labels(store, recs[:3])
