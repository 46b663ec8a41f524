"""Cross-model universality of SAE features: correlations of codes on shared tokens, the within-sequence null,
refusals of stores that do not match, the CLI verb and the round trip through a catalog."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import workbench
from workbench.catalog import Catalog
from workbench.cli import main
from workbench.concepts import ConceptLabels
from workbench.errors import InputError
from workbench.sae import SAEConfig, SparseAutoencoder, load_sae
from workbench._universality import (
    Universality, _within_sequence_permutation, summary_lines, universality, write_universality,
)


@pytest.fixture(scope="module")
def tiny(tiny_catalog: Path) -> dict[str, Path]:
    """The tiny catalog's store (tiny ESM-2 layer 1 on 40 OAS heavy chains), its 64-latent SAE and the catalog."""
    return {"store": tiny_catalog.parent / "store", "sae": tiny_catalog.parent / "sae", "catalog": tiny_catalog}


def _random_sae(d_in: int, seed: int, width: int = 64, k: int = 8) -> SparseAutoencoder:
    torch.manual_seed(seed)
    return SparseAutoencoder(SAEConfig(d_in=d_in, width=width, k=k, normalize=False)).eval()


def _noise_copy(store_path: Path, out: Path, seed: int) -> Path:
    """The same tokens (ids, positions) as ``store_path`` with Gaussian noise as activations."""
    shutil.copytree(store_path, out)
    rng = np.random.default_rng(seed)
    store = workbench.open_store(out)
    for i in range(len(store.shards)):
        for layer in store.layers:
            path = store.shard_dir(i) / f"layer_{layer}.npy"
            shape = np.load(path, mmap_mode="r").shape
            np.save(path, rng.standard_normal(shape).astype(np.float16))
    return out


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x, y)[0, 1])


def test_a_store_against_itself_shares_every_feature_and_the_null_does_not(tiny: dict[str, Path]) -> None:
    assert workbench.universality is universality and workbench.write_universality is write_universality
    res = workbench.universality(tiny["sae"], tiny["store"], tiny["sae"], tiny["store"], n_tokens=None, n_null=2, seed=3)
    s, t = res.summary, res.features
    store = workbench.open_store(tiny["store"])
    assert s["n_tokens"] == store.n_tokens and s["n_sequences"] == store.n_sequences
    assert s["n_live_a"] == s["n_live_b"] == len(t) and s["n_live_a"] + s["n_dead_a"] == 64
    # every live feature finds itself (r = 1), best match and one-to-one
    assert s["fraction_shared"] == 1.0 and s["fraction_shared_hungarian"] == 1.0
    assert np.allclose(t["r_best"], 1.0, atol=1e-6) and np.allclose(t["r_hungarian"], 1.0, atol=1e-6)
    assert (t["hungarian_b"] == t["feature"]).all()
    # the null breaks the alignment of tokens inside each sequence: far fewer features clear 0.5
    assert len(s["null_fractions"]) == 2 and s["null_fraction"] == pytest.approx(np.mean(s["null_fractions"]))
    assert s["null_fraction"] < 0.5 and s["median_r_null"] < 0.5
    assert (t["r_null_best"] < t["r_best"]).mean() > 0.5


def test_correlations_and_matches_equal_a_dense_computation(tiny: dict[str, Path]) -> None:
    store = workbench.open_store(tiny["store"])
    sae_a, sae_b = load_sae(tiny["sae"]), _random_sae(store.d_model, seed=1)
    res = universality(sae_a, store, sae_b, store, n_tokens=None, n_null=1)
    x = torch.from_numpy(store.activations(1))
    ca, cb = sae_a.encode(x).numpy().astype(np.float64), sae_b.encode(x).numpy().astype(np.float64)
    live_a = np.flatnonzero((ca > 0).any(0))
    live_b = np.flatnonzero((cb > 0).any(0))
    r = np.corrcoef(ca[:, live_a].T, cb[:, live_b].T)[: len(live_a), len(live_a):]
    t = res.features
    assert list(t["feature"]) == [f"f{i:05d}" for i in live_a]
    assert np.allclose(t["r_best"], r.max(1), atol=1e-6)
    assert list(t["best_b"]) == [f"f{live_b[j]:05d}" for j in r.argmax(1)]
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(r, maximize=True)
    assert t["r_hungarian"].to_numpy()[rows].sum() == pytest.approx(r[rows, cols].sum(), abs=1e-4)
    assert np.allclose(t["density_a"], (ca[:, live_a] > 0).mean(0))
    assert res.summary["median_r"] == pytest.approx(float(np.median(r.max(1))), abs=1e-6)


def test_unrelated_data_stays_near_the_null(tiny: dict[str, Path], tmp_path: Path) -> None:
    noise = workbench.open_store(_noise_copy(tiny["store"], tmp_path / "noise", seed=7))
    res = universality(tiny["sae"], tiny["store"], _random_sae(noise.d_model, seed=2), noise, n_null=3, seed=0)
    s = res.summary
    assert s["fraction_shared"] <= s["null_fraction"] + 0.1 and s["fraction_shared"] < 0.15
    assert s["median_r"] < 0.3


def test_whole_sequences_are_sampled_up_to_n_tokens(tiny: dict[str, Path]) -> None:
    store = workbench.open_store(tiny["store"])
    res = universality(tiny["sae"], store, tiny["sae"], store, n_tokens=1000, seed=5)
    lengths = store.sequences["n_tokens"].to_numpy()
    assert lengths.min() <= res.summary["n_tokens"] <= 1000
    assert res.summary["n_sequences"] < store.n_sequences
    again = universality(tiny["sae"], store, tiny["sae"], store, n_tokens=1000, seed=5)
    assert again.summary["n_tokens"] == res.summary["n_tokens"] and again.features.equals(res.features)


def test_within_sequence_permutation_keeps_every_row_in_its_sequence() -> None:
    seq = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
    perm = _within_sequence_permutation(seq, np.random.default_rng(0))
    assert sorted(perm) == list(range(len(seq)))
    assert (seq[perm] == seq).all()
    others = [_within_sequence_permutation(seq, np.random.default_rng(k)) for k in range(1, 6)]
    assert any((o != perm).any() for o in others)  # seeded, and not always the same shuffle


def test_different_tokens_are_refused_naming_both_stores(tiny: dict[str, Path], tiny_esm2: Path, oas_fasta: Path,
                                                          tmp_path: Path) -> None:
    fewer = tmp_path / "oas30.fasta"
    fewer.write_text("".join(f">{b}" for b in oas_fasta.read_text().split(">")[1:31]))
    other = workbench.extract(str(tiny_esm2), str(fewer), layers=[1], out=tmp_path / "store30", progress=False)
    full = workbench.open_store(tiny["store"])
    missing = full.sequences["sequence_id"].astype(str).tolist()[30]
    with pytest.raises(InputError) as err:
        universality(tiny["sae"], full, tiny["sae"], other)
    msg = str(err.value)
    assert str(full.path) in msg and str(other.path) in msg and "\n" not in msg
    assert f"{full.n_tokens} tokens in 40 sequences vs {other.n_tokens} in 30" in msg and repr(missing) in msg
    # the shared tokens can be compared on purpose
    res = universality(tiny["sae"], full, tiny["sae"], other, on="common", n_tokens=None)
    assert res.summary["n_tokens"] == other.n_tokens and res.summary["fraction_shared"] == 1.0


def test_sae_that_does_not_fit_its_store_is_refused(tiny: dict[str, Path]) -> None:
    wrong = _random_sae(16, seed=0)
    with pytest.raises(InputError) as err:
        universality(tiny["sae"], tiny["store"], wrong, tiny["store"])
    msg = str(err.value)
    assert "SAE B" in msg and str(tiny["store"]) in msg and "width 16" in msg and "d_model 32" in msg
    with pytest.raises(InputError, match="on must be"):
        universality(tiny["sae"], tiny["store"], tiny["sae"], tiny["store"], on="outer")


def test_labels_and_catalog_give_concepts_to_both_sides(tiny: dict[str, Path]) -> None:
    store = workbench.open_store(tiny["store"])
    residues = store.obs(["residue"])["residue"].astype(str).to_numpy()
    names = sorted(set(residues))
    cols = np.array([names.index(r) for r in residues])
    tokens = sp.csr_matrix((np.ones(len(cols), bool), (np.arange(len(cols)), cols)), shape=(len(cols), len(names)))
    import pandas as pd

    labels = ConceptLabels(tokens=tokens, instances=tokens.astype(np.int32),
                           token_concepts=pd.DataFrame({"concept": [f"aa={n}" for n in names], "source": "test"}),
                           sequences=sp.csr_matrix((store.n_sequences, 0), dtype=bool),
                           sequence_concepts=pd.DataFrame({"concept": pd.Series(dtype=str), "source": pd.Series(dtype=str)}))
    res = universality(tiny["sae"], store, tiny["sae"], store, n_tokens=None, labels=labels, catalog_a=tiny["catalog"],
                       catalog_b=tiny["catalog"])
    t, s = res.features, res.summary
    var = Catalog.open(tiny["catalog"]).features
    assert list(t["top_concept_a"].fillna("")) == [str(v) if isinstance(v, str) else "" for v in
                                                   var.loc[t["feature"], "top_concept"]]
    assert (t["top_concept_b"].fillna("") == t["top_concept_a"].fillna("")).all()  # each feature matches itself
    # the label of a feature is the residue of highest token-level F1 on its active tokens
    j = int(t["label_f1_a"].to_numpy().argmax())
    codes = load_sae(tiny["sae"]).encode(torch.from_numpy(store.activations(1))).numpy()
    active = codes[:, int(t["feature"].iloc[j][1:])] > 0
    f1 = {n: 2 * np.sum(active & (residues == n)) / (active.sum() + np.sum(residues == n)) for n in names}
    best = max(f1, key=f1.get)
    assert t["label_a"].iloc[j] == f"aa={best}" and t["label_f1_a"].iloc[j] == pytest.approx(f1[best])
    assert s["concept_source"] == "catalog_a" and s["concept_agreement"] == 1.0
    groups = s["concept_groups"]
    assert sum(g["shared"] + g["unshared"] for g in groups.values()) == len(t)
    assert sum(g["shared"] for g in groups.values()) == int(t["shared"].sum())
    with pytest.raises(InputError, match="aligned to store A"):
        short = ConceptLabels(tokens=tokens[:10], instances=tokens[:10].astype(np.int32),
                              token_concepts=labels.token_concepts, sequences=labels.sequences,
                              sequence_concepts=labels.sequence_concepts)
        universality(tiny["sae"], store, tiny["sae"], store, labels=short)


def test_write_universality_round_trip(tiny: dict[str, Path], tmp_path: Path) -> None:
    cat_dir = tmp_path / "catalog"
    shutil.copytree(tiny["catalog"], cat_dir)
    before = Catalog.open(cat_dir)
    assert before.universality == {}
    res = universality(tiny["sae"], tiny["store"], tiny["sae"], tiny["store"], n_tokens=None, catalog_a=cat_dir)
    assert write_universality(cat_dir, res, key="self") == cat_dir
    other = universality(tiny["sae"], tiny["store"], _random_sae(32, seed=4), tiny["store"], n_tokens=None)
    write_universality(cat_dir / "catalog.h5ad", other, key="random sae")
    cat = Catalog.open(cat_dir)
    stored = cat.universality
    assert sorted(stored) == ["random sae", "self"]
    for key, r in (("self", res), ("random sae", other)):
        got = stored[key]
        assert got["summary"]["fraction_shared"] == r.summary["fraction_shared"]
        assert got["summary"]["null_fractions"] == r.summary["null_fractions"]
        assert got["summary"]["concept_groups"] == r.summary["concept_groups"]
        assert list(got["features"]["feature"]) == list(r.features["feature"])
        assert np.allclose(got["features"]["r_best"], r.features["r_best"])
        assert list(got["features"]["shared"]) == list(r.features["shared"])
    # replacing a key, the rest of the catalog untouched, schema.json lists the new uns entry, no partial left
    write_universality(cat_dir, other, key="self")
    cat = Catalog.open(cat_dir)
    assert cat.universality["self"]["summary"]["fraction_shared"] == other.summary["fraction_shared"]
    assert cat.features.equals(before.features) and cat.summary == before.summary and cat.tables == before.tables
    assert "universality" in json.loads((cat_dir / "schema.json").read_text())["uns"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog"]
    with pytest.raises(InputError, match="key"):
        write_universality(cat_dir, res, key="a/b")
    with pytest.raises(workbench.errors.WorkbenchError, match="not a catalog"):
        write_universality(tmp_path / "nowhere", res, key="x")
    assert isinstance(res, Universality) and "shared (best-match r > 0.5): 1.000" in "\n".join(summary_lines(res))


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_prints_the_summary_writes_the_table_and_stores_it(tiny: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    cat_dir = tmp_path / "catalog"
    shutil.copytree(tiny["catalog"], cat_dir)
    out = tmp_path / "table.csv"
    code, stdout, err = _cli(capsys, "universality", "--sae-a", str(tiny["sae"]), "--store-a", str(tiny["store"]),
                             "--sae-b", str(tiny["sae"]), "--store-b", str(tiny["store"]), "--tokens", "0",
                             "--catalog", str(cat_dir), "--key", "self", "--out", str(out), "--no-progress")
    assert code == 0, err
    assert "shared (best-match r > 0.5): 1.000" in stdout and "null" in stdout
    import pandas as pd

    table = pd.read_csv(out)
    assert table["shared"].all() and len(table) == Catalog.open(cat_dir).universality["self"]["summary"]["n_live_a"]


def test_cli_bad_input_is_one_line_and_writes_nothing(tiny: dict[str, Path], tiny_esm2: Path, oas_fasta: Path,
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fewer = tmp_path / "oas20.fasta"
    fewer.write_text("".join(f">{b}" for b in oas_fasta.read_text().split(">")[1:21]))
    other = workbench.extract(str(tiny_esm2), str(fewer), layers=[1], out=tmp_path / "store20", progress=False)
    cat_dir = tmp_path / "catalog"
    shutil.copytree(tiny["catalog"], cat_dir)
    stamp = (cat_dir / "catalog.h5ad").stat().st_mtime_ns
    out = tmp_path / "table.csv"
    base = ["universality", "--sae-a", str(tiny["sae"]), "--store-a", str(tiny["store"]), "--sae-b", str(tiny["sae"]),
            "--catalog", str(cat_dir), "--key", "k", "--out", str(out), "--no-progress"]
    for store_b, words in ((str(other.path), ["do not hold the same tokens", str(other.path)]),
                           (str(tmp_path / "missing"), ["not an activation store"])):
        code, stdout, err = _cli(capsys, *base, "--store-b", store_b)
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("workbench: error:"), err
        assert all(w in lines[0] for w in words), lines[0]
        assert not out.exists() and not list(tmp_path.glob(".table.csv*"))
        assert (cat_dir / "catalog.h5ad").stat().st_mtime_ns == stamp and Catalog.open(cat_dir).universality == {}
        assert not (tmp_path / "catalog.partial").exists()
    code, _, err = _cli(capsys, *base[:7], "--store-b", str(tiny["store"]), "--key", "k")
    assert code == 2 and "--catalog and --key go together" in err
