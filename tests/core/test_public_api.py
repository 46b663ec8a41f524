"""Public-API gaps the notebooks hit (issue 16): ``workbench.AnnotateConfig``, a readable ``ConceptLabels``, per-
sequence user labels found by ``Catalog.search`` / ``Catalog.concept``, image words and grid cells in feature views,
and progress bars that stay quiet in Jupyter without ipywidgets."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import workbench
from workbench.catalog import Catalog
from workbench.errors import WorkbenchError

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------ AnnotateConfig


def test_annotate_config_is_public_and_lazy() -> None:
    from workbench import AnnotateConfig
    from workbench._pipeline import AnnotateConfig as private

    assert AnnotateConfig is private and workbench.AnnotateConfig is private
    assert "AnnotateConfig" in workbench.__all__ and "AnnotateConfig" in dir(workbench)
    assert AnnotateConfig(n_permutations=3).n_permutations == 3
    code = ("import sys, workbench; light = 'workbench._pipeline' not in sys.modules; "
            "from workbench import AnnotateConfig; print(light, AnnotateConfig.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["True", "workbench._pipeline"]


# ------------------------------------------------------------------------------------------------ ConceptLabels repr


def test_concept_labels_repr_is_a_few_lines() -> None:
    from workbench.concepts import concat_labels, labels_from_spans, scope_labels

    ids = [f"s{i}" for i in range(4)]
    obs = pd.DataFrame({"sequence_id": np.repeat(ids, 5), "position": np.tile(np.arange(1, 6), 4)})
    spans = pd.DataFrame({"sequence_id": ids * 2, "start": [1] * 4 + [3] * 4, "end": [2] * 4 + [5] * 4,
                          "concept": ["region=A"] * 4 + ["region=B"] * 4})
    anarci = labels_from_spans(obs, spans, source="anarci", sequence_values=pd.DataFrame(
        {"sequence_id": ids, "v_family": ["IGHV1", "IGHV1", "IGHV3", "IGHV3"]}))
    anarci = scope_labels(anarci, tokens=np.ones(len(obs), bool), name="anarci:numbered")
    user = labels_from_spans(obs, spans.iloc[:0], source="user", sequence_values=pd.DataFrame(
        {"sequence_id": ids[:3], "cdr3_class": ["long", "short", "long"], "lot": ["7", "7", "8"]}))
    user.measures = pd.DataFrame({"shm_count": [1.0, 2.0, np.nan, 0.0]})
    labels = concat_labels([anarci, user])
    text = repr(labels)
    lines = text.splitlines()
    assert lines[0] == "ConceptLabels: 20 tokens x 2 token concepts, 4 sequences x 6 sequence concepts"
    assert lines[1] == "  token: anarci 2 (region 2)"
    assert lines[2] == "  sequence: anarci 2 (v_family 2); user 4 (cdr3_class 2, lot 2)"
    assert lines[3] == "  scopes anarci:numbered; measures shm_count"
    assert len(lines) == 4 and str(labels) == text
    # hundreds of concepts stay on short lines; no labels at all is one line
    many = labels_from_spans(obs, pd.DataFrame({"sequence_id": ids * 50, "start": 1, "end": 1,
                                                "concept": [f"g{k}=v" for k in range(200)]}), source="x")
    assert max(len(line) for line in repr(many).splitlines()) <= 150 and repr(many).splitlines()[1].endswith("…")
    assert repr(labels_from_spans(obs, spans.iloc[:0])) == ("ConceptLabels: 20 tokens x 0 token concepts, "
                                                            "4 sequences x 0 sequence concepts")


# ------------------------------------------------------------------------------------------------ user labels in a catalog


@pytest.fixture(scope="module")
def user_catalog(tiny_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Catalog, pd.DataFrame]:
    """tiny_catalog's store and SAE annotated again with a user CSV: each chain's length class (20 short, 20 long)."""
    from domains.sequence.sources import labels_from_specs
    from workbench import AnnotateConfig

    root = tmp_path_factory.mktemp("user_catalog")
    store = workbench.open_store(tiny_catalog.parent / "store")
    lengths = store.sequences.set_index("sequence_id")["n_tokens"].sort_values(kind="stable")
    table = pd.DataFrame({"sequence_id": lengths.index.astype(str),
                          "length_class": ["short"] * 20 + ["long"] * (len(lengths) - 20)})
    table.to_csv(root / "mine.csv", index=False)
    labels = labels_from_specs(store, ["anarci", "motif", f"user:{root / 'mine.csv'}"])
    config = AnnotateConfig(n_permutations=0, n_bootstrap=0, n_causal=0, probe_cv=3, finding_groups=("length_class",),
                            score_descriptions=False)
    workbench.annotate(store, tiny_catalog.parent / "sae", labels, layer=1, out=root / "catalog", config=config,
                       progress=False)
    return Catalog.open(root / "catalog"), table


def test_search_and_concept_find_per_sequence_user_labels(user_catalog: tuple[Catalog, pd.DataFrame]) -> None:
    cat, _ = user_catalog
    findings = cat.table("sequence_findings")
    assert {"length_class=long", "length_class=short"} <= set(findings["target"].astype(str))
    weights = cat.table("probe_weights")
    probe = weights[(weights["target"] == "length_class") & (weights["class"] == "long")
                    & (weights["representation"] == "sae")]
    assert len(probe)
    # search: the held-out finding's best feature, then the largest probe weights
    hits = cat.search("LENGTH_CLASS", limit=50)
    assert len(hits) and (hits["match"] == "sequence concept").all()
    assert hits["concept"].str.startswith("length_class=").all() and hits["test_f1"].isna().all()
    strongest = probe.iloc[np.argmax(probe["weight"].abs().to_numpy())]
    assert cat.feature_id(int(strongest["dim"])) in set(hits["feature"])
    best = findings[(findings["representation"] == "sae") & findings["best_feature"].notna()]
    assert set(best["best_feature"].astype(str)) <= set(hits["feature"])
    assert cat.search("length_class=long", limit=50)["concept"].eq("length_class=long").all()
    # concept: the finding per representation, then the probe's largest SAE weights, with descriptions
    table = cat.concept("length_class=long", limit=4)
    assert list(table.columns[:4]) == ["set", "feature", "concept", "table"] and (table["concept"] == "length_class=long").all()
    found = table[table["table"] == "sequence_findings"]
    rows = findings[findings["target"] == "length_class=long"]
    assert list(found["set"]) == list(rows["representation"].astype(str)) and "status" in table.columns
    weighted = table[table["table"] == "probe_weights"]
    assert len(weighted) == min(4, len(probe)) and weighted["weight"].abs().is_monotonic_decreasing
    assert weighted["feature"].iloc[0] == cat.feature_id(int(strongest["dim"]))
    assert weighted["description"].notna().all()
    assert cat.concept("Length_Class=LONG", limit=4).equals(table)  # case-insensitive, like token concepts
    with pytest.raises(WorkbenchError, match="did you mean length_class=long"):
        cat.concept("length_class=lon")
    # token concepts are unchanged
    assert set(cat.concept("region=CDR3", limit=2)["set"]) >= {"sae"}


# ------------------------------------------------------------------------------------------------ images


def test_feature_info_speaks_of_images_or_sequences(imaging_catalog: Path, tiny_catalog: Path) -> None:
    images = Catalog.open(imaging_catalog)
    fid = str(images.features["n_sequences"].astype(int).idxmax())
    text = repr(images.feature(fid))
    assert "images" in text and "positions" in text and "sequences" not in text and "residues" not in text
    assert f"in {int(images.features.at[fid, 'n_sequences'])} images" in text and "peak at row" in text
    seqs = Catalog.open(tiny_catalog)
    fid = str(seqs.features["n_sequences"].astype(int).idxmax())
    text = repr(seqs.feature(fid))
    assert "sequences" in text and "residues" in text and "images" not in text


def test_examples_frame_gives_grid_cells_for_images(imaging_catalog: Path) -> None:
    cat = Catalog.open(imaging_catalog)
    gh, gw = (int(v) for v in cat.image_info["grid"])
    fid = str(cat.features["n_sequences"].astype(int).idxmax())
    frame = cat.examples_frame(fid)
    assert list(frame.columns) == ["feature", "kind", "rank", "sequence_id", "activation", "length", "peak", "row",
                                   "col"]
    examples = cat.examples(fid)
    assert len(frame) == len(examples) > 0
    for row, ex in zip(frame.itertuples(), examples):
        cell = np.unravel_index(int(np.argmax(ex.activations)), (gh, gw))
        assert (row.row, row.col) == (cell[0], cell[1]) and row.peak == row.row * gw + row.col + 1
        assert ex.activations.reshape(gh, gw)[row.row, row.col] == ex.activations.max()
    everything = cat.examples_frame()
    assert set(everything.columns) == set(frame.columns) and everything["row"].between(0, gh - 1).all()
    assert everything["col"].between(0, gw - 1).all()


# ------------------------------------------------------------------------------------------------ progress bars


def test_progress_bars_stay_quiet_in_jupyter_without_ipywidgets(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import importlib.util

    import tqdm
    import tqdm.auto

    from workbench._progress import progress_bar

    real = importlib.util.find_spec

    def find_spec(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None if name == "ipywidgets" else real(name, *args, **kwargs)

    # a Jupyter kernel (what tqdm.autonotebook looks for) without ipywidgets: tqdm.auto warns "IProgress not found"
    monkeypatch.setitem(sys.modules, "ipykernel.zmqshell", SimpleNamespace())
    monkeypatch.setitem(sys.modules, "IPython", SimpleNamespace(get_ipython=lambda: SimpleNamespace()))
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    for name in ("tqdm.auto", "tqdm.autonotebook"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bar = progress_bar(total=3, disable=True)
    assert type(bar) is tqdm.tqdm and not [w for w in caught if "IProgress" in str(w.message)]
    with warnings.catch_warnings(record=True) as caught:  # the check can fail: tqdm.auto itself warns here
        warnings.simplefilter("always")
        importlib.import_module("tqdm.auto")
    assert [w for w in caught if "IProgress" in str(w.message)]
    # with ipywidgets installed, tqdm.auto's bar (the notebook widget in a kernel, text in a terminal)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: object() if name == "ipywidgets"
                        else real(name, *a, **k))
    monkeypatch.setitem(sys.modules, "tqdm.auto", tqdm.auto)
    assert isinstance(progress_bar(total=3, disable=True), tqdm.auto.tqdm)


def test_concept_reads_the_per_image_association_of_image_catalogs(imaging_catalog: Path) -> None:
    cat = Catalog.open(imaging_catalog)
    pooled = cat.table("pooled_association")
    name = str(pooled["concept"].iloc[0])  # the pathology
    table = cat.concept(name, limit=4)
    assert set(table["set"]) >= {"sae", "neurons"} and (table["concept"] == name).all()
    sae = table[table["set"] == "sae"]
    assert len(sae) == 4 and (sae["table"] == "pooled_association").all()
    mine = pooled[pooled["concept"].astype(str) == name]
    best = mine.sort_values("q_adjusted", kind="stable")["q_adjusted"].head(4).to_numpy()
    np.testing.assert_allclose(np.sort(sae["q_adjusted"].to_numpy()), np.sort(best))  # the most significant first
    row = sae.iloc[0]
    assert row["auroc"] == pytest.approx(float(mine.set_index("feature").at[row["feature"], "auroc"]))
    assert row["description"] == cat.features.at[row["feature"], "description"]
    neurons = table[table["set"] == "neurons"]
    assert neurons["feature"].str.startswith("u").all() and neurons["description"].isna().all()
    with pytest.raises(WorkbenchError, match=f"did you mean {name}"):
        cat.concept(name[:-1] + "x")
