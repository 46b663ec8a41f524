"""Feature-concept association: InterPLM's definitions, vectorised over all pairs, with statistics and controls.

InterPLM (Simon & Zou 2024) scores a feature against a concept by normalising the feature by its maximum activation
over the analysis set, binarising at thresholds 0, 0.15, 0.5, 0.6 and 0.8, and computing

* residue-level precision: labelled tokens among the tokens where the feature is active;
* residue-level recall: active tokens among the labelled tokens;
* domain-level recall: instances (spans) of the concept with at least one active token;
* F1 = 2 P R_domain / (P + R_domain),

choosing each pair's best threshold on a validation split of sequences and reporting F1 on a held-out test split;
a concept is "captured" when some feature reaches test F1 > 0.5. Here the normalisation uses the maximum on the
analysis set (InterPLM v1.0 thresholded raw values), every count is one sparse matrix product per threshold and
split, and four additions are standard outputs: a one-sided hypergeometric enrichment test of each pair at its
chosen threshold with Benjamini-Hochberg q-values; a permutation null for each concept's best F1 over all features
(labels shifted circularly along the token axis, which keeps the span structure; p-values beyond the permutations
from a fitted Gumbel tail, :func:`null_pvalues`, so that they can pass a correction); with ``strata``, the same
pairs tested within strata such as IMGT position x residue (:mod:`workbench.stratified`), which says whether the
association survives the trivial explanations; and the same computation on controls (the model's neurons; an SAE
trained on a random-weight copy of the model).

Scoped concepts (:attr:`~workbench.concepts.ConceptLabels.scopes`: defined only where the source could decide, such
as residues compared with an assigned germline) count only the tokens inside their scope: precision is
labelled / active *in scope*, and the enrichment test draws from the tokens in scope. Recall and domain recall are
unchanged (labelled tokens always lie in scope). Concepts without a scope give exactly the numbers they gave before
scopes existed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.concepts import ConceptLabels
from workbench.errors import WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import scipy.sparse as sp

    from workbench.store import ActivationStore

__all__ = [
    "THRESHOLDS", "FeatureMatrix", "feature_matrix", "neuron_matrix", "associate", "associate_store", "Association",
    "sequence_split", "count_pairs", "null_pvalues", "split_counts", "association_from_counts", "scope_sizes",
    "shard_codes", "shard_neurons",
]

THRESHOLDS: tuple[float, ...] = (0.0, 0.15, 0.5, 0.6, 0.8)
CAPTURED_F1 = 0.5


@dataclass
class FeatureMatrix:
    """Feature activations on every token of a store, normalised per feature to a maximum of one."""

    values: sp.csr_matrix
    """``(n_tokens, n_features)`` sparse, non-negative, entries in (0, 1]."""
    max_activation: np.ndarray
    """Per-feature maximum before normalisation (0 for features that never fire)."""
    names: list[str]
    """Feature names (``f00000`` for SAE features, ``u0000`` for model units)."""


def _csr_from_dense_chunks(chunks: Callable[[], Any], n_features: int) -> tuple[Any, np.ndarray]:
    import scipy.sparse as sp

    parts, maxes = [], np.zeros(n_features, dtype=np.float32)
    for dense in chunks():
        dense = np.maximum(dense, 0)
        maxes = np.maximum(maxes, dense.max(0) if len(dense) else 0)
        parts.append(sp.csr_matrix(dense))
    values = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, n_features), dtype=np.float32)
    scale = np.where(maxes > 0, 1.0 / np.where(maxes > 0, maxes, 1), 0).astype(np.float32)
    values = sp.csr_matrix(values @ sp.diags(scale))
    values.eliminate_zeros()
    return values, maxes


def feature_matrix(store: ActivationStore, sae: Any, *, layer: int, batch_size: int = 8192) -> FeatureMatrix:
    """Encode every token of ``layer`` with ``sae`` (store order) and normalise each feature by its maximum.

    The codes go straight from the SAE's sparse selection into one CSR matrix; no dense ``tokens x width`` block is
    ever built. Shards are encoded one by one in batches of ``batch_size`` (:func:`shard_codes`), as the streamed
    association does, so both see the same numbers.
    """
    import scipy.sparse as sp

    _check_sae(store, sae, layer)
    width = sae.cfg.width
    parts = [shard_codes(store, sae, i, layer=layer, batch_size=batch_size) for i in range(len(store.shards))]
    if not parts:
        return FeatureMatrix(sp.csr_matrix((0, width), dtype=np.float32), np.zeros(width, np.float32), _names(width))
    values = sp.vstack(parts, format="csr")
    maxes = np.asarray(values.max(axis=0).todense(), dtype=np.float32).ravel()
    values.data /= maxes[values.indices]
    return FeatureMatrix(values, maxes, _names(width))


def _check_sae(store: ActivationStore, sae: Any, layer: int) -> None:
    from workbench.sae import SparseAutoencoder

    if not isinstance(sae, SparseAutoencoder):
        raise WorkbenchError("feature_matrix needs a workbench SparseAutoencoder")
    _check_sae_matches(store, sae, layer)


def shard_codes(store: ActivationStore, sae: Any, shard: int, *, layer: int, batch_size: int = 8192) -> sp.csr_matrix:
    """The SAE codes of one shard's tokens (``n_shard_tokens x width`` CSR, positive entries, not normalised), encoded
    on the device the SAE's weights are on (the entries come back to the host)."""
    import scipy.sparse as sp
    import torch

    acts = store.shard_activations(shard, layer)
    device = next(sae.parameters(), torch.empty(0)).device
    rows, cols, vals = [], [], []
    for start in range(0, len(acts), batch_size):
        x = torch.from_numpy(np.asarray(acts[start : start + batch_size], dtype=np.float32)).to(device)
        with torch.no_grad():
            codes = sae.encode_sparse(x)
        keep = codes.values > 0
        rows.append((codes.rows[keep] + start).cpu().numpy())
        cols.append(codes.cols[keep].cpu().numpy())
        vals.append(codes.values[keep].float().cpu().numpy())
    width = sae.cfg.width
    if not rows:
        return sp.csr_matrix((len(acts), width), dtype=np.float32)
    values = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(len(acts), width))
    values.sum_duplicates()
    return values


def shard_neurons(store: ActivationStore, shard: int, *, layer: int) -> np.ndarray:
    """The positive part of one shard's activations (``n_shard_tokens x d_model``, float32): the neurons as features."""
    return np.maximum(np.asarray(store.shard_activations(shard, layer), dtype=np.float32), 0)


def _names(width: int) -> list[str]:
    return [f"f{i:05d}" for i in range(width)]


def neuron_matrix(store: ActivationStore, *, layer: int, batch_size: int = 8192) -> FeatureMatrix:
    """The model's own units as features (the identity-dictionary control), positive part normalised by the maximum."""

    def chunks() -> Any:
        for i in range(len(store.shards)):
            yield shard_neurons(store, i, layer=layer)

    values, maxes = _csr_from_dense_chunks(chunks, store.d_model)
    return FeatureMatrix(values, maxes, [f"u{i:04d}" for i in range(store.d_model)])


def _check_sae_matches(store: ActivationStore, sae: Any, layer: int) -> None:
    cfg = sae.cfg
    if cfg.d_in != store.d_model or (cfg.model and cfg.model != store.model) or (cfg.layer >= 0 and cfg.layer != layer):
        raise WorkbenchError(
            f"SAE was trained on {cfg.model or '?'} layer {cfg.layer} (d_in {cfg.d_in}); the store holds {store.model}"
            f" layer {layer} (d_model {store.d_model})"
        )


def sequence_split(sequence_ids: Sequence[str], *, seed: int = 0) -> np.ndarray:
    """``True`` for validation, ``False`` for test: half of the sequences each, by a seeded hash of the id."""
    out = np.empty(len(sequence_ids), dtype=bool)
    for i, sid in enumerate(sequence_ids):
        h = hashlib.blake2b(f"{seed}:{sid}".encode(), digest_size=4).digest()
        out[i] = int.from_bytes(h, "big") % 2 == 0
    return out


DENSE_FRACTION = 0.05
"""Active matrices denser than this are counted with dense products (neurons fire on about half the tokens)."""


def count_pairs(active: sp.csr_matrix | np.ndarray, labels: sp.csr_matrix, instances: sp.csr_matrix | None = None,
                scopes: sp.spmatrix | np.ndarray | None = None,
                scope_index: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Counts behind precision and recall for every (feature, concept) pair at once.

    ``active`` is ``tokens x features`` boolean (sparse, or dense for dense feature sets), ``labels`` ``tokens x
    concepts`` boolean, ``instances`` the matching 1-based span ids. Returns ``tp`` (features x concepts),
    ``n_active`` (features), ``n_labelled`` (concepts), and with instances ``hit_instances`` (features x concepts:
    spans with at least one active token) and ``n_instances`` (concepts). Every count is a sparse-by-sparse or
    sparse-by-dense product; spans of all concepts are handled in one product over a global span index.

    ``scopes`` (``tokens x n_scopes`` boolean, dense or sparse) and ``scope_index`` (per concept, the column of its
    scope; -1 for a concept defined on every token) add ``n_active_scoped`` (features x concepts): the active tokens
    inside each concept's scope, the denominator of a scoped concept's precision (columns with -1 hold ``n_active``).
    It costs one product ``active.T @ scopes`` (features x n_scopes), whatever the number of concepts.
    """
    import scipy.sparse as sp

    c = sp.csr_matrix(labels, dtype=np.float32)
    spans = None if instances is None else _span_index(instances, c.shape[1])
    return _count(_prepare_active(active), c, spans, scopes, scope_index)


def _prepare_active(active: sp.csr_matrix | np.ndarray) -> dict[str, Any]:
    """An active matrix ready for repeated counting: dense (float32) for dense feature sets, else CSR (tokens x
    features) for products ``labels.T @ active`` (CSR by CSR, one output row per concept or span)."""
    import scipy.sparse as sp

    n_tokens, n_feat = active.shape
    if isinstance(active, np.ndarray) or active.nnz > DENSE_FRACTION * max(n_tokens * n_feat, 1):
        a = np.asarray(active.toarray() if sp.issparse(active) else active, dtype=np.float32)
        return {"dense": a, "n_active": a.sum(0), "shape": a.shape}
    a = sp.csr_matrix(active, dtype=np.float32)
    return {"csr": a, "n_active": np.asarray(a.sum(0)).ravel(), "shape": (n_tokens, n_feat)}


def _span_index(instances: sp.spmatrix, n_con: int) -> dict[str, Any]:
    """Spans of every concept with more than one token, as a ``tokens x spans`` membership matrix and a ``spans x
    concepts`` map, and the number of instances of every concept (one-token spans need no index: for them a hit
    span is a true positive)."""
    import scipy.sparse as sp

    inst = sp.coo_matrix(instances)
    keep = inst.data > 0
    rows, cols, ids = inst.row[keep].astype(np.int64), inst.col[keep].astype(np.int64), inst.data[keep].astype(np.int64)
    base = int(ids.max(initial=0)) + 1
    spans, span_of = np.unique(cols * base + ids, return_inverse=True)
    span_col = spans // base
    n_inst = np.bincount(span_col, minlength=n_con).astype(np.int64)
    multi = np.unique(span_col[np.bincount(span_of, minlength=len(spans)) > 1])
    in_multi = np.isin(span_col, multi)
    new_id = np.cumsum(in_multi) - 1
    entry = in_multi[span_of]
    n_spans = int(in_multi.sum())
    member = sp.csr_matrix((np.ones(int(entry.sum()), dtype=np.float32), (rows[entry], new_id[span_of[entry]])),
                           shape=(inst.shape[0], n_spans))
    to_concept = sp.csr_matrix((np.ones(n_spans, dtype=np.float32), (np.arange(n_spans), span_col[in_multi])),
                               shape=(n_spans, n_con))
    return {"member": member, "to_concept": to_concept, "multi": multi, "n_instances": n_inst}


def _label_side(c: sp.csr_matrix, spans: dict[str, Any] | None, scopes: Any = None) -> dict[str, Any]:
    """Labels, span membership and scope masks side by side (``tokens x (concepts + spans + scopes)``), so that one
    product with a dense active matrix counts true positives, spans hit and active tokens in scope together (sparse
    active matrices use the blocks one by one)."""
    import scipy.sparse as sp

    blocks = [c]
    n_spans = 0 if spans is None or not len(spans["multi"]) else spans["member"].shape[1]
    if n_spans:
        blocks.append(spans["member"])
    n_scopes = 0
    if scopes is not None:
        blocks.append(sp.csr_matrix(scopes, dtype=np.float32))
        n_scopes = scopes.shape[1]
    return {"blocks": blocks, "n_con": c.shape[1], "n_spans": n_spans, "n_scopes": n_scopes, "spans": spans,
            "scopes": scopes, "n_labelled": np.asarray(c.sum(0)).ravel()}


def _side_part(side: dict[str, Any], key: str) -> Any:
    """A product operand of a :func:`_label_side`, built on first use and kept: ``rhs`` (the blocks side by side,
    for dense active matrices) or ``c_t`` / ``member_t`` / ``to_concept_t`` / ``scopes_t`` (transposed CSR blocks,
    for sparse ones). One counting path never pays for the other's operands."""
    import scipy.sparse as sp

    if key not in side:
        blocks = side["blocks"]
        if key == "rhs":
            side[key] = sp.csr_matrix(sp.hstack(blocks, format="csr")) if len(blocks) > 1 else blocks[0]
        elif key == "c_t":
            side[key] = sp.csr_matrix(blocks[0].T)
        elif key == "member_t":
            side[key] = sp.csr_matrix(side["spans"]["member"].T)
        elif key == "to_concept_t":
            side[key] = sp.csr_matrix(side["spans"]["to_concept"].T)
        else:  # scopes_t
            side[key] = sp.csr_matrix(blocks[-1].T)
    return side[key]


def _count(a: dict[str, Any], c: sp.csr_matrix | dict[str, Any], spans: dict[str, Any] | None = None, scopes: Any = None,
           scope_index: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """:func:`count_pairs` on a prepared active matrix (:func:`_prepare_active`) and labels (a matrix with its span
    index, or a prepared :func:`_label_side`)."""
    import scipy.sparse as sp

    side = c if isinstance(c, dict) else _label_side(c, spans, scopes)
    n_con, n_spans, n_scopes = side["n_con"], side["n_spans"], side["n_scopes"]
    if side["scopes"] is not None and a["shape"][0] != side["scopes"].shape[0]:
        raise WorkbenchError(f"scopes of shape {side['scopes'].shape} do not fit {a['shape'][0]} tokens")
    dense = a.get("dense")
    if dense is not None:
        prod = np.asarray(_side_part(side, "rhs").T @ dense).T  # features x (concepts + spans + scopes)
        tp = prod[:, :n_con]
        per_span = prod[:, n_con : n_con + n_spans] > 0
        per_scope = prod[:, n_con + n_spans :]
    else:  # CSR products with one output row per concept / span / scope (far fewer rows than features)
        tp = (_side_part(side, "c_t") @ a["csr"]).toarray().T
        per_span = None
        if n_spans:
            per_span = sp.csr_matrix(_side_part(side, "member_t") @ a["csr"])  # spans x features
            per_span.data[:] = 1.0
        per_scope = (_side_part(side, "scopes_t") @ a["csr"]).toarray().T if n_scopes else None
    n_active = a["n_active"]
    out = {"tp": tp, "n_active": n_active, "n_labelled": side["n_labelled"]}
    if n_scopes:
        out["n_active_scoped"] = _scoped_active(per_scope, n_active, scope_index, n_con, n_scopes)
    spans = side["spans"]
    if spans is None:
        return out
    hit = tp.astype(np.float64, copy=True)
    if n_spans:
        if dense is not None:
            hits = np.asarray(per_span.astype(np.float32) @ spans["to_concept"])
        else:
            hits = (_side_part(side, "to_concept_t") @ per_span).toarray().T  # concepts x features, transposed
        hit[:, spans["multi"]] = hits[:, spans["multi"]]
    out["hit_instances"] = hit
    out["n_instances"] = spans["n_instances"]
    return out


def _scoped_active(per_scope: np.ndarray, n_active: np.ndarray, scope_index: np.ndarray | None, n_concepts: int,
                   n_scopes: int) -> np.ndarray:
    """Active tokens of each feature inside each concept's scope (features x concepts), from the per-scope counts
    ``active.T @ scopes`` (features x n_scopes)."""
    index = np.full(n_concepts, -1, dtype=np.int64) if scope_index is None else np.asarray(scope_index, dtype=np.int64)
    if index.shape != (n_concepts,):
        raise WorkbenchError(f"scope_index has {index.size} entries for {n_concepts} concepts")
    if len(index) and index.max(initial=-1) >= n_scopes:
        raise WorkbenchError(f"{n_scopes} scopes do not fit the scope index")
    scoped = np.broadcast_to(np.asarray(n_active, dtype=per_scope.dtype)[:, None], (len(n_active), n_concepts)).copy()
    has = np.flatnonzero(index >= 0)
    scoped[:, has] = per_scope[:, index[has]]
    return scoped


def _maybe_dense(values: sp.csr_matrix) -> sp.csr_matrix | np.ndarray:
    """Dense features (neurons) as an array, so that thresholding and counting use dense products."""
    n = values.shape[0] * values.shape[1]
    return values.toarray() if n and values.nnz > DENSE_FRACTION * n else values


def _f1(tp: np.ndarray, n_active: np.ndarray, n_labelled: np.ndarray, hit: np.ndarray, n_inst: np.ndarray) -> tuple[np.ndarray, ...]:
    """Precision, residue recall, domain recall and F1 (features x concepts); ``n_active`` is per feature, or per
    pair (features x concepts: the active tokens inside each concept's scope)."""
    na = n_active[:, None] if n_active.ndim == 1 else n_active
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(na > 0, tp / na, 0.0)
        recall = np.where(n_labelled[None, :] > 0, tp / n_labelled[None, :], 0.0)
        domain_recall = np.where(n_inst[None, :] > 0, hit / n_inst[None, :], 0.0)
        f1 = np.where(precision + domain_recall > 0, 2 * precision * domain_recall / (precision + domain_recall), 0.0)
    return precision, recall, domain_recall, f1


@dataclass
class Association:
    """Result of :func:`associate` for one feature set (SAE features, neurons, or a control)."""

    pairs: pd.DataFrame
    """One row per (feature, concept) pair with a non-zero overlap: best validation threshold, validation and test
    F1, test precision / recall / domain recall, counts, enrichment p- and q-values. ``n_active`` counts the
    feature's active tokens inside the concept's scope (all its active tokens for an unscoped concept)."""
    best: pd.DataFrame
    """One row per concept: its best feature by validation F1, that feature's test F1, the permutation null
    (``null_p``, ``null_p_empirical``, ``null_z``, ``null_q``: :func:`null_pvalues`), ``n_labelled`` and ``n_scope``
    (tokens in the concept's scope; every token for an unscoped concept); when stratified, the columns of
    :func:`workbench.stratified.best_columns` (``stratified``, ``or_mh``, ``q_cmh``, ``beyond_feature``,
    ``beyond_test_f1``, ``beyond_or``, ``beyond_q``, ``captured_beyond``). ``pairs`` then carries those of
    :func:`workbench.stratified.pair_columns`."""
    params: dict[str, Any] = field(default_factory=dict)
    thresholds: pd.DataFrame | None = None
    """For each concept's best features (by validation F1, ``top_per_threshold`` of them), the test precision,
    token recall, domain recall and F1 at every threshold: the curves behind the chosen threshold."""

    @property
    def concepts_captured(self) -> int:
        return int((self.best["test_f1"] > CAPTURED_F1).sum())


def associate(
    features: FeatureMatrix,
    labels: ConceptLabels,
    sequence_ids: Sequence[str],
    token_sequence: np.ndarray,
    *,
    thresholds: Sequence[float] = THRESHOLDS,
    split_seed: int = 0,
    n_permutations: int = 20,
    seed: int = 0,
    top_per_threshold: int = 5,
    strata: np.ndarray | None = None,
) -> Association:
    """Associate every feature with every token concept (see the module docstring).

    ``sequence_ids`` is the store's sequence order and ``token_sequence`` the index into it of every token's sequence
    (``len == n_tokens``); sequences are split into validation and test halves by :func:`sequence_split`.
    Concepts with a scope in ``labels`` are scored on the tokens of their scope only (module docstring).
    ``strata`` (one stratum code per token, e.g. :func:`workbench.stratified.token_strata`) adds the stratified test
    of every pair at its chosen threshold (:func:`workbench.stratified.mantel_haenszel`) to ``pairs`` and ``best``
    (see :class:`Association`).
    """
    if features.values.shape[0] != labels.n_tokens or len(token_sequence) != labels.n_tokens:
        raise WorkbenchError(
            f"features cover {features.values.shape[0]} tokens, labels {labels.n_tokens}: they come from different stores"
        )
    val_seq = sequence_split(sequence_ids, seed=split_seed)
    is_val = val_seq[token_sequence]
    parts = {"val": np.flatnonzero(is_val), "test": np.flatnonzero(~is_val)}
    values = features.values.tocsr()
    lab = labels.tokens.tocsr()
    inst = labels.instances.tocsr()
    masks, scope_index = labels.scope_matrix("token")
    if masks is not None:
        masks = masks.astype(np.float32)  # once, for the products of count_pairs
    counts = {name: split_counts(values[rows], lab[rows], inst[rows], None if masks is None else masks[rows], thresholds,
                                 scope_index) for name, rows in parts.items()}
    n_scope = scope_sizes(masks, scope_index, labels.n_tokens)
    result = association_from_counts(
        counts, names=features.names, concepts=labels.token_concepts["concept"].tolist(), n_tokens=labels.n_tokens,
        n_scope=n_scope, scoped=masks is not None, thresholds=thresholds, top_per_threshold=top_per_threshold,
        params={"split_seed": split_seed, "n_permutations": n_permutations, "seed": seed, "stratified": strata is not None},
        null=lambda observed: _permutation_null(values, lab, inst, parts, thresholds, observed, n_permutations, seed,
                                                scopes=masks, scope_index=scope_index),
        strata=None if strata is None else lambda best_t, keep, q: _strata_columns(values, lab, strata, thresholds, best_t,
                                                                                   keep, q, masks, scope_index),
    )
    return result


def _strata_columns(values: Any, lab: Any, strata: np.ndarray, thresholds: Sequence[float], best_t: np.ndarray,
                    keep: np.ndarray, q: np.ndarray, masks: Any, scope_index: np.ndarray) -> pd.DataFrame:
    from workbench.stratified import pair_columns

    return pair_columns(values, lab, strata, thresholds, best_t, keep, q, scopes=masks, scope_index=scope_index)


def scope_sizes(masks: np.ndarray | None, scope_index: np.ndarray, n_tokens: int) -> np.ndarray:
    """Tokens in each concept's scope: the population of its precision and enrichment (``n_tokens`` when unscoped).
    Per-shard sizes add up (:mod:`workbench.stream_associate`)."""
    n_scope = np.full(len(scope_index), n_tokens, dtype=np.int64)
    if masks is not None:
        scoped = scope_index >= 0
        n_scope[scoped] = masks.sum(0)[scope_index[scoped]]
    return n_scope


def split_counts(values: sp.csr_matrix, lab: sp.csr_matrix, inst: sp.csr_matrix, masks: np.ndarray | None,
                 thresholds: Sequence[float], scope_index: np.ndarray) -> list[dict[str, np.ndarray]]:
    """The counts of :func:`count_pairs` at every threshold on one set of tokens (one split, or one shard's part of
    it): additive over disjoint token sets whose spans do not cross between them (records never do)."""
    v, lb = _maybe_dense(values), lab.astype(np.float32)
    side = _label_side(lb, _span_index(inst, lb.shape[1]), masks)  # once per token set, for every threshold
    return [_count(_prepare_active(v > t), side, scope_index=scope_index) for t in thresholds]


def association_from_counts(
    counts: dict[str, list[dict[str, np.ndarray]]],
    *,
    names: Sequence[str],
    concepts: Sequence[str],
    n_tokens: int,
    n_scope: np.ndarray,
    scoped: bool,
    thresholds: Sequence[float],
    top_per_threshold: int,
    params: dict[str, Any],
    null: Callable[[np.ndarray], dict[str, np.ndarray]],
    strata: Callable[[np.ndarray, np.ndarray, np.ndarray], pd.DataFrame] | None = None,
) -> Association:
    """Everything :func:`associate` reports, from the validation and test counts (``counts["val"]``,
    ``counts["test"]``: one :func:`split_counts` list each, possibly summed over shards). ``null`` maps each concept's
    best validation F1 to the permutation-null columns; ``strata`` adds the stratified columns of the pairs."""
    import pandas as pd
    from scipy.stats import false_discovery_control, hypergeom

    parts = ("val", "test")
    active_key = "n_active_scoped" if scoped else "n_active"
    # F1 per split and threshold: (n_thresholds, features, concepts)
    f1 = {}
    stats = {}
    for name in parts:
        per = [_f1(c["tp"], c[active_key], c["n_labelled"], c["hit_instances"], c["n_instances"]) for c in counts[name]]
        f1[name] = np.stack([p[3] for p in per])
        stats[name] = per
    best_t = f1["val"].argmax(0)  # features x concepts
    fi, ci = np.indices(best_t.shape)
    val_f1 = f1["val"][best_t, fi, ci]
    test_f1 = f1["test"][best_t, fi, ci]
    test_precision = np.stack([p[0] for p in stats["test"]])[best_t, fi, ci]
    test_recall = np.stack([p[1] for p in stats["test"]])[best_t, fi, ci]
    test_domain = np.stack([p[2] for p in stats["test"]])[best_t, fi, ci]

    # Enrichment at the chosen threshold, on all tokens of the concept's scope: hypergeometric upper tail P(X >= tp)
    # with N = tokens in scope, K = labelled tokens, n = active tokens in scope.
    tp_all = sum(np.stack([c["tp"] for c in counts[s]]) for s in parts)[best_t, fi, ci]
    if not scoped:
        n_act_all = sum(np.stack([c["n_active"] for c in counts[s]]) for s in parts)  # thresholds x features
        n_act = n_act_all[best_t, fi]
    else:
        n_act_all = sum(np.stack([c["n_active_scoped"] for c in counts[s]]) for s in parts)  # thresholds x f x c
        n_act = n_act_all[best_t, fi, ci]
    n_labelled = sum(counts[s][0]["n_labelled"] for s in parts)
    n_lab = np.asarray(n_labelled)[None, :].repeat(best_t.shape[0], 0)
    keep = tp_all > 0
    p = np.ones_like(tp_all, dtype=np.float64)
    population = n_tokens if not scoped else np.broadcast_to(n_scope[None, :], best_t.shape)[keep]
    p[keep] = hypergeom.sf(tp_all[keep] - 1, population, n_lab[keep], n_act[keep])
    q = np.ones_like(p)
    q[keep] = false_discovery_control(p[keep], method="bh")

    pairs = pd.DataFrame({
        "feature": np.asarray(names)[fi[keep]],
        "concept": np.asarray(concepts, dtype=object)[ci[keep]],
        "threshold": np.asarray(thresholds)[best_t[keep]],
        "val_f1": val_f1[keep], "test_f1": test_f1[keep], "test_precision": test_precision[keep],
        "test_recall": test_recall[keep], "test_domain_recall": test_domain[keep],
        "tp": tp_all[keep].astype(int), "n_active": n_act[keep].astype(int), "n_labelled": n_lab[keep].astype(int),
        "p_value": p[keep], "q_value": q[keep],
    })
    if strata is not None:
        pairs = pd.concat([pairs, strata(best_t, keep, q)], axis=1)
    pairs = pairs.sort_values(["concept", "val_f1"], ascending=[True, False], ignore_index=True)

    best_feature = val_f1.argmax(0)  # per concept
    best = pd.DataFrame({
        "concept": concepts,
        "best_feature": np.asarray(names)[best_feature],
        "val_f1": val_f1.max(0),
        "test_f1": test_f1[best_feature, np.arange(len(concepts))],
        "threshold": np.asarray(thresholds)[best_t[best_feature, np.arange(len(concepts))]],
        "q_value": q[best_feature, np.arange(len(concepts))],
        **null(val_f1.max(0)),
        "n_labelled": np.asarray(n_labelled).astype(int),
        "n_scope": n_scope,
    })
    if strata is not None:
        from workbench.stratified import best_columns

        best = pd.concat([best, best_columns(pairs, best)], axis=1)
    params = {"thresholds": list(thresholds), **params,
              "n_tokens": n_tokens, "n_features": len(names), "n_concepts": len(concepts), "captured_f1": CAPTURED_F1}
    curves = _threshold_curves(stats["test"], val_f1, names, concepts, thresholds, top_per_threshold)
    return Association(pairs, best, params, curves)


def _threshold_curves(test_stats: list[tuple[np.ndarray, ...]], val_f1: np.ndarray, names: Sequence[str],
                      concepts: Sequence[str], thresholds: Sequence[float], top: int) -> pd.DataFrame:
    """Test precision / recall / domain recall / F1 at every threshold for the ``top`` features of each concept."""
    import pandas as pd

    if top <= 0 or val_f1.size == 0:
        return pd.DataFrame(columns=["concept", "feature", "threshold", "precision", "recall", "domain_recall", "f1"])
    k = min(top, val_f1.shape[0])
    order = np.argsort(-val_f1, axis=0, kind="stable")[:k]  # k x concepts
    ci = np.broadcast_to(np.arange(val_f1.shape[1]), order.shape)
    keep = val_f1[order, ci] > 0
    fi, ci = order[keep], ci[keep]
    frames = []
    for t, (precision, recall, domain, f1) in zip(thresholds, test_stats):
        frames.append(pd.DataFrame({
            "concept": np.asarray(concepts, dtype=object)[ci], "feature": np.asarray(names)[fi], "threshold": float(t),
            "precision": precision[fi, ci], "recall": recall[fi, ci], "domain_recall": domain[fi, ci], "f1": f1[fi, ci],
        }))
    return pd.concat(frames, ignore_index=True).sort_values(["concept", "feature", "threshold"], ignore_index=True)


def _permutation_null(values: Any, lab: Any, inst: Any, parts: dict[str, np.ndarray], thresholds: Sequence[float],
                      observed: np.ndarray, n_permutations: int, seed: int, *, scopes: np.ndarray | None = None,
                      scope_index: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Each concept's best validation F1 against labels shifted circularly along the tokens: :func:`null_pvalues`
    of the per-permutation maxima over features (a max statistic, so one concept's p-value accounts for every
    feature tried).

    Scope masks (``scopes``, tokens x n_scopes) shift together with the labels, so shifted labels stay inside their
    shifted scope and a scoped concept's precision keeps counting only the tokens where it is defined."""
    import scipy.sparse as sp

    if n_permutations <= 0:
        return null_pvalues(observed, np.zeros((0, len(observed))))
    rng = np.random.default_rng(seed)
    n = lab.shape[0]
    maxima = np.zeros((n_permutations, len(observed)))
    rows = parts["val"]
    v = _maybe_dense(values[rows])
    actives = [_prepare_active(v > t) for t in thresholds]  # fixed across permutations: prepared once
    for i in range(n_permutations):
        shift = int(rng.integers(1, n))
        order = (np.arange(n) - shift) % n
        lb = sp.csr_matrix(lab[order][rows], dtype=np.float32)
        sc = None if scopes is None else scopes[order[rows]]
        side = _label_side(lb, _span_index(inst[order][rows], lb.shape[1]), sc)  # once per shift
        for active in actives:
            c = _count(active, side, scope_index=scope_index)
            n_act = c["n_active"] if sc is None else c["n_active_scoped"]
            f1 = _f1(c["tp"], n_act, c["n_labelled"], c["hit_instances"], c["n_instances"])[3]
            maxima[i] = np.maximum(maxima[i], f1.max(0) if f1.size else 0.0)
    return null_pvalues(observed, maxima)


NULL_MIN_EXCEED = 10
"""Below this many null values at or above the observed one, the p-value comes from the fitted tail."""


def null_pvalues(observed: np.ndarray, maxima: np.ndarray, *, min_exceed: int = NULL_MIN_EXCEED) -> dict[str, np.ndarray]:
    """p-values of ``observed`` (per concept) against permutation maxima (``n_permutations x concepts``).

    With ``n`` permutations an empirical p-value cannot go below ``1 / (n + 1)`` and so never passes a
    Benjamini-Hochberg correction over hundreds of concepts. As in Knijnenburg et al. (2009, Bioinformatics 25:i161),
    where fewer than ``min_exceed`` null values reach the observed one the p-value comes from a distribution fitted
    to the null instead: the maximum over many features follows an extreme-value law, so a Gumbel distribution is
    fitted to the maxima by moments (scale ``sd sqrt(6) / pi``, location ``mean - 0.5772 scale``) and ``null_p`` is
    its upper tail at the observed value. Returns ``null_p``, ``null_p_empirical`` (``(1 + #exceed) / (n + 1)``),
    ``null_z`` (observed minus the null mean, in null standard deviations) and ``null_q`` (BH over the concepts);
    all NaN without permutations. A null without spread (every maximum equal) keeps the empirical p-value.
    """
    from scipy.stats import false_discovery_control

    observed = np.asarray(observed, dtype=np.float64)
    n = maxima.shape[0]
    if n == 0:
        nan = np.full(len(observed), np.nan)
        return {"null_p": nan, "null_p_empirical": nan.copy(), "null_z": nan.copy(), "null_q": nan.copy()}
    exceed = (maxima >= observed[None, :]).sum(0)
    empirical = (exceed + 1) / (n + 1)
    mean = maxima.mean(0)
    sd = maxima.std(0, ddof=1) if n > 1 else np.zeros(len(observed))
    scale = sd * np.sqrt(6) / np.pi
    loc = mean - np.euler_gamma * scale
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        tail = -np.expm1(-np.exp(-(observed - loc) / np.where(scale > 0, scale, 1.0)))
        z = np.where(sd > 0, (observed - mean) / np.where(sd > 0, sd, 1.0), np.where(observed > mean, np.inf, 0.0))
    use_tail = (exceed < min_exceed) & (sd > 0)
    p = np.where(use_tail, tail, empirical)
    q = np.full(len(p), np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = false_discovery_control(np.clip(p[ok], 0.0, 1.0), method="bh")
    return {"null_p": p, "null_p_empirical": empirical, "null_z": z, "null_q": q}


def associate_store(store: ActivationStore, labels: ConceptLabels, *, layer: int, sae: Any | None = None, **options: Any) -> Association:
    """:func:`associate` for the SAE features of ``store`` at ``layer`` (or its neurons when ``sae`` is None).

    ``labels`` must come from the same store (same tokens in the same order); an SAE trained on another model or
    layer is refused, naming both.
    """
    if labels.n_tokens != store.n_tokens:
        raise WorkbenchError(f"labels cover {labels.n_tokens} tokens but {store.path} holds {store.n_tokens}")
    features = feature_matrix(store, sae, layer=layer) if sae is not None else neuron_matrix(store, layer=layer)
    sequence_ids = store.sequences["sequence_id"].astype(str).tolist()
    result = associate(features, labels, sequence_ids, store.token_sequence(), **options)
    result.params.update({"store": str(store.path), "model": store.model, "layer": layer,
                          "features": "sae" if sae is not None else "neurons"})
    return result
