"""The annotation stage end to end on a real (tiny) model: store, random-weight control, SAEs, labels -> catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from workbench.errors import WorkbenchError

TRAIN = dict(n_tokens=256 * 80, batch_size=256, lr=3e-3, warmup_steps=5, checkpoint_every=0, loss_recovered_sequences=0)


@pytest.fixture(scope="module")
def setup(tiny_esm2: Path, oas_fasta: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import workbench
    from domains.sequence.sources import labels_from_specs
    from workbench.sae import TrainConfig, train_sae

    root = tmp_path_factory.mktemp("pipeline")
    store = workbench.extract(str(tiny_esm2), str(oas_fasta), layers=[1, 2], out=root / "store", progress=False)
    control = workbench.extract(str(tiny_esm2), str(oas_fasta), layers=[1, 2], out=root / "control", random_weights=3,
                                progress=False)
    train = TrainConfig(**TRAIN)
    train_sae(store, out=root / "sae", layer=1, width=64, k=8, train=train, progress=False)
    train_sae(control, out=root / "sae_control", layer=1, width=64, k=8, train=train, progress=False)
    train_sae(store, out=root / "sae_l2", layer=2, width=64, k=8, train=train, progress=False)
    labels = labels_from_specs(store, ["anarci", "motif"])
    return {"root": root, "store": store, "control": control, "labels": labels}


def _annotate(setup: dict[str, Any], out: Path, **kwargs: Any) -> Any:
    import workbench
    from workbench._pipeline import AnnotateConfig

    options: dict[str, Any] = dict(
        layer=1, out=out, control_store=setup["control"], control_sae=setup["root"] / "sae_control",
        config=AnnotateConfig(n_permutations=3, n_causal=3, causal_sequences=2, probe_cv=3), progress=False,
    )
    options.update(kwargs)
    return workbench.annotate(setup["store"], setup["root"] / "sae", setup["labels"], **options)


def test_annotate_writes_a_complete_catalog(setup: dict[str, Any], tmp_path: Path) -> None:
    catalog = _annotate(setup, tmp_path / "cat")
    s = catalog.summary
    best = catalog.table("best_sae")
    # The headline numbers are the association tables' own counts, for SAE, neurons and the random control.
    assert s["concepts_captured_sae"] == int((best["test_f1"] > 0.5).sum())
    assert s["concepts_captured_neurons"] == int((catalog.table("best_neurons")["test_f1"] > 0.5).sum())
    assert s["concepts_captured_random"] == int((catalog.table("best_random")["test_f1"] > 0.5).sum())
    assert s["n_concepts"] == len(setup["labels"].token_concepts)
    for name in ("association", "probes", "probe_weights", "missing_annotations", "unexplained_features", "rediscovery", "causal"):
        assert name in catalog.tables, name
    probes = catalog.table("probes")
    assert {"sae", "neurons", "random_sae"} <= set(probes["representation"])
    assert "region" in set(probes["target"])  # a token-level IMGT region probe
    # Amino-acid identity is linearly decodable from layer 1 of even a tiny ESM-2: far above chance from the raw layer.
    aa = probes[(probes["target"] == "aa") & (probes["representation"] == "neurons") & (probes["k"] == 0)]
    assert len(aa) == 1 and aa["score"].iloc[0] > 2 * aa["baseline"].iloc[0]
    # Motifs and amino acids are read off the sequence itself: never "missing"; IMGT concepts can be.
    missing = catalog.table("missing_annotations")
    assert len(missing) and not missing["concept"].str.startswith(("aa=", "motif=")).any()
    causal = catalog.table("causal")
    assert len(causal) == 3 and (causal["n_sequences"] > 0).all()
    var = catalog.features
    assert {"description", "family", "top_concept", "top_f1", "causal_kl_ratio"} <= set(var.columns)
    # Per-residue IMGT positions travel with the sequences, one per residue.
    obs = catalog.adata.obs
    lengths = obs["sequence"].str.len()
    assert (obs["imgt"].str.count(",") + 1 == lengths).all()
    assert catalog.provenance["annotate_config"]["n_permutations"] == 3


def test_annotate_findings_survive_their_controls(setup: dict[str, Any], tmp_path: Path) -> None:
    """Stratified association, verdicts, concept findings, artefacts, strata shares, control rediscovery and
    held-out sequence-level findings are standard outputs, consistent with each other."""
    import workbench
    from workbench._pipeline import AnnotateConfig

    cfg = AnnotateConfig(n_permutations=3, n_causal=0, probe_cv=3, n_bootstrap=200, finding_groups=("v_family",),
                         finding_measures=(), finding_covariates=("chain_type",))
    seqs = setup["store"].sequences
    lengths = seqs["n_tokens"]
    long_chain = pd.DataFrame({"long": (lengths > lengths.median()).to_numpy()},
                              index=seqs["sequence_id"].astype(str).to_numpy())
    catalog = _annotate(setup, tmp_path / "cat", config=cfg, finding_targets=long_chain)
    s, tables = catalog.summary, catalog.tables
    assert s["strata"] == "imgt x residue x chain_type" and s["n_strata"] > 100
    pairs = catalog.table("association")
    assert set(pairs["stratified"]) <= {"survives", "explained", "not testable", "not significant"}
    # IMGT positions and residue identity are functions of the strata: never testable, whatever the feature.
    positional = pairs["concept"].str.startswith(("imgt=", "aa=", "region="))
    assert (pairs.loc[positional, "stratified"] == "not testable").all()
    assert pairs.loc[positional, "p_cmh"].isna().all()
    findings = catalog.table("concept_findings")
    assert len(findings) == s["n_concepts"] and set(findings["finding"]) <= {
        "finding", "control as good", "explained by strata", "not testable", "not captured"}
    assert s["concepts_captured_beyond_sae"] == int((findings["beyond_f1_sae"] > 0.5).sum())
    assert s["concepts_testable"] == int((findings["stratified"] != "not testable").sum())
    verdicts = catalog.table("verdicts")
    best = catalog.table("best_sae").set_index("concept")
    v = verdicts.set_index("concept")
    assert (v["f1_sae"] - best.loc[v.index, "test_f1"]).abs().max() < 1e-6  # the verdict compares the same F1s
    assert {"diff_neurons_low", "diff_random_high", "beats_random", "verdict"} <= set(verdicts.columns)
    assert best["null_p"].notna().all() and (best["null_p_empirical"] >= 1 / 4 - 1e-12).all()
    missing = catalog.table("missing_annotations")
    assert {"stratified", "or_mh", "q_cmh"} <= set(missing.columns)
    kinds = missing["kind"].tolist()
    if "numbering artefact" in kinds:  # artefacts rank after every other kind
        assert kinds.index("numbering artefact") == len(kinds) - kinds[::-1].count("numbering artefact")
    unexplained = catalog.table("unexplained_features")
    assert unexplained["strata_share"].between(0, 1).all()
    assert unexplained["score_beyond"].is_monotonic_decreasing
    red = catalog.table("rediscovery")
    assert {"control_precision_at_k", "evidence"} <= set(red.columns)
    seq = catalog.table("sequence_findings")
    assert set(seq["representation"]) == {"sae", "neurons", "random_sae"}
    assert "long" in set(seq["target"]) and seq["target"].str.startswith(("v_family=", "long")).all()
    assert seq["status"].str.len().gt(0).all()
    assert (seq.loc[seq["target"] == "long", "n_test"] > 0).all()
    # A numeric covariate with missing values is refused before the long stages, naming the column.
    from workbench.concepts import ConceptLabels
    from workbench.errors import InputError

    labels = setup["labels"]
    holed = ConceptLabels(labels.tokens, labels.instances, labels.token_concepts, labels.sequences,
                          labels.sequence_concepts, labels.scopes, labels.sequence_scopes,
                          measures=pd.DataFrame({"depth": [float("nan")] + [1.0] * (len(seqs) - 1)}))
    bad = AnnotateConfig(n_permutations=0, n_causal=0, finding_covariates=("depth",))
    with pytest.raises(InputError, match="'depth'"):
        workbench.annotate(setup["store"], setup["root"] / "sae", holed, layer=1, out=tmp_path / "bad", config=bad,
                           finding_targets=long_chain, progress=False)
    assert not (tmp_path / "bad").exists()


def test_annotate_refuses_mismatches_and_leaves_nothing(setup: dict[str, Any], tmp_path: Path) -> None:
    import workbench
    from workbench.concepts import ConceptLabels

    out = tmp_path / "cat"
    with pytest.raises(WorkbenchError, match="layer 2.*layer 1|layer 1.*layer 2"):
        workbench.annotate(setup["store"], setup["root"] / "sae_l2", setup["labels"], layer=1, out=out, progress=False)
    assert not out.exists() and not list(tmp_path.iterdir())
    lab = setup["labels"]
    short = ConceptLabels(lab.tokens[:-5], lab.instances[:-5], lab.token_concepts, lab.sequences, lab.sequence_concepts)
    with pytest.raises(WorkbenchError, match="tokens"):
        workbench.annotate(setup["store"], setup["root"] / "sae", short, layer=1, out=out, progress=False)
    # The real store is not a random-weight control.
    with pytest.raises(WorkbenchError, match="random-weight control"):
        _annotate(setup, out, control_store=setup["store"])
    with pytest.raises(WorkbenchError, match="sequence_groups"):
        _annotate(setup, out, sequence_groups=["a", "b"])
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_annotate_export_and_errors(setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from workbench.cli import main

    root = setup["root"]
    out = tmp_path / "cat"
    args = ["annotate", "--store", str(root / "store"), "--layer", "1", "--sae", str(root / "sae"), "--source", "motif",
            "--source", "anarci", "--permutations", "0", "--n-causal", "0", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert "features x" in capsys.readouterr().out
    assert main(args) == 2  # exists
    err = capsys.readouterr().err.strip()
    assert err.startswith("workbench: error:") and "exists" in err and len(err.splitlines()) == 1
    assert main(["export", str(out), "--out", str(tmp_path / "export"), "--format", "csv,json"]) == 0
    written = {p.suffix for p in (tmp_path / "export").rglob("*") if p.is_file()}
    assert written == {".csv", ".json"}
    features = pd.read_csv(next((tmp_path / "export").rglob("features.csv")))
    assert len(features) == 64
    bad = [
        (["--source", "nonsense"], "unknown annotation source"),
        (["--source", "table:"], "needs an argument"),
        (["--source", "motif", "--group-col", "nope"], "no sequence column"),
        (["--source", "motif", "--control-store", str(root / "control")], "go together"),
    ]
    base = ["annotate", "--store", str(root / "store"), "--layer", "1", "--sae", str(root / "sae"), "--no-progress"]
    for extra, message in bad:
        target = tmp_path / "bad"
        assert main([*base, *extra, "--out", str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not target.exists()
    assert main(["export", str(out), "--out", str(tmp_path / "x"), "--format", "xlsx"]) == 2
    assert "xlsx" in capsys.readouterr().err


def test_probe_groups_choose_partitions(setup: dict[str, Any]) -> None:
    from workbench._pipeline import probe_groups

    token = probe_groups(setup["labels"], level="token")
    assert "region" in token and "aa" in token and "imgt" not in token  # IMGT positions: too many values
    seq = probe_groups(setup["labels"], level="sequence")
    # The first 40 OAS chains are all human IGHV1 heavy chains: one value is no probe target; their V genes are.
    assert "chain_type" not in seq and "species" not in seq and "v_family" not in seq
    assert "v_gene" in seq