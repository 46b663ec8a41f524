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