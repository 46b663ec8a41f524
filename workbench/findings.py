"""Findings that survive their controls: the verdict per concept, sequence-level targets and the headline.

:func:`workbench.annotate` computes, for the SAE and each control (the model's neurons, an SAE on a random-weight
copy of the model), the plain association, the association stratified by the trivial explanations
(:mod:`workbench.stratified`), bootstrap intervals of the test-F1 differences (:mod:`workbench.verdicts`) and the
held-out sequence-level tests (:mod:`workbench.heldout`). This module turns them into findings:

* :func:`concept_findings`: one row per concept with each representation's capture, plainly and beyond the strata,
  the bootstrap verdict and a one-word ``finding`` status; a concept is a finding only when the SAE captures it
  beyond the strata *and* beats every control, so a concept that a control explains as well says so;
* :func:`sequence_inputs`: sequence-level targets and covariates from concept groups and measures;
* :func:`headline`: the counts and the short lines a summary prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.concepts import ConceptLabels

__all__ = ["concept_findings", "sequence_inputs", "rediscovery_evidence", "headline", "FINDING_STATUSES",
           "REDISCOVERY_MARGIN"]

FINDING_STATUSES = {
    "finding": "captured beyond the strata and better than every control",
    "control as good": "captured beyond the strata, but a control does as well (bootstrap interval holds 0 or a "
                       "control captures it beyond the strata too)",
    "explained by strata": "captured plainly, but no feature survives the stratification",
    "not testable": "the concept does not vary inside any stratum (it is a function of them)",
    "not captured": "no feature reaches the capture bar",
}
"""The ``finding`` values of :func:`concept_findings`, checked in the order given after ``finding``."""


def concept_findings(bests: Mapping[str, pd.DataFrame], verdicts: pd.DataFrame | None = None, *,
                     reference: str = "sae", captured_f1: float = 0.5) -> pd.DataFrame:
    """One row per concept: capture by every representation, plainly and beyond the strata, and the verdict.

    ``bests`` maps a representation name to its ``Association.best`` (stratified: with ``captured_beyond``,
    ``beyond_test_f1``...); ``verdicts`` is :func:`workbench.verdicts.concept_verdicts` for the same names.
    Columns: ``concept``; ``stratified`` (the reference's best feature: ``survives`` / ``explained`` /
    ``not testable`` / ``not significant``); per representation ``r``: ``f1_<r>`` (test F1 of its best feature),
    ``beyond_f1_<r>`` (test F1 of its best feature that survives the stratification, 0 if none); the reference's
    ``beyond_feature``, ``beyond_or`` and ``beyond_q``; ``verdict`` (bootstrap, plain test F1); ``finding`` (see
    :data:`FINDING_STATUSES`) and ``why`` (its sentence).
    """
    import pandas as pd

    if reference not in bests:
        raise InputError(f"no association for the reference {reference!r}; have {sorted(bests)}")
    ref = bests[reference].set_index("concept")
    if "captured_beyond" not in ref.columns:
        raise InputError("concept_findings needs stratified associations (associate with strata=)")
    out = pd.DataFrame({"concept": ref.index.astype(str), "stratified": ref["stratified"].to_numpy(dtype=object)})
    for name, best in bests.items():
        b = best.set_index("concept").reindex(ref.index)
        out[f"f1_{name}"] = b["test_f1"].fillna(0.0).to_numpy(dtype=float)
        out[f"beyond_f1_{name}"] = (b["beyond_test_f1"].fillna(0.0).to_numpy(dtype=float)
                                    if "beyond_test_f1" in b.columns else np.nan)
    for col in ("beyond_feature", "beyond_or", "beyond_q"):
        out[col] = ref[col].to_numpy()
    verdict = pd.Series("", index=ref.index, dtype=object)
    beats_all = pd.Series(True, index=ref.index)
    if verdicts is not None and len(verdicts):
        v = verdicts.set_index("concept").reindex(ref.index)
        verdict = v["verdict"].fillna("")
        for name in bests:
            if name != reference and f"beats_{name}" in v.columns:
                beats_all &= v[f"beats_{name}"].fillna(False).astype(bool)
    out["verdict"] = verdict.to_numpy(dtype=object)
    beyond = ref["captured_beyond"].fillna(False).to_numpy(dtype=bool)
    rivals = np.zeros(len(out), dtype=bool)
    for name in bests:
        if name != reference:
            rivals |= out[f"beyond_f1_{name}"].fillna(0.0).to_numpy() >= out[f"beyond_f1_{reference}"].to_numpy()
    captured = out[f"f1_{reference}"].to_numpy() > captured_f1
    status = np.select(
        [beyond & beats_all.to_numpy() & ~rivals, beyond, out["stratified"].to_numpy() == "not testable",
         captured],
        ["finding", "control as good", "not testable", "explained by strata"], default="not captured")
    out["finding"] = status.astype(object)
    out["why"] = out["finding"].map(FINDING_STATUSES)
    order = {k: i for i, k in enumerate(FINDING_STATUSES)}
    out["_o"] = out["finding"].map(order)
    out = out.sort_values(["_o", f"beyond_f1_{reference}", "concept"], ascending=[True, False, True], kind="stable")
    return out.drop(columns="_o").reset_index(drop=True)


REDISCOVERY_MARGIN = 0.1
"""Precision@k by which the SAE must beat the random control for a rediscovery to count as evidence."""


def rediscovery_evidence(sae: pd.DataFrame, control: pd.DataFrame, *, margin: float = REDISCOVERY_MARGIN) -> pd.DataFrame:
    """The SAE's :func:`~workbench.discovery.rediscovery` table with the control's figures beside it:
    ``control_feature``, ``control_precision_at_k``, ``control_lift`` and ``evidence`` (the SAE's precision@k beats
    the control's by at least ``margin`` and its lift is above 1; a concept that the control rediscovers as well is
    not evidence of what the model learned)."""
    c = control.set_index("concept").reindex(sae["concept"])
    out = sae.copy()
    out["control_feature"] = c["feature"].fillna("").to_numpy(dtype=object)
    out["control_precision_at_k"] = c["precision_at_k"].to_numpy(dtype=float)
    out["control_lift"] = c["lift"].to_numpy(dtype=float)
    sae_p = out["precision_at_k"].fillna(0.0).to_numpy()
    out["evidence"] = (sae_p >= out["control_precision_at_k"].fillna(0.0).to_numpy() + margin) & (out["lift"].fillna(0.0) > 1)
    return out


def _group_values(labels: ConceptLabels, group: str) -> pd.Series | None:
    """Per sequence, the value of sequence concept group ``group``: None where unlabelled, out of scope, or with two
    values (undecided)."""
    import pandas as pd

    values = labels.group_values(group, "sequence", single=True, in_scope=True)
    return None if values is None else pd.Series(values)


def sequence_inputs(labels: ConceptLabels, *, groups: Sequence[str] = (), measures: Sequence[str] = (),
                    covariates: Sequence[str] = (), extra: pd.DataFrame | None = None, min_units: int = 20,
                    max_values: int = 8) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Sequence-level targets and covariates (store sequence order) for :func:`workbench.heldout.heldout_findings`.

    Each concept group of ``groups`` gives one binary target per value (``<group>=<value>`` against the group's other
    values; unlabelled sequences are left out), for the ``max_values`` most frequent values with at least
    ``min_units`` sequences on each side; each name of ``measures`` (a column of ``labels.measures``) is a numeric
    target; ``extra`` (rows in store order) adds targets as they are. ``covariates`` names sequence concept groups
    (categorical; unlabelled = its own level) or measures (numeric). Names that the labels lack raise an error.
    """
    import pandas as pd

    n = labels.sequences.shape[0]
    targets: dict[str, Any] = {}
    for g in groups:
        values = _group_values(labels, g)
        if values is None:
            raise InputError(f"no sequence concept group {g!r} in the labels")
        counts = values.value_counts()
        decided = int(counts.sum())
        for value, k in counts.head(max_values).items():
            if k >= min_units and decided - k >= min_units:
                targets[f"{g}={value}"] = values.map(lambda v, value=value: None if v is None else v == value)
    measure_table = labels.measures
    for m in measures:
        if measure_table is None or m not in measure_table.columns:
            raise InputError(f"no measure {m!r} in the labels")
        targets[m] = pd.to_numeric(measure_table[m], errors="coerce").reset_index(drop=True)
    table = pd.DataFrame(targets, index=range(n))
    if extra is not None:
        if len(extra) != n:
            raise InputError(f"extra targets have {len(extra)} rows for {n} sequences")
        table = pd.concat([table, extra.reset_index(drop=True)], axis=1)
    cov: dict[str, Any] = {}
    for c in covariates:
        values = _group_values(labels, c)
        if values is not None:
            cov[c] = values.fillna("(unlabelled)")
        elif measure_table is not None and c in measure_table.columns:
            cov[c] = pd.to_numeric(measure_table[c], errors="coerce").reset_index(drop=True)
        else:
            raise InputError(f"no sequence concept group or measure {c!r} to use as a covariate")
    return table, (pd.DataFrame(cov, index=range(n)) if cov else None)


def headline(tables: Mapping[str, pd.DataFrame], *, reference: str = "sae", n_top: int = 5) -> dict[str, Any]:
    """Summary entries: concepts captured beyond the strata per representation, findings, and the top non-trivial
    findings as short lines with their evidence."""
    out: dict[str, Any] = {}
    findings = tables.get("concept_findings")
    if findings is not None and len(findings):
        for col in findings.columns:
            if col.startswith("beyond_f1_"):
                out[f"concepts_captured_beyond_{col[len('beyond_f1_'):]}"] = int((findings[col] > 0.5).sum())
        out["concepts_testable"] = int((findings["stratified"] != "not testable").sum())
        out["concept_findings"] = int((findings["finding"] == "finding").sum())
        lines = []
        for r in findings[findings["finding"] == "finding"].head(n_top).itertuples():
            controls = ", ".join(f"{c[len('beyond_f1_'):]} {getattr(r, c):.2f}" for c in findings.columns
                                 if c.startswith("beyond_f1_") and c != f"beyond_f1_{reference}")
            lines.append(f"{r.concept}: {r.beyond_feature} F1 {getattr(r, f'beyond_f1_{reference}'):.2f} beyond "
                         f"position and residue (OR {r.beyond_or:.1f}, q {r.beyond_q:.1g}); controls {controls}; "
                         f"{r.verdict}" + (f"; e.g. {r.examples}" if getattr(r, "examples", "") else ""))
        out["top_concept_findings"] = lines
    seq = tables.get("sequence_findings")
    if seq is not None and len(seq):
        ok = seq[seq["status"] == "ok"].copy()
        ok["score"] = ok["test_auroc_adjusted"].where(ok["kind"] == "binary", ok["test_rho_adjusted"])
        chance = np.where(ok["kind"] == "binary", 0.5, 0.0)
        ok["significant"] = (ok["test_q_adjusted"] < 0.05) & (ok["score"] > chance)  # held out, train direction
        out["sequence_targets_tested"] = int(ok["target"].nunique())
        out["sequence_targets_not_testable"] = int(seq.loc[seq["status"] != "ok", "target"].nunique())
        out["sequence_targets_significant"] = {str(r): int(g["significant"].sum())
                                               for r, g in ok.groupby("representation", sort=False)}
        lines = []
        hits = ok.groupby("target", sort=False)["significant"].any()
        for target in hits[hits].index:
            g = ok[ok["target"] == target]
            metric = "AUROC" if g["kind"].iloc[0] == "binary" else "r"
            parts = ", ".join(f"{r} {sc:.2f}" + (f" (q {q:.1g})" if sig else "")
                              for r, sc, q, sig in zip(g["representation"], g["score"], g["test_q_adjusted"],
                                                       g["significant"]))
            ref = g[g["representation"] == reference]
            feature = f"; SAE feature {ref['best_feature'].iloc[0]}" if len(ref) else ""
            lines.append(f"{target}: held-out {metric} after control {parts}{feature}")
        out["sequence_findings"] = lines
    return out
