"""SAE quality beyond reconstruction: sparse probing and feature absorption on concept labels (SAEBench-style).

Fidelity (FVE, L0, dead latents, loss recovered) says how well a dictionary reconstructs; it does not say whether
its latents line up with concepts. Two of SAEBench's measures (Karvonen et al. 2025) answer that from the same
:class:`~workbench.concepts.ConceptLabels` the association uses, with no model in the loop:

* **sparse probing** (:func:`sparse_probing`): for each binary token concept, the ``k`` latents whose mean
  activation differs most between positive and negative tokens of the *training* half of the sequences are fed
  to a logistic regression, scored on the held-out half. High F1 at ``k = 1`` means one latent carries the concept;
* **feature absorption** (:func:`absorption`, Chanin et al. 2024, "A is for Absorption"): along a concept hierarchy
  (parent -> children, :func:`hierarchy_from_labels`), a parent's main latent stays silent on some of its tokens
  because a latent specific to a child fires instead. The absorption rate is the share of a parent's held-out
  tokens where that happens.

:func:`sae_quality` condenses both into the columns a sweep row carries (:data:`QUALITY_COLUMNS`);
:func:`plot_sweep` draws them against L0 per architecture. Sequences are split with
:func:`workbench.associate.sequence_split`: its validation half (``True``) is the training half here, its test half
the held-out one, the same split the association uses. Scoped concepts count negatives only inside their scope.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from workbench.associate import FeatureMatrix, sequence_split
from workbench.concepts import ConceptLabels
from workbench.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import scipy.sparse as sp

__all__ = [
    "sparse_probing", "absorption", "Absorption", "hierarchy_from_labels", "default_concepts", "sae_quality",
    "quality_report", "QualityReport", "plot_sweep", "QUALITY_COLUMNS", "PROBE_KS", "DEFAULT_GROUPS", "HIERARCHY_LEVELS",
]

PROBE_KS: tuple[int, ...] = (1, 2, 5, 20)
"""Latent counts of the sparse probes (SAEBench's k = 1, 2, 5, 20)."""
DEFAULT_GROUPS: tuple[str, ...] = ("region", "chain_region", "imgt", "aa")
"""Concept groups probed by default (groups missing from the labels are skipped)."""
HIERARCHY_LEVELS: tuple[str, ...] = ("region", "chain_region", "imgt")
"""Concept groups, coarse to fine, from which :func:`sae_quality` infers the absorption hierarchy by default."""
QUALITY_COLUMNS: list[str] = [f"probe_f1_k{k}" for k in PROBE_KS] + ["absorption_rate", "absorption_full"]
"""The summary columns :func:`sae_quality` returns and a sweep row carries."""


class Absorption(NamedTuple):
    """Output of :func:`absorption`."""

    parents: pd.DataFrame
    """One row per parent concept (columns documented in :func:`absorption`)."""
    levels: pd.DataFrame
    """Per level (the parent's concept group): ``level``, ``n_parents`` and the means over its parents of
    ``main_recall``, ``absorption_rate`` and ``absorption_full``."""


class QualityReport(NamedTuple):
    """Output of :func:`quality_report`."""

    summary: dict[str, Any]
    """:data:`QUALITY_COLUMNS` plus ``n_probe_concepts`` and ``n_absorption_parents``."""
    probing: pd.DataFrame
    """:func:`sparse_probing`'s table."""
    absorption: Absorption
    """:func:`absorption`'s tables (empty when there is no hierarchy)."""


# -- inputs ---------------------------------------------------------------------------------------------------------
class _Data(NamedTuple):
    values: sp.csr_matrix  # tokens x latents, float32
    names: list[str]
    max_activation: np.ndarray | None  # per latent; None when values are already raw
    labels: ConceptLabels
    train: np.ndarray  # token rows of the training (validation) half
    test: np.ndarray  # token rows of the held-out (test) half
    concept_index: dict[str, int]


def _prepare(features: FeatureMatrix | Any, labels: ConceptLabels, sequence_ids: Sequence[str], token_sequence: np.ndarray,
             split_seed: int) -> _Data:
    import scipy.sparse as sp

    if isinstance(features, FeatureMatrix):
        values, names, maxes = features.values, list(features.names), np.asarray(features.max_activation, dtype=np.float64)
    else:
        values, names, maxes = features, None, None
    values = sp.csr_matrix(values, dtype=np.float32)
    if names is None:
        names = [f"f{i:05d}" for i in range(values.shape[1])]
    token_sequence = np.asarray(token_sequence)
    if values.shape[0] != labels.n_tokens or len(token_sequence) != labels.n_tokens:
        raise InputError(f"features cover {values.shape[0]} tokens, labels {labels.n_tokens}, token_sequence "
                         f"{len(token_sequence)}: they come from different stores")
    is_train = sequence_split(sequence_ids, seed=split_seed)[token_sequence]
    index = {str(c): j for j, c in enumerate(labels.token_concepts["concept"])}
    return _Data(values, names, maxes, labels, np.flatnonzero(is_train), np.flatnonzero(~is_train), index)


def _columns(data: _Data, concepts: Sequence[str]) -> np.ndarray:
    unknown = [c for c in concepts if c not in data.concept_index]
    if unknown:
        raise InputError(f"unknown token concept(s) {unknown[:3]} (not in the labels)")
    return np.asarray([data.concept_index[c] for c in concepts], dtype=np.int64)


def _scope_rows(data: _Data, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Per concept of ``cols`` its scope column (-1: every token) and the ``rows x n_scopes`` boolean masks."""
    masks, index = data.labels.scope_matrix("token")
    return index[cols], (None if masks is None else masks[rows])


def _mean_difference(data: _Data, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean activation on positives minus mean on in-scope negatives (``concepts x latents``), on ``rows``; with the
    numbers of positives and negatives per concept."""
    sub = data.values[rows]
    lb = data.labels.tokens[rows][:, cols].astype(np.float32)
    pos_sum = np.asarray((lb.T @ sub).todense(), dtype=np.float64)
    n_pos = np.asarray(lb.sum(0), dtype=np.float64).ravel()
    scope, masks = _scope_rows(data, cols, rows)
    scope_sum = np.empty_like(pos_sum)
    n_scope = np.empty(len(cols), dtype=np.float64)
    for s in np.unique(scope):
        m = np.ones(len(rows), dtype=np.float32) if s < 0 or masks is None else masks[:, s].astype(np.float32)
        scope_sum[scope == s] = np.asarray(sub.T @ m, dtype=np.float64).ravel()
        n_scope[scope == s] = m.sum()
    n_neg = n_scope - n_pos
    diff = pos_sum / np.maximum(n_pos, 1)[:, None] - (scope_sum - pos_sum) / np.maximum(n_neg, 1)[:, None]
    return diff, n_pos, n_neg


# -- concept selection ----------------------------------------------------------------------------------------------
def _natural_key(name: str) -> tuple[Any, ...]:
    value = name.split("=", 1)[-1]
    digits = "".join(ch for ch in value if ch.isdigit())
    return (0, int(digits), value) if digits and value[: len(digits)] == digits else (1, 0, value)


def default_concepts(labels: ConceptLabels, *, groups: Sequence[str] = DEFAULT_GROUPS, max_per_group: int = 24,
                     min_tokens: int = 40) -> list[str]:
    """Token concepts to probe by default: every concept of each group in ``groups`` with at least ``min_tokens``
    labelled tokens; a group holding more than ``max_per_group`` keeps its most frequent ones (those with at least
    90% of the group's largest count), spread evenly over the group in natural order (``imgt=1, 2, ... 128``).
    Without any of the groups, the ``max_per_group`` most frequent token concepts."""
    table = labels.token_concepts
    names = table["concept"].astype(str).tolist()
    counts = table["n_tokens"].to_numpy()
    out: list[str] = []
    for group in groups:
        members = [(n, int(c)) for n, c in zip(names, counts) if n.startswith(group + "=") and c >= min_tokens]
        if len(members) > max_per_group:
            top = max(c for _, c in members)
            frequent = sorted((n for n, c in members if c >= 0.9 * top), key=_natural_key)
            if len(frequent) < max_per_group:
                frequent = [n for n, _ in sorted(members, key=lambda nc: -nc[1])[:max_per_group]]
                frequent.sort(key=_natural_key)
            pick = np.unique(np.linspace(0, len(frequent) - 1, max_per_group).round().astype(int))
            members = [(frequent[i], 0) for i in pick]
        out.extend(n for n, _ in members)
    if not out:
        order = np.argsort(-counts, kind="stable")
        out = [names[i] for i in order[:max_per_group] if counts[i] >= min_tokens]
    return out


# -- sparse probing -------------------------------------------------------------------------------------------------
def _balanced(rows_pos: np.ndarray, rows_neg: np.ndarray, max_tokens: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Equal numbers of positives and negatives (at most ``max_tokens`` each), drawn without replacement."""
    n = min(len(rows_pos), len(rows_neg), max_tokens)
    pos = rng.choice(rows_pos, n, replace=False)
    neg = rng.choice(rows_neg, n, replace=False)
    return np.concatenate([pos, neg]), np.r_[np.ones(n, dtype=np.int8), np.zeros(n, dtype=np.int8)]


def _binary_scores(y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, F1 (positive class) of ``score > 0`` and AUROC of ``score`` (ties count half)."""
    from scipy.stats import rankdata

    y = np.asarray(y, dtype=bool)
    pred = score > 0
    tp, fp, fn = int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum())
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    tpr = tp / n_pos if n_pos else np.nan
    tnr = (n_neg - fp) / n_neg if n_neg else np.nan
    auroc = ((rankdata(score)[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)) if n_pos and n_neg else np.nan
    return {"accuracy": float((pred == y).mean()), "balanced_accuracy": float((tpr + tnr) / 2),
            "f1": float(2 * tp / (2 * tp + fp + fn)) if tp else 0.0, "auroc": float(auroc)}


def sparse_probing(
    features: FeatureMatrix | Any,
    labels: ConceptLabels,
    sequence_ids: Sequence[str],
    token_sequence: np.ndarray,
    *,
    concepts: Sequence[str] | None = None,
    ks: Sequence[int] = PROBE_KS,
    split_seed: int = 0,
    max_tokens: int = 5000,
    min_positives: int = 20,
    seed: int = 0,
) -> pd.DataFrame:
    """k-sparse probes of token concepts on SAE latents, chosen on training sequences and scored on held-out ones.

    For each concept (default :func:`default_concepts`) and each ``k`` in ``ks``, as SAEBench's sparse probing:

    1. on the training half (:func:`~workbench.associate.sequence_split`'s validation half), rank latents by the
       absolute difference between their mean activation on the concept's tokens and on the other tokens (inside
       the concept's scope for a scoped concept), over all training tokens, and keep the top ``k``;
    2. draw equal numbers of positive and negative training tokens (at most ``max_tokens`` each; SAEBench's class
       balancing) and fit a logistic regression (scikit-learn, L2, C = 1, Newton-Cholesky solver) on those ``k``
       latents, standardised on the training draw;
    3. draw a balanced held-out set the same way from the test half and score it.

    ``features`` is a :class:`~workbench.associate.FeatureMatrix` (or a ``tokens x latents`` matrix); ``sequence_ids``
    and ``token_sequence`` are the store's sequence order and each token's index into it. Draws use
    ``np.random.default_rng([seed, concept column])``. Returns one row per concept and ``k`` (``concept``, ``k``,
    ``n_train``, ``n_test`` tokens drawn; on the held-out draw ``accuracy``, ``balanced_accuracy`` (equal to
    ``accuracy`` on a balanced draw), ``f1``, ``auroc``; ``latents`` (comma-separated names, best first) and
    ``note``. A concept with fewer than ``min_positives`` positive (or negative) tokens in either half gets NaN
    scores and the reason in ``note``.
    """
    import pandas as pd
    from threadpoolctl import threadpool_limits

    data = _prepare(features, labels, sequence_ids, token_sequence, split_seed)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise InputError(f"ks must be positive latent counts (got {list(ks)})")
    concepts = list(default_concepts(labels) if concepts is None else concepts)
    cols = _columns(data, concepts)
    rows_out: list[dict[str, Any]] = []
    if len(cols) == 0:
        return pd.DataFrame(rows_out, columns=["concept", "k", "n_train", "n_test", "accuracy", "balanced_accuracy",
                                               "f1", "auroc", "latents", "note"])
    diff, _, _ = _mean_difference(data, cols, data.train)
    scope_train, masks_train = _scope_rows(data, cols, data.train)
    scope_test, masks_test = _scope_rows(data, cols, data.test)
    lab_train = data.labels.tokens[data.train].tocsc()
    lab_test = data.labels.tokens[data.test].tocsc()
    names = np.asarray(data.names, dtype=object)
    with threadpool_limits(limits=1, user_api="blas"):  # tiny fits: BLAS threads only contend (100x slower on 2 busy cores)
        for i, (concept, j) in enumerate(zip(concepts, cols)):
            parts = []
            for rows, lab, scope, masks in ((data.train, lab_train, scope_train, masks_train),
                                            (data.test, lab_test, scope_test, masks_test)):
                pos = rows[lab[:, j].nonzero()[0]]
                inside = rows if scope[i] < 0 or masks is None else rows[masks[:, scope[i]]]
                parts += [pos, np.setdiff1d(inside, pos, assume_unique=True)]
            rows_out.extend(_probe_concept(data, concept, int(j), np.argsort(-np.abs(diff[i]), kind="stable"), ks, parts,
                                           names, max_tokens, min_positives, seed))
    return pd.DataFrame(rows_out)


def _probe_concept(data: _Data, concept: str, j: int, order: np.ndarray, ks: list[int], parts: list[np.ndarray],
                   names: np.ndarray, max_tokens: int, min_positives: int, seed: int) -> list[dict[str, Any]]:
    """The rows of :func:`sparse_probing` for one concept (column ``j`` of the labels; latents ranked by ``order``;
    ``parts``: positive and negative token rows of the training half, then of the test half)."""
    from sklearn.linear_model import LogisticRegression

    rows_out: list[dict[str, Any]] = []
    pos_tr, neg_tr, pos_te, neg_te = parts
    if min(len(p) for p in parts) < min_positives:
        note = (f"too few tokens: {len(pos_tr)} positive / {len(neg_tr)} negative in the training half, "
                f"{len(pos_te)} / {len(neg_te)} in the test half (need {min_positives} of each)")
        return [{"concept": concept, "k": k, "n_train": 0, "n_test": 0, "accuracy": np.nan, "balanced_accuracy": np.nan,
                 "f1": np.nan, "auroc": np.nan, "latents": "", "note": note} for k in ks]
    rng = np.random.default_rng([seed, j])
    tr_rows, y_tr = _balanced(pos_tr, neg_tr, max_tokens, rng)
    te_rows, y_te = _balanced(pos_te, neg_te, max_tokens, rng)
    x_tr_all = data.values[tr_rows][:, order[: ks[-1]]].toarray()
    x_te_all = data.values[te_rows][:, order[: ks[-1]]].toarray()
    for k in ks:
        x_tr, x_te = x_tr_all[:, :k], x_te_all[:, :k]
        mean, sd = x_tr.mean(0), x_tr.std(0)
        sd[sd == 0] = 1.0
        model = LogisticRegression(C=1.0, solver="newton-cholesky", max_iter=100).fit((x_tr - mean) / sd, y_tr)
        score = ((x_te - mean) / sd) @ model.coef_.ravel() + model.intercept_[0]
        rows_out.append({"concept": concept, "k": k, "n_train": len(tr_rows), "n_test": len(te_rows),
                         **_binary_scores(y_te, score), "latents": ",".join(names[order[:k]]), "note": ""})
    return rows_out


# -- hierarchy ------------------------------------------------------------------------------------------------------
def hierarchy_from_labels(labels: ConceptLabels, *, levels: Sequence[str] = HIERARCHY_LEVELS, min_share: float = 0.99,
                          min_tokens: int = 1) -> dict[str, list[str]]:
    """A parent -> children concept hierarchy inferred from label co-occurrence among the groups ``levels``
    (coarse to fine; a group is the concept-name prefix before ``=``).

    Concept ``c`` of level ``i`` is a child of concept ``p`` of a coarser level when at least ``min_share`` of
    ``c``'s tokens carry ``p``; among such ``p`` it joins those of the finest level (the nearest ancestors), so an
    antibody ``imgt=110`` sits under ``region=CDR3`` (positions are shared by heavy and light chains, so no single
    ``chain_region`` holds 99% of them) and ``chain_region=H:CDR3`` under ``region=CDR3``. Concepts with fewer than
    ``min_tokens`` tokens are left out. Returns ``{parent: [children...]}`` for parents with at least one child, in
    label order.
    """
    if not 0 < min_share <= 1:
        raise InputError(f"min_share must be in (0, 1] (got {min_share})")
    names = labels.token_concepts["concept"].astype(str).tolist()
    counts = np.asarray(labels.tokens.sum(0)).ravel()
    level_of = {}
    for j, name in enumerate(names):
        group = name.split("=", 1)[0]
        if group in levels and "=" in name and counts[j] >= min_tokens:
            level_of[j] = list(levels).index(group)
    cols = np.asarray(sorted(level_of), dtype=np.int64)
    if len(cols) == 0:
        return {}
    lab = labels.tokens[:, cols].astype(np.float32)
    together = np.asarray((lab.T @ lab).todense())  # co-occurrence counts
    share = together / np.maximum(counts[cols], 1)[:, None]  # row c, column p: share of c's tokens carrying p
    lv = np.asarray([level_of[j] for j in cols])
    out: dict[str, list[str]] = {}
    for a in range(len(cols)):
        ok = np.flatnonzero((lv < lv[a]) & (share[a] >= min_share))
        if len(ok) == 0:
            continue
        nearest = ok[lv[ok] == lv[ok].max()]
        for b in nearest:
            out.setdefault(names[cols[b]], []).append(names[cols[a]])
    return {p: out[p] for p in sorted(out, key=names.index)}


def _descendants(hierarchy: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for parent in hierarchy:
        seen: list[str] = []
        stack = list(hierarchy[parent])
        while stack:
            c = stack.pop()
            if c == parent or c in seen:
                continue
            seen.append(c)
            stack.extend(hierarchy.get(c, []))
        out[parent] = seen
    return out


# -- absorption -----------------------------------------------------------------------------------------------------
def absorption(
    features: FeatureMatrix | Any,
    labels: ConceptLabels,
    sequence_ids: Sequence[str],
    token_sequence: np.ndarray,
    *,
    hierarchy: Mapping[str, Sequence[str]],
    split_seed: int = 0,
    decoder: np.ndarray | None = None,
    min_precision: float = 0.9,
    min_latent_tokens: int = 5,
    full_share: float = 0.9,
    min_parent_tokens: int = 20,
) -> Absorption:
    """Feature absorption along a concept hierarchy: where a parent's main latent is silent because a latent
    specific to one of its descendants fires instead.

    ``hierarchy`` maps a parent concept to its child concepts (e.g. :func:`hierarchy_from_labels`); descendants are
    children, their children, and so on. Everything is chosen on the training half of the sequences and counted on
    the held-out half (:func:`~workbench.associate.sequence_split`, as in :func:`sparse_probing`). A latent *fires*
    on a token when its activation is above zero. For each parent ``p``:

    * **main latent**: the latent whose mean activation on ``p``'s training tokens exceeds its mean on the other
      (in-scope) training tokens by the most, i.e. :func:`sparse_probing`'s k = 1 latent restricted to positive
      differences (an absorption parent needs a latent that fires *on* it);
    * **child-specific latents**: latents other than the main one that fire on at least ``min_latent_tokens``
      training tokens, whose top concept among the hierarchy's concepts by token F1 on the training half
      (``2 tp / (n_active + n_labelled)``, ``n_active`` counted in the concept's scope) is a descendant of ``p``,
      and at least ``min_precision`` of whose firing (in ``p``'s scope) falls on ``p``'s tokens. With ``decoder``
      (``latents x d``, the SAE's decoder rows), SAEBench's alignment condition is added: the latent's decoder row
      has positive cosine with ``p``'s direction, the difference of the mean reconstructions of ``p``'s training
      tokens and the other in-scope training tokens (``(mean_pos - mean_neg) @ decoder``, on raw activations:
      a :class:`~workbench.associate.FeatureMatrix` is multiplied back by its ``max_activation``);
    * on ``p``'s held-out tokens: ``main_recall`` (share where the main latent fires; ``main_precision``: share of
      the held-out tokens it fires on, in ``p``'s scope, that carry ``p``), ``n_false_negatives``
      (where it is silent), ``n_absorbed`` (silent while a child-specific latent fires),
      ``absorption_rate = n_absorbed / n_tokens``, ``absorbed_share_of_misses = n_absorbed / n_false_negatives``;
    * ``absorption_full``: the share of ``p``'s held-out tokens that are absorbed *and* lie in a fully absorbed
      child, a child (direct) with at least ``full_share`` of its held-out tokens absorbed: the main latent has a
      hole where the child is (Chanin et al.'s picture of "short" taking "starts with S" away), as opposed to
      scattered misses. ``fully_absorbed_children`` names them; ``absorbing_latents`` lists the child-specific
      latents firing on absorbed tokens, most frequent first, as ``name(top concept):count`` (at most 5).

    Parents with fewer than ``min_parent_tokens`` held-out tokens or without a child-specific latent candidate
    still get a row; the former with NaN rates and a ``note``.

    **Relation to SAEBench.** SAEBench's absorption eval (first-letter spelling task) takes the main latents from
    k-sparse probing of the SAE (adding latents while F1 jumps by more than 0.03: feature splitting), restricts to
    tokens a linear probe on the model's activations classifies correctly, and counts *full absorption* on a token
    when every main latent is silent and the latent with the largest projection on the probe direction has cosine
    >= 0.025 with the probe and supplies >= 40% of the probe projection; its *absorption fraction* also credits
    partial absorption (main latents firing weakly). Here the labels are ground truth, so no model probe selects
    tokens: every labelled held-out token of the parent counts; the main latent is the single k = 1 latent (so a
    split parent, two latents sharing its tokens, shows up as lower ``main_recall`` and, when the other latent is
    a child's, as absorption); the absorbing latent must be specific to a descendant by the labels (SAEBench
    cannot check that, having no child labels) instead of carrying 40% of the probe projection; the cosine
    condition is the sign-only part of SAEBench's (``> 0`` with a mean-difference direction instead of ``>=
    0.025`` with a logistic-regression probe). ``absorption_rate`` is thus the analogue of SAEBench's full
    absorption rate on ground-truth tokens; partial absorption is not scored.
    """
    import pandas as pd

    data = _prepare(features, labels, sequence_ids, token_sequence, split_seed)
    parents = [str(p) for p in hierarchy]
    desc = _descendants({str(p): [str(c) for c in cs] for p, cs in hierarchy.items()})
    involved = list(dict.fromkeys(parents + [c for p in parents for c in desc[p]]))
    cols = _columns(data, involved)
    pos = {c: i for i, c in enumerate(involved)}
    names = np.asarray(data.names, dtype=object)
    n_lat = data.values.shape[1]
    columns = ["parent", "level", "n_children", "n_descendants", "n_tokens", "main_latent", "main_recall", "main_precision",
               "n_false_negatives", "n_absorbed", "absorption_rate", "absorption_full", "absorbed_share_of_misses",
               "n_child_latents", "fully_absorbed_children", "absorbing_latents", "note"]
    if not parents:
        return Absorption(pd.DataFrame(columns=columns), _level_means(pd.DataFrame(columns=columns)))
    if decoder is not None and np.shape(decoder)[0] != n_lat:
        raise InputError(f"decoder has {np.shape(decoder)[0]} rows for {n_lat} latents")

    # Training half: main latents, and each latent's top concept and firing counts.
    diff, _, _ = _mean_difference(data, cols, data.train)
    sub = data.values[data.train]
    act = sub.copy()
    act.data = np.ones_like(act.data)
    lb = data.labels.tokens[data.train][:, cols].astype(np.float32)
    tp = np.asarray((act.T @ lb).todense(), dtype=np.float64)  # latents x concepts
    n_active = np.asarray(act.sum(0), dtype=np.float64).ravel()
    scope, masks = _scope_rows(data, cols, data.train)
    n_active_scoped = np.repeat(n_active[:, None], len(cols), axis=1)
    for s in (np.unique(scope[scope >= 0]) if masks is not None else []):
        n_active_scoped[:, scope == s] = np.asarray(act.T @ masks[:, s].astype(np.float32)).ravel()[:, None]
    n_lab = np.asarray(lb.sum(0), dtype=np.float64).ravel()
    f1 = 2 * tp / np.maximum(n_active_scoped + n_lab[None, :], 1)
    top = f1.argmax(1)
    eligible = (n_active >= min_latent_tokens) & (f1.max(1) > 0)
    raw_diff = diff * (data.max_activation[None, :] if data.max_activation is not None else 1.0)

    test_vals = data.values[data.test]
    test_lab = data.labels.tokens[data.test].tocsc()
    test_cols = test_vals.tocsc()
    test_scope, test_masks = _scope_rows(data, cols, data.test)
    rows_out = []
    for p in parents:
        i = pos[p]
        children = [str(c) for c in hierarchy[p]]
        main = int(np.argmax(diff[i]))
        precision_p = tp[:, i] / np.maximum(n_active_scoped[:, i], 1)
        dset = np.asarray([pos[c] for c in desc[p]], dtype=np.int64)
        specific = eligible & np.isin(top, dset) & (precision_p >= min_precision)
        specific[main] = False
        if decoder is not None:
            direction = raw_diff[i] @ np.asarray(decoder, dtype=np.float64)
            dec = np.asarray(decoder, dtype=np.float64)
            cos = dec @ direction / np.maximum(np.linalg.norm(dec, axis=1) * np.linalg.norm(direction), 1e-12)
            specific &= cos > 0
        child_latents = np.flatnonzero(specific)
        t_rows = test_lab[:, data.concept_index[p]].nonzero()[0]
        row: dict[str, Any] = {"parent": p, "level": p.split("=", 1)[0], "n_children": len(children),
                               "n_descendants": len(desc[p]), "n_tokens": len(t_rows), "main_latent": names[main],
                               "n_child_latents": len(child_latents), "note": ""}
        if len(t_rows) < min_parent_tokens:
            row.update(main_recall=np.nan, main_precision=np.nan, n_false_negatives=0, n_absorbed=0, absorption_rate=np.nan,
                       absorption_full=np.nan, absorbed_share_of_misses=np.nan, fully_absorbed_children="",
                       absorbing_latents="", note=f"{len(t_rows)} held-out tokens (need {min_parent_tokens})")
            rows_out.append(row)
            continue
        block = test_vals[t_rows]
        main_fires = np.asarray(block[:, main].todense()).ravel() > 0
        child_block = block[:, child_latents]
        child_fires = np.diff(child_block.indptr) > 0
        absorbed = ~main_fires & child_fires
        full = np.zeros(len(t_rows), dtype=bool)
        full_children = []
        for c in children:
            in_c = np.asarray(test_lab[t_rows][:, data.concept_index[c]].todense()).ravel() > 0
            if in_c.any() and absorbed[in_c].mean() >= full_share:
                full |= in_c & absorbed
                full_children.append(c)
        hits = np.asarray(child_block[np.flatnonzero(absorbed)].astype(bool).sum(0)).ravel()
        order = [k for k in np.argsort(-hits, kind="stable")[:5] if hits[k] > 0]
        n_fn = int((~main_fires).sum())
        fired = test_cols[:, main].nonzero()[0]  # held-out tokens where the main latent fires
        if test_scope[i] >= 0 and test_masks is not None:
            fired = fired[test_masks[fired, test_scope[i]]]
        row.update(
            main_recall=float(main_fires.mean()), main_precision=float(main_fires.sum() / len(fired)) if len(fired) else np.nan,
            n_false_negatives=n_fn, n_absorbed=int(absorbed.sum()),
            absorption_rate=float(absorbed.mean()), absorption_full=float(full.mean()),
            absorbed_share_of_misses=float(absorbed.sum() / n_fn) if n_fn else np.nan,
            fully_absorbed_children=",".join(full_children),
            absorbing_latents=",".join(f"{names[child_latents[k]]}({involved[top[child_latents[k]]]}):{int(hits[k])}"
                                       for k in order),
        )
        rows_out.append(row)
    table = pd.DataFrame(rows_out, columns=columns)
    return Absorption(table, _level_means(table))


def _level_means(table: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    cols = ["main_recall", "absorption_rate", "absorption_full"]
    if table.empty:
        return pd.DataFrame(columns=["level", "n_parents", *cols])
    scored = table.dropna(subset=["absorption_rate"])
    out = scored.groupby("level", sort=False)[cols].mean().reset_index()
    out.insert(1, "n_parents", scored.groupby("level", sort=False).size().to_numpy())
    return out


# -- summary for a sweep --------------------------------------------------------------------------------------------
def quality_report(
    features: FeatureMatrix | Any,
    labels: ConceptLabels,
    sequence_ids: Sequence[str],
    token_sequence: np.ndarray,
    *,
    concepts: Sequence[str] | None = None,
    ks: Sequence[int] = PROBE_KS,
    hierarchy: Mapping[str, Sequence[str]] | None = None,
    levels: Sequence[str] = HIERARCHY_LEVELS,
    decoder: np.ndarray | None = None,
    split_seed: int = 0,
    max_tokens: int = 5000,
    seed: int = 0,
) -> QualityReport:
    """:func:`sparse_probing` and :func:`absorption` with their summary (see :func:`sae_quality`)."""
    probing = sparse_probing(features, labels, sequence_ids, token_sequence, concepts=concepts, ks=ks,
                             split_seed=split_seed, max_tokens=max_tokens, seed=seed)
    if hierarchy is None:
        hierarchy = hierarchy_from_labels(labels, levels=levels)
    absorbed = absorption(features, labels, sequence_ids, token_sequence, hierarchy=hierarchy, split_seed=split_seed,
                          decoder=decoder)
    summary: dict[str, Any] = {}
    for k in PROBE_KS:
        f1 = probing.loc[probing["k"] == k, "f1"].to_numpy(dtype=np.float64)
        summary[f"probe_f1_k{k}"] = float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan")
    parents = absorbed.parents.dropna(subset=["absorption_rate"])
    summary["absorption_rate"] = float(parents["absorption_rate"].mean()) if len(parents) else float("nan")
    summary["absorption_full"] = float(parents["absorption_full"].mean()) if len(parents) else float("nan")
    summary["n_probe_concepts"] = int(probing.loc[probing["f1"].notna(), "concept"].nunique()) if len(probing) else 0
    summary["n_absorption_parents"] = len(parents)
    return QualityReport(summary, probing, absorbed)


def sae_quality(features: FeatureMatrix | Any, labels: ConceptLabels, sequence_ids: Sequence[str], token_sequence: np.ndarray,
                **options: Any) -> dict[str, Any]:
    """The summary columns of a sweep row: ``probe_f1_k1``, ``probe_f1_k2``, ``probe_f1_k5``, ``probe_f1_k20``
    (held-out F1 of :func:`sparse_probing` at each k, mean over the concepts it could score), ``absorption_rate``
    and ``absorption_full`` (:func:`absorption`, mean over the parents it could score; the hierarchy is
    :func:`hierarchy_from_labels` over ``levels`` unless ``hierarchy`` is given), plus ``n_probe_concepts`` and
    ``n_absorption_parents``. ``options`` are those of :func:`quality_report` (``concepts``, ``hierarchy``,
    ``levels``, ``decoder``, ``split_seed``, ``max_tokens``, ``seed``). A probe k absent from ``ks`` gives NaN."""
    return quality_report(features, labels, sequence_ids, token_sequence, **options).summary


# -- plot -----------------------------------------------------------------------------------------------------------
PLOT_PANELS: tuple[tuple[str, str], ...] = (
    ("fve", "FVE"), ("probe_f1_k1", "probe F1, k=1"), ("probe_f1_k5", "probe F1, k=5"), ("absorption_rate", "absorption rate"),
)


def plot_sweep(table: pd.DataFrame, out_png: str | os.PathLike[str], *, title: str | None = None, dpi: int = 90) -> Path:
    """Quality against L0 per architecture from a sweep table (``workbench.sae.sweep``): panels FVE, probe F1 at
    k = 1 and 5, and absorption rate (a panel whose column is missing says so). Written to a temporary name, then
    renamed to ``out_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    if "l0" not in table.columns or "arch" not in table.columns:
        raise InputError("a sweep table needs the columns arch and l0")
    out = Path(out_png)
    fig, axes = plt.subplots(1, len(PLOT_PANELS), figsize=(3.2 * len(PLOT_PANELS), 3.0), constrained_layout=True)
    for ax, (column, label) in zip(axes, PLOT_PANELS):
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("L0 (held-out)", fontsize=9)
        ax.tick_params(labelsize=8)
        if column not in table.columns or table[column].isna().all():
            ax.text(0.5, 0.5, f"no {column}\n(sweep without labels)", ha="center", va="center", transform=ax.transAxes,
                    fontsize=8)
            continue
        for n, (arch, part) in enumerate(table.sort_values("l0").groupby("arch", sort=True, observed=True)):
            ax.plot(part["l0"], part[column], marker="o", markersize=3.5, linewidth=1.2, label=str(arch), color=f"C{n}")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(LogLocator(base=2))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        axes[-1].legend(handles, names, fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix}")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out
