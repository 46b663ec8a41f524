"""The feature catalog: built from a real tiny store and SAE, checked against independent computations, written
atomically, read back without pickling, searched and exported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from workbench.associate import FeatureMatrix, associate, sequence_split
from workbench.catalog import SCHEMA_VERSION, Catalog, build_catalog, describe_features, feature_families, write_catalog
from workbench.concepts import labels_from_spans
from workbench.errors import WorkbenchError

LAYER = 1


@pytest.fixture(scope="module")
def built(tiny_esm2, oas_fasta, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Store (layers 1 and 2), a TopK SAE trained on layer 1, motif + ANARCI labels, associations, catalog."""
    import workbench
    from domains.sequence.annotations import anarci_labels, motif_labels
    from workbench.associate import associate_store, feature_matrix
    from workbench.concepts import concat_labels
    from workbench.sae import TrainConfig, train_sae

    tmp = tmp_path_factory.mktemp("catalog")
    store = workbench.extract(str(tiny_esm2), oas_fasta, layers=[1, 2], out=tmp / "s", shard_tokens=800, progress=False)
    train = TrainConfig(n_tokens=256 * 200, batch_size=256, lr=3e-3, warmup_steps=5, checkpoint_every=0,
                        loss_recovered_sequences=0)
    result = train_sae(store, out=tmp / "sae", layer=LAYER, width=64, k=8, train=train, progress=False)
    labels = concat_labels([motif_labels(store), anarci_labels(store)]).select(min_tokens=5)
    features = feature_matrix(store, result.sae, layer=LAYER)
    sae_assoc = associate_store(store, labels, layer=LAYER, sae=result.sae, n_permutations=0)
    neuron_assoc = associate_store(store, labels, layer=LAYER, n_permutations=0)
    extra = pd.DataFrame({"feature": features.names[:5], "probe_weight": np.arange(5, dtype=float)})
    ids = store.sequences["sequence_id"].astype(str).tolist()
    obs_extra = pd.DataFrame({"tag": [f"T{i}" for i in range(len(ids))][::-1]}, index=pd.Index(ids[::-1], name="sequence_id"))
    adata = build_catalog(store, result.sae, features, sae_assoc, labels, layer=LAYER, controls={"neurons": neuron_assoc},
                          metrics=result.metrics, tables={"note": pd.DataFrame({"a": [1, 2], "b": ["x", None]})},
                          var_extra=extra, obs_extra=obs_extra, summary_extra={"domain": "antibody"}, n_top=5, n_per_bin=2,
                          seed=0)
    path = write_catalog(adata, tmp / "cat")
    return {"store": store, "sae": result.sae, "metrics": result.metrics, "labels": labels, "features": features,
            "assoc": sae_assoc, "neurons": neuron_assoc, "adata": adata, "path": path, "tmp": tmp}


def test_var_columns_agree_with_the_association(built) -> None:  # type: ignore[no-untyped-def]
    adata, assoc, features = built["adata"], built["assoc"], built["features"]
    var = adata.var
    for col in ("density", "max_activation", "n_sequences", "top_concept", "top_f1", "top_precision", "top_q",
                "top_threshold", "profile", "description", "family", "probe_weight"):
        assert col in var.columns, col
    assert list(var.index) == features.names and adata.shape == (built["store"].n_sequences, 64)
    best = assoc.pairs.groupby("feature")["test_f1"].max()
    np.testing.assert_allclose(var["top_f1"].reindex(best.index).to_numpy(), best.to_numpy())
    pairs = assoc.pairs.set_index(["feature", "concept"])
    for f in best.index[:10]:
        row = pairs.loc[(f, str(var.loc[f, "top_concept"]))]
        assert row["test_f1"] == pytest.approx(best[f]) and row["q_value"] == pytest.approx(var.loc[f, "top_q"])
        assert row["threshold"] == var.loc[f, "top_threshold"]
    np.testing.assert_allclose(var["density"], np.diff(features.values.tocsc().indptr) / features.values.shape[0])
    np.testing.assert_allclose(var["max_activation"], features.max_activation, rtol=1e-6)
    # Only significant, accurate pairs are named as a meaning; the rest are "weak: ..." (or dead / unexplained).
    for f, d in var["description"].astype(str).items():
        q, f1, concept = var.loc[f, "top_q"], var.loc[f, "top_f1"], var.loc[f, "top_concept"]
        if var.loc[f, "n_sequences"] == 0:
            assert d == "dead"
        elif q <= 0.05 and f1 >= 0.2:
            assert d.startswith(f"{concept} (F1 {f1:.2f}")
        else:
            assert d.startswith("weak: ") or d.startswith("unexplained")
    assert var["probe_weight"].iloc[:5].tolist() == [0, 1, 2, 3, 4] and var["probe_weight"].iloc[5:].isna().all()
    s = adata.uns["summary"]
    assert s["concepts_captured_sae"] == assoc.concepts_captured
    assert s["concepts_captured_neurons"] == built["neurons"].concepts_captured
    assert s["concepts_captured_random"] is None and s["n_features"] == 64 and s["domain"] == "antibody"
    assert s["fve"] == pytest.approx(built["metrics"]["fve"]) and "density" not in adata.uns["metrics"]
    prov = adata.uns["provenance"]
    assert prov["model"] == built["store"].model and prov["layer"] == LAYER
    assert prov["store_manifest_sha256"] == built["store"].manifest_sha256()
    assert prov["weights_sha256"] == built["store"].manifest["weights_sha256"] and prov["sae_config"]["width"] == 64


def test_x_is_the_max_over_tokens_computed_independently(built) -> None:  # type: ignore[no-untyped-def]
    import torch

    store, sae, adata = built["store"], built["sae"], built["adata"]
    maxes = built["features"].max_activation
    for sid in list(adata.obs_names[:3]) + [adata.obs_names[-1]]:
        with torch.no_grad():
            codes = sae.encode(torch.from_numpy(store.get_sequence(sid, LAYER))).numpy()
        norm = np.where(maxes > 0, codes / np.where(maxes > 0, maxes, 1), 0)
        row = adata.obs_names.get_loc(sid)
        np.testing.assert_allclose(adata.X[row].toarray().ravel(), norm.max(0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(adata.layers["mean"][row].toarray().ravel(), norm.mean(0), rtol=1e-4, atol=1e-6)
        residues = store.obs(["sequence_id", "residue"])
        assert adata.obs.loc[sid, "sequence"] == "".join(residues.loc[residues["sequence_id"] == sid, "residue"])
    assert isinstance(adata.X, sp.csr_matrix) and adata.X.dtype == np.float32
    assert list(adata.obs_names) == built["store"].sequences["sequence_id"].astype(str).tolist()
    assert adata.obs["tag"].iloc[0] == "T0" and adata.obs["tag"].iloc[-1] == f"T{adata.n_obs - 1}"
    dec = adata.varm["decoder"]
    np.testing.assert_allclose(np.linalg.norm(dec, axis=1), 1, rtol=1e-4)


def test_examples_are_the_top_sequences_and_decode_to_the_activations(built) -> None:  # type: ignore[no-untyped-def]
    adata, features = built["adata"], built["features"]
    ex = adata.uns["examples"]
    flat = adata.uns["example_activations"]
    starts = np.r_[0, np.cumsum(adata.obs["n_tokens"].to_numpy())[:-1]]
    values = features.values.tocsc()
    x = adata.X.tocsc()
    live = [j for j in range(64) if x[:, j].nnz]
    for j in live[:12]:
        name = adata.var_names[j]
        mine = ex[ex["feature"].astype(str) == name]
        col = x[:, j].toarray().ravel()
        top = mine[mine["kind"] == "top"]
        assert len(top) == min(5, int((col > 0).sum()))
        np.testing.assert_allclose(np.sort(top["max_activation"].to_numpy())[::-1], np.sort(col)[::-1][: len(top)], rtol=1e-6)
        assert (mine["sequence_id"].astype(str).value_counts() == 1).all()  # no sequence twice for a feature
        others = mine[mine["kind"] != "top"]
        assert (others["max_activation"].to_numpy() <= top["max_activation"].min() + 1e-6).all()
        for r in mine.itertuples():
            s = adata.obs_names.get_loc(str(r.sequence_id))
            assert r.max_activation == pytest.approx(col[s])
            expected = values[starts[s] : starts[s] + r.length, j].toarray().ravel()
            decoded = flat[r.offset : r.offset + r.length] / 255.0
            assert np.abs(decoded - expected).max() <= 1 / 255 + 1e-6
            assert ((decoded > 0) == (expected > 0)).all()
    kinds = set(ex["kind"].astype(str))
    assert "top" in kinds and kinds <= {"top", "q0-0.25", "q0.25-0.5", "q0.5-0.75", "q0.75-1"} and len(kinds) > 1


def test_families_and_umap_are_deterministic(built) -> None:  # type: ignore[no-untyped-def]
    dec = built["adata"].varm["decoder"]
    fam1, xy1 = feature_families(dec, seed=0)
    fam2, xy2 = feature_families(dec, seed=0)
    assert fam1.shape == (64,) and xy1.shape == (64, 2)
    np.testing.assert_array_equal(fam1, fam2)
    np.testing.assert_array_equal(xy1, xy2)
    assert len(set(fam1)) > 1 and np.isfinite(xy1).all()
    dead = np.zeros(64, dtype=bool)
    dead[[3, 7]] = True
    fam3, xy3 = feature_families(dec, seed=0, dead=dead)
    assert set(fam3[dead]) == {"dead"} and np.isnan(xy3[dead]).all() and np.isfinite(xy3[~dead]).all()
    adata = built["adata"]
    assert adata.varm["umap"].shape == (64, 2) and str(adata.var["family"].dtype) == "category"


def test_written_catalog_round_trips_without_pickle(built) -> None:  # type: ignore[no-untyped-def]
    import anndata as ad
    import h5py

    path, adata = built["path"], built["adata"]
    assert sorted(p.name for p in path.iterdir()) == ["catalog.h5ad", "schema.json"]
    assert not path.with_name(path.name + ".partial").exists()
    schema = json.loads((path / "schema.json").read_text())
    assert schema["schema_version"] == SCHEMA_VERSION and "description" in schema["var_columns"]
    assert {"association", "best_sae", "best_neurons", "profile", "note"} <= set(schema["tables"])

    back = ad.read_h5ad(path / "catalog.h5ad")
    assert (back.X != adata.X).nnz == 0
    cat = Catalog.open(path)
    pd.testing.assert_frame_equal(cat.features, back.var)
    pd.testing.assert_frame_equal(cat.features.astype(str), adata.var.astype(str))
    assert cat.summary == json.loads(json.dumps(cat.summary))  # plain Python, JSON-ready
    assert cat.summary["concepts_captured_random"] is None and cat.summary["n_tokens"] == built["store"].n_tokens
    assert cat.provenance["sae_config"]["layer"] == LAYER and cat.schema_version == SCHEMA_VERSION
    pairs = cat.table("association")
    np.testing.assert_allclose(pairs["test_f1"], built["assoc"].pairs["test_f1"])
    assert (pairs["concept"].astype(str).to_numpy() == built["assoc"].pairs["concept"].to_numpy()).all()
    note = cat.table("note")
    assert note["a"].tolist() == [1, 2] and note["b"].iloc[0] == "x" and pd.isna(note["b"].iloc[1])
    np.testing.assert_array_equal(cat.umap, adata.varm["umap"])

    # Nothing pickled: every element carries an anndata encoding, every dataset is numeric or text.
    with h5py.File(path / "catalog.h5ad", "r") as h5:
        bad = []

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                kind = obj.dtype.kind
                if not (kind in "biuf" or h5py.check_string_dtype(obj.dtype) is not None):
                    bad.append((name, str(obj.dtype)))
            parts = ("/codes", "/categories", "/data", "/indices", "/indptr", "/mask", "/values")
            if "encoding-type" not in obj.attrs and not name.endswith(parts):
                bad.append((name, "no encoding"))

        h5.visititems(visit)
    assert not bad, bad


def test_catalog_feature_examples_search_concept_neighbors(built) -> None:  # type: ignore[no-untyped-def]
    cat = Catalog.open(built["path"])
    var = cat.features
    named = var[var["top_q"] <= 0.05].sort_values("top_f1", ascending=False)
    fid = str(named.index[0])
    info = cat.feature(fid)
    assert info["feature"] == fid and info["top_concept"] == str(named.iloc[0]["top_concept"])
    assert info["concepts"].iloc[0]["concept"] == info["top_concept"] and (info["concepts"]["feature"].astype(str) == fid).all()
    assert cat.feature(int(fid[1:]))["feature"] == fid and cat.feature(fid[1:])["feature"] == fid

    examples = cat.examples(fid)
    assert examples[0].kind == "top" and len(examples) == len(info["examples"])
    for e in examples:
        assert len(e.activations) == len(e.sequence) and e.activations.dtype == np.float32
    assert max(e.activations.max() for e in examples) == pytest.approx(1.0, abs=1 / 255)
    top_row = built["adata"].obs_names.get_loc(examples[0].sequence_id)
    assert examples[0].activations.max() == pytest.approx(built["adata"].X[top_row, int(fid[1:])], abs=1 / 255)

    hits = cat.search(fid)
    assert hits.iloc[0]["feature"] == fid and hits.iloc[0]["match"] == "id"
    concept = str(info["top_concept"])
    hits = cat.search(concept.upper(), limit=5)
    assert len(hits) <= 5 and (hits["match"] == "concept").all() and fid in set(hits["feature"])
    assert (hits["concept"].str.lower().str.contains(concept.lower(), regex=False)).all()
    assert hits["test_f1"].is_monotonic_decreasing
    descriptions = var["description"].astype(str)
    kinds = [w for w in ("unexplained", "weak") if descriptions.str.startswith(w).any()]
    word = kinds[0] if kinds else descriptions[descriptions != "dead"].iloc[0].split()[0]  # else a named concept
    hits = cat.search(word)
    found = (hits["description"].astype(str) + " " + hits["concept"].astype(str)).str.lower()
    assert len(hits) and found.str.contains(word.lower(), regex=False).all()
    assert cat.search("no such thing at all").empty

    table = cat.concept(concept, limit=3)
    sae_rows = table[table["set"] == "sae"]
    assert len(sae_rows) == 3 and sae_rows["test_f1"].is_monotonic_decreasing
    assert sae_rows.iloc[0]["test_f1"] == pytest.approx(built["assoc"].pairs.query("concept == @concept")["test_f1"].max())
    neurons = built["neurons"].best.set_index("concept").loc[concept]
    row = table[table["set"] == "neurons"].iloc[0]
    assert row["feature"] == neurons["best_feature"] and row["test_f1"] == pytest.approx(neurons["test_f1"])
    assert cat.concept(concept.lower()).iloc[0]["concept"] == concept
    with pytest.raises(WorkbenchError, match="no concept"):
        cat.concept("region=NOPE")

    nb = cat.neighbors(fid, k=5)
    dec = built["adata"].varm["decoder"]
    sims = dec @ dec[int(fid[1:])] / np.linalg.norm(dec, axis=1) / np.linalg.norm(dec[int(fid[1:])])
    sims[int(fid[1:])] = -np.inf
    assert len(nb) == 5 and fid not in set(nb["feature"]) and nb["cosine"].is_monotonic_decreasing
    assert nb.iloc[0]["feature"] == f"f{int(np.argmax(sims)):05d}" and nb.iloc[0]["cosine"] == pytest.approx(sims.max(), rel=1e-5)
    with pytest.raises(WorkbenchError, match="out of range"):
        cat.feature(10_000)
    with pytest.raises(WorkbenchError, match="no table"):
        cat.table("nope")


def test_export_reads_back_equal(built) -> None:  # type: ignore[no-untyped-def]
    cat = Catalog.open(built["path"])
    out = built["tmp"] / "export"
    written = cat.export(out)
    assert all(p.is_file() for p in written) and not out.with_name("export.partial").exists()
    names = {str(p.relative_to(out)) for p in written}
    for stem in ("features", "sequences", "examples", "tables/association", "tables/best_neurons", "tables/note"):
        assert {f"{stem}.parquet", f"{stem}.csv", f"{stem}.json"} <= names
    features = cat.features.rename_axis("feature").reset_index()
    parquet = pd.read_parquet(out / "features.parquet")
    pd.testing.assert_frame_equal(parquet.drop(columns=["umap_1", "umap_2"]), features)
    csv = pd.read_csv(out / "features.csv", float_precision="round_trip")
    js = pd.read_json(out / "features.json", orient="records")
    for col in ("density", "max_activation", "top_f1", "n_sequences"):
        dtype = features[col].dtype
        np.testing.assert_array_equal(csv[col].astype(dtype), features[col])  # CSV keeps the shortest exact repr
        np.testing.assert_allclose(js[col].astype(dtype), features[col], rtol=1e-12)  # JSON: 15 significant digits
    assert csv["description"].tolist() == features["description"].astype(str).tolist()
    assert js["description"].tolist() == features["description"].astype(str).tolist()
    pairs = cat.table("association")
    readers = {"parquet": pd.read_parquet, "csv": pd.read_csv, "json": lambda p: pd.read_json(p, orient="records")}
    for fmt, reader in readers.items():
        back = reader(out / f"tables/association.{fmt}")
        assert back["concept"].astype(str).tolist() == pairs["concept"].astype(str).tolist()
        np.testing.assert_allclose(back["test_f1"], pairs["test_f1"], rtol=1e-9)
        np.testing.assert_allclose(back["q_value"], pairs["q_value"], rtol=1e-9)
    ex = pd.read_parquet(out / "examples.parquet")
    first = cat.examples(str(ex.iloc[0]["feature"]))[0]
    np.testing.assert_allclose(np.asarray(ex.iloc[0]["activations"]), first.activations, atol=1e-4)
    ex_csv = pd.read_csv(out / "examples.csv")
    np.testing.assert_allclose(np.array(ex_csv.iloc[0]["activations"].split(), dtype=float), first.activations, atol=1e-4)
    assert json.loads((out / "summary.json").read_text()) == cat.summary
    assert json.loads((out / "provenance.json").read_text())["model"] == cat.provenance["model"]
    with pytest.raises(WorkbenchError, match="not empty"):
        cat.export(out, formats=("csv",))
    assert len(cat.export(out, formats=("csv",), overwrite=True)) < len(written)
    assert not (out / "features.parquet").exists()


def test_mismatched_inputs_are_refused(built) -> None:  # type: ignore[no-untyped-def]
    b = built
    with pytest.raises(WorkbenchError, match="layer 1.*layer 2"):
        build_catalog(b["store"], b["sae"], b["features"], b["assoc"], b["labels"], layer=2)
    short = FeatureMatrix(b["features"].values[:-1], b["features"].max_activation, b["features"].names)
    with pytest.raises(WorkbenchError, match="different stores"):
        build_catalog(b["store"], b["sae"], short, b["assoc"], b["labels"], layer=LAYER)


def test_write_is_atomic_and_refuses_to_clobber(built, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import anndata as ad

    adata = built["adata"]
    real = ad.AnnData.write_h5ad

    def half_then_fail(self, filename, **kw):  # type: ignore[no-untyped-def]
        real(self, filename, **kw)
        Path(filename).write_bytes(Path(filename).read_bytes()[:1000])
        raise OSError("disk full")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_catalog(adata, tmp_path / "cat")
    assert not (tmp_path / "cat").exists() and not (tmp_path / "cat.partial").exists()
    monkeypatch.setattr(ad.AnnData, "write_h5ad", real)

    out = write_catalog(adata, tmp_path / "cat")
    with pytest.raises(WorkbenchError, match="not empty"):
        write_catalog(adata, out)
    adata.uns["summary"]["marker"] = "second"
    try:
        write_catalog(adata, out, overwrite=True)
    finally:
        del adata.uns["summary"]["marker"]
    assert Catalog.open(out).summary["marker"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat"]


def test_open_refuses_non_catalogs_and_newer_schemas(built, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    import anndata as ad
    import h5py

    with pytest.raises(WorkbenchError, match="not a catalog"):
        Catalog.open(tmp_path)
    plain = tmp_path / "plain.h5ad"
    ad.AnnData(np.zeros((2, 2), dtype=np.float32)).write_h5ad(plain)
    with pytest.raises(WorkbenchError, match="not a workbench catalog"):
        Catalog.open(plain)
    (tmp_path / "junk.h5ad").write_text("hello")
    with pytest.raises(WorkbenchError, match="not an HDF5"):
        Catalog.open(tmp_path / "junk.h5ad")
    newer = tmp_path / "newer.h5ad"
    shutil.copyfile(built["path"] / "catalog.h5ad", newer)
    with h5py.File(newer, "r+") as h5:
        attrs = dict(h5["uns/schema_version"].attrs)
        del h5["uns/schema_version"]
        h5["uns"].create_dataset("schema_version", data="2.0", dtype=h5py.string_dtype())
        h5["uns/schema_version"].attrs.update(attrs)
    with pytest.raises(WorkbenchError, match="newer"):
        Catalog.open(newer)
    assert Catalog.open(built["path"] / "catalog.h5ad").features.shape[0] == 64


def _toy() -> tuple[FeatureMatrix, object, list[str], np.ndarray]:
    """60 sequences x 40 residues; region=A at 5-9, region=B at 20-35, imgt=1..30 per residue."""
    n_seq, length = 60, 40
    ids = [f"t{i}" for i in range(n_seq)]
    obs = pd.DataFrame({"sequence_id": np.repeat(ids, length), "position": np.tile(np.arange(1, length + 1), n_seq)})
    spans = [pd.DataFrame({"sequence_id": ids, "start": 5, "end": 9, "concept": "region=A"}),
             pd.DataFrame({"sequence_id": ids, "start": 20, "end": 35, "concept": "region=B"})]
    for p in range(1, 31):
        spans.append(pd.DataFrame({"sequence_id": ids, "start": p, "end": p, "concept": f"imgt={p}"}))
    labels = labels_from_spans(obs, pd.concat(spans, ignore_index=True))
    pos = obs["position"].to_numpy()
    x = np.zeros((len(obs), 4), dtype=np.float32)
    x[:, 0] = ((pos >= 5) & (pos <= 9)) * 1.0  # region=A exactly
    x[:, 3] = (pos == 38) * 1.0  # fires where no concept is labelled; f2 is dead
    x[:, 1] = 1.0  # fires everywhere: no enrichment
    feats = FeatureMatrix(sp.csr_matrix(x), x.max(0), ["f00000", "f00001", "f00002", "f00003"])
    return feats, labels, ids, np.repeat(np.arange(n_seq), length)


def test_describe_features_names_only_significant_concepts() -> None:
    feats, labels, ids, token_seq = _toy()
    assoc = associate(feats, labels, ids, token_seq, n_permutations=0)
    d = describe_features(assoc, labels, feats, profile_groups=("region", "imgt", "absent"), token_sequence=token_seq)
    assert list(d.columns) == ["top_concept", "top_f1", "top_precision", "top_q", "top_threshold", "profile", "description"]
    a = d.loc["f00000"]
    assert a["top_concept"] == "region=A" and a["top_f1"] == pytest.approx(1.0) and a["top_q"] < 1e-10
    assert a["description"].startswith("region=A (F1 1.00, q ") and "100% region=A" in a["description"]
    assert "100% imgt=5-9" in a["description"] and a["profile"].startswith("region: A 100%; imgt: 5-9 100%")
    everywhere = d.loc["f00001"]
    assert everywhere["top_q"] == pytest.approx(1.0) and everywhere["description"].startswith("weak: region=B")
    assert "fires 100% of tokens in 100% of sequences" in everywhere["description"]
    assert "region=B" not in everywhere["description"].split(";", 2)[-1]  # 40% of mass on B is no enrichment
    assert d.loc["f00002", "description"] == "dead" and np.isnan(d.loc["f00002", "top_f1"])
    assert d.loc["f00003", "description"] == "unexplained; fires 2.5% of tokens in 100% of sequences"
    assert pd.isna(d.loc["f00003", "top_concept"])
    assert sequence_split(ids).any()  # both halves present, so test F1 is defined
