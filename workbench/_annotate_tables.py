"""What the annotation stage adds to the catalog beside the association: per-feature columns (causal effect, probe
weight, description scores, unexplained rank), per-sequence positions, the measures table, the concept findings'
example sequences and the headline summary. Private helpers of :func:`workbench.annotate`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import InputError, WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.concepts import ConceptLabels
    from workbench.label_shards import LabelShards
    from workbench.store import ActivationStore

__all__: list[str] = []


def _position_strings(labels: ConceptLabels | LabelShards, group: str, n_seq: int, token_sequence: np.ndarray, *,
                      rows: np.ndarray | None = None, store: ActivationStore | None = None) -> list[str] | None:
    """Per sequence (or per sequence of ``rows``, store sequence indices), the comma-joined value of ``group`` for
    each residue ('' where unlabelled), or None. Labels held per shard are read shard by shard (``store`` given)."""
    from workbench.label_shards import LabelShards

    if isinstance(labels, LabelShards):
        if store is None:
            raise WorkbenchError("position strings from label shards need the store")
        if not any(str(c).startswith(group + "=") for c in labels.token_concepts["concept"]):
            return None
        wanted = np.arange(n_seq) if rows is None else np.asarray(rows, dtype=np.int64)
        out: dict[int, str] = {}
        starts = np.concatenate([[0], np.cumsum([s.n_tokens for s in store.shards])]).astype(np.int64)
        shard_of = store.sequences["shard"].to_numpy()
        for i in np.unique(shard_of[wanted]):
            own = labels.shard_sequences(int(i))
            strings = _position_strings(labels.shard(int(i)), group, len(own),
                                        np.searchsorted(own, token_sequence[starts[i]: starts[i + 1]]))
            out.update({int(own[k]): strings[k] for k in np.searchsorted(own, wanted[shard_of[wanted] == i])})  # type: ignore[index]
        return [out[int(r)] for r in wanted]
    values = labels.group_values(group, "token")
    if values is None:
        return None
    values = np.where(values == None, "", values)  # noqa: E711 - elementwise on an object array
    per: list[list[str]] = [[] for _ in range(n_seq)]
    for s, v in zip(token_sequence.tolist(), values.tolist()):
        per[s].append(v)
    joined = [",".join(v) for v in per]
    return joined if rows is None else [joined[int(r)] for r in rows]


def _finding_examples(findings: pd.DataFrame, features: Any, token_sequence: np.ndarray, ids: Sequence[str],
                      n: int = 3) -> list[str]:
    """For each concept finding (and each concept a control explains as well), the ``n`` sequences where its
    surviving feature carries the most activation, comma-joined ('' for the other rows)."""
    index = {name: i for i, name in enumerate(features.names)}
    csc = features.values.tocsc()
    out = []
    for feature, status in zip(findings["beyond_feature"].astype(str), findings["finding"]):
        j = index.get(feature)
        if j is None or status not in ("finding", "control as good"):
            out.append("")
            continue
        rows = csc.indices[csc.indptr[j]: csc.indptr[j + 1]]
        mass = np.bincount(token_sequence[rows], weights=csc.data[csc.indptr[j]: csc.indptr[j + 1]], minlength=len(ids))
        top = np.argsort(-mass, kind="stable")[:n]
        out.append(", ".join(str(ids[i]) for i in top if mass[i] > 0))
    return out


def _measures_table(labels: ConceptLabels, sequence_ids: Sequence[str]) -> pd.DataFrame | None:
    """``labels.measures`` as a catalog table: ``sequence_id`` first, then the measures (store sequence order)."""
    measures = labels.measures
    if measures is None:
        return None
    if len(measures) != len(sequence_ids):
        raise InputError(f"the label measures have {len(measures)} rows for {len(sequence_ids)} store sequences")
    table = measures.reset_index(drop=True).copy()
    if "sequence_id" in table.columns:
        if table["sequence_id"].astype(str).tolist() != [str(i) for i in sequence_ids]:
            raise InputError("the label measures' sequence_id column is not the store's sequence order")
        table = table.drop(columns="sequence_id")
    table.insert(0, "sequence_id", np.asarray(sequence_ids, dtype=object))
    return table


def _var_extra(names: Sequence[str], tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Per-feature columns from the tables: causal effect, strongest probe weight, description scores, unexplained
    rank."""
    import pandas as pd

    extra = pd.DataFrame(index=pd.Index(list(names), name="feature"))
    causal = tables.get("causal")
    if causal is not None and len(causal):
        c = causal.set_index(causal["feature"].map(lambda f: f if isinstance(f, str) else f"f{int(f):05d}"))
        for col in ("kl_firing", "kl_other", "kl_ratio", "dlogp_firing", "dlogp_other"):
            if col in c:
                extra[f"causal_{col}"] = c[col].reindex(extra.index).astype(float)
    weights = tables.get("probe_weights")
    if weights is not None and len(weights):
        w = weights[weights["representation"] == "sae"].copy()
        if len(w):
            w["feature"] = w["dim"].map(lambda d: names[int(d)] if 0 <= int(d) < len(names) else None)
            w["abs"] = w["weight"].abs()
            top = w.sort_values("abs", ascending=False).drop_duplicates("feature").set_index("feature")
            extra["probe_target"] = (top["target"].astype(str) + "=" + top["class"].astype(str)).reindex(extra.index)
            extra["probe_weight"] = top["weight"].reindex(extra.index).astype(float)
    pooled = tables.get("pooled_association")  # from workbench.pooled: unit-level labels (an image's pathology)
    if pooled is not None and len(pooled):
        for concept, g in pooled.groupby("concept", sort=False):
            g = g.set_index(g["feature"].astype(str))
            for col in ("auroc", "auroc_adjusted", "q_adjusted"):
                extra[f"{concept}_{col}"] = g[col].reindex(extra.index).astype(float)
    scores = tables.get("description_scores")  # from workbench.description_scores
    if scores is not None and len(scores):
        s = scores.set_index(scores["feature"].astype(str))
        for col in ("description_detection", "description_f1", "description_corr", "description_spearman"):
            if col in s:
                extra[col] = s[col].reindex(extra.index).astype(float)
    unexplained = tables.get("unexplained_features")
    if unexplained is not None and len(unexplained):
        extra["unexplained_rank"] = unexplained.set_index("feature")["rank"].reindex(extra.index).astype(float)
    return extra


def _summary(tables: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    """Headline figures beyond what the catalog builder computes: probes, rediscovery, top discoveries."""
    out: dict[str, Any] = {}
    probes = tables.get("probes")
    if probes is not None and len(probes):
        dense = probes[probes["k"] == 0]
        out["probes"] = {
            f"{r.level}:{r.target}:{r.representation}": round(float(r.score), 4) for r in dense.itertuples()
        }
    red = tables.get("rediscovery")
    if red is not None and len(red):
        out["rediscovery_precision_at_k_mean"] = round(float(red["precision_at_k"].mean()), 4)
        out["rediscovery_base_rate_mean"] = round(float(red["base_rate"].mean()), 4)
        out["rediscovery_concepts"] = int(len(red))
        if "control_precision_at_k" in red.columns:
            out["rediscovery_control_precision_at_k_mean"] = round(float(red["control_precision_at_k"].mean()), 4)
            out["rediscovery_evidence"] = int(red["evidence"].sum())
    missing = tables.get("missing_annotations")
    if missing is not None and len(missing):
        shown = missing[missing["kind"] != "numbering artefact"]
        if "stratified" in shown.columns:  # what position and residue explain is not shown as a discovery
            shown = shown[shown["stratified"] == "survives"]
        out["top_missing_annotations"] = [
            f"{r.concept} {_where(r)} ({r.kind}; {r.feature}, "
            f"score {r.score:.2f}" + (f", OR {r.or_mh:.1f} beyond position and residue, q {r.q_cmh:.1g}"
                                      if "or_mh" in shown.columns else "") + ")"
            for r in shown.head(3).itertuples()
        ]
        if "stratified" in missing.columns:  # for reference, clearly marked: the strongest that did not survive
            trivial = missing[(missing["kind"] != "numbering artefact") & (missing["stratified"] != "survives")]
            out["top_missing_annotations_trivial"] = [
                f"{r.concept} {_where(r)} ({r.kind}; {r.feature}, score {r.score:.2f}; "
                f"{'not testable within position and residue' if r.stratified == 'not testable' else 'explained by position and residue'})"
                for r in trivial.head(3).itertuples()
            ]
        out["missing_annotation_artefacts"] = int((missing["kind"] == "numbering artefact").sum())
        out["missing_annotation_candidates"] = int((missing["kind"] != "numbering artefact").sum())
        if "stratified" in missing.columns:
            out["missing_annotations_surviving"] = int(len(shown))
    unexplained = tables.get("unexplained_features")
    if unexplained is not None and len(unexplained):
        out["top_unexplained_features"] = [
            f"{r.feature}: " + "; ".join(part for part in (
                str(r.top_residues or ""), str(r.profile or ""),
                f"strata explain {100 * r.strata_share:.0f}% of its variance" if hasattr(r, "strata_share") else "",
            ) if part.strip())
            for r in unexplained.head(3).itertuples()
        ]
    return out


def _where(row: Any) -> str:
    """Where a candidate missing annotation lies: ``in <id>:<start>-<end> <residues>``, or ``for <id> (whole)``
    when its concept is given per whole sequence (an image's label)."""
    if bool(getattr(row, "whole_sequence", False)):
        return f"for {row.sequence_id} (whole; {row.n_tokens} tokens fire)"
    residues = getattr(row, "residues", "")
    return f"in {row.sequence_id}:{row.start}-{row.end}" + (f" {residues}" if residues else "")
