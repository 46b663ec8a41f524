"""The queries of :class:`workbench.catalog.Catalog`: :func:`search` and :func:`concept` (behind the methods of
the same names), and the sequence-level evidence they read for concepts that have no token association (per-sequence
labels: ``sequence_findings`` and the sequence-level probes' weights). Nothing here is public API except through
those methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.catalog import Catalog

__all__: list[str] = []


def search(cat: Catalog, query: str, *, limit: int = 20) -> pd.DataFrame:
    """What :meth:`Catalog.search` returns (see there)."""
    import pandas as pd

    from workbench._catalog_read import as_float, search_frame

    var = cat.features
    q = query.strip()
    ql = q.lower()
    rows: list[tuple[str, str, Any, float]] = []
    if not ql:
        return search_frame(rows, var, limit)
    try:
        j = cat._index(q)
        rows.append((cat.feature_id(j), "id", var["top_concept"].iat[j], as_float(var["top_f1"].iat[j])))
    except WorkbenchError:
        pass
    if "association" in cat.tables:
        pairs = cat.table("association")
        names = pairs["concept"]
        if hasattr(names, "cat"):
            cats = pd.Series(names.cat.categories.astype(str))
            match = np.flatnonzero(cats.str.lower().str.contains(ql, regex=False).to_numpy())
            mask = np.isin(names.cat.codes.to_numpy(), match)
        else:
            mask = names.astype(str).str.lower().str.contains(ql, regex=False).to_numpy()
        hit = pairs[mask].sort_values(["test_f1", "val_f1"], ascending=False, kind="stable")
        hit = hit.drop_duplicates("feature")
        rows += [(str(f), "concept", str(c), as_float(v))
                 for f, c, v in zip(hit["feature"], hit["concept"], hit["test_f1"])]
    rows += sequence_search_rows(cat, ql)
    words = ql.split()
    text = cat._cached("search:text", lambda: (var["description"].astype(str) + " "
                                               + var["top_concept"].astype(str)).str.lower())
    mask = np.ones(len(text), dtype=bool)
    for w in words:
        mask &= text.str.contains(w, regex=False).to_numpy()
    found = var[mask]
    order = np.argsort(-np.nan_to_num(found["top_f1"].to_numpy(dtype=np.float64), nan=-1.0), kind="stable")
    rows += [(str(found.index[i]), "description", found["top_concept"].iat[i], as_float(found["top_f1"].iat[i]))
             for i in order]
    return search_frame(rows, var, limit)


def concept(cat: Catalog, name: str, *, limit: int = 10) -> pd.DataFrame:
    """What :meth:`Catalog.concept` returns (see there)."""
    import difflib

    import pandas as pd

    from workbench._catalog_read import equals

    pairs = cat.table("association") if "association" in cat.tables else None
    known: list[str] = []
    if pairs is not None:
        names = pairs["concept"]
        known = list(names.cat.categories.astype(str)) if hasattr(names, "cat") else sorted(names.astype(str).unique())
    best_tables = {t.removeprefix("best_"): cat.table(t) for t in cat.tables if t.startswith("best_")}
    for t in best_tables.values():
        known += [str(c) for c in t["concept"]]
    known = list(dict.fromkeys(known))
    sequence_level = [c for c in sequence_concept_names(cat) if c not in set(known)]
    unit_level = [c for c in pooled_concept_names(cat) if c not in set(known) | set(sequence_level)]
    if not known and not sequence_level and not unit_level:
        raise WorkbenchError(f"{cat.path} has no association table and no sequence-level findings")
    every = known + sequence_level + unit_level
    target = name if name in every else next((c for c in every if c.lower() == name.lower()), None)
    if target is None:
        close = difflib.get_close_matches(name, every, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise WorkbenchError(f"no concept {name!r} in {cat.path}{hint}")
    if target in sequence_level:
        return sequence_concept(cat, target, limit=limit)
    if target in unit_level:
        return pooled_concept(cat, target, limit=limit)
    if pairs is None:
        raise WorkbenchError(f"{cat.path} has no association table")
    hit = pairs[equals(pairs["concept"], target)]
    hit = hit.sort_values(["test_f1", "val_f1"], ascending=False, kind="stable").head(limit)
    cols = [c for c in ("feature", "concept", "threshold", "val_f1", "test_f1", "test_precision", "test_recall",
                        "test_domain_recall", "q_value") if c in hit.columns]
    sae = hit[cols].astype({"feature": str, "concept": str}).assign(set="sae")
    var = cat.features.reindex(sae["feature"])
    sae["description"] = var["description"].astype(str).to_numpy()
    sae["family"] = var["family"].astype(str).to_numpy()
    parts = [sae]
    for set_name, best in best_tables.items():
        if set_name == "sae":
            continue
        row = best[equals(best["concept"], target)]
        if len(row):
            r = row.iloc[0]
            stats = {c: r[c] for c in ("threshold", "val_f1", "test_f1", "q_value") if c in row.columns}
            parts.append(pd.DataFrame([{"set": set_name, "feature": str(r["best_feature"]), "concept": target,
                                        **stats}]))
    out = pd.concat(parts, ignore_index=True)
    front = ["set", "feature", "concept"]
    return out[front + [c for c in out.columns if c not in front]]


FINDING_COLUMNS = ("kind", "status", "n_test", "test_auroc", "test_auroc_adjusted", "test_rho", "test_rho_adjusted",
                   "test_q_adjusted")
"""Columns of ``sequence_findings`` that :meth:`Catalog.concept` shows for a sequence-level concept."""


def sequence_evidence(cat: Catalog) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """What a catalog stores about its sequence-level concepts (per-sequence labels such as a ``user`` file's):
    the ``sequence_findings`` table, and the SAE weights of the sequence-level probes with their ``feature`` id and
    ``concept`` (``<target>=<class>``). Either is None when the catalog lacks it. Read once per catalog object
    (every search reads it); callers must not change the frames."""
    return cat._cached("sequence_evidence", lambda: _sequence_evidence(cat))


def _sequence_evidence(cat: Catalog) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    findings = cat.table("sequence_findings") if "sequence_findings" in cat.tables else None
    weights = None
    if "probe_weights" in cat.tables and "probes" in cat.tables:
        probes = cat.table("probes")
        targets = set(probes.loc[probes["level"].astype(str) == "sequence", "target"].astype(str))
        w = cat.table("probe_weights")
        w = w[(w["representation"].astype(str) == "sae") & w["target"].astype(str).isin(targets) & w["class"].notna()]
        dims = w["dim"].to_numpy(dtype=np.int64)
        w = w[(dims >= 0) & (dims < len(cat.features))]
        if len(w):
            weights = w.assign(feature=[cat.feature_id(int(d)) for d in w["dim"]],
                               concept=w["target"].astype(str) + "=" + w["class"].astype(str))
    return findings, weights


def sequence_concept_names(cat: Catalog) -> list[str]:
    """The sequence-level concepts (and numeric targets) the catalog holds evidence for (:func:`sequence_evidence`)."""
    findings, weights = sequence_evidence(cat)
    names = [] if findings is None else findings["target"].astype(str).tolist()
    names += [] if weights is None else weights["concept"].tolist()
    return list(dict.fromkeys(names))


def sequence_search_rows(cat: Catalog, query: str) -> list[tuple[str, str, Any, float]]:
    """:meth:`Catalog.search` rows (``match`` = ``sequence concept``, no test F1) for the sequence-level concepts
    containing ``query`` (lower case): the best feature of each held-out finding (significant first), then the
    features with the largest sequence-probe weights."""
    findings, weights = sequence_evidence(cat)
    rows: list[tuple[str, str, Any, float]] = []
    if findings is not None:
        f = findings[(findings["representation"].astype(str) == "sae") & findings["best_feature"].notna()
                     & findings["target"].astype(str).str.lower().str.contains(query, regex=False)]
        f = f.assign(_ok=f["status"].astype(str) != "ok", _q=f["test_q_adjusted"].astype(float).fillna(1.0))
        f = f.sort_values(["_ok", "_q"], kind="stable")
        rows += [(str(b), "sequence concept", str(t), float("nan")) for b, t in zip(f["best_feature"], f["target"])]
    if weights is not None:
        w = weights[weights["concept"].str.lower().str.contains(query, regex=False)]
        w = w.iloc[np.argsort(-w["weight"].abs().to_numpy(), kind="stable")]
        rows += [(f, "sequence concept", c, float("nan")) for f, c in zip(w["feature"], w["concept"])]
    return rows


def sequence_concept(cat: Catalog, name: str, *, limit: int = 10) -> pd.DataFrame:
    """What :meth:`Catalog.concept` returns for a sequence-level concept (see there)."""
    import pandas as pd

    findings, weights = sequence_evidence(cat)
    parts = []
    if findings is not None:
        hit = findings[findings["target"].astype(str) == name]
        if len(hit):
            parts.append(pd.DataFrame({"set": hit["representation"].astype(str).to_numpy(),
                                       "feature": hit["best_feature"].to_numpy(dtype=object), "concept": name,
                                       "table": "sequence_findings",
                                       **{c: hit[c].to_numpy() for c in FINDING_COLUMNS if c in hit.columns}}))
    if weights is not None:
        w = weights[weights["concept"] == name]
        w = w.iloc[np.argsort(-w["weight"].abs().to_numpy(), kind="stable")[:limit]]
        if len(w):
            parts.append(pd.DataFrame({"set": "sae", "feature": w["feature"].to_numpy(dtype=object), "concept": name,
                                       "table": "probe_weights", "weight": w["weight"].to_numpy(dtype=float)}))
    out = pd.concat(parts, ignore_index=True)
    empty = [c for c in (*FINDING_COLUMNS, "weight") if c in out.columns and out[c].isna().all()]
    out = out.drop(columns=empty)
    var = cat.features.reindex(out["feature"].astype(str))
    out["description"] = var["description"].astype(object).to_numpy()
    out["family"] = var["family"].astype(object).to_numpy() if "family" in var else None
    return out


POOLED_TABLES = {"pooled_association": "sae", "pooled_association_neurons": "neurons",
                 "pooled_association_random": "random_sae"}
"""The per-unit (per-image) association tables of a catalog and the representation each holds."""
POOLED_COLUMNS = ("auroc", "auroc_adjusted", "partial_r", "q_adjusted", "mean_with", "mean_without", "region_share",
                  "region")
"""Columns of the pooled tables that :meth:`Catalog.concept` shows for a unit-level concept."""


def pooled_concept_names(cat: Catalog) -> list[str]:
    """The unit-level concepts of the catalog's pooled association tables (an image catalog's ``pathology``)."""
    names: list[str] = []
    for table in POOLED_TABLES:
        if table in cat.tables:
            names += [str(c) for c in cat.table(table)["concept"].dropna().unique()]
    return list(dict.fromkeys(names))


def pooled_concept(cat: Catalog, name: str, *, limit: int = 10) -> pd.DataFrame:
    """What :meth:`Catalog.concept` returns for a unit-level concept: per representation (SAE features, the layer's
    units, the random-weight control) its ``limit`` units most associated after confound control (q-value, then
    ``|partial_r|``), from the pooled tables (``table``)."""
    import pandas as pd

    parts = []
    for table, representation in POOLED_TABLES.items():
        if table not in cat.tables:
            continue
        t = cat.table(table)
        t = t[t["concept"].astype(str) == name]
        order = np.lexsort((-t["partial_r"].abs().fillna(0.0).to_numpy(), t["q_adjusted"].fillna(1.0).to_numpy()))
        t = t.iloc[order[:limit]]
        parts.append(pd.DataFrame({"set": representation, "feature": t["feature"].astype(str).to_numpy(),
                                   "concept": name, "table": table,
                                   **{c: t[c].to_numpy() for c in POOLED_COLUMNS if c in t.columns}}))
    out = pd.concat(parts, ignore_index=True)
    var = cat.features.reindex(out["feature"].where(out["set"] != "neurons"))
    out["description"] = var["description"].astype(object).to_numpy()
    out["family"] = var["family"].astype(object).to_numpy() if "family" in var else None
    return out
