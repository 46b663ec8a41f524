"""One-line feature descriptions from association statistics, activation profiles, and feature families.

:func:`describe_features` turns the association of every feature with every concept into a short description per
feature: the concept it captures best (named only when that pair is significant and reasonably accurate), how much
of the feature's activation mass falls on each value of a few concept groups (for example ``region`` and ``imgt``),
and how often it fires. :func:`feature_families` groups features by their decoder directions (Leiden clustering of
a cosine k-nearest-neighbour graph, with scanpy) and lays them out in two dimensions (UMAP, with umap-learn), both
deterministic for a seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import InputError, WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.associate import Association, FeatureMatrix
    from workbench.concepts import ConceptLabels
    from workbench.label_shards import LabelShards, TokenBlock

__all__ = ["describe_features", "feature_profile", "FeatureStats", "ProfileSums", "feature_families", "DESCRIBE_ALPHA", "DESCRIBE_MIN_F1"]

DESCRIBE_ALPHA = 0.05
"""A concept is named as a feature's meaning only when the pair's Benjamini-Hochberg q-value is at most this ..."""
DESCRIBE_MIN_F1 = 0.2
"""... and its test F1 at least this; otherwise the description says ``weak: <concept>``."""
_PROFILE_CLAUSE_SHARE = 0.2
"""A concept group enters the description when its peak holds at least this share of the feature's activation mass ..."""
_PROFILE_CLAUSE_LIFT = 1.5
"""... and at least this many times the share of all tokens that carry it (so long regions are not named by default)."""
_PROFILE_TOP = 3
"""Values per group listed in the ``profile`` column."""


def _pct(x: float) -> str:
    """Percentages that stay informative for rare features: 61%, 2.5%, 0.34%, 0.0041%."""
    p = float(x) * 100
    return f"{p:.0f}%" if p >= 10 or p == 0 else f"{p:.2g}%"


def _fmt_q(q: float) -> str:
    if not np.isfinite(q):
        return "nan"
    if q <= 0:
        return "<1e-300"
    return f"{q:.0e}" if q < 0.01 else f"{q:.2f}"


def feature_profile(labels: ConceptLabels, features: FeatureMatrix, group: str, *,
                    rows: np.ndarray | None = None) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """Share of each feature's activation mass on each value of concept ``group``: ``(values, share, baseline)``.

    The mass of a feature is the sum of its normalised activation over all tokens; the share of ``<group>=<value>``
    is the part of that mass on tokens labelled with it (tokens without a label in the group count in no value, so
    the shares of a feature sum to at most one); ``share`` is ``features x values`` and ``baseline`` the share of
    all tokens carrying each value. Numeric values (positions) are sorted numerically. None when the labels hold no
    concept of the group.

    A scoped group (every concept of it has a scope, :attr:`~workbench.concepts.ConceptLabels.scopes`) is profiled
    where it is defined: mass and tokens outside the union of its concepts' scopes count neither way, so ``share``
    is of the feature's mass inside the scope and ``baseline`` of the tokens inside it.

    ``rows`` (token indices) profiles those tokens only (mass, baseline and scope alike): for example the validation
    half of the sequences, so that a description can be scored on the other half
    (:mod:`workbench.description_scores`).
    """
    prof = _profile(labels, features, group, rows=rows)
    return None if prof is None else prof[:3]


def _profile(labels: ConceptLabels, features: FeatureMatrix, group: str, *,
             rows: np.ndarray | None = None) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None] | None:
    """:func:`feature_profile` plus, for a scoped group, the fraction of each feature's mass inside the scope."""
    sums = ProfileSums(labels, group, rows=rows)
    if sums.cols is None:
        return None
    sums.add(features.values if rows is None else features.values[rows], 0)
    return sums.result()


class ProfileSums:
    """The sums behind :func:`feature_profile`, accumulated over blocks of tokens (the shards of a store): each
    feature's activation mass on each value of ``group`` and in all (and in the group's scope), in float64.

    With whole-store :class:`~workbench.concepts.ConceptLabels` (or their ``rows``), :meth:`add` takes a block's
    feature values and the row of its first token. With :class:`~workbench.label_shards.LabelShards` it also takes
    the block's token labels (``block``), and the labels' own sums (the baseline) are counted over the blocks
    added, so every token must be added once (on one rank or another)."""

    def __init__(self, labels: ConceptLabels | LabelShards, group: str, *, rows: np.ndarray | None = None) -> None:
        import scipy.sparse as sp

        from workbench.label_shards import LabelShards, token_scope_index

        concepts = labels.token_concepts["concept"].astype(str).tolist()
        prefix = group + "="
        cols = [j for j, c in enumerate(concepts) if c.startswith(prefix)]
        self.cols: list[int] | None = None
        if not cols:
            return
        values = [concepts[j][len(prefix):] for j in cols]
        numeric = all(_is_int(v) for v in values)
        order = np.argsort([int(v) for v in values], kind="stable") if numeric else np.argsort(values, kind="stable")
        self.cols = [cols[i] for i in order]
        self.values = [values[i] for i in order]
        self.lab: sp.csr_matrix | None = None
        self.scope: np.ndarray | None = None
        self.scope_cols: np.ndarray | None = None  # block mode: the scope columns of the group (None: everywhere)
        if isinstance(labels, LabelShards):
            k = token_scope_index(labels)[1][np.asarray(self.cols)]
            self.scope_cols = None if (k < 0).any() else np.unique(k)
            self.has_scope = self.scope_cols is not None
        else:
            lab = sp.csr_matrix(labels.tokens[:, self.cols], dtype=np.float64)
            scope = labels.group_scope(self.cols)
            if rows is not None:
                lab = lab[rows]
                scope = None if scope is None else scope[rows]
            self.lab, self.scope, self.has_scope = lab, scope, scope is not None
        self.mass: np.ndarray | float = 0.0
        self.total: np.ndarray | float = 0.0
        self.scoped: np.ndarray | float = 0.0
        self.lab_sum: np.ndarray | float = 0.0  # block mode: labelled tokens per value, and tokens in scope (or all)
        self.n_rows = 0

    def add(self, values: Any, start: int, *, block: TokenBlock | None = None) -> None:
        import scipy.sparse as sp

        x = sp.csr_matrix(values, dtype=np.float64)
        stop = start + x.shape[0]
        if self.lab is not None:
            lab = self.lab[start:stop]
            scope = None if self.scope is None else self.scope[start:stop]
        else:
            if block is None:
                raise WorkbenchError("these profile sums read labels per shard: add() needs the block's labels")
            lab = sp.csr_matrix(block.tokens[:, self.cols], dtype=np.float64)
            scope = None if self.scope_cols is None else block.scopes[:, self.scope_cols].any(1)
            self.lab_sum = self.lab_sum + np.asarray(lab.sum(0), dtype=np.float64).ravel()
            self.n_rows += int(x.shape[0] if scope is None else scope.sum())
        self.mass = self.mass + np.asarray((x.T @ lab).todense())
        self.total = self.total + np.asarray(x.sum(0)).ravel()
        if scope is not None:
            self.scoped = self.scoped + np.asarray(x.T @ scope.astype(np.float64)).ravel()

    def result(self, n_features: int = 0) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None]:
        """``(values, share, baseline, in_scope)`` as :func:`_profile` gives them (``n_features``: the width when
        no block was added)."""
        def arr(x: np.ndarray | float, shape: tuple[int, ...]) -> np.ndarray:
            return np.asarray(x, dtype=np.float64) if isinstance(x, np.ndarray) else np.zeros(shape)

        n_feat = len(self.total) if isinstance(self.total, np.ndarray) else n_features
        mass, total = arr(self.mass, (n_feat, len(self.values))), arr(self.total, (n_feat,))
        if self.lab is not None:
            n_rows = self.lab.shape[0] if self.scope is None else int(self.scope.sum())
            lab_sum = np.asarray(self.lab.sum(0), dtype=np.float64).ravel()
        else:
            n_rows, lab_sum = self.n_rows, arr(self.lab_sum, (len(self.values),))
        in_scope = None
        if self.has_scope:  # the mass and the tokens where the group is defined
            all_mass, total = total, arr(self.scoped, (n_feat,))
            with np.errstate(divide="ignore", invalid="ignore"):
                in_scope = np.where(all_mass > 0, total / np.where(all_mass > 0, all_mass, 1), 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(total[:, None] > 0, mass / np.where(total > 0, total, 1)[:, None], 0.0)
        baseline = lab_sum / max(n_rows, 1)
        return self.values, share, baseline, in_scope


class FeatureStats:
    """What :func:`describe_features` and the catalog read about each feature's firing, accumulated over blocks
    of whole sequences (:meth:`add`; one block holding every token for a store in memory): active tokens per
    feature, sequences it fires in, and the :class:`ProfileSums` of ``profile_groups``."""

    def __init__(self, labels: ConceptLabels | LabelShards, n_features: int, *, profile_groups: Sequence[str] = ("region", "imgt"),
                 n_sequences: int | None = None) -> None:
        self.n_tokens = labels.n_tokens
        self.n_sequences = n_sequences
        self.nnz = np.zeros(n_features, dtype=np.int64)
        self.fires_in = np.zeros(n_features, dtype=np.int64) if n_sequences is not None else None
        self.mass = np.zeros(n_features, dtype=np.float64)
        self.profiles = {g: ProfileSums(labels, g) for g in profile_groups}
        self.profiles = {g: p for g, p in self.profiles.items() if p.cols is not None}

    @classmethod
    def of(cls, labels: ConceptLabels, features: FeatureMatrix, *, profile_groups: Sequence[str] = ("region", "imgt"),
           token_sequence: np.ndarray | None = None) -> FeatureStats:
        """The statistics of a whole feature matrix."""
        n_seq = None
        if token_sequence is not None:
            token_sequence = np.asarray(token_sequence)
            n_seq = int(token_sequence.max()) + 1 if len(token_sequence) else 0
        stats = cls(labels, features.values.shape[1], profile_groups=profile_groups, n_sequences=n_seq)
        stats.add(features.values, 0, token_sequence)
        return stats

    def add(self, values: Any, start: int, token_sequence: np.ndarray | None = None, *,
            block: TokenBlock | None = None) -> None:
        """Count the tokens ``start ..`` (``values``: their normalised activations; ``token_sequence``: their
        sequences, any numbering that keeps sequences apart; needed when counting sequences; ``block``: their
        labels, for statistics made from :class:`~workbench.label_shards.LabelShards`)."""
        import scipy.sparse as sp

        x = sp.csc_matrix(values)
        self.nnz += np.diff(x.indptr)
        self.mass += np.asarray(x.sum(0), dtype=np.float64).ravel()
        if self.fires_in is not None:
            if token_sequence is None:
                raise WorkbenchError("FeatureStats counts sequences: add() needs each token's sequence")
            n_seq = int(np.max(token_sequence)) + 1 if len(token_sequence) else 0
            self.fires_in += _fires_per_sequence(x, np.asarray(token_sequence), n_seq)
        for prof in self.profiles.values():
            prof.add(values, start, block=block)

    def profile(self, group: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None] | None:
        prof = self.profiles.get(group)
        return None if prof is None else prof.result(len(self.nnz))


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _peak_window(share: np.ndarray) -> tuple[int, int]:
    """Around the largest share, the run of neighbouring values holding at least half of it (inclusive bounds)."""
    p = int(share.argmax())
    lo = hi = p
    half = share[p] / 2
    while lo > 0 and share[lo - 1] >= half:
        lo -= 1
    while hi < len(share) - 1 and share[hi + 1] >= half:
        hi += 1
    return lo, hi


def _stated_items(share: np.ndarray, numeric: bool) -> list[np.ndarray]:
    """The values the profile text of one group names for one feature, as index arrays into the group's values, in
    the order of the text: for positions (``numeric``) the peak window (:func:`_peak_window`) and then up to
    ``_PROFILE_TOP - 1`` more single positions; otherwise up to ``_PROFILE_TOP`` single values. Single values under
    1% of the mass are not named. Empty when the feature has no mass on the group."""
    if share.max() <= 0:
        return []
    if numeric:
        lo, hi = _peak_window(share)
        rest = np.r_[np.arange(lo), np.arange(hi + 1, len(share))]
        top = rest[np.argsort(-share[rest], kind="stable")[: _PROFILE_TOP - 1]]
        return [np.arange(lo, hi + 1)] + [np.array([i]) for i in top if share[i] >= 0.01]
    order = np.argsort(-share, kind="stable")[:_PROFILE_TOP]
    return [np.array([i]) for i in order if share[i] >= 0.01]


def _group_parts(group: str, values: list[str], share: np.ndarray, baseline: np.ndarray, numeric: bool,
                 in_scope: float | None = None) -> tuple[str, str | None]:
    """(profile text of one group for one feature, description clause or None). ``in_scope``: for a scoped group,
    the fraction of the feature's mass inside the scope (the shares are of that part); the clause then also needs
    at least :data:`_PROFILE_CLAUSE_SHARE` of the mass in scope."""
    if share.max() <= 0:
        return "", None
    stated = _stated_items(share, numeric)
    items = [(values[int(i[0])], float(share[i[0]])) for i in stated]
    if numeric:  # the first item is the peak window
        lo, hi = int(stated[0][0]), int(stated[0][-1])
        label = values[lo] if lo == hi else f"{values[lo]}-{values[hi]}"
        peak, base = float(share[stated[0]].sum()), float(baseline[stated[0]].sum())
        items[0] = (label, peak)
    else:
        top = int(np.argmax(share))
        label, peak, base = values[top], float(share[top]), float(baseline[top])
    head = f"{group}: " if in_scope is None or in_scope >= 0.995 else f"{group} ({_pct(in_scope)} in scope): "
    text = head + ", ".join(f"{v} {_pct(s)}" for v, s in items) if items else ""
    enriched = peak >= _PROFILE_CLAUSE_SHARE and peak >= _PROFILE_CLAUSE_LIFT * base
    if in_scope is not None:
        enriched = enriched and in_scope >= _PROFILE_CLAUSE_SHARE
    clause = f"{_pct(peak)} {group}={label}" + ("" if in_scope is None else " in scope") if enriched else None
    return text, clause


def _top_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per feature, the pair with the best test F1 (ties: best validation F1, then smallest q)."""
    if pairs.empty:
        return pairs.iloc[:0].set_index("feature") if "feature" in pairs else pairs
    top = pairs.sort_values(["test_f1", "val_f1", "q_value"], ascending=[False, False, True], kind="stable")
    return top.drop_duplicates("feature").set_index("feature")


def describe_features(
    association: Association,
    labels: ConceptLabels,
    features: FeatureMatrix | None,
    *,
    profile_groups: Sequence[str] = ("region", "imgt"),
    token_sequence: np.ndarray | None = None,
    stats: FeatureStats | None = None,
    names: Sequence[str] | None = None,
    alpha: float = DESCRIBE_ALPHA,
    min_f1: float = DESCRIBE_MIN_F1,
    units: tuple[str, str] = ("tokens", "sequences"),
) -> pd.DataFrame:
    """A one-line description of every feature from its statistics (index = feature name).

    Columns: ``top_concept``, ``top_f1``, ``top_precision``, ``top_q``, ``top_threshold`` (the feature's pair with
    the best test F1 in ``association.pairs``; NaN when it overlaps no concept), ``profile`` (share of the feature's
    activation mass on the top values of each of ``profile_groups`` present in ``labels``) and ``description``:

    * ``"dead"`` when the feature never fires;
    * ``"<concept> (F1 0.82, q 1e-40); 74% region=CDR3, 45% imgt=111-112"`` when the top pair has q <= ``alpha``
      and test F1 >= ``min_f1``;
    * ``"weak: <concept> (F1 0.12, q 0.30); fires 5% of tokens; ..."`` when it has not;
    * ``"unexplained; fires 5% of tokens; 61% imgt=104"`` when the feature overlaps no concept.

    Profile clauses appear for groups whose peak (for positions: the run of neighbouring positions holding at least
    half the top share) carries at least 20% of the mass and at least 1.5 times the share of all tokens it labels.
    A scoped group (such as ``shm``, defined only on residues compared with a germline) is profiled inside its scope
    (:func:`feature_profile`): its text says which part of the mass that is (``"shm (40% in scope): mutated 90%"``)
    and its clause (``"90% shm=mutated in scope"``) also needs at least 20% of the mass in scope.
    With ``token_sequence`` (the store-order sequence index of every token) the firing clause also gives the share
    of sequences the feature fires in. ``stats`` (a :class:`FeatureStats` accumulated elsewhere, for example shard by
    shard) replaces ``features`` and ``token_sequence``; ``names`` are then the feature names. ``units`` names what
    is counted (``("positions", "images")`` for an image catalog).
    """
    import pandas as pd

    if stats is None:
        n_tokens, n_features = features.values.shape
        if labels.n_tokens != n_tokens:
            raise WorkbenchError(f"features cover {n_tokens} tokens, labels {labels.n_tokens}: they come from different stores")
        if token_sequence is not None and len(token_sequence) != n_tokens:
            raise WorkbenchError(f"token_sequence has {len(token_sequence)} entries for {n_tokens} tokens")
        stats = FeatureStats.of(labels, features, profile_groups=profile_groups, token_sequence=token_sequence)
    n_tokens, n_features = stats.n_tokens, len(stats.nnz)
    names = list(names) if names is not None else list(features.names)  # type: ignore[union-attr]
    if len(names) != n_features:
        raise InputError(f"{len(names)} feature names for {n_features} feature columns")
    nnz = stats.nnz
    density = nnz / max(n_tokens, 1)
    seq_frac = None if stats.fires_in is None else stats.fires_in / max(stats.n_sequences or 0, 1)

    top = _top_pairs(association.pairs).reindex(names)
    out = pd.DataFrame(index=pd.Index(names, name="feature"))
    out["top_concept"] = top["concept"].astype(object).where(top["concept"].notna(), None) if "concept" in top else None
    for col, src in (("top_f1", "test_f1"), ("top_precision", "test_precision"), ("top_q", "q_value"),
                     ("top_threshold", "threshold")):
        out[col] = top[src].to_numpy(dtype=np.float64) if src in top else np.nan

    profiles = []
    for group in profile_groups:
        prof = stats.profile(group)
        if prof is not None:
            values, share, baseline, in_scope = prof
            profiles.append((group, values, share, baseline, all(_is_int(v) for v in values), in_scope))

    profile_text, descriptions = [], []
    for j in range(n_features):
        texts, clauses = [], []
        for group, values, share, baseline, numeric, in_scope in profiles:
            text, clause = _group_parts(group, values, share[j], baseline, numeric,
                                        None if in_scope is None else float(in_scope[j]))
            if text:
                texts.append(text)
            if clause:
                clauses.append(clause)
        profile_text.append("; ".join(texts))
        if nnz[j] == 0:
            descriptions.append("dead")
            continue
        fires = f"fires {_pct(density[j])} of {units[0]}"
        if seq_frac is not None:
            fires += f" in {_pct(seq_frac[j])} of {units[1]}"
        concept = out["top_concept"].iat[j]
        f1, q = out["top_f1"].iat[j], out["top_q"].iat[j]
        if concept is None or not np.isfinite(f1) or f1 <= 0:
            head = ["unexplained", fires]
        elif q <= alpha and f1 >= min_f1:
            head = [f"{concept} (F1 {f1:.2f}, q {_fmt_q(q)})"]
        else:
            head = [f"weak: {concept} (F1 {f1:.2f}, q {_fmt_q(q)})", fires]
        parts = ["; ".join(head)]
        if clauses:
            parts.append(", ".join(clauses))
        descriptions.append("; ".join(parts))
    out["profile"] = profile_text
    out["description"] = descriptions
    return out


def _fires_per_sequence(x_csc: Any, token_sequence: np.ndarray, n_seq: int) -> np.ndarray:
    """Number of sequences in which each feature fires at least once."""
    import scipy.sparse as sp

    coo = sp.coo_matrix(x_csc)
    pooled = sp.csr_matrix((np.ones(len(coo.row), dtype=np.float32), (token_sequence[coo.row], coo.col)),
                           shape=(n_seq, x_csc.shape[1]))
    pooled.sum_duplicates()
    return np.diff(pooled.tocsc().indptr)


def feature_families(
    decoder: np.ndarray,
    *,
    n_neighbors: int = 15,
    resolution: float = 1.0,
    seed: int = 0,
    dead: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Families (Leiden clusters) and a 2-D UMAP layout of features by their decoder directions.

    One exact cosine k-nearest-neighbour graph is computed with scanpy (``sc.pp.neighbors(use_rep="X",
    metric="cosine", transformer="sklearn")``); Leiden (igraph flavour, 2 iterations, ``random_state=seed``) runs on
    its connectivities and UMAP (umap-learn, cosine, ``random_state=seed``) reuses its neighbours. Both are
    deterministic for a seed. Features flagged in ``dead`` (boolean mask) take no part: their family is ``"dead"``
    and their coordinates NaN. Families are numbered ``"0"``, ``"1"``, ... by decreasing size. Returns
    ``(families (n,) str objects, umap (n, 2) float32)``.
    """
    decoder = np.asarray(decoder, dtype=np.float32)
    if decoder.ndim != 2:
        raise InputError(f"decoder must be a 2-D (features x d_in) array, not shape {decoder.shape}")
    n = decoder.shape[0]
    if n_neighbors < 2:
        raise InputError(f"n_neighbors must be at least 2, not {n_neighbors}")
    alive = np.ones(n, dtype=bool) if dead is None else ~np.asarray(dead, dtype=bool)
    if len(alive) != n:
        raise InputError(f"dead mask has {len(alive)} entries for {n} features")
    families = np.full(n, "dead", dtype=object)
    coords = np.full((n, 2), np.nan, dtype=np.float32)
    live = np.flatnonzero(alive)
    if len(live) == 0:
        return families, coords
    if len(live) < 4:  # too few for a graph: one family, a trivial layout
        families[live] = "0"
        coords[live] = np.c_[np.arange(len(live)), np.zeros(len(live))]
        return families, coords
    data = decoder[live]
    norms = np.linalg.norm(data, axis=1, keepdims=True)
    data = data / np.where(norms > 0, norms, 1)
    k = min(n_neighbors, len(live) - 1)
    labels, knn_idx, knn_dist = _leiden(data, k, resolution, seed)
    families[live] = labels
    coords[live] = _umap(data, k, knn_idx, knn_dist, seed)
    return families, coords


def _leiden(data: np.ndarray, k: int, resolution: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leiden labels (by decreasing size) plus the kNN (self first) the graph came from."""
    import anndata as ad
    import scanpy as sc

    adata = ad.AnnData(data)
    # transformer="sklearn": exact neighbours; scanpy 1.11's default pynndescent path (above 4096 points) fails with
    # scipy 1.17 ("csr_array has no attribute getnnz"). The igraph flavour with these options raises no warnings.
    sc.pp.neighbors(adata, n_neighbors=k, use_rep="X", metric="cosine", transformer="sklearn", random_state=seed)
    sc.tl.leiden(adata, flavor="igraph", n_iterations=2, directed=False, resolution=resolution, random_state=seed)
    raw = adata.obs["leiden"].astype(str).to_numpy()
    uniq, counts = np.unique(raw, return_counts=True)
    order = sorted(range(len(uniq)), key=lambda i: (-counts[i], int(uniq[i]) if uniq[i].isdigit() else 0, uniq[i]))
    rename = {uniq[i]: str(r) for r, i in enumerate(order)}
    labels = np.asarray([rename[v] for v in raw], dtype=object)
    # scanpy's distance graph holds k-1 neighbours per row (self excluded); UMAP wants k with self first.
    dist = adata.obsp["distances"].tocsr()
    m = len(data)
    idx = np.full((m, k), -1, dtype=np.int64)  # -1: no neighbour (umap-learn skips it)
    idx[:, 0] = np.arange(m)
    dst = np.zeros((m, k), dtype=np.float32)
    for i in range(m):
        s, e = dist.indptr[i], dist.indptr[i + 1]
        order_i = np.argsort(dist.data[s:e], kind="stable")[: k - 1]
        idx[i, 1 : 1 + len(order_i)] = dist.indices[s:e][order_i]
        dst[i, 1 : 1 + len(order_i)] = dist.data[s:e][order_i]
    return labels, idx, dst


def _umap(data: np.ndarray, k: int, knn_idx: np.ndarray, knn_dist: np.ndarray, seed: int) -> np.ndarray:
    import umap

    init = "spectral" if len(data) > 2 * k + 2 else "random"
    with warnings.catch_warnings():
        # The neighbours come from scanpy's graph, so umap-learn has no search index; transform() is never needed.
        warnings.filterwarnings("ignore", message=r".*knn_search_index.*", category=UserWarning)
        reducer = umap.UMAP(n_neighbors=k, metric="cosine", random_state=seed, n_jobs=1, init=init,
                            precomputed_knn=(knn_idx, knn_dist, None))
        return np.asarray(reducer.fit_transform(data), dtype=np.float32)
