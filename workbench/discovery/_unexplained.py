"""Unexplained features: active and consistent, matching no known concept, with the evidence to name them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.associate import FeatureMatrix
from workbench.concepts import ConceptLabels

from ._spans import _check_tokens, _group_of, _scope_weights, _token_sequence

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.associate import Association


# ------------------------------------------------------------------------------------------ unexplained features


def _format_shares(names: np.ndarray, weights: np.ndarray, total: float, *, n: int, min_share: float = 0.05) -> str:
    if total <= 0:
        return ""
    order = np.argsort(-weights, kind="stable")[:n]
    parts = [f"{names[i]} {100 * weights[i] / total:.0f}%" for i in order if weights[i] > 0 and weights[i] / total >= min_share]
    return ", ".join(parts)


def unexplained_features(
    features: FeatureMatrix,
    association: Association,
    labels: ConceptLabels,
    obs: pd.DataFrame,
    *,
    max_q: float = 0.05,
    min_f1: float = 0.2,
    min_density: float = 1e-4,
    min_sequences: int = 5,
    top: int | None = 200,
    profile_groups: Sequence[str] = ("imgt", "region"),
    residue_column: str = "residue",
    motif_groups: Sequence[str] = ("motif",),
    n_top_tokens: int = 500,
    strata: np.ndarray | None = None,
) -> pd.DataFrame:
    """Features that are active and consistent but match no known concept, with evidence for naming them.

    A feature is listed when it is active on at least ``min_density`` of the tokens, fires in at least
    ``min_sequences`` distinct sequences, and no concept pairs with it at ``q_value <= max_q`` and
    ``test_f1 >= min_f1`` in ``association``. The evidence is computed on the feature's ``n_top_tokens`` most
    strongly activated tokens, each weighted by its (normalised) activation. Label groups (the part of a concept
    name before ``=``) named in ``profile_groups`` / ``motif_groups`` that ``labels`` lacks are skipped, and so is
    ``top_residues`` when ``obs`` has no ``residue_column``.

    Columns (sorted by ``rank``):

    * ``rank``: 1 for the highest score (ties: feature order);
    * ``feature``: feature name;
    * ``score``: ``mass x consistency``, how much well-spread activation the feature carries;
    * ``mass``: sum of the feature's normalised activations over all tokens (number of full-strength firings);
    * ``consistency``: fraction of ``mass`` outside the single sequence where the feature is strongest (0 when it
      fires in one sequence only; near 1 when spread over many);
    * ``density``: fraction of tokens where the feature is active (> 0);
    * ``n_active``: number of such tokens;
    * ``n_sequences``: number of distinct sequences with an active token;
    * ``best_concept``, ``best_f1``, ``best_q``: the feature's best concept by test F1 (however weak; ``""``, 0 and
      NaN when it overlaps no concept) with that pair's test F1 and q-value;
    * ``top_residues``: residue composition of the top tokens by activation weight, e.g. ``"C 62%, S 10%"`` (up to
      three residues with at least 5%);
    * ``profile``: for each group of ``profile_groups`` present in the labels, up to two of its concepts carrying
      the most activation weight of the top tokens, e.g. ``"imgt=104 80%; region=FR3 95%"`` (shares of all top-token
      weight, so tokens outside any concept of the group count against the share). For a scoped group (every
      concept of it has a scope) the shares are of the weight inside the union of their scopes, and the text adds
      which part of the weight that is, e.g. ``"shm=mutated 90% (of the 40% in scope)"``;
    * ``motif``: the concept of ``motif_groups`` most enriched among the top tokens (weight share at least 10%),
      with its share and its enrichment over its store-wide token frequency, e.g. ``"motif=Cys 95% (40x)"``; for a
      scoped concept both are taken inside its scope (weight in scope, tokens in scope);
    * ``top_sequences``: the three sequences where the feature's activation mass is largest;
    * with ``strata`` (one code per token, :func:`workbench.stratified.token_strata`): ``strata_share``, the share
      of the feature's activation variance that the strata explain (:func:`workbench.stratified.strata_share`; near
      1 for a lookup of position and residue), and ``score_beyond = score x (1 - strata_share)``, which then gives
      the ``rank``: a feature that only restates the strata sinks however much it fires.
    """
    import pandas as pd
    import scipy.sparse as sp

    _check_tokens(features, labels, obs)
    values = features.values.tocsr()
    n_tokens, n_feat = values.shape
    seq, seq_ids = _token_sequence(obs)

    positive = values.data > 0
    n_active = np.bincount(values.indices[positive], minlength=n_feat)
    density = n_active / max(1, n_tokens)
    seq_of_token = sp.csr_matrix((np.ones(n_tokens, dtype=np.float32), (seq, np.arange(n_tokens))),
                                 shape=(len(seq_ids), n_tokens))
    per_seq = (seq_of_token @ values).tocsc()  # sequences x features: activation mass per sequence
    per_seq.eliminate_zeros()
    n_sequences = np.diff(per_seq.indptr)
    mass = np.asarray(per_seq.sum(0), dtype=np.float64).ravel()
    top_mass = np.asarray(per_seq.max(0).todense(), dtype=np.float64).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        consistency = np.where(mass > 0, 1.0 - top_mass / np.where(mass > 0, mass, 1.0), 0.0)

    pairs = association.pairs
    name_index = {n: i for i, n in enumerate(features.names)}
    explained = np.zeros(n_feat, dtype=bool)
    good = pairs[(pairs["q_value"] <= max_q) & (pairs["test_f1"] >= min_f1)]
    explained[[name_index[f] for f in good["feature"] if f in name_index]] = True
    best_concept = np.full(n_feat, "", dtype=object)
    best_f1 = np.zeros(n_feat)
    best_q = np.full(n_feat, np.nan)
    if len(pairs):
        best = pairs.sort_values(["feature", "test_f1", "q_value"], ascending=[True, False, True], kind="stable")
        best = best.drop_duplicates("feature")
        known = best["feature"].isin(name_index)
        idx = best.loc[known, "feature"].map(name_index).to_numpy(dtype=np.int64)
        best_concept[idx] = best.loc[known, "concept"].to_numpy(dtype=object)
        best_f1[idx] = best.loc[known, "test_f1"].to_numpy(dtype=np.float64)
        best_q[idx] = best.loc[known, "q_value"].to_numpy(dtype=np.float64)

    eligible = (density >= min_density) & (n_sequences >= min_sequences) & ~explained
    cand = np.flatnonzero(eligible)
    share = None
    if strata is not None:
        from workbench.stratified import strata_share

        share = np.nan_to_num(strata_share(values, strata), nan=1.0)
    score = mass[cand] * consistency[cand] * (1.0 if share is None else 1.0 - share[cand])
    order = cand[np.lexsort((cand, -score))]
    if top is not None:
        order = order[: max(0, int(top))]
    table = pd.DataFrame({
        "feature": np.asarray(features.names, dtype=object)[order], "score": mass[order] * consistency[order],
        "mass": mass[order], "consistency": consistency[order], "density": density[order],
        "n_active": n_active[order].astype(np.int64), "n_sequences": n_sequences[order].astype(np.int64),
        "best_concept": best_concept[order], "best_f1": best_f1[order], "best_q": best_q[order],
    })
    if share is not None:
        table["strata_share"] = share[order]
        table["score_beyond"] = table["score"] * (1.0 - table["strata_share"])
    evidence = _evidence(values, order, per_seq, seq_ids, labels, obs, profile_groups=profile_groups,
                         residue_column=residue_column, motif_groups=motif_groups, n_top_tokens=n_top_tokens)
    for column, items in evidence.items():
        table[column] = items
    table.insert(0, "rank", np.arange(1, len(table) + 1, dtype=np.int64))
    return table


def _evidence(values: Any, order: np.ndarray, per_seq: Any, seq_ids: np.ndarray, labels: ConceptLabels, obs: pd.DataFrame,
              *, profile_groups: Sequence[str], residue_column: str, motif_groups: Sequence[str],
              n_top_tokens: int) -> dict[str, list[str]]:
    """The text evidence columns of :func:`unexplained_features` for the features ``order``."""
    import pandas as pd
    import scipy.sparse as sp

    n = len(order)
    out: dict[str, list[str]] = {k: [""] * n for k in ("top_residues", "profile", "motif", "top_sequences")}
    if n == 0:
        return out
    n_tokens = values.shape[0]
    sub = values[:, order].tocsc()
    w_rows, w_cols, w_vals = [], [], []
    for i in range(n):
        rows = sub.indices[sub.indptr[i] : sub.indptr[i + 1]]
        vals = sub.data[sub.indptr[i] : sub.indptr[i + 1]]
        if len(vals) > n_top_tokens:
            keep = np.argpartition(-vals, n_top_tokens - 1)[:n_top_tokens]
            rows, vals = rows[keep], vals[keep]
        w_rows.append(np.full(len(rows), i)), w_cols.append(rows), w_vals.append(vals)
    weights = sp.csr_matrix((np.concatenate(w_vals).astype(np.float64), (np.concatenate(w_rows), np.concatenate(w_cols))),
                            shape=(n, n_tokens))
    total = np.asarray(weights.sum(1)).ravel()

    if residue_column in obs.columns:
        codes, names = pd.factorize(obs[residue_column].astype(str), sort=True)
        onehot = sp.csr_matrix((np.ones(n_tokens), (np.arange(n_tokens), codes)), shape=(n_tokens, len(names)))
        comp = (weights @ onehot).toarray()
        names = np.asarray(names, dtype=object)
        out["top_residues"] = [_format_shares(names, comp[i], total[i], n=3) for i in range(n)]

    concepts = np.asarray(labels.token_concepts["concept"].tolist(), dtype=object)
    groups = _group_of(concepts)
    lab = labels.tokens.tocsc().astype(np.float64)
    profile_parts: list[list[str]] = [[] for _ in range(n)]
    coo = weights.tocoo()
    for group in profile_groups:
        cols = np.flatnonzero(groups == group)
        if len(cols) == 0:
            continue
        shares = (weights @ lab[:, cols]).toarray()
        scope = labels.group_scope(cols)
        # A scoped group: shares of the weight where the group is defined (outside it, a token is no negative).
        inside = total if scope is None else np.bincount(coo.row, weights=coo.data * scope[coo.col], minlength=n)
        for i in range(n):
            text = _format_shares(concepts[cols], shares[i], inside[i], n=2)
            if text and scope is not None and inside[i] < 0.995 * total[i]:  # say so only when part lies outside
                text += f" (of the {100 * inside[i] / total[i]:.0f}% in scope)"
            if text:
                profile_parts[i].append(text)
    out["profile"] = ["; ".join(p) for p in profile_parts]

    cols = np.flatnonzero(np.isin(groups, list(motif_groups)))
    if len(cols):
        inside, scope_size = _scope_weights(labels, weights, cols)
        inside = total[:, None] if inside is None else inside
        shares = (weights @ lab[:, cols]).toarray() / np.where(inside > 0, inside, 1.0)
        background = np.asarray(lab[:, cols].sum(0)).ravel() / np.maximum(scope_size, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            lift = np.where(background > 0, shares / np.where(background > 0, background, 1.0), 0.0)
        lift = np.where(shares >= 0.1, lift, 0.0)
        for i in range(n):
            j = int(np.argmax(lift[i]))
            if lift[i, j] > 0:
                out["motif"][i] = f"{concepts[cols][j]} {100 * shares[i, j]:.0f}% ({lift[i, j]:.1f}x)"

    cols_seq = per_seq[:, order].tocsc()
    for i in range(n):
        rows = cols_seq.indices[cols_seq.indptr[i] : cols_seq.indptr[i + 1]]
        vals = cols_seq.data[cols_seq.indptr[i] : cols_seq.indptr[i + 1]]
        best = rows[np.lexsort((rows, -vals))[:3]]
        out["top_sequences"][i] = ", ".join(str(s) for s in seq_ids[best])
    return out
