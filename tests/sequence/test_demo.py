"""The antibody demo end to end on real AntiBERTy and real Thera-SAbDab / Jain data (a subset of antibodies)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.real_model, pytest.mark.slow]


def test_demo_builds_a_complete_catalog_and_reuses_it(demo_catalog: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from domains.sequence.demo import DemoConfig, run
    from workbench.catalog import Catalog

    catalog = Catalog.open(demo_catalog)
    s = catalog.summary
    assert s["n_sequences"] == 240 and s["n_features"] == 1024
    for key in ("concepts_captured_sae", "concepts_captured_neurons", "concepts_captured_random"):
        assert isinstance(s[key], int)
    # Real AntiBERTy features find real IMGT regions; the SAE beats single neurons on the concept count.
    best = catalog.table("best_sae").set_index("concept")
    assert best.loc["region=CDR3", "test_f1"] > 0.5
    assert s["concepts_captured_sae"] > s["concepts_captured_neurons"]
    for table in ("association", "best_neurons", "best_random", "probes", "probes_jain", "missing_annotations",
                  "unexplained_features", "rediscovery", "causal"):
        assert table in catalog.tables, table
    # The antibody-biology concepts are there, scoped, with per-chain measures and a summary line.
    for concept in ("shm=mutated", "germline=conserved", "non_human_residue", "liability=deamidation",
                    "liability_region=isomerisation:CDR"):
        assert concept in best.index, concept
    assert best.loc["shm=mutated", "n_scope"] < s["n_tokens"]
    assert best.loc["liability=deamidation", "n_scope"] == s["n_tokens"]
    measures = catalog.table("sequence_measures")
    assert len(measures) == 240 and measures["shm_count"].notna().mean() > 0.95
    jain = catalog.table("probes_jain")
    assert jain["task"].eq("regression").all() and jain["n_samples"].max() == 137
    assert {"sae", "neurons"} <= set(jain["representation"])
    # The per-residue IMGT numbering travels with the sequences; examples decode to residue-level activations.
    fid = catalog.features.sort_values("top_f1", ascending=False).index[0]
    examples = catalog.examples(fid)
    assert examples and len(examples[0][2]) == len(examples[0][3])
    assert catalog.provenance["model_source"] == "antiberty" and Path(catalog.provenance["sae_path"]).is_dir()
    # A second run reuses everything and only prints the summary.
    cfg = DemoConfig(n_antibodies=120, width=1024, k=16, n_tokens=150_000)
    again = run(demo_catalog.parent, progress=False, config=cfg)
    printed = capsys.readouterr().out
    assert again.summary == s and "reusing" in printed and "concepts captured" in printed
    assert "antibody-biology concepts" in printed and "findings among them" in printed
    assert "concepts captured beyond position and residue (strata imgt x residue x chain_type" in printed
    assert "sequence-level targets" in printed and "random control" in printed


def test_demo_findings_survive_their_controls(demo_catalog: Path) -> None:
    """The demo's headline is what survives position and residue and both controls, on real data."""
    from workbench.catalog import Catalog

    catalog = Catalog.open(demo_catalog)
    s = catalog.summary
    findings = catalog.table("concept_findings").set_index("concept")
    # Positions, regions and residue identity are functions of the strata: never counted as findings.
    for concept in ("region=CDR3", "aa=C", "imgt=104"):
        if concept in findings.index:
            assert findings.loc[concept, "finding"] == "not testable", concept
    # Somatic hypermutation varies within position x residue: testable, whatever the result.
    assert findings.loc["shm=mutated", "stratified"] != "not testable"
    assert s["concepts_captured_beyond_sae"] == int((findings["beyond_f1_sae"] > 0.5).sum())
    assert s["concept_findings"] == int((findings["finding"] == "finding").sum())
    # Every finding beats both controls in the bootstrap and survives the stratification.
    verdicts = catalog.table("verdicts").set_index("concept")
    for concept in findings.index[findings["finding"] == "finding"]:
        assert verdicts.loc[concept, "beats_neurons"] and verdicts.loc[concept, "beats_random"]
        assert findings.loc[concept, "beyond_q"] <= 0.05 and findings.loc[concept, "beyond_or"] >= 2
    # The chain-start IMGT candidates of the old demo are numbering artefacts now, never above a real candidate.
    missing = catalog.table("missing_annotations")
    artefacts = missing["kind"].eq("numbering artefact").to_numpy()
    assert not artefacts.any() or artefacts[artefacts.argmax():].all()
    # Sequence-level targets: origin, clinical status, SHM and humanness, for the three representations, held out.
    seq = catalog.table("sequence_findings")
    assert {"origin=human", "approved_vs_discontinued", "shm_count", "non_human_fraction"} <= set(seq["target"])
    assert set(seq["representation"]) == {"sae", "neurons", "random_sae"}
    red = catalog.table("rediscovery")
    assert {"control_precision_at_k", "evidence"} <= set(red.columns)
    assert red["concept"].str.startswith(("liability=", "shm=", "non_human_residue")).any()
