"""The vision adapter: layers by name, weights loading, one store row per position, pooling, edits, rebuilding inputs."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import workbench
from domains.imaging.readers import bundled, read_medmnist
from workbench.errors import ModelError, StoreError, WorkbenchError
from workbench.registry import load_adapter


@pytest.fixture(scope="module")
def records() -> list:
    recs = read_medmnist(bundled("pneumoniamnist"), splits=("train", "test"), limit=4)
    return recs


def _hooked(adapter, records, module_name: str) -> torch.Tensor:
    out = {}
    module = dict(adapter.model.named_modules())[module_name]
    handle = module.register_forward_hook(lambda m, i, o: out.setdefault("x", o))
    try:
        with torch.no_grad():
            adapter.model(adapter.preprocess([r.image for r in records]))
    finally:
        handle.remove()
    return out["x"]


def test_layers_by_name_and_number(tiny_vision_card: Path) -> None:
    adapter = load_adapter(str(tiny_vision_card))
    assert adapter.layer_names() == {0: "stem", 1: "layer1", 2: "layer2", 3: "layer3"}
    assert adapter.check_layers(["layer3", 1, "2"]) == [1, 2, 3]
    with pytest.raises(ModelError, match="no layer 'layer9' .layers stem"):
        adapter.check_layers(["layer9"])
    with pytest.raises(ModelError, match="no layer 7"):
        adapter.check_layers([7])
    shapes = adapter.layer_shapes()
    assert shapes == {0: (4, 28, 28), 1: (4, 28, 28), 2: (8, 14, 14), 3: (8, 7, 7)}


def test_store_has_one_row_per_position(tiny_vision_card: Path, records: list, tmp_path: Path) -> None:
    adapter = load_adapter(str(tiny_vision_card))
    store = workbench.extract(adapter, records, layers=["layer2"], out=tmp_path / "s", dtype="float32", progress=False)
    assert store.layers == [2] and store.d_model == 8
    assert store.n_tokens == len(records) * 14 * 14
    obs = store.obs()
    assert {"sequence_id", "position", "y", "x", "split", "label"} <= set(obs.columns)
    first = obs[obs["sequence_id"] == records[0].id]
    assert first["position"].tolist() == list(range(1, 197))
    assert (first["y"].to_numpy() * 14 + first["x"].to_numpy() == np.arange(196)).all()
    assert set(store.sequences["split"]) == {"train", "test"}
    ref = _hooked(adapter, records, "layer2")  # (B, C, H, W)
    got = store.activations(2).reshape(len(records), 14, 14, 8)
    np.testing.assert_allclose(got, ref.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_layers_of_different_shapes_cannot_share_a_store(tiny_vision_card: Path, records: list, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="different shapes"):
        workbench.extract(str(tiny_vision_card), records, layers=["layer2", "layer3"], out=tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists() and not (tmp_path / "s.partial").exists()
    # same shape: stem and layer1 (4 x 28 x 28) share one
    store = workbench.extract(str(tiny_vision_card), records[:2], layers=["stem", "layer1"], out=tmp_path / "ok", progress=False)
    assert store.layers == [0, 1] and store.n_tokens == 2 * 28 * 28


def test_pooled_rows_and_pooled_edits(tiny_vision_card: Path, records: list, tmp_path: Path) -> None:
    adapter = load_adapter(str(tiny_vision_card))
    pooled = adapter.pooled()
    store = workbench.extract(pooled, records, layers=[3], out=tmp_path / "p", dtype="float32", progress=False)
    assert store.n_tokens == len(records)
    ref = _hooked(adapter, records, "layer3").mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(store.activations(3), ref, atol=1e-5)
    batch = next(pooled.batches(records, tokens_per_batch=100))
    clean = pooled.run_with_edit(batch, 3, None)
    assert torch.allclose(pooled.run_with_edit(batch, 3, lambda h: h), clean, atol=1e-6)
    # moving the pooled vector by d moves every position by d: the classifier's pooled input moves by d
    shift = torch.randn(8)
    edited = pooled.run_with_edit(batch, 3, lambda h: h + shift)
    expected = clean + shift @ adapter.model.fc.weight.T.detach()
    assert torch.allclose(edited, expected, atol=1e-4)


def test_edits_and_classifier_loss(tiny_vision_card: Path, records: list) -> None:
    adapter = load_adapter(str(tiny_vision_card))
    adapter.prepare([3])
    batch = next(adapter.batches(records, tokens_per_batch=49 * 3))
    assert batch.keep.shape == (3, 49) and len(batch.obs) == 3 * 49
    clean = adapter.run_with_edit(batch, 3, None)
    assert clean.shape == (3, 2)
    assert torch.allclose(adapter.run_with_edit(batch, 3, lambda h: h), clean)
    assert not torch.allclose(adapter.run_with_edit(batch, 3, torch.zeros_like), clean)
    total, count = adapter.lm_loss(batch, layer=3)
    labels = torch.tensor([r.meta["label"] for r in records[:3]])
    assert count == 3
    assert total == pytest.approx(float(torch.nn.functional.cross_entropy(clean, labels, reduction="sum")), rel=1e-5)
    probs = adapter.predict(records)
    assert probs.shape == (len(records), 2) and torch.allclose(probs.sum(1), torch.ones(len(records)))


def test_records_from_store_reads_the_same_pixels(tiny_vision_card: Path, records: list, tmp_path: Path) -> None:
    adapter = load_adapter(str(tiny_vision_card))
    store = workbench.extract(adapter, records, layers=[3], out=tmp_path / "s", progress=False)
    ids = [records[5].id, records[0].id]
    again = adapter.records_from_store(store, ids)
    assert [r.id for r in again] == ids
    np.testing.assert_array_equal(again[0].image, records[5].image)
    with pytest.raises(StoreError, match="no images"):
        adapter.records_from_store(store, ["nope"])


def test_random_control_differs(tiny_vision_card: Path, records: list) -> None:
    adapter = load_adapter(str(tiny_vision_card))
    rand = adapter.randomized(1)
    assert rand.weights_hash() != adapter.weights_hash()
    assert rand.randomized(1).weights_hash() == rand.weights_hash()  # reproducible from the seed
    assert adapter.weights_hash() == load_adapter(str(tiny_vision_card)).weights_hash()


def test_weights_loading_paths(tmp_path: Path) -> None:
    from domains.imaging.testing import write_tiny_vision_card

    card = write_tiny_vision_card(tmp_path / "pt", weights_format="pt")
    assert load_adapter(str(card)).layer_names()[3] == "layer3"
    # a pickle with arbitrary objects is refused by weights_only loading
    (tmp_path / "pt" / "tiny-cnn.pt").write_bytes(pickle.dumps({"state_dict": object()}))
    with pytest.raises(ModelError, match="weights-only"):
        load_adapter(str(card))
    # weights of another shape
    wrong = write_tiny_vision_card(tmp_path / "wrong", widths=(4, 8, 16), name="wrong")
    text = wrong.read_text().replace("- 16", "- 8")
    wrong.write_text(text)
    with pytest.raises(ModelError):
        load_adapter(str(wrong))
    (tmp_path / "wrong" / "wrong.safetensors").unlink()
    with pytest.raises(ModelError, match="not found"):
        load_adapter(str(wrong))


def test_shipped_cards_load_real_weights() -> None:
    from workbench.registry import list_models

    names = {c.name for c in list_models()}
    assert {"medcnn-pneumoniamnist", "medcnn-breastmnist"} <= names
    adapter = load_adapter("medcnn-pneumoniamnist")
    assert adapter.classes == ["normal", "pneumonia"] and adapter.positive_class == 1
    assert adapter.layer_shapes(["layer3"]) == {3: (128, 7, 7)}
    recs = read_medmnist(bundled("pneumoniamnist"), splits=("test",))
    probs = adapter.predict(recs)[:, 1].numpy()
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score([r.meta["label"] for r in recs], probs)
    assert auc > 0.9  # a trained model, not a random one


def test_cli_extract_by_layer_name(tiny_vision_card: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from workbench.cli import main

    npz = tmp_path / "small.npz"
    data = np.load(bundled("breastmnist"))
    np.savez(npz, **{k: data[k][:6] for k in data.files})
    rc = main(["extract", "--model", str(tiny_vision_card), "--input", str(npz), "--layers", "layer3", "--out",
               str(tmp_path / "store"), "--no-progress"])
    assert rc == 0
    store = workbench.open_store(tmp_path / "store")
    assert store.n_sequences == 18 and store.n_tokens == 18 * 49
    rc = main(["extract", "--model", str(tiny_vision_card), "--input", str(npz), "--layers", "layer9", "--out",
               str(tmp_path / "bad"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc != 0 and "no layer 'layer9'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
    with pytest.raises(WorkbenchError):
        workbench.extract(str(tiny_vision_card), str(tmp_path / "missing.npz"), layers=[3], out=tmp_path / "x", progress=False)


def test_cli_extract_a_folder_with_labels(tiny_vision_card: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from workbench.cli import main

    recs = read_medmnist(bundled("pneumoniamnist"), splits=("val",), limit=3)
    folder = tmp_path / "xrays"
    folder.mkdir()
    rows = ["file,finding"]
    for i, r in enumerate(recs):
        Image.fromarray(r.image[0]).save(folder / f"x{i}.png")
        rows.append(f"x{i}.png,{r.meta['label_name']}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    rc = main(["extract", "--model", str(tiny_vision_card), "--input", str(folder), "--labels", str(tmp_path / "labels.csv"),
               "--id-col", "file", "--label-col", "finding", "--layers", "layer3", "--out", str(tmp_path / "s"), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    store = workbench.open_store(tmp_path / "s")
    assert store.n_sequences == 3 and set(store.sequences["label_name"]) == {r.meta["label_name"] for r in recs}
    # a label row for an image that is not there: one-line error, nothing written
    (tmp_path / "labels.csv").write_text("\n".join(rows + ["ghost.png,normal"]) + "\n")
    rc = main(["extract", "--model", str(tiny_vision_card), "--input", str(folder), "--labels", str(tmp_path / "labels.csv"),
               "--id-col", "file", "--label-col", "finding", "--layers", "layer3", "--out", str(tmp_path / "bad"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "ghost" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_vector_layers_give_one_row_per_image(tmp_path: Path, records: list) -> None:
    import yaml

    from domains.imaging.testing import write_tiny_vision_card

    card = write_tiny_vision_card(tmp_path)
    data = yaml.safe_load(card.read_text())
    data["options"]["layers"] = {"block3": "layer3", "pooled": "pool", "logits": "fc"}
    data["n_layers"] = 2
    card.write_text(yaml.safe_dump(data, sort_keys=False))
    adapter = load_adapter(str(card))
    assert adapter.layer_names() == {0: "block3", 1: "pooled", 2: "logits"}
    store = workbench.extract(adapter, records, layers=["logits"], out=tmp_path / "fc", dtype="float32", progress=False)
    assert store.n_tokens == len(records) and store.d_model == 2
    with torch.no_grad():
        logits = adapter.model(adapter.preprocess([r.image for r in records]))
    np.testing.assert_allclose(store.activations(2), logits.numpy(), atol=1e-5)
    pooled = workbench.extract(adapter, records, layers=["pooled"], out=tmp_path / "pool", progress=False)
    assert pooled.n_tokens == len(records) and pooled.d_model == 8
    batch = next(adapter.batches(records, tokens_per_batch=100))
    assert torch.allclose(adapter.run_with_edit(batch, 2, lambda h: h + 1.0), logits[: len(batch.index)] + 1.0, atol=1e-5)
