"""Findings that survive their controls: concept verdicts, sequence-level inputs, rediscovery evidence, headline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from workbench.concepts import ConceptLabels
from workbench.errors import InputError
from workbench.findings import concept_findings, headline, rediscovery_evidence, sequence_inputs


def _best(rows: list[tuple[str, float, str, float]]) -> pd.DataFrame:
    """(concept, test_f1, stratified, beyond_test_f1) rows as a stratified ``Association.best``."""
    return pd.DataFrame({
        "concept": [r[0] for r in rows], "best_feature": "f00001", "test_f1": [r[1] for r in rows],
        "stratified": [r[2] for r in rows], "beyond_test_f1": [r[3] for r in rows],
        "captured_beyond": [r[3] > 0.5 for r in rows], "beyond_feature": ["f00002" if r[3] else "" for r in rows],
        "beyond_or": [5.0 if r[3] else np.nan for r in rows], "beyond_q": [1e-6 if r[3] else np.nan for r in rows],
    })


def test_concept_findings_need_the_strata_and_every_control() -> None:
    sae = _best([("a", 0.9, "survives", 0.9), ("b", 0.9, "survives", 0.8), ("c", 0.9, "not testable", 0.0),
                 ("d", 0.8, "explained", 0.0), ("e", 0.2, "not significant", 0.0), ("f", 0.9, "survives", 0.9)])
    neurons = _best([("a", 0.4, "survives", 0.3), ("b", 0.5, "survives", 0.4), ("c", 0.9, "not testable", 0.0),
                     ("d", 0.3, "explained", 0.0), ("e", 0.1, "not significant", 0.0), ("f", 0.3, "survives", 0.3)])
    random = _best([("a", 0.3, "survives", 0.2), ("b", 0.85, "survives", 0.85), ("c", 0.9, "not testable", 0.0),
                    ("d", 0.3, "explained", 0.0), ("e", 0.1, "not significant", 0.0), ("f", 0.3, "survives", 0.3)])
    verdicts = pd.DataFrame({"concept": list("abcdef"), "verdict": ["beats neurons and random"] * 6,
                             "beats_neurons": [True, True, False, True, False, True],
                             "beats_random": [True, False, False, True, False, False]})
    table = concept_findings({"sae": sae, "neurons": neurons, "random": random}, verdicts).set_index("concept")
    assert table.loc["a", "finding"] == "finding"
    assert table.loc["b", "finding"] == "control as good"  # the random control captures it beyond the strata too
    assert table.loc["f", "finding"] == "control as good"  # the bootstrap interval against the control holds 0
    assert table.loc["c", "finding"] == "not testable"
    assert table.loc["d", "finding"] == "explained by strata"
    assert table.loc["e", "finding"] == "not captured"
    assert table.index[0] == "a" and table.loc["a", "beyond_f1_random"] == 0.2 and table.loc["a", "why"]
    s = headline({"concept_findings": table.reset_index()})
    assert (s["concepts_captured_beyond_sae"], s["concepts_captured_beyond_random"], s["concept_findings"]) == (3, 1, 1)
    assert s["concepts_testable"] == 5 and s["top_concept_findings"][0].startswith("a: f00002 F1 0.90")
    with pytest.raises(InputError, match="stratified"):
        concept_findings({"sae": sae.drop(columns="captured_beyond")})


def _labels() -> ConceptLabels:
    """Six sequences: group ``kind`` (x on four, y on two), a scoped group ``ab`` (one sequence out of scope) and a
    measure with a missing value."""
    names = ["kind=x", "kind=y", "ab=p", "ab=q"]
    m = np.zeros((6, 4), dtype=bool)
    m[[0, 1, 2, 3], 0] = True
    m[[4, 5], 1] = True
    m[[0, 1, 2], 2] = True
    m[[3, 4], 3] = True
    seq_concepts = pd.DataFrame({"concept": names, "source": "t", "n_sequences": m.sum(0),
                                 "scope": ["", "", "ab:in", "ab:in"]})
    empty = sp.csr_matrix((0, 0), dtype=bool)
    return ConceptLabels(empty, sp.csr_matrix((0, 0), dtype=np.int32), pd.DataFrame({"concept": []}),
                         sp.csr_matrix(m), seq_concepts, sequence_scopes={"ab:in": np.array([1, 1, 1, 1, 1, 0], bool)},
                         measures=pd.DataFrame({"count": [1.0, 2.0, np.nan, 4.0, 5.0, 6.0]}))


def test_sequence_inputs_targets_and_covariates() -> None:
    labels = _labels()
    targets, cov = sequence_inputs(labels, groups=("kind", "ab"), measures=("count",), covariates=("ab", "count"),
                                   min_units=2)
    assert targets["kind=x"].tolist() == [True, True, True, True, False, False]
    # out of the scope, a group's value is unknown: the sequence is left out of its targets, not negative
    assert targets["ab=p"].tolist()[:5] == [True, True, True, False, False] and targets["ab=p"].iloc[5] is None
    assert "kind=y" in targets.columns and np.isnan(targets["count"].iloc[2])
    assert cov["ab"].tolist()[-1] == "(unlabelled)" and cov["count"].iloc[3] == 4.0
    few, _ = sequence_inputs(labels, groups=("kind",), min_units=3)  # y has 2 sequences: x against 2 others is too few
    assert list(few.columns) == []
    extra = pd.DataFrame({"t": [1, 0, 1, 0, 1, 0]})
    assert sequence_inputs(labels, extra=extra)[0]["t"].tolist() == [1, 0, 1, 0, 1, 0]
    for bad in ({"groups": ("nope",)}, {"measures": ("nope",)}, {"covariates": ("nope",)},
                {"extra": extra.iloc[:3]}):
        with pytest.raises(InputError):
            sequence_inputs(labels, **bad)


def test_rediscovery_evidence_discounts_what_the_control_finds() -> None:
    sae = pd.DataFrame({"concept": ["a", "b", "c"], "feature": ["f1", "f2", ""], "precision_at_k": [0.9, 0.9, np.nan],
                        "lift": [5.0, 5.0, np.nan]})
    control = pd.DataFrame({"concept": ["a", "b"], "feature": ["r1", "r2"], "precision_at_k": [0.2, 0.85],
                            "lift": [1.2, 4.0]})
    out = rediscovery_evidence(sae, control)
    assert out["evidence"].tolist() == [True, False, False]
    assert out["control_feature"].tolist() == ["r1", "r2", ""] and np.isnan(out["control_precision_at_k"].iloc[2])
