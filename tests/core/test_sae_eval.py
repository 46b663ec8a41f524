"""SAE quality beyond FVE: sparse probing and feature absorption on planted concepts, and the sweep's quality columns."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import workbench
import workbench.sae_eval as sae_eval
from workbench.associate import FeatureMatrix, sequence_split
from workbench.concepts import labels_from_spans, labels_from_token_values, scope_labels
from workbench.errors import InputError
from workbench.sae import TrainConfig, sweep
from workbench.sae._sweep import run_quality
from workbench.sae_eval import QUALITY_COLUMNS, absorption, hierarchy_from_labels, plot_sweep, sae_quality, sparse_probing
from core_helpers import alternating_ids  # noqa: E402  (tests/core, on the path under pytest)

N_SEQ, LENGTH = 200, 30
P_START, P_END = 6, 20  # parent region=P (1-based, inclusive); sub=C1 is its first L1 residues, sub=C2 the rest
HIER = {"region=P": ["sub=C1", "sub=C2"], "sub=C2": ["pos=14"]}


@lru_cache(maxsize=None)
def case():  # type: ignore[no-untyped-def]
    """Labels: region=P (6-20), region=Q (21-28), sub=C1 (6 .. 5+L1, L1 random in 2..6 per sequence), sub=C2 (the
    rest of P), pos=N at every residue, x=X = residues 2-4 and 23-26, edge=E at residue 10 in every sequence and
    at residue 1 in 3 sequences. Regions are scoped to residues 2-29."""
    rng = np.random.default_rng(0)
    ids = alternating_ids(N_SEQ)
    l1 = rng.integers(2, 7, N_SEQ)
    obs = pd.DataFrame({"sequence_id": np.repeat(ids, LENGTH), "position": np.tile(np.arange(1, LENGTH + 1), N_SEQ)})
    spans = []
    for s, sid in enumerate(ids):
        spans += [(sid, P_START, P_END, "region=P"), (sid, 21, 28, "region=Q"), (sid, P_START, P_START + l1[s] - 1, "sub=C1"),
                  (sid, P_START + l1[s], P_END, "sub=C2"), (sid, 2, 4, "x=X"), (sid, 23, 26, "x=X"), (sid, 10, 10, "edge=E")]
        spans += [(sid, p, p, f"pos={p}") for p in range(1, LENGTH + 1)]
    spans += [(ids[s], 1, 1, "edge=E") for s in range(3)]
    labels = labels_from_spans(obs, pd.DataFrame(spans, columns=["sequence_id", "start", "end", "concept"]))
    pos = obs["position"].to_numpy()
    labels = scope_labels(labels, tokens=(pos >= 2) & (pos <= 29), name="numbered", token_concepts=["region=P", "region=Q"])
    token_sequence = np.repeat(np.arange(N_SEQ), LENGTH)
    c1 = np.concatenate([(np.arange(1, LENGTH + 1) >= P_START) & (np.arange(1, LENGTH + 1) < P_START + n) for n in l1])
    return labels, ids, token_sequence, pos, c1


def _features(columns: list[np.ndarray], n_noise: int = 4) -> FeatureMatrix:
    """Planted latents (given columns) then ``n_noise`` latents firing at random on 10% of tokens."""
    rng = np.random.default_rng(1)
    n = len(columns[0])
    noise = [np.where(rng.random(n) < 0.1, rng.uniform(0.1, 1, n), 0.0) for _ in range(n_noise)]
    dense = np.stack(columns + noise, axis=1).astype(np.float32)
    maxes = dense.max(0)
    return FeatureMatrix(sp.csr_matrix(dense / maxes), maxes, [f"f{i:05d}" for i in range(dense.shape[1])])


def _test_rows(ids: list[str], token_sequence: np.ndarray) -> np.ndarray:
    return ~sequence_split(ids)[token_sequence]


def test_a_latent_on_exactly_the_parent_absorbs_nothing_and_probes_perfectly() -> None:
    labels, ids, ts, pos, c1 = case()
    parent = (pos >= P_START) & (pos <= P_END)
    rng = np.random.default_rng(2)
    # f0 fires on every parent token; f1 on child 1 as well (co-firing is not absorption)
    feats = _features([np.where(parent, rng.uniform(0.5, 1, len(pos)), 0.0), c1.astype(float)])
    result = absorption(feats, labels, ids, ts, hierarchy=HIER)
    row = result.parents.set_index("parent").loc["region=P"]
    assert row["main_latent"] == "f00000" and row["main_recall"] == 1.0 and row["main_precision"] == 1.0
    assert row["absorption_rate"] == 0.0 and row["absorption_full"] == 0.0 and row["n_absorbed"] == 0
    assert row["n_tokens"] == int((parent & _test_rows(ids, ts)).sum())
    probe = sparse_probing(feats, labels, ids, ts, concepts=["region=P"], ks=(1,))
    assert probe["latents"].iloc[0] == "f00000" and probe["f1"].iloc[0] > 0.99 and probe["auroc"].iloc[0] > 0.99


def test_absorption_rate_is_the_absorbed_share_of_the_parent_exactly() -> None:
    labels, ids, ts, pos, c1 = case()
    parent = (pos >= P_START) & (pos <= P_END)
    p14 = pos == 14
    holes = c1 | p14
    # f0: the parent latent, silent on child 1 and on the grandchild pos=14; f1 fires on child 1, f2 on pos=14
    feats = _features([np.where(parent & ~holes, 1.0, 0.0), c1.astype(float), p14.astype(float)])
    test = _test_rows(ids, ts)
    result = absorption(feats, labels, ids, ts, hierarchy=HIER)
    row = result.parents.set_index("parent").loc["region=P"]
    expected_rate = (holes & test).sum() / (parent & test).sum()
    expected_full = (c1 & test).sum() / (parent & test).sum()  # child 1 is fully absorbed, child 2 only at pos=14
    assert abs(row["absorption_rate"] - expected_rate) < 1e-9
    assert abs(row["absorption_full"] - expected_full) < 1e-9
    assert abs(row["main_recall"] - (1 - expected_rate)) < 1e-9 and row["absorbed_share_of_misses"] == 1.0
    assert row["main_precision"] == 1.0
    assert row["fully_absorbed_children"] == "sub=C1"
    assert row["absorbing_latents"].startswith("f00001(sub=C1)") and "f00002(pos=14)" in row["absorbing_latents"]
    sub = result.parents.set_index("parent").loc["sub=C2"]  # pos=14 is its child; its main latent is f0 (silent there)
    assert sub["main_latent"] == "f00000" and sub["absorption_rate"] > 0
    levels = result.levels.set_index("level")
    assert levels.loc["region", "n_parents"] == 1 and levels.loc["region", "absorption_rate"] == row["absorption_rate"]

    # a child latent that also fires outside the parent (on region Q) is not child-specific: nothing is absorbed
    leaky = _features([np.where(parent & ~c1, 1.0, 0.0), (c1 | (pos >= 21) & (pos <= 28)).astype(float)])
    leak = absorption(leaky, labels, ids, ts, hierarchy={"region=P": ["sub=C1", "sub=C2"]}).parents
    assert leak["absorption_rate"].iloc[0] == 0.0

    # SAEBench's alignment condition: a child latent whose decoder points against the parent's direction does not count
    feats1 = _features([np.where(parent & ~c1, 1.0, 0.0), c1.astype(float)], n_noise=1)
    e = np.eye(3)
    aligned = absorption(feats1, labels, ids, ts, hierarchy=HIER, decoder=np.stack([e[0], e[1], e[2]])).parents
    against = absorption(feats1, labels, ids, ts, hierarchy=HIER, decoder=np.stack([e[0], -e[0], e[2]])).parents
    expected = (c1 & test).sum() / (parent & test).sum()
    assert abs(aligned["absorption_rate"].iloc[0] - expected) < 1e-9
    assert against["absorption_rate"].iloc[0] == 0.0


def test_sparse_probe_needs_two_latents_for_an_or_and_chooses_on_the_training_half_only() -> None:
    labels, ids, ts, pos, _ = case()
    a, b = (pos >= 2) & (pos <= 4), (pos >= 23) & (pos <= 26)
    test = _test_rows(ids, ts)
    # f0 fires on part A of x=X, f1 on part B; f2 marks all of x=X but only in held-out sequences (a leak)
    feats = _features([a.astype(float), b.astype(float), ((a | b) & test).astype(float)])
    table = sparse_probing(feats, labels, ids, ts, concepts=["x=X"], ks=(1, 2, 5)).set_index("k")
    assert table.loc[1, "latents"] == "f00001"  # B (4 residues) differs more than A (3) on the training half
    assert set(table.loc[2, "latents"].split(",")) == {"f00000", "f00001"}  # f2 is silent on the training half
    assert table.loc[2, "f1"] > 0.98 and table.loc[2, "f1"] > table.loc[1, "f1"] + 0.15
    assert table.loc[1, "accuracy"] == table.loc[1, "balanced_accuracy"]  # balanced held-out draw
    assert table["n_test"].iloc[0] == 2 * int(((a | b) & test).sum())


def test_probing_notes_and_guards() -> None:
    labels, ids, ts, pos, _ = case()
    feats = _features([(pos == 10).astype(float)])
    table = sparse_probing(feats, labels, ids, ts, concepts=["edge=E", "pos=10"], ks=(1,), min_positives=150)
    edge = table.set_index("concept").loc["edge=E"]
    assert np.isnan(edge["f1"]) and "too few tokens" in edge["note"]
    with pytest.raises(InputError, match="unknown token concept"):
        sparse_probing(feats, labels, ids, ts, concepts=["nope"])
    with pytest.raises(InputError, match="different stores"):
        sparse_probing(feats, labels, ids[:-1], ts[:-LENGTH])


def test_hierarchy_inferred_from_label_co_occurrence() -> None:
    labels, *_ = case()
    h = hierarchy_from_labels(labels, levels=("region", "sub", "pos", "edge"))
    # C1 always holds residues 6-7 and C2 residues 12-20; residues 8-11 fall in either, so they sit under P
    assert sorted(h["region=P"]) == sorted(["sub=C1", "sub=C2"] + [f"pos={p}" for p in (8, 9, 10, 11)])
    assert sorted(h["sub=C1"]) == ["pos=6", "pos=7"]
    assert sorted(h["sub=C2"]) == sorted(f"pos={p}" for p in range(12, 21))
    assert sorted(h["region=Q"]) == sorted(f"pos={p}" for p in range(21, 29))
    assert set(h) == {"region=P", "region=Q", "sub=C1", "sub=C2"}  # residues 1, 29, 30 lie in no region
    # edge=E: 200 of its 203 tokens are residue 10 (98.5%): a child only below the default 99%
    assert "pos=10" not in h and not any("edge=E" in c for c in h.values())
    loose = hierarchy_from_labels(labels, levels=("region", "sub", "pos", "edge"), min_share=0.98)
    assert loose["pos=10"] == ["edge=E"]


def test_sae_quality_summary() -> None:
    labels, ids, ts, pos, c1 = case()
    parent = (pos >= P_START) & (pos <= P_END)
    feats = _features([np.where(parent & ~c1, 1.0, 0.0), c1.astype(float)])
    q = sae_quality(feats, labels, ids, ts, concepts=["region=P", "region=Q", "x=X"],
                    hierarchy={"region=P": ["sub=C1", "sub=C2"]})
    assert set(QUALITY_COLUMNS) <= set(q) and q["n_probe_concepts"] == 3 and q["n_absorption_parents"] == 1
    test = _test_rows(ids, ts)
    assert abs(q["absorption_rate"] - (c1 & test).sum() / (parent & test).sum()) < 1e-9
    assert q["probe_f1_k20"] >= q["probe_f1_k1"] - 0.05


# -- the sweep -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tiny_esm2: Path, oas_fasta: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return workbench.extract(str(tiny_esm2), oas_fasta, layers=[1], out=tmp_path_factory.mktemp("q") / "store", progress=False)


def _store_labels(store):  # type: ignore[no-untyped-def]
    obs = store.obs()
    p = obs["position"].to_numpy()
    values = pd.DataFrame({"region": (p // 40).astype(str), "chain_region": (p // 20).astype(str), "imgt": p.astype(str)})
    return labels_from_token_values(obs, values, sequence_ids=store.sequences["sequence_id"].astype(str).tolist())


def test_sweep_with_labels_adds_and_caches_quality_columns(store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    labels = _store_labels(store)
    train = TrainConfig(n_tokens=256 * 30, batch_size=256, lr=3e-3, warmup_steps=5, checkpoint_every=0, eval_tokens=2000,
                        holdout_fraction=0.1, loss_recovered_sequences=0, aux_k=8, dead_tokens=2000)
    opts = dict(out=tmp_path / "sw", arch=["topk", "batchtopk"], k=[4], width=[32], train=train, progress=False)
    table = sweep(store, labels=labels, **opts)
    for col in QUALITY_COLUMNS:
        assert col in table.columns and table[col].notna().all(), col
    assert (table["n_absorption_parents"] > 0).all() and (table["n_probe_concepts"] > 0).all()
    cached = json.loads((tmp_path / "sw" / table["run"].iloc[0] / "quality.json").read_text())
    assert cached["summary"]["probe_f1_k1"] == table["probe_f1_k1"].iloc[0] and cached["probing"] and cached["absorption"]

    def boom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("recomputed")

    monkeypatch.setattr(sae_eval, "quality_report", boom)
    again = sweep(store, labels=labels, **opts)  # resumed: training and quality both come from the run folders
    pd.testing.assert_frame_equal(again, table)
    with pytest.raises(AssertionError, match="recomputed"):  # other options: the cache does not apply
        sweep(store, labels=labels, quality={"max_tokens": 100}, **opts)
    assert "probe_f1_k1" not in sweep(store, **opts).columns
    with pytest.warns(UserWarning, match="too dense"):  # a run denser than max_l0 is not evaluated (memory)
        skipped = run_quality(store, tmp_path / "sw" / table["run"].iloc[0], labels, max_l0=0.5)
    assert all(np.isnan(skipped[c]) for c in QUALITY_COLUMNS)
    png = plot_sweep(table, tmp_path / "plot.png")
    assert png.is_file() and png.stat().st_size > 1000


def test_cli_sweep_source_and_plot(store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from workbench.cli import main

    args = ["sweep", "--store", str(store.path), "--out", str(tmp_path / "sw"), "--arch", "topk", "--k", "4",
            "--width", "32", "--n-tokens", str(256 * 20), "--batch-size", "256", "--source", "motif",
            "--plot", str(tmp_path / "q.png"), "--loss-recovered-sequences", "0", "--holdout-fraction", "0.1",
            "--eval-tokens", "2000", "--no-progress"]
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "probe_f1_k1" in out and (tmp_path / "q.png").is_file()
