"""The in-memory annotation (``annotate(stream=False)``) keeps its finished stages and resumes them after a kill."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

TRAIN = dict(n_tokens=256 * 60, batch_size=256, lr=3e-3, warmup_steps=5, checkpoint_every=0, loss_recovered_sequences=0)
STAGES = {"association-sae", "association-neurons", "association-random", "verdicts", "description-scores",
          "probes-token", "probes-sequence", "missing-annotations", "unexplained-features", "rediscovery",
          "rediscovery-random"}
"""The stages a run killed in the causal check has finished (this fixture has no sequence-level findings)."""


@pytest.fixture(scope="module")
def setup(tiny_esm2: Path, oas_fasta: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A store and its random-weight control, their SAEs, ANARCI and motif labels."""
    import workbench
    from domains.sequence.sources import labels_from_specs
    from workbench.sae import TrainConfig, train_sae

    root = tmp_path_factory.mktemp("annotate_resume")
    store = workbench.extract(str(tiny_esm2), str(oas_fasta), layers=[1], out=root / "store", progress=False)
    control = workbench.extract(str(tiny_esm2), str(oas_fasta), layers=[1], out=root / "control", random_weights=3,
                                progress=False)
    train = TrainConfig(**TRAIN)
    train_sae(store, out=root / "sae", layer=1, width=64, k=8, train=train, progress=False)
    train_sae(control, out=root / "sae_control", layer=1, width=64, k=8, train=train, progress=False)
    labels = labels_from_specs(store, ["anarci", "motif"])
    return {"root": root, "store": store, "control": control, "labels": labels}


def config(**changes: Any) -> Any:
    from workbench._pipeline import AnnotateConfig

    options: dict[str, Any] = dict(n_permutations=2, n_causal=1, causal_sequences=2, probe_cv=3, n_bootstrap=50)
    return AnnotateConfig(**{**options, **changes})


def run(setup: dict[str, Any], out: Path, *, progress: bool = False, **changes: Any) -> Any:
    import workbench

    return workbench.annotate(setup["store"], setup["root"] / "sae", setup["labels"], layer=1, out=out,
                              control_store=setup["control"], control_sae=setup["root"] / "sae_control",
                              config=config(**changes), progress=progress)


def killed(*args: Any, **kwargs: Any) -> Any:
    raise KeyboardInterrupt


def stages(work: Path) -> set[str]:
    return {p.name for p in work.iterdir() if p.is_dir()}


def assert_same_catalog(a: Any, b: Any) -> None:
    """Every table (``seconds`` aside), the features, the sequences, the matrix X, the examples, the description
    summary and the association parameters."""
    assert set(a.tables) == set(b.tables)
    for name in a.tables:
        x, y = (t.drop(columns=[c for c in ("seconds",) if c in t.columns]) for t in (a.table(name), b.table(name)))
        pd.testing.assert_frame_equal(x, y, check_exact=True, obj=name)
    pd.testing.assert_frame_equal(a.features, b.features, check_exact=True)
    pd.testing.assert_frame_equal(a.adata.obs, b.adata.obs, check_exact=True)
    assert a.adata.X.shape == b.adata.X.shape and (a.adata.X != b.adata.X).nnz == 0
    pd.testing.assert_frame_equal(a.adata.uns["examples"], b.adata.uns["examples"])
    assert np.array_equal(a.adata.uns["example_activations"], b.adata.uns["example_activations"])
    for key in ("description_corr_above_0_5", "description_corr_median", "description_scored"):
        assert str(a.summary.get(key)) == str(b.summary.get(key)), key
    for key in ("association_params", "control_params"):  # read back from the work folder: the same parameters
        assert str(a.adata.uns["provenance"][key]) == str(b.adata.uns["provenance"][key]), key


def test_a_killed_run_resumes_its_finished_stages(setup: dict[str, Any], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import workbench.discovery

    whole = run(setup, tmp_path / "whole")
    assert not (tmp_path / "whole.annotate-work").exists()  # removed once the catalog is written
    assert list(whole.summary["resumed_stages"]) == []
    # A run killed in the causal check keeps every finished stage in the work folder and writes nothing at out.
    monkeypatch.setattr(workbench.discovery, "causal_effects", killed)
    with pytest.raises(KeyboardInterrupt):
        run(setup, tmp_path / "cat")
    monkeypatch.undo()
    work = tmp_path / "cat.annotate-work"
    assert not (tmp_path / "cat").exists()
    assert stages(work) == STAGES and (work / "key.json").is_file()
    capsys.readouterr()
    catalog = run(setup, tmp_path / "cat", progress=True)
    printed = capsys.readouterr().out
    assert set(catalog.summary["resumed_stages"]) == STAGES
    assert f"resuming from {work}: {len(STAGES)} finished stage(s)" in printed
    assert "association-sae: resumed" in printed and "causal effects ..." in printed  # the rest is computed
    assert "association (SAE) ..." not in printed and "token probes ..." not in printed
    assert not work.exists()
    assert_same_catalog(whole, catalog)


def test_other_inputs_start_afresh_and_refused_inputs_leave_nothing(setup: dict[str, Any], tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import workbench.associate
    import workbench.verdicts
    from workbench.errors import InputError

    monkeypatch.setattr(workbench.verdicts, "concept_verdicts", killed)
    with pytest.raises(KeyboardInterrupt):
        run(setup, tmp_path / "cat")
    monkeypatch.undo()
    work = tmp_path / "cat.annotate-work"
    assert stages(work) == {"association-sae", "association-neurons", "association-random"}
    # Refused inputs: the killed run's work is kept; a fresh work folder is removed again (also when a stage
    # refuses), and nothing is written at out.
    with pytest.raises(InputError, match="unknown probe representation"):
        run(setup, tmp_path / "cat", probe_representations=("bogus",))
    assert stages(work) == {"association-sae", "association-neurons", "association-random"}
    with pytest.raises(InputError, match="unknown probe representation"):
        run(setup, tmp_path / "bad", probe_representations=("bogus",))

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise InputError("refused")

    monkeypatch.setattr(workbench.associate, "associate", refused)
    with pytest.raises(InputError, match="refused"):
        run(setup, tmp_path / "bad")
    monkeypatch.undo()
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.annotate-work").exists()
    # Another option: the key differs, nothing is resumed.
    catalog = run(setup, tmp_path / "cat", n_permutations=3)
    assert list(catalog.summary["resumed_stages"]) == []
    assert not work.exists()
    assert catalog.adata.uns["provenance"]["annotate_config"]["n_permutations"] == 3
