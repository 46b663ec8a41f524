"""The imaging pipeline through the shared core: catalog with pixels, heatmaps, pathology tables, causal check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from workbench.catalog import Catalog


def test_imaging_catalog_contents(imaging_catalog: Path) -> None:
    cat = Catalog.open(imaging_catalog)
    info = cat.image_info
    assert info is not None and info["shape"] == [1, 28, 28] and info["grid"] == [7, 7]
    assert info["positive_class"] == "pneumonia"
    s = cat.summary
    assert s["domain"] == "imaging" and s["n_sequences"] == 120 and s["n_tokens"] == 120 * 49
    for key in ("sae", "neurons", "random_sae"):
        assert key in s["pathology_significant_adjusted"] and s["pathology_features_tested"][key] > 0
    assert 0.0 <= s["model_test_auroc"] <= 1.0 and 0.0 <= s["best_feature_test_auroc"] <= 1.0
    for name in ("pooled_association", "pooled_association_neurons", "pooled_association_random", "pooled_best",
                 "pathology_causal", "disagreements", "images", "association", "missing_annotations"):
        assert name in cat.tables, name
    images = cat.table("images")
    assert len(images) == 120 and images["p_model"].between(0, 1).all()
    assert {"mean_intensity", "contrast", "edge_density", "centroid_y", "centroid_x"} <= set(images.columns)
    pooled = cat.table("pooled_association")
    assert set(pooled["concept"]) == {"pathology"} and len(pooled) == len(cat.features)
    assert {"pathology_auroc", "pathology_auroc_adjusted", "pathology_q_adjusted"} <= set(cat.features.columns)
    # measured concepts are complete: never proposed as missing annotations
    missing = cat.table("missing_annotations")
    assert not missing["concept"].astype(str).str.startswith(("frame", "patch_")).any()


def test_pixels_and_heatmaps_round_trip(imaging_catalog: Path) -> None:
    from domains.imaging.readers import bundled, read_medmnist

    cat = Catalog.open(imaging_catalog)
    fid = cat.features.sort_values("density", ascending=False).index[0]
    examples = cat.examples(fid)
    assert examples and all(len(e.activations) == 49 for e in examples)
    top = examples[0]
    by_id = {r.id: r for r in read_medmnist(bundled("pneumoniamnist"))}
    np.testing.assert_array_equal(cat.image(top.sequence_id), by_id[top.sequence_id].image)
    # nearest (default): every cell of the 7x7 grid covers its own 4x4 block of the 28x28 image, exactly
    heat = cat.heatmap(top.activations)
    assert heat.shape == (28, 28) and heat.dtype == np.float32
    np.testing.assert_array_equal(heat, np.kron(np.asarray(top.activations, np.float32).reshape(7, 7), np.ones((4, 4))))
    # bilinear: smooth, and its hottest 4x4 block still sits over the hottest grid cell
    smooth = cat.heatmap(top.activations, mode="bilinear")
    assert smooth.shape == (28, 28) and smooth.max() > 0 and not np.array_equal(smooth, heat)
    gy, gx = divmod(int(np.argmax(top.activations)), 7)
    block = smooth[gy * 4 : gy * 4 + 4, gx * 4 : gx * 4 + 4].mean()
    assert block >= np.sort([smooth[i * 4 : i * 4 + 4, j * 4 : j * 4 + 4].mean() for i in range(7) for j in range(7)])[-3]
    with pytest.raises(Exception, match="grid"):
        cat.heatmap(np.zeros(10))
    with pytest.raises(Exception, match="nearest"):
        cat.heatmap(top.activations, mode="cubic")


def test_pathology_effects_measure_the_logit(tiny_vision_card: Path, tmp_path: Path) -> None:
    import workbench
    from domains.imaging.analysis import pathology_effects, pooled_features
    from domains.imaging.readers import bundled, read_medmnist
    from workbench.associate import feature_matrix
    from workbench.sae import TrainConfig, train_sae

    recs = read_medmnist(bundled("pneumoniamnist"), splits=("val",), limit=30)
    adapter = workbench.load_adapter(str(tiny_vision_card))
    store = workbench.extract(adapter, recs, layers=[3], out=tmp_path / "s", progress=False)
    sae = train_sae(store, out=tmp_path / "sae", layer=3, width=32, k=4, progress=False,
                    train=TrainConfig(n_tokens=10_000, batch_size=256, loss_recovered_sequences=0)).sae
    feats = feature_matrix(store, sae, layer=3)
    ids = store.sequences["sequence_id"].tolist()
    pooled = pooled_features(feats, store.token_sequence(), len(ids))
    by_id = {r.id: r for r in recs}
    ordered = [by_id[i] for i in ids]
    live = [feats.names[j] for j in np.argsort(-(pooled > 0).sum(0))[:2]]
    table = pathology_effects(adapter, sae, ordered, pooled, feats.names, layer=3, features=live, positive=1, n_images=5,
                              groups={"both": live})
    assert list(table["feature"]) == live + ["both"] and (table["n_firing"] > 0).all()
    assert (table["abs_dlogit_firing"] > 0).all()
    # the control removes as much along a random direction of the same norm: it moves the logit, by another amount
    assert (table["abs_dlogit_random"] > 0).all() and not np.allclose(table["dlogit_random"], table["dlogit_firing"])
    assert table["beyond_control"].dtype == bool
    assert ((table["p_vs_random"] < 0.05) == table["beyond_control"]).all()
    again = pathology_effects(adapter, sae, ordered, pooled, feats.names, layer=3, features=live, positive=1, n_images=5)
    np.testing.assert_allclose(again["dlogit_random"], table["dlogit_random"][:2], rtol=1e-5)  # seeded
    with pytest.raises(Exception, match="no features"):
        pathology_effects(adapter, sae, ordered, pooled, feats.names, layer=3, features=["f99999"], positive=1)


def test_disagreements_pick_the_right_images() -> None:
    from domains.imaging.analysis import DISAGREEMENT_KINDS, disagreement_counts, disagreements

    rng = np.random.default_rng(0)
    n = 200
    label = np.arange(n) % 2 == 0
    pooled = rng.normal(size=(n, 3))
    pooled[:, 0] += 3.0 * label  # feature "a" tracks the pathology
    fit = np.arange(n) < 120
    p_model = np.where(label, 0.9, 0.1)
    p_model[120] = 0.02  # a pathology image (even index) the model calls normal, its features high
    pooled[120, 0] = 6.0
    p_model[122] = 0.03  # a pathology image called normal whose features are low: both wrong
    pooled[122, 0] = -4.0
    p_model[124] = 0.95  # right, but the features read it as normal
    pooled[124, 0] = -5.0
    lab = label.astype(object)
    lab[199] = None  # unlabelled, the model says normal, the features pathology
    p_model[199], pooled[199, 0] = 0.2, 7.0
    table = disagreements([f"i{i}" for i in range(n)], lab, p_model, pooled, ["a", "b", "c"], features=["a", "b"],
                          fit=fit, splits=["s"] * n)
    assert not table["image_id"].isin([f"i{i}" for i in range(120)]).any()  # fitting images are not reported
    first = table.groupby("kind").first()
    assert first.loc[DISAGREEMENT_KINDS[0], "image_id"] == "i120"
    assert first.loc[DISAGREEMENT_KINDS[1], "image_id"] == "i122"
    assert first.loc[DISAGREEMENT_KINDS[2], "image_id"] == "i124"
    assert first.loc[DISAGREEMENT_KINDS[4], "image_id"] == "i199"
    row = table.set_index("image_id").loc["i120"]
    assert row["model_correct"] is False and row["features_correct"] is True and row["p_features"] > 0.5
    assert set(table["rank"][table["kind"] == DISAGREEMENT_KINDS[1]]) == set(range(1, 1 + (table["kind"] == DISAGREEMENT_KINDS[1]).sum()))
    counts = disagreement_counts(lab, p_model, mask=~fit)
    assert counts == {"images": 79, "model_wrong": 2, "false_positive": 0, "false_negative": 2}
    assert disagreements(["x"], lab[:1], p_model[:1], pooled[:1], ["a", "b", "c"], features=[], fit=fit[:1]).empty
    with pytest.raises(Exception, match="no features"):
        disagreements([f"i{i}" for i in range(n)], lab, p_model, pooled, ["a"], features=["z"], fit=fit)


def test_cli_extract_train_annotate_an_image_store(tiny_vision_card: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from domains.imaging.readers import bundled
    from workbench.cli import main

    data = np.load(bundled("breastmnist"))
    npz = tmp_path / "breast_small.npz"
    # both classes in every split: BreastMNIST's first rows hold both labels
    np.savez(npz, **{k: data[k][:30] for k in data.files})
    store, sae, cat = tmp_path / "store", tmp_path / "sae", tmp_path / "catalog"
    assert main(["extract", "--model", str(tiny_vision_card), "--input", str(npz), "--layers", "layer3", "--out", str(store),
                 "--no-progress"]) == 0
    assert main(["train", "--store", str(store), "--out", str(sae), "--width", "32", "--k", "4", "--n-tokens", "8000",
                 "--batch-size", "256", "--no-progress"]) == 0
    capsys.readouterr()
    rc = main(["annotate", "--store", str(store), "--sae", str(sae), "--source", "dataset", "--source", "nonsense",
               "--out", str(cat), "--no-progress", "--n-causal", "2", "--permutations", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "nonsense" in err and len(err.strip().splitlines()) == 1 and not cat.exists()
    assert main(["annotate", "--store", str(store), "--sae", str(sae), "--source", "dataset", "--source", "measured",
                 "--out", str(cat), "--no-progress", "--n-causal", "2", "--permutations", "2"]) == 0
    catalog = Catalog.open(cat)
    assert catalog.image_info["positive_class"] == "pneumonia"  # the tiny card's classes
    assert catalog.summary["domain"] == "imaging" and "pooled_association" in catalog.tables
    # the pixels came back from the npz the store names
    first = catalog.sequences.index[0]
    split, i = first.split(":")[1], int(first.split(":")[2])
    np.testing.assert_array_equal(catalog.image(first)[0], data[f"{split}_images"][i])


def test_demo_trains_the_cnn_only_when_its_weights_are_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import domains.imaging.adapter as vision
    from domains.imaging.demo import ImagingDemoConfig, _ensure_weights

    target = tmp_path / "models" / "medcnn_breastmnist.safetensors"
    monkeypatch.setattr(vision, "card_weights_path", lambda card: target)
    _ensure_weights("breastmnist", ImagingDemoConfig(train_epochs=1), progress=False)
    assert target.is_file() and (target.with_suffix(".json")).is_file()
    stamp = target.stat().st_mtime_ns
    _ensure_weights("breastmnist", ImagingDemoConfig(train_epochs=1), progress=False)  # present: not trained again
    assert target.stat().st_mtime_ns == stamp


def test_model_loss_and_causal_check_on_a_non_default_layer(tiny_vision_card: Path, tmp_path: Path) -> None:
    """A fresh adapter (loaded from the store's manifest) batches for the store's layer, not the card's default."""
    import workbench
    from domains.imaging.readers import bundled, read_medmnist
    from workbench.associate import feature_matrix
    from workbench.discovery import causal_effects
    from workbench.errors import ModelError
    from workbench.sae import TrainConfig, train_sae

    recs = read_medmnist(bundled("breastmnist"), splits=("val",), limit=20)
    store = workbench.extract(str(tiny_vision_card), recs, layers=["layer2"], out=tmp_path / "s", progress=False)
    result = train_sae(store, out=tmp_path / "sae", layer=2, width=32, k=4, progress=False,
                       train=TrainConfig(n_tokens=20_000, batch_size=256, loss_recovered_sequences=8, holdout_fraction=0.3))
    lr = result.metrics["loss_recovered"]
    assert "skipped" not in lr and lr["sequences"] > 0 and np.isfinite(lr["ce_sae"])
    fresh = workbench.load_adapter(str(tiny_vision_card))
    table = causal_effects(fresh, store, result.sae, layer=2, features=[0, 1], n_sequences=3,
                           feature_matrix=feature_matrix(store, result.sae, layer=2))
    assert len(table) == 2 and np.isfinite(table["kl_firing"]).any()
    # a batch built for another layer's grid is refused with a clear message
    fresh.prepare([3])
    batch = next(fresh.batches(recs, tokens_per_batch=49 * 2))
    with pytest.raises(ModelError, match="prepare"):
        fresh.run_with_edit(batch, 2, lambda h: h)


def test_frame_concentration_finds_features_fixed_in_the_frame() -> None:
    import pandas as pd
    import scipy.sparse as sp

    from domains.imaging.analysis import frame_concentration

    rng = np.random.default_rng(0)
    n_images, cells = 40, 49
    cell = np.tile(np.arange(cells), n_images)
    values = np.zeros((n_images * cells, 3))
    values[:, 0] = rng.random(len(cell))  # spread over the whole frame
    values[cell == 24, 1] = 1.0  # always the centre cell (row 3, column 3)
    values[(cell == 0) | (cell == 1), 1] = 0.05
    table = frame_concentration(sp.csr_matrix(values), cell, (7, 7), ["even", "centre", "dead"], cells_share=0.05)
    row = table.set_index("feature")
    assert row.at["even", "region_share"] == pytest.approx(2 / 49, abs=0.02)  # 2 cells of 49
    assert row.at["centre", "region_share"] == pytest.approx(1.05 / 1.1)
    assert row.at["centre", "region_cells"] == "r0c0,r3c3" and row.at["centre", "region"] == "middle centre"
    assert np.isnan(row.at["dead", "region_share"]) and row.at["dead", "region"] == ""
    dense = frame_concentration(values, cell, (7, 7), ["even", "centre", "dead"], cells_share=0.05)
    pd.testing.assert_frame_equal(dense, table)
    with pytest.raises(Exception, match="grid cells"):
        frame_concentration(values, cell + 1, (7, 7), ["a", "b", "c"])
