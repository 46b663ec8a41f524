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
    heat = cat.heatmap(top.activations)
    assert heat.shape == (28, 28) and heat.max() > 0
    # the hottest 4x4 block of the upsampled map sits over the hottest grid cell
    cell = int(np.argmax(top.activations))
    gy, gx = divmod(cell, 7)
    block = heat[gy * 4 : gy * 4 + 4, gx * 4 : gx * 4 + 4].mean()
    assert block >= np.sort([heat[i * 4 : i * 4 + 4, j * 4 : j * 4 + 4].mean() for i in range(7) for j in range(7)])[-3]
    with pytest.raises(Exception, match="grid"):
        cat.heatmap(np.zeros(10))


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
    table = pathology_effects(adapter, sae, ordered, pooled, feats.names, layer=3, features=live, positive=1, n_images=5)
    assert list(table["feature"]) == live and (table["n_firing"] > 0).all()
    assert (table["abs_dlogit_firing"] > 0).all()
    # images where a feature is silent are untouched by its ablation
    assert np.allclose(table["dlogit_other"].fillna(0.0), 0.0, atol=1e-5)
    with pytest.raises(Exception, match="no features"):
        pathology_effects(adapter, sae, ordered, pooled, feats.names, layer=3, features=["f99999"], positive=1)


def test_disagreements_pick_the_right_images() -> None:
    from domains.imaging.analysis import disagreements

    rng = np.random.default_rng(0)
    n = 100
    pooled = rng.random((n, 3))
    p_model = rng.random(n)
    pooled[0] = 10.0  # strongest pathology features
    p_model[0] = 0.05  # but the model says normal
    pooled[1] = -1.0
    p_model[1] = 0.99
    label = np.zeros(n, bool)
    label[0] = True
    table = disagreements([f"i{i}" for i in range(n)], label, p_model, pooled, ["a", "b", "c"], features=["a", "b"])
    high = table[table["kind"] == "model normal, features high"]
    silent = table[table["kind"] == "model pathology, features silent"]
    assert high.iloc[0]["image_id"] == "i0" and not bool(high.iloc[0]["model_correct"])
    assert silent.iloc[0]["image_id"] == "i1"
    assert (high["p_model"] < 0.5).all() and (silent["p_model"] >= 0.5).all()
    assert disagreements(["x"], label[:1], p_model[:1], pooled[:1], ["a", "b", "c"], features=[]).empty


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
