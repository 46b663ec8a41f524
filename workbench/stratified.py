"""Association controlled for the trivial explanations: Cochran-Mantel-Haenszel over strata, vectorised over pairs.

A feature that marks ``shm=mutated`` may only be marking "serine at IMGT 31 of a heavy chain", a place where
mutations are common. The plain association (:mod:`workbench.associate`) cannot tell the two apart; a stratified one
can. Every token gets a stratum (for antibodies: IMGT position x residue identity x chain type, see
:func:`token_strata`), and each (feature, concept) pair is tested within strata: is the feature active on the
concept's tokens more often than on the other tokens *of the same stratum*?

For a pair with ``a_k`` active-and-labelled tokens in stratum ``k`` (``m_k`` active, ``l_k`` labelled, ``n_k``
tokens), the Cochran-Mantel-Haenszel statistic compares ``sum a_k`` with its expectation under conditional
independence ``E = sum m_k l_k / n_k`` and variance ``V = sum m_k (n_k - m_k) l_k (n_k - l_k) / (n_k^2 (n_k - 1))``
(one-sided: ``z = (sum a_k - E) / sqrt(V)``, ``p = P(Z >= z)``), and the Mantel-Haenszel common odds ratio is
``sum a_k d_k / n_k / sum b_k c_k / n_k``. Neither needs the ``features x concepts x strata`` tensor:

* ``E`` and ``V`` are products of a ``features x strata`` and a sparse ``strata x concepts`` matrix;
* the odds-ratio sums expand into ``sum a_k``, ``E`` and three sums over strata where ``a_k > 0``, which come from
  one sparse product of the active matrix with a ``tokens x (concept, stratum)`` membership matrix.

:class:`MantelHaenszelSums` accumulates these products block by block. Its layout (the tokens of every stratum, the
(concept, stratum) cells of labelled tokens) is a few numbers per stratum and per cell; it is built either from the
whole store's labels at once (the constructor, which keeps the per-token membership matrices) or shard by shard
(:meth:`MantelHaenszelSums.from_blocks`, or :class:`MantelHaenszelLayout` counted on each process and merged), in
which case each shard's membership rows are rebuilt from its labels when its features are counted, so that nothing
per token of the whole store is held.

A concept that does not vary inside any stratum (residue identity when the strata hold the residue; an IMGT
position or a region when they hold the position) has ``V = 0`` for every feature: the stratified test cannot test
it, and says so (``testable`` False) instead of reporting a zero. :func:`strata_share` gives the per-feature share
of activation variance that the strata explain (the correlation ratio), the same control for features that match
no concept.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from workbench.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import scipy.sparse as sp

    from workbench.concepts import ConceptLabels

__all__ = ["Strata", "token_strata", "mantel_haenszel", "MantelHaenszelLayout", "MantelHaenszelSums", "pair_columns",
           "columns_from_test", "best_columns", "strata_share", "STRATIFIED_OR", "STRATIFIED_Q"]

STRATIFIED_OR = 2.0
"""Mantel-Haenszel odds ratio a pair needs (beside ``q_cmh <= STRATIFIED_Q``) to survive the stratification."""
STRATIFIED_Q = 0.05
"""BH q-value bar of the stratified test."""
DENSE_FRACTION = 0.05
"""Feature matrices denser than this are counted with dense products (as in :mod:`workbench.associate`)."""


class Strata(NamedTuple):
    """One stratum per token."""

    codes: np.ndarray
    """``(n_tokens,)`` int64 stratum index."""
    names: list[str]
    """Stratum names (``"104|C|H"``), indexed by ``codes``."""
    description: str
    """What the strata are made of, e.g. ``"imgt x residue x chain_type"``."""


def token_strata(labels: ConceptLabels, obs: pd.DataFrame, *, groups: Sequence[str] = ("imgt",),
                 columns: Sequence[str] = ("residue",), sequence_groups: Sequence[str] = ("chain_type",),
                 token_sequence: np.ndarray | None = None) -> Strata:
    """Strata from token concept groups (a numbering), ``obs`` columns (the residue) and sequence concept groups
    (the chain type), crossed. Parts that the labels or ``obs`` lack are left out (the description names what was
    used); with no part at all, every token is one stratum. ``token_sequence`` (each token's sequence in store
    order) replaces ``obs["sequence_id"]``; categorical ``obs`` columns are read by their codes, so a large store's
    token table need not hold a string per token. Strata are numbered in the sorted order of their names."""
    import pandas as pd

    if len(obs) != labels.n_tokens:
        raise InputError(f"obs has {len(obs)} rows for {labels.n_tokens} labelled tokens")
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name -> (codes per token, value names)

    def factor(values: Any) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(getattr(values, "dtype", None), pd.CategoricalDtype):
            cat = values.cat.remove_unused_categories()
            return cat.cat.codes.to_numpy().astype(np.int64), np.asarray(cat.cat.categories.astype(str), dtype=object)
        codes, uniques = pd.factorize(pd.Series(values, dtype=object).astype(str), sort=False)
        return codes.astype(np.int64), np.asarray(uniques, dtype=object)

    for g in groups:
        values = labels.group_values(g, "token")
        if values is not None:
            parts[g] = factor(np.where(values == None, "-", values))  # noqa: E711 - elementwise on an object array
    for c in columns:
        if c in obs.columns:
            parts[c] = factor(obs[c])
    if sequence_groups:
        seq = token_sequence
        if seq is None and "sequence_id" in obs.columns:
            seq = pd.factorize(obs["sequence_id"].astype(str), sort=False)[0]
        n_seq = labels.sequences.shape[0]
        if seq is not None and (len(seq) == 0 or seq.max() < n_seq):
            for g in sequence_groups:
                values = labels.group_values(g, "sequence")
                if values is not None:
                    codes, names = factor(np.where(values == None, "-", values))  # noqa: E711
                    parts[g] = (codes[np.asarray(seq, dtype=np.int64)], names)
    if not parts:
        return Strata(np.zeros(labels.n_tokens, dtype=np.int64), ["all"], "none (one stratum)")
    key = np.zeros(labels.n_tokens, dtype=np.int64)
    for codes, names in parts.values():  # mixed radix over the parts' value counts
        key = key * max(len(names), 1) + codes
    combos, inverse = np.unique(key, return_inverse=True)
    digits, rest = [], combos.copy()
    for codes, names in reversed(list(parts.values())):
        base = max(len(names), 1)
        digits.append(names[rest % base] if len(names) else np.full(len(rest), "", dtype=object))
        rest = rest // base
    text = ["|".join(map(str, row)) for row in zip(*reversed(digits))]
    order = np.argsort(np.asarray(text, dtype=object), kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return Strata(rank[inverse.ravel()].astype(np.int64), [text[i] for i in order], " x ".join(parts))


def _onehot(codes: np.ndarray, n: int) -> sp.csr_matrix:
    import scipy.sparse as sp

    return sp.csr_matrix((np.ones(len(codes), dtype=np.float32), (np.arange(len(codes)), codes)), shape=(len(codes), n))


def mantel_haenszel(values: sp.csr_matrix, labels: sp.csr_matrix, strata: np.ndarray, thresholds: Sequence[float],
                    chosen: np.ndarray, *, scopes: np.ndarray | None = None,
                    scope_index: np.ndarray | None = None, wanted: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Stratified test of every (feature, concept) pair at the pair's chosen threshold.

    ``values`` is ``tokens x features`` (normalised activations), ``labels`` ``tokens x concepts`` boolean,
    ``strata`` the stratum of every token, ``chosen`` (features x concepts) the index into ``thresholds`` of each
    pair's threshold (a feature is active where ``value > threshold``). A scoped concept (``scopes``, ``scope_index``
    as in :func:`~workbench.associate.count_pairs`) is tested on the tokens of its scope only. ``wanted`` (features x
    concepts boolean) limits the work to those pairs (the others are left at 0 / NaN).

    Returns features x concepts arrays: ``observed`` (``sum a_k``), ``expected``, ``variance``, ``odds_ratio``
    (Mantel-Haenszel; inf when only concordant strata exist, NaN when the pair has no informative stratum), ``z``
    and ``p_value`` (one-sided, enrichment; NaN where the variance is 0), and per concept ``testable`` (the concept
    varies inside at least one stratum of its scope). The same as :class:`MantelHaenszelSums` fed with all tokens at
    once.
    """
    import scipy.sparse as sp

    values = sp.csr_matrix(values)
    if len(strata) != values.shape[0] or labels.shape[0] != values.shape[0]:
        raise InputError(f"strata ({len(strata)}), labels ({labels.shape[0]}) and features ({values.shape[0]}) cover "
                         "different tokens")
    if chosen.shape != (values.shape[1], labels.shape[1]):
        raise InputError(f"chosen thresholds have shape {chosen.shape}, want {(values.shape[1], labels.shape[1])}")
    dense = values.nnz > DENSE_FRACTION * max(values.shape[0] * values.shape[1], 1)
    sums = MantelHaenszelSums(labels, strata, thresholds, chosen, scopes=scopes, scope_index=scope_index, wanted=wanted,
                              dense=dense)
    sums.add(values, 0)
    return sums.result()


_SHIFT = 32
"""Keys of the layout pack two codes into one int64: ``high << _SHIFT | low`` sorts as the pair ``(high, low)``."""


def _stratum_codes(strata: Any, n_tokens: int | None = None) -> np.ndarray:
    """``strata`` as int64 codes in ``[0, 2**32)`` (the low half of a layout key), checked against ``n_tokens``."""
    codes = np.asarray(strata, dtype=np.int64).ravel()
    if n_tokens is not None and len(codes) != n_tokens:
        raise InputError(f"strata ({len(codes)}) and labels ({n_tokens}) cover different tokens")
    if len(codes) and (codes.min() < 0 or codes.max() >= 1 << _SHIFT):
        raise InputError(f"stratum codes must lie in [0, 2**{_SHIFT}), got {codes.min()} .. {codes.max()}")
    return codes


def _merge_counts(keys: np.ndarray, counts: np.ndarray, more_keys: np.ndarray,
                  more_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two sets of (sorted unique key, count) as one: the counts of equal keys added."""
    keys, inverse = np.unique(np.concatenate([keys, more_keys]), return_inverse=True)
    return keys, np.bincount(inverse.ravel(), weights=np.concatenate([counts, more_counts]),
                             minlength=len(keys)).astype(np.int64)


def _lookup(keys: np.ndarray, wanted: np.ndarray, what: str) -> np.ndarray:
    """The position of every ``wanted`` key in the sorted ``keys``; an :class:`InputError` naming ``what`` when
    some are not there."""
    pos = np.searchsorted(keys, wanted)
    found = pos < len(keys)
    found[found] = keys[pos[found]] == wanted[found]
    if not found.all():
        raise InputError(f"{int((~found).sum())} {what}")
    return pos.astype(np.int64)


class MantelHaenszelLayout:
    """The label side of :class:`MantelHaenszelSums` counted block by block (a store's shards, on any number of
    processes): the tokens of every stratum, in all and in each scope, and the labelled tokens of every (concept,
    stratum) cell. It holds a few numbers per stratum and per cell, never per token; layouts of disjoint blocks
    :meth:`merge` into the layout of their union (integer counts, in any order), and a layout pickles as plain numpy
    arrays (to gather the ranks' layouts). :meth:`MantelHaenszelSums.from_layout` turns it into the sums' layout.

    ``scope_keys`` / ``scope_counts``: sorted ``(scope + 1) << 32 | stratum`` keys (scope ``-1``: all tokens) and
    their token counts; ``cell_keys`` / ``cell_counts``: sorted ``concept << 32 | stratum`` keys of the labelled
    tokens and their counts. ``n_concepts`` and ``n_scopes`` are None until a block is added (``n_scopes`` 0 for
    blocks without scopes; ``scoped`` says whether the blocks had them)."""

    def __init__(self) -> None:
        self.scope_keys = np.zeros(0, dtype=np.int64)
        self.scope_counts = np.zeros(0, dtype=np.int64)
        self.cell_keys = np.zeros(0, dtype=np.int64)
        self.cell_counts = np.zeros(0, dtype=np.int64)
        self.n_tokens = 0
        self.n_concepts: int | None = None
        self.n_scopes: int | None = None
        self.scoped: bool | None = None

    def _check(self, n_concepts: int | None, n_scopes: int | None, scoped: bool | None, what: str) -> None:
        if n_concepts is not None and self.n_concepts is not None and n_concepts != self.n_concepts:
            raise InputError(f"{what} has {n_concepts} concepts, the layout {self.n_concepts}")
        if scoped is not None and self.scoped is not None and scoped != self.scoped:
            raise InputError(f"{what} {'has' if scoped else 'lacks'} scopes, the layout's blocks "
                             f"{'had' if self.scoped else 'had none'}: give scopes with every block or with none")
        if n_scopes is not None and self.n_scopes is not None and n_scopes != self.n_scopes:
            raise InputError(f"{what} has {n_scopes} scopes, the layout {self.n_scopes}")

    def add_block(self, labels: sp.spmatrix | np.ndarray, strata: np.ndarray, scopes: np.ndarray | None = None) -> None:
        """Count one block of tokens: ``labels`` (tokens x concepts, boolean or float; non-zero is labelled),
        ``strata`` (their stratum codes, numbered alike in every block) and ``scopes`` (tokens x scopes boolean, or
        None)."""
        import scipy.sparse as sp

        labels = sp.csr_matrix(labels, dtype=np.float32)
        n_tokens, n_con = labels.shape
        strata = _stratum_codes(strata, n_tokens)
        if scopes is not None and (np.ndim(scopes) != 2 or scopes.shape[0] != n_tokens):
            raise InputError(f"scopes have shape {np.shape(scopes)}, want ({n_tokens}, scopes)")
        n_scopes = 0 if scopes is None else int(scopes.shape[1])
        self._check(n_con, n_scopes, scopes is not None, "a block")
        uniq, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
        inverse = inverse.ravel()
        keys, tallies = [uniq], [counts]  # scope -1 (all tokens): slot 0
        for j in range(n_scopes):
            inside = np.bincount(inverse[np.asarray(scopes[:, j], dtype=bool).ravel()], minlength=len(uniq))
            keys.append(((j + 1) << _SHIFT) + uniq[inside > 0])
            tallies.append(inside[inside > 0])
        self.scope_keys, self.scope_counts = _merge_counts(self.scope_keys, self.scope_counts, np.concatenate(keys),
                                                           np.concatenate(tallies).astype(np.int64))
        lr, lc = labels.nonzero()
        cells, counts = np.unique((lc.astype(np.int64) << _SHIFT) + strata[lr], return_counts=True)
        self.cell_keys, self.cell_counts = _merge_counts(self.cell_keys, self.cell_counts, cells, counts)
        self.n_tokens += n_tokens
        self.n_concepts, self.n_scopes, self.scoped = n_con, n_scopes, scopes is not None

    def merge(self, other: MantelHaenszelLayout) -> None:
        """Add another layout's counts (another rank's blocks)."""
        if other.n_concepts is None:  # no block: nothing to add
            return
        self._check(other.n_concepts, other.n_scopes, other.scoped, "the other layout")
        self.scope_keys, self.scope_counts = _merge_counts(self.scope_keys, self.scope_counts, other.scope_keys,
                                                           other.scope_counts)
        self.cell_keys, self.cell_counts = _merge_counts(self.cell_keys, self.cell_counts, other.cell_keys,
                                                         other.cell_counts)
        self.n_tokens += other.n_tokens
        self.n_concepts, self.n_scopes, self.scoped = other.n_concepts, other.n_scopes, other.scoped


class MantelHaenszelSums:
    """The sums behind :func:`mantel_haenszel`, accumulated over blocks of tokens (the shards of a store, in any
    order, on any number of processes): per threshold the active tokens of each feature in each stratum and the
    active-and-labelled tokens of each (feature, concept, stratum) cell. They are integer counts, so summing them in
    blocks is exact and :meth:`result` equals the all-at-once test bit for bit.

    The layout (the combined strata of every scope with their token counts ``n_k``, the cells of labelled tokens) is
    a few numbers per stratum and per cell. Two ways to build it:

    * the constructor takes the whole store's ``labels``, ``strata`` and ``scopes`` and keeps their per-token
      membership matrices, so that :meth:`add` takes ``(values, start)``, a slice of the store's rows;
    * :meth:`from_blocks` (one pass over the shards' labels) or :meth:`from_layout` (a
      :class:`MantelHaenszelLayout`, e.g. merged from the ranks' layouts) keep nothing per token; :meth:`add` then
      takes each block's ``labels``, ``strata`` and ``scopes`` with its values and builds its rows on the fly.

    Both give the same layout (combined strata sorted by scope, then stratum; cells by concept, then stratum) and the
    same results. ``dense`` picks the dense products (neurons) as :func:`mantel_haenszel` does from the density of
    the whole feature matrix."""

    onehot: sp.csr_matrix | None
    """Whole-store tokens x combined strata membership (constructor only; None when built from blocks)."""
    member: sp.csr_matrix | None
    """Whole-store tokens x cells membership of the labelled tokens (constructor only; None when built from blocks)."""

    def __init__(self, labels: sp.csr_matrix, strata: np.ndarray, thresholds: Sequence[float], chosen: np.ndarray, *,
                 scopes: np.ndarray | None = None, scope_index: np.ndarray | None = None,
                 wanted: np.ndarray | None = None, dense: bool = False) -> None:
        import scipy.sparse as sp

        labels = sp.csr_matrix(labels, dtype=np.float32)
        strata = _stratum_codes(strata, labels.shape[0])
        layout = MantelHaenszelLayout()  # the whole store as one block
        layout.add_block(labels, strata, scopes)
        self._build(layout, thresholds, chosen, scope_index, wanted, dense)
        self.onehot, self.member = self._token_rows(labels, strata, scopes)

    @classmethod
    def from_layout(cls, layout: MantelHaenszelLayout, thresholds: Sequence[float], chosen: np.ndarray, *,
                    scope_index: np.ndarray | None = None, wanted: np.ndarray | None = None,
                    dense: bool = False) -> MantelHaenszelSums:
        """Sums over the blocks that ``layout`` counted (fed with :meth:`add` ``(values, labels=, strata=, scopes=)``
        block by block); the other arguments as for the constructor."""
        self = cls.__new__(cls)
        self._build(layout, thresholds, chosen, scope_index, wanted, dense)
        self.onehot = self.member = None
        return self

    @classmethod
    def from_blocks(cls, blocks: Iterable[tuple[Any, np.ndarray, np.ndarray | None]], thresholds: Sequence[float],
                    chosen: np.ndarray, *, scope_index: np.ndarray | None = None, wanted: np.ndarray | None = None,
                    dense: bool = False) -> MantelHaenszelSums:
        """:meth:`from_layout` of the layout of ``blocks``, ``(labels, strata, scopes)`` per block of tokens (read
        once; see :meth:`MantelHaenszelLayout.add_block`)."""
        layout = MantelHaenszelLayout()
        for labels, strata, scopes in blocks:
            layout.add_block(labels, strata, scopes)
        return cls.from_layout(layout, thresholds, chosen, scope_index=scope_index, wanted=wanted, dense=dense)

    def _build(self, layout: MantelHaenszelLayout, thresholds: Sequence[float], chosen: np.ndarray,
               scope_index: np.ndarray | None, wanted: np.ndarray | None, dense: bool) -> None:
        import scipy.sparse as sp

        chosen = np.asarray(chosen)
        n_con = layout.n_concepts
        if n_con is None:  # no block at all: the concepts are those of ``chosen``
            n_con = chosen.shape[1] if chosen.ndim == 2 else 0
        if chosen.ndim != 2 or chosen.shape[1] != n_con:
            raise InputError(f"chosen thresholds have shape {chosen.shape}, want (features, {n_con})")
        n_feat = chosen.shape[0]
        index = np.full(n_con, -1, dtype=np.int64)
        if scope_index is not None and layout.scoped:
            index = np.asarray(scope_index, dtype=np.int64).ravel()
            if len(index) != n_con or (len(index) and (index.min() < -1 or index.max() >= (layout.n_scopes or 0))):
                raise InputError(f"scope_index must give {n_con} scopes in [-1, {layout.n_scopes}), got "
                                 f"{len(index)} in [{index.min(initial=0)}, {index.max(initial=0)}]")
        # One combined stratum per (scope, stratum): a scoped concept's strata hold only the tokens of its scope, and
        # every scope is counted in the same products (a token sits in the all-tokens group and in each scope it is in).
        # Its key is (scope + 1) << 32 | stratum: the columns sort by scope, then stratum.
        self.groups = np.unique(index)  # the scopes in use (-1: all tokens)
        keep = np.isin(layout.scope_keys >> _SHIFT, self.groups + 1)
        self.combined = layout.scope_keys[keep]
        self.n_k = layout.scope_counts[keep].astype(np.float64)
        # The (concept, combined stratum) cells of labelled tokens: the membership matrix's columns, sorted by concept,
        # then stratum (a concept has one scope, so that is its combined strata's order).
        self.cell_keys = layout.cell_keys
        self.cell_concept = layout.cell_keys >> _SHIFT
        stratum = layout.cell_keys & ((1 << _SHIFT) - 1)
        self.cell_stratum = _lookup(self.combined, ((index[self.cell_concept] + 1) << _SHIFT) + stratum,
                                    "labelled (concept, stratum) cells have no token of the concept's scope in their "
                                    "stratum: a scoped concept's labels must lie inside its scope")
        self.cell_lab = layout.cell_counts.astype(np.float64)
        v_cell = self.cell_lab * (self.n_k[self.cell_stratum] - self.cell_lab)
        self.testable = np.bincount(self.cell_concept, weights=v_cell, minlength=n_con) > 0
        n_k = self.n_k
        w = np.where(n_k > 1, 1.0 / (n_k**2 * np.maximum(n_k - 1, 1)), 0.0)
        shape_cs = (n_con, len(self.combined))
        self.v_mat = sp.csr_matrix((v_cell * w[self.cell_stratum], (self.cell_concept, self.cell_stratum)),
                                   shape=shape_cs)
        self.e_mat = sp.csr_matrix((self.cell_lab / n_k[self.cell_stratum], (self.cell_concept, self.cell_stratum)),
                                   shape=shape_cs)
        self.thresholds = list(thresholds)
        self.chosen = chosen
        self.want = np.ones((n_feat, n_con), dtype=bool) if wanted is None else np.asarray(wanted, dtype=bool)
        self.dense = dense
        self.levels = [int(t) for t in np.unique(self.chosen[self.want])]
        self.features = {t: np.flatnonzero(((self.chosen == t) & self.want).any(1)) for t in self.levels}
        self.sums: dict[int, list[Any]] = {}

    def _token_rows(self, labels: sp.csr_matrix, strata: np.ndarray,
                    scopes: np.ndarray | None) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """The tokens x combined strata and tokens x cells membership matrices of a block of tokens."""
        import scipy.sparse as sp

        n_tokens = labels.shape[0]
        if scopes is None and (self.groups >= 0).any():
            raise InputError("these sums test scoped concepts: give the block's scopes")
        rows_g, cols_g = [], []
        for scope in self.groups:
            rows = np.arange(n_tokens) if scope < 0 else np.flatnonzero(np.asarray(scopes[:, scope], dtype=bool))
            rows_g.append(rows)
            cols_g.append(_lookup(self.combined, (int(scope + 1) << _SHIFT) + strata[rows],
                                  "tokens lie in strata that the layout did not count: build it from every block"))
        rows, cols = np.concatenate(rows_g), np.concatenate(cols_g)
        onehot = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                               shape=(n_tokens, len(self.combined)))
        lr, lc = labels.nonzero()
        cell_of = _lookup(self.cell_keys, (lc.astype(np.int64) << _SHIFT) + strata[lr],
                          "labelled tokens lie in (concept, stratum) cells that the layout did not count: build it "
                          "from every block")
        member = sp.csr_matrix((np.ones(len(lr), dtype=np.float32), (lr, cell_of)),
                               shape=(n_tokens, len(self.cell_keys)))
        return onehot, member

    def add(self, values: sp.csr_matrix | np.ndarray, start: int | None = None, *, labels: Any = None,
            strata: np.ndarray | None = None, scopes: np.ndarray | None = None) -> None:
        """Count a block of tokens (``values``: their normalised feature activations).

        Sums made by the constructor take the store's rows ``start .. start + len(values)``; sums made by
        :meth:`from_blocks` / :meth:`from_layout` take the block's ``labels``, ``strata`` and ``scopes`` (as given to
        the layout) instead, and need no ``start`` (one given is not used)."""
        import scipy.sparse as sp

        n_tokens = values.shape[0]
        if self.onehot is None or self.member is None:
            if labels is None or strata is None:
                raise InputError("these sums were built from blocks (from_blocks / from_layout): call "
                                 "add(values, labels=..., strata=..., scopes=...) with the block's labels and strata")
            labels = sp.csr_matrix(labels, dtype=np.float32)
            if labels.shape != (n_tokens, len(self.testable)):
                raise InputError(f"a block's labels have shape {labels.shape}, want ({n_tokens}, {len(self.testable)})")
            if scopes is not None and np.shape(scopes)[0] != n_tokens:
                raise InputError(f"a block's scopes cover {np.shape(scopes)[0]} tokens, its values {n_tokens}")
            onehot, member = self._token_rows(labels, _stratum_codes(strata, n_tokens), scopes)
        else:
            if start is None or labels is not None or strata is not None or scopes is not None:
                raise InputError("these sums hold the whole store's labels (the constructor): call add(values, start) "
                                 "with the block's first row; give blocks' labels to from_blocks / from_layout instead")
            stop = start + n_tokens
            onehot, member = self.onehot[start:stop], self.member[start:stop]
        n_feat = values.shape[1]
        dense = None
        if self.dense:
            dense = values if isinstance(values, np.ndarray) else values.toarray()
        else:
            values = sp.csr_matrix(values)
        for t_i in self.levels:
            threshold = self.thresholds[t_i]
            if dense is not None:
                act_d = (dense > threshold).astype(np.float32)
                part = [np.asarray(onehot.T @ act_d, dtype=np.float64).T,  # features x combined strata
                        np.asarray(member.T @ act_d, dtype=np.float64)]  # cells x features: a_k
            else:
                feats = self.features[t_i]
                sub = values if len(feats) > 0.8 * n_feat else values[:, feats]
                act = sp.csr_matrix(sub > threshold, dtype=np.float32)
                if sub is not values:  # back to all feature columns, zero outside ``feats``
                    act = sp.csr_matrix((act.data, feats[act.indices], act.indptr), shape=(n_tokens, n_feat))
                # features x combined strata (a feature fires in few), features x cells (a_k)
                part = [sp.csr_matrix(act.T @ onehot, dtype=np.float64),
                        sp.csr_matrix(act.T @ member, dtype=np.float64)]
            got = self.sums.get(t_i)
            self.sums[t_i] = part if got is None else [got[0] + part[0], got[1] + part[1]]

    def state(self) -> dict[int, list[Any]]:
        """The accumulated sums (to combine the ranks' with :meth:`merge`)."""
        return self.sums

    def merge(self, other: dict[int, list[Any]]) -> None:
        """Add another accumulator's :meth:`state` (another rank's blocks)."""
        for t_i, part in other.items():
            got = self.sums.get(t_i)
            self.sums[t_i] = part if got is None else [got[0] + part[0], got[1] + part[1]]

    def result(self) -> dict[str, np.ndarray]:
        """The test of every wanted pair from the counts so far (see :func:`mantel_haenszel`)."""
        import scipy.sparse as sp
        from scipy.stats import norm

        n_feat, n_con = self.chosen.shape
        n_comb = len(self.n_k)
        n_k, cell_lab, cell_stratum, cell_concept = self.n_k, self.cell_lab, self.cell_stratum, self.cell_concept
        out = {k: np.zeros((n_feat, n_con)) for k in ("observed", "expected", "variance", "r_sum", "s_sum")}
        for t_i in self.levels:
            pick = (self.chosen == t_i) & self.want
            got = self.sums.get(t_i)
            if self.dense:
                n_act, per_cell = ((np.zeros((n_feat, n_comb)), np.zeros((len(cell_lab), n_feat))) if got is None
                                   else got)
                n_act = n_act.astype(np.float32)
                per_cell = per_cell.astype(np.float32)
                cell, f = np.nonzero(per_cell)
                a_k = per_cell[cell, f].astype(np.float64)
                u = n_act * (n_k[None, :].astype(np.float32) - n_act)
                expected = np.asarray(self.e_mat @ n_act.T).T  # features x concepts
                variance = np.asarray(self.v_mat @ u.T).T
                k = cell_stratum[cell]
                m_k = n_act[f, k].astype(np.float64)
            else:
                if got is None:
                    got = [sp.csr_matrix((n_feat, n_comb)), sp.csr_matrix((n_feat, len(cell_lab)))]
                n_act = sp.csr_matrix(got[0], dtype=np.float32)
                n_act.sum_duplicates()
                n_act.sort_indices()
                a = sp.csr_matrix(got[1], dtype=np.float64)
                a.sum_duplicates()
                a.sort_indices()
                a = a.tocoo()
                f, cell, a_k = a.row, a.col, a.data
                k = cell_stratum[cell]
                u = n_act.copy()
                u.data = n_act.data * (n_k[n_act.indices] - n_act.data)
                expected = (self.e_mat @ n_act.T).toarray().T
                variance = (self.v_mat @ u.T).toarray().T
                m_k = np.asarray(n_act[f, k], dtype=np.float64).ravel()
            c = cell_concept[cell]
            l_k, nn = cell_lab[cell], n_k[k]
            r_part = a_k * (nn - m_k - l_k + a_k) / nn
            s_part = (a_k * a_k - a_k * m_k - a_k * l_k) / nn
            shape = (n_feat, n_con)
            for name, arr in (("observed", sp.csr_matrix((a_k, (f, c)), shape=shape).toarray()),
                              ("expected", expected), ("variance", variance),
                              ("r_sum", sp.csr_matrix((r_part, (f, c)), shape=shape).toarray()),
                              ("s_sum", expected + sp.csr_matrix((s_part, (f, c)), shape=shape).toarray())):
                out[name][pick] = arr[pick]
        with np.errstate(divide="ignore", invalid="ignore"):
            r, s = out["r_sum"], np.maximum(out["s_sum"], 0.0)
            odds = np.where(s > 1e-12, r / np.where(s > 1e-12, s, 1.0), np.where(r > 1e-12, np.inf, np.nan))
            var = out["variance"]
            z = np.where(var > 0, (out["observed"] - out["expected"]) / np.sqrt(np.where(var > 0, var, 1.0)), np.nan)
        p = np.full(z.shape, np.nan)
        ok = np.isfinite(z)
        p[ok] = norm.sf(z[ok])
        return {"observed": out["observed"], "expected": out["expected"], "variance": var, "odds_ratio": odds, "z": z,
                "p_value": p, "testable": self.testable}


def strata_share(values: sp.csr_matrix, strata: np.ndarray) -> np.ndarray:
    """Per feature, the share of its activation variance over tokens that the strata explain (the correlation
    ratio eta squared: between-strata sum of squares / total sum of squares; NaN for a feature that never fires).
    Near 1: the feature is a lookup of the stratum (a position-and-residue detector); near 0: it varies within
    strata."""
    import scipy.sparse as sp

    x = sp.csr_matrix(values, dtype=np.float64)
    strata = np.asarray(strata, dtype=np.int64)
    if len(strata) != x.shape[0]:
        raise InputError(f"strata cover {len(strata)} tokens, the features {x.shape[0]}")
    n = x.shape[0]
    codes = np.unique(strata, return_inverse=True)[1]
    n_k = np.bincount(codes).astype(np.float64)
    sums = (x.T @ _onehot(codes, len(n_k)).astype(np.float64)).toarray()  # features x strata
    total = np.asarray(x.sum(0)).ravel()
    sq = np.asarray(x.multiply(x).sum(0)).ravel()
    mean_term = total**2 / max(n, 1)
    between = (sums**2 / n_k[None, :]).sum(1) - mean_term
    within_total = sq - mean_term
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(within_total > 1e-12, np.clip(between / within_total, 0.0, 1.0), np.nan)


def pair_columns(values: sp.csr_matrix, labels: sp.csr_matrix, strata: np.ndarray, thresholds: Sequence[float],
                 chosen: np.ndarray, keep: np.ndarray, plain_q: np.ndarray, *, scopes: np.ndarray | None = None,
                 scope_index: np.ndarray | None = None) -> pd.DataFrame:
    """The stratified columns of :attr:`~workbench.associate.Association.pairs` for the pairs ``keep`` (features x
    concepts, in the same row-major order), from :func:`mantel_haenszel`; ``plain_q`` the plain q-values.

    Columns: ``expected_tp`` (active-and-labelled tokens expected from the strata alone), ``or_mh``, ``z_cmh``,
    ``p_cmh``, ``q_cmh`` (BH over the testable pairs), ``stratified`` (``survives``: ``q_cmh <= STRATIFIED_Q`` and
    ``or_mh >= STRATIFIED_OR``; ``explained``: significant plainly (``q_value <= STRATIFIED_Q``) but not once
    stratified, including a feature constant inside every stratum where the concept varies (``p_cmh`` 1);
    ``not testable``: the concept does not vary inside any stratum of its scope; ``not significant``: neither) and
    ``explained_by_position`` (``stratified == "explained"``)."""
    res = mantel_haenszel(values, labels, strata, thresholds, chosen, scopes=scopes, scope_index=scope_index,
                          wanted=keep)
    return columns_from_test(res, keep, plain_q)


def columns_from_test(res: dict[str, np.ndarray], keep: np.ndarray, plain_q: np.ndarray) -> pd.DataFrame:
    """:func:`pair_columns` from a finished test (:func:`mantel_haenszel` or :meth:`MantelHaenszelSums.result`)."""
    import pandas as pd
    from scipy.stats import false_discovery_control

    # A feature constant inside every stratum where a testable concept varies carries nothing beyond the strata:
    # p = 1 (explained), not "not testable", which is kept for concepts that the strata determine.
    p_all = np.where(np.isnan(res["p_value"]) & res["testable"][None, :], 1.0, res["p_value"])
    p = p_all[keep]
    testable = np.isfinite(p)
    q = np.full(p.shape, np.nan)
    if testable.any():
        q[testable] = false_discovery_control(p[testable], method="bh")
    odds = res["odds_ratio"][keep]
    survives = testable & (q <= STRATIFIED_Q) & (odds >= STRATIFIED_OR)
    plain = plain_q[keep] <= STRATIFIED_Q
    status = np.where(~testable, "not testable", np.where(survives, "survives",
                                                          np.where(plain, "explained", "not significant")))
    return pd.DataFrame({
        "expected_tp": res["expected"][keep], "or_mh": odds, "z_cmh": res["z"][keep], "p_cmh": p, "q_cmh": q,
        "stratified": status.astype(object), "explained_by_position": status == "explained",
    })


def best_columns(pairs: pd.DataFrame, best: pd.DataFrame, *, captured_f1: float = 0.5) -> pd.DataFrame:
    """Per concept of ``best`` (rows in its order): the stratified figures of its best feature and the best surviving
    feature.

    Columns: ``stratified`` (of the best feature's pair; ``not testable`` for a concept constant inside every
    stratum), ``or_mh``, ``q_cmh`` (of that pair), ``beyond_feature`` (the feature with the best validation F1 among
    the concept's pairs that survive the stratification; '' if none), ``beyond_test_f1``, ``beyond_or``,
    ``beyond_q`` and ``captured_beyond`` (``beyond_test_f1 > captured_f1``: captured beyond the strata)."""
    import pandas as pd

    key = pairs.set_index(["concept", "feature"])
    index = pd.MultiIndex.from_arrays([best["concept"].astype(str), best["best_feature"].astype(str)])
    mine = key.reindex(index)
    status = mine["stratified"].fillna("not testable").to_numpy(dtype=object)
    concept_testable = pairs.groupby("concept")["stratified"].agg(lambda s: bool((s != "not testable").any()))
    status = np.where(best["concept"].map(concept_testable).fillna(False).to_numpy(dtype=bool), status, "not testable")
    surv = pairs[pairs["stratified"] == "survives"].sort_values(["concept", "val_f1", "test_f1", "feature"],
                                                                 ascending=[True, False, False, True], kind="stable")
    top = surv.drop_duplicates("concept").set_index("concept").reindex(best["concept"].astype(str))
    beyond_f1 = top["test_f1"].fillna(0.0).to_numpy(dtype=float)
    return pd.DataFrame({
        "stratified": status, "or_mh": mine["or_mh"].to_numpy(dtype=float),
        "q_cmh": mine["q_cmh"].to_numpy(dtype=float),
        "beyond_feature": top["feature"].fillna("").to_numpy(dtype=object),
        "beyond_test_f1": beyond_f1, "beyond_or": top["or_mh"].to_numpy(dtype=float),
        "beyond_q": top["q_cmh"].to_numpy(dtype=float), "captured_beyond": beyond_f1 > captured_f1,
    })
