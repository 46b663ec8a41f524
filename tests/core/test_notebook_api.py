"""The public API a scientist uses in a notebook (issue 16): records from plain strings, SAEs on numpy arrays,
``Catalog.encode`` on new sequences, short reprs, tidy example tables, export formats as one string, and a light
``Catalog.open``. Everything runs on ``tiny_catalog`` (tiny ESM-2 on 40 real OAS heavy chains, a 64-latent SAE)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import workbench
from workbench.catalog import Catalog
from workbench.errors import InputError, WorkbenchError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cat(tiny_catalog: Path) -> Catalog:
    return Catalog.open(tiny_catalog)


@pytest.fixture(scope="module")
def adapter(tiny_esm2: Path):  # type: ignore[no-untyped-def]
    return workbench.load_adapter(str(tiny_esm2))


@pytest.fixture(scope="module")
def sae(tiny_catalog: Path):  # type: ignore[no-untyped-def]
    from workbench.sae import load_sae

    return load_sae(tiny_catalog.parent / "sae")


def _same_batch(a, b) -> None:  # type: ignore[no-untyped-def]
    assert a.index == b.index and a.inputs.keys() == b.inputs.keys()
    for key in a.inputs:
        assert torch.equal(a.inputs[key], b.inputs[key])
    assert torch.equal(a.keep, b.keep)
    pd.testing.assert_frame_equal(a.obs, b.obs)


# ------------------------------------------------------------------------------------------------ 1. records


def test_make_batch_takes_plain_strings_and_pairs(adapter, cat: Catalog) -> None:  # type: ignore[no-untyped-def]
    from domains.sequence.records import SequenceRecord as DomainRecord

    assert workbench.SequenceRecord is DomainRecord  # one record type, exported by the core
    seqs = cat.sequences["sequence"].astype(str).tolist()[:3]
    records = [workbench.SequenceRecord(f"seq{i}", s) for i, s in enumerate(seqs)]
    from_strings = adapter.make_batch(seqs)
    _same_batch(from_strings, adapter.make_batch(records))
    assert from_strings.obs["sequence_id"].unique().tolist() == ["seq0", "seq1", "seq2"]
    assert len(from_strings.obs) == sum(len(s) for s in seqs)
    named = [("a", seqs[0]), ("b", seqs[1])]
    _same_batch(adapter.make_batch(named), adapter.make_batch([workbench.SequenceRecord(i, s) for i, s in named]))
    # batches() takes them too, with the same ids and rows
    got = list(adapter.batches(seqs, tokens_per_batch=10_000))
    want = list(adapter.batches(records, tokens_per_batch=10_000))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        _same_batch(a, b)
    # strings are validated against the model's alphabet; a bare string is not a list of records
    with pytest.raises(InputError, match="invalid residue 'J'"):
        adapter.make_batch(["EVQLJ"])
    with pytest.raises(InputError, match="not a single string"):
        adapter.make_batch(seqs[0])
    with pytest.raises(InputError, match="item #1"):
        adapter.make_batch([42])


# ------------------------------------------------------------------------------------------------ 2. SAE on numpy


def test_sae_takes_numpy_arrays_and_lists(sae, tiny_catalog: Path) -> None:  # type: ignore[no-untyped-def]
    store = workbench.open_store(tiny_catalog.parent / "store")
    x = np.asarray(store.activations(1)[:64])  # what the store returns (float16 on disk)
    t = torch.as_tensor(x, dtype=torch.float32)
    codes = sae.encode(x)
    assert isinstance(codes, torch.Tensor) and codes.dtype == torch.float32 and codes.shape == (64, 64)
    assert torch.equal(codes, sae.encode(t))
    assert torch.equal(sae.encode(x[:3].astype(np.float32).tolist()), sae.encode(t[:3]))
    a, b = sae.encode_sparse(x), sae.encode_sparse(t)
    assert torch.equal(a.rows, b.rows) and torch.equal(a.cols, b.cols) and torch.equal(a.values, b.values)
    assert torch.equal(sae.decode(codes.numpy()), sae.decode(codes))
    with torch.no_grad():
        assert torch.equal(sae(x).x_hat, sae(t).x_hat)
    assert codes.gt(0).any()


# ------------------------------------------------------------------------------------------------ 3. Catalog.encode


def test_catalog_encode_equals_the_model_and_sae_run_by_hand(cat, adapter, sae) -> None:  # type: ignore[no-untyped-def]
    sid = str(cat.sequences.index[4])
    seq = str(cat.sequences.at[sid, "sequence"])
    layer = int(cat.provenance["layer"])
    names = list(cat.features.index)
    frame = cat.encode(seq, features=names)
    assert list(frame.columns[:3]) == ["sequence_id", "position", "residue"] and list(frame.columns[-64:]) == names
    assert frame["sequence_id"].eq("seq0").all() and frame["position"].tolist() == list(range(1, len(seq) + 1))
    assert "".join(frame["residue"]) == seq
    # by hand: the model to the catalog's layer, the SAE, divided by the catalog's maxima (the old app computation)
    acts = adapter.activations(adapter.make_batch([seq]), [layer]).layers[layer]
    raw = sae.encode(acts).numpy()
    scale = cat.features["max_activation"].to_numpy(dtype=np.float64)
    want = raw / np.where(scale > 0, scale, 1.0)
    np.testing.assert_allclose(frame[names].to_numpy(), want, rtol=1e-5, atol=1e-6)
    # and the catalog's own per-sequence maxima (its store keeps float16 activations)
    x = cat.adata[sid].X
    stored = np.asarray(x.todense() if hasattr(x, "todense") else x).ravel()
    top = np.argsort(-stored)[:10]
    np.testing.assert_allclose(frame[names].to_numpy().max(axis=0)[top], stored[top], atol=0.01)
    # features=None: the features that fire, in catalog order; a number or an index names a feature too
    fired = cat.encode(seq)
    assert list(fired.columns[4:]) == [n for n, m in zip(names, want.max(axis=0)) if m > 0]
    assert list(cat.encode(seq, features=[3, "f00005", "7"]).columns[-3:]) == ["f00003", "f00005", "f00007"]


def test_catalog_encode_numbers_catalog_sequences(cat, adapter, sae) -> None:  # type: ignore[no-untyped-def]
    from workbench._catalog_encode import parse_positions

    assert "imgt" in cat.sequences.columns
    obs = cat.sequences
    sid = next(s for s in obs.index if parse_positions(obs.at[s, "imgt"], len(obs.at[s, "sequence"])))
    seq = str(obs.at[sid, "sequence"])
    mutated = ("A" if seq[10] != "A" else "G").join([seq[:10], seq[11:]])
    enc = cat.encode_sparse([(sid, seq), mutated], adapter=adapter, sae=sae)  # the app's path: models passed in
    assert enc.ids == [sid, "seq1"] and enc.sequences == {sid: seq, "seq1": mutated}
    assert enc.codes.shape == (2 * len(seq), 64) and enc.n_tokens == 2 * len(seq)
    imgt = enc.obs["imgt"]
    assert str(imgt.dtype) == "Int64"
    want = parse_positions(obs.at[sid, "imgt"], len(seq))
    assert [None if pd.isna(v) else int(v) for v in imgt[: len(seq)]] == want
    assert imgt[len(seq):].isna().all()  # not in the catalog: no numbering
    # the same codes as the catalog's own loaders (model_source and sae_path of the provenance)
    again = cat.encode_sparse([(sid, seq), mutated])
    assert (again.codes != enc.codes).nnz == 0
    # a sequence found by its residues under another id gets the numbering too
    renamed = cat.encode([("mine", seq)], features=["f00000"])
    assert [None if pd.isna(v) else int(v) for v in renamed["imgt"]] == want


def test_catalog_encode_explains_what_it_cannot_do(cat: Catalog, tmp_path: Path, tiny_catalog: Path) -> None:
    from workbench.catalog import write_catalog

    with pytest.raises(InputError, match="no sequences"):
        cat.encode([])
    with pytest.raises(InputError, match="invalid residue"):
        cat.encode("EVQL1")
    with pytest.raises(WorkbenchError, match="no feature"):
        cat.encode("EVQLVESGG", features=["nope"])
    adata = cat.adata.copy()
    adata.uns["provenance"] = {**dict(adata.uns["provenance"]), "sae_path": str(tmp_path / "gone")}
    other = Catalog.open(write_catalog(adata, tmp_path / "catalog"))
    with pytest.raises(WorkbenchError, match="not on this machine"):
        other.encode("EVQLVESGG")


# ------------------------------------------------------------------------------------------------ 4. reprs


def test_feature_and_example_reprs_are_short(cat: Catalog) -> None:
    fid = str(cat.features["n_sequences"].astype(int).idxmax())
    info = cat.feature(fid)
    text = repr(info)
    assert len(text.splitlines()) <= 10 and len(text) < 1200 and max(len(line) for line in text.splitlines()) < 160
    assert fid in text and "top concept" in text and str(info["top_concept"]) in text and "examples" in text
    assert isinstance(info, dict) and info["feature"] == fid and len(info["examples"]) > 0  # still a dict
    html = info._repr_html_()
    assert html.startswith("<table>") and fid in html and len(html) < 3000
    ex = info["examples"][0]
    line = repr(ex)
    assert "\n" not in line and len(line) < 200 and ex.sequence_id in line and "[" in line
    assert f"max {float(np.max(ex.activations)):.2f} at {int(np.argmax(ex.activations)) + 1}" in line
    assert len(repr(info["examples"])) < 200 * len(info["examples"])


# ------------------------------------------------------------------------------------------------ 5. examples_frame


def test_examples_frame_is_one_tidy_row_per_example(cat: Catalog) -> None:
    fid = str(cat.features["n_sequences"].astype(int).idxmax())
    frame = cat.examples_frame(fid)
    examples = cat.examples(fid)
    assert list(frame.columns) == ["feature", "kind", "rank", "sequence_id", "activation", "length", "peak", "residue",
                                   "imgt", "window"]
    assert len(frame) == len(examples) and (frame["feature"] == fid).all()
    for row, ex in zip(frame.itertuples(), examples):
        assert row.sequence_id == ex.sequence_id and row.kind == ex.kind and row.length == len(ex.sequence)
        assert row.activation == pytest.approx(float(np.max(ex.activations)), abs=1 / 255 + 1e-6)
        assert row.peak == int(np.argmax(ex.activations)) + 1 and row.residue == ex.sequence[row.peak - 1]
        assert f"[{row.residue}]" in row.window and row.window.replace("…", "").replace("[", "").replace("]", "") \
            in ex.sequence
    everything = cat.examples_frame()
    assert len(everything) == cat.summary["n_examples"] and set(everything.columns) == set(frame.columns)
    pd.testing.assert_frame_equal(everything[everything["feature"] == fid].reset_index(drop=True), frame)


# ------------------------------------------------------------------------------------------------ 6. export formats


def test_export_takes_formats_as_one_string(cat: Catalog, tmp_path: Path) -> None:
    files = cat.export(tmp_path / "p", formats="parquet")
    tables = {p.suffix for p in files if p.stem not in ("summary", "provenance", "metrics", "schema")}
    assert tables == {".parquet"} and not list((tmp_path / "p").rglob("*.csv"))
    assert len([p for p in files if p.suffix == ".parquet"]) == 3 + len(cat.tables)
    files = cat.export(tmp_path / "pc", formats="parquet, csv")
    assert {p.suffix for p in files} == {".parquet", ".csv", ".json"}
    assert not [p for p in files if p.suffix == ".json" and p.parent.name == "tables"]
    assert {p.suffix for p in cat.export(tmp_path / "l", formats=["csv"])} == {".csv", ".json"}
    with pytest.raises(InputError, match="unknown export format"):
        cat.export(tmp_path / "bad", formats="parquet,xlsx")


# ------------------------------------------------------------------------------------------------ 7. a light open


def test_open_loads_neither_pandas_nor_anndata(tiny_catalog: Path) -> None:
    code = ("import sys, json; from workbench.catalog import Catalog; c = Catalog.open(sys.argv[1]); "
            "heavy = [m for m in ('pandas', 'anndata', 'scipy', 'torch', 'workbench.associate') if m in sys.modules]; "
            "print(json.dumps([heavy, len(c.features), repr(c)]))")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_catalog)], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    heavy, n_features, text = json.loads(out.stdout.strip().splitlines()[-1])
    assert heavy == [] and n_features == 64 and "features=64" in text


def test_catalog_module_keeps_its_public_names() -> None:
    import workbench.catalog as module
    from workbench import _catalog_write
    from workbench.catalog import CatalogParts, build_catalog, catalog_parts, write_catalog

    assert callable(build_catalog) and callable(catalog_parts) and callable(write_catalog)
    assert module.build_catalog is _catalog_write.build_catalog and module.CatalogParts is CatalogParts
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    with pytest.raises(AttributeError):
        getattr(module, "no_such_name")


def test_h5py_reader_equals_anndatas(tiny_catalog: Path) -> None:
    import h5py
    from anndata.io import read_elem as anndata_read

    from workbench._catalog_read import read_elem

    def same(a, b, where):  # type: ignore[no-untyped-def]
        if isinstance(a, dict):
            assert isinstance(b, dict) and a.keys() == b.keys(), where
            for k in a:
                same(a[k], b[k], f"{where}/{k}")
        elif isinstance(a, pd.DataFrame):
            assert list(a.columns) == list(b.columns) and [str(i) for i in a.index] == [str(i) for i in b.index], where
            for c in a.columns:
                same(a[c].array, b[c].array, f"{where}:{c}")
        elif isinstance(getattr(a, "dtype", None), pd.CategoricalDtype):
            a, b = pd.Categorical(a), pd.Categorical(b)
            assert np.array_equal(a.codes, b.codes) and list(a.categories) == list(b.categories), where
        elif hasattr(a, "dtype") and np.ndim(a):
            a, b = np.asarray(a), np.asarray(b)
            assert a.dtype == b.dtype and a.shape == b.shape, where
            assert pd.Series(a.ravel()).equals(pd.Series(b.ravel())), where
        else:
            assert type(a) is type(b) and (a == b or (a != a and b != b)), (where, a, b)

    with h5py.File(tiny_catalog / "catalog.h5ad", "r") as h5:
        keys = ["obs", "var", "varm/decoder", "varm/umap", *(f"uns/{k}" for k in h5["uns"])]
        for key in keys:
            same(anndata_read(h5[key]), read_elem(h5[key]), key)
    assert len(keys) > 8
