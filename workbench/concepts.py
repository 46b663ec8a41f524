"""Concept labels aligned to an activation store: what annotation sources produce and association consumes.

A :class:`ConceptLabels` holds, for one store, a sparse boolean ``tokens x concepts`` matrix in the store's token
order (row ``i`` is row ``i`` of ``store.obs()``), an instance id per labelled token (which span of the concept
the token belongs to, for domain-level recall), and a table describing the concepts. Sequence-level concepts
(germline, species, isotype...) are carried as ``sequences x concepts`` in the store's sequence order.

Annotation sources live in the domains; they only need to return this object. The core never imports them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import scipy.sparse as sp

__all__ = ["ConceptLabels", "labels_from_spans", "labels_from_token_values", "labels_from_sequence_values", "concat_labels",
           "scope_labels"]


@dataclass
class ConceptLabels:
    """Per-token and per-sequence concept labels for one store.

    A token (sequence) outside a concept's *scope* is unlabelled for that concept: neither positive nor negative.
    Concepts without a scope (the default) are defined on every token: what is not labelled is negative. Scopes
    let a source say where it could decide at all (the residues compared with an assigned germline; the numbered
    residues of chains ANARCI could number), so that statistics count negatives only where the source looked.
    """

    tokens: sp.csr_matrix
    """``(n_tokens, n_token_concepts)`` boolean: token ``i`` carries concept ``j``."""
    instances: sp.csr_matrix
    """Same shape, int32: 1-based id of the span (instance) of concept ``j`` that token ``i`` belongs to."""
    token_concepts: pd.DataFrame
    """One row per token concept: ``concept``, ``source``, ``n_tokens``, ``n_instances``, ``n_sequences``, and
    ``scope`` (a key of :attr:`scopes`, ``""`` for concepts defined on every token) when any concept is scoped."""
    sequences: sp.csr_matrix
    """``(n_sequences, n_sequence_concepts)`` boolean, in the store's sequence order."""
    sequence_concepts: pd.DataFrame
    """One row per sequence concept: ``concept``, ``source``, ``n_sequences``, and ``scope`` (a key of
    :attr:`sequence_scopes`, ``""`` for all sequences) when any sequence concept is scoped."""
    scopes: dict[str, np.ndarray] = field(default_factory=dict)
    """Named boolean token masks (``n_tokens``): the tokens on which the concepts naming the scope are defined."""
    sequence_scopes: dict[str, np.ndarray] = field(default_factory=dict)
    """Named boolean sequence masks (``n_sequences``), the same for sequence concepts."""
    measures: pd.DataFrame | None = None
    """Optional numeric per-sequence values in the store's sequence order (``shm_count``, ``cdr3_length``...):
    NaN where the source could not measure. Continuous covariates and targets for sequence-level analyses."""

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def __repr__(self) -> str:
        """A few lines: sizes, then per level the concepts of each source by group, scopes and measures."""
        n_seq = int(self.sequences.shape[0])
        lines = [f"ConceptLabels: {self.n_tokens:,} tokens x {len(self.token_concepts):,} token concepts, "
                 f"{n_seq:,} sequences x {len(self.sequence_concepts):,} sequence concepts"]
        for level, table in (("token", self.token_concepts), ("sequence", self.sequence_concepts)):
            if len(table):
                lines.append(_clip(f"  {level}: {_by_source(table)}"))
        extra = []
        if self.scopes or self.sequence_scopes:
            extra.append("scopes " + ", ".join(dict.fromkeys([*self.scopes, *self.sequence_scopes])))
        if self.measures is not None and len(self.measures.columns):
            extra.append("measures " + ", ".join(map(str, self.measures.columns)))
        if extra:
            lines.append(_clip("  " + "; ".join(extra)))
        return "\n".join(lines)

    def token_scope(self, concept: int | str) -> np.ndarray | None:
        """Boolean token mask where token concept ``concept`` (index or name) is defined; None for every token."""
        return self._scope_of(concept, self.token_concepts, self.scopes)

    def sequence_scope(self, concept: int | str) -> np.ndarray | None:
        """Boolean sequence mask where sequence concept ``concept`` is defined; None for every sequence."""
        return self._scope_of(concept, self.sequence_concepts, self.sequence_scopes)

    @staticmethod
    def _scope_of(concept: int | str, table: pd.DataFrame, scopes: dict[str, np.ndarray]) -> np.ndarray | None:
        if "scope" not in table.columns:
            return None
        j = concept if isinstance(concept, (int, np.integer)) else table["concept"].tolist().index(concept)
        name = _scope_name(table["scope"].iloc[int(j)])
        return scopes[name] if name else None

    def scope_matrix(self, level: str = "token") -> tuple[np.ndarray | None, np.ndarray]:
        """``(masks, index)``: masks ``(n_rows, n_scopes)`` boolean (None when nothing is scoped) and, per concept,
        the column of its scope in ``masks`` (-1: defined everywhere). ``level`` is ``"token"`` or ``"sequence"``."""
        table, scopes = ((self.token_concepts, self.scopes) if level == "token"
                         else (self.sequence_concepts, self.sequence_scopes))
        index = np.full(len(table), -1, dtype=np.int64)
        if "scope" not in table.columns:
            return None, index
        names = list(scopes)
        col = {n: k for k, n in enumerate(names)}
        wanted = [_scope_name(s) for s in table["scope"]]
        unknown = sorted({s for s in wanted if s and s not in col})
        if unknown:
            raise InputError(f"{level} concepts name scope(s) {unknown[:3]} that the labels do not define")
        index = np.array([col.get(s, -1) for s in wanted], dtype=np.int64)
        if (index < 0).all():
            return None, index
        return np.stack([np.asarray(scopes[n], dtype=bool) for n in names], axis=1), index

    def group_scope(self, columns: Sequence[int] | np.ndarray, level: str = "token") -> np.ndarray | None:
        """Rows (tokens or sequences) inside the scope of at least one of the concepts ``columns``; None when one of
        them is unscoped (defined on every row), so the group is defined everywhere."""
        masks, index = self.scope_matrix(level)
        k = index[np.asarray(columns, dtype=np.int64)]
        if masks is None or len(k) == 0 or (k < 0).any():
            return None
        return masks[:, np.unique(k)].any(1)

    def group_values(self, group: str, level: str = "token", *, single: bool = False,
                     in_scope: bool = False) -> np.ndarray | None:
        """Per row (token or sequence), the value of concept group ``group`` (``imgt=104`` -> ``"104"``) as an object
        array, None where the row carries no concept of the group; None (not an array) when the labels have no
        such group. A row with two values keeps the first, or None with ``single``; ``in_scope`` also sets None
        outside the group's scope (:meth:`group_scope`)."""
        table, matrix = ((self.token_concepts, self.tokens) if level == "token"
                         else (self.sequence_concepts, self.sequences))
        names = table["concept"].astype(str).tolist()
        cols = np.asarray([j for j, c in enumerate(names) if c.startswith(group + "=")], dtype=np.int64)
        if len(cols) == 0:
            return None
        sub = matrix[:, cols].tocsr()
        count = np.diff(sub.indptr)
        out = np.full(sub.shape[0], None, dtype=object)
        has = count == 1 if single else count > 0
        values = np.asarray([names[j].split("=", 1)[1] for j in cols], dtype=object)
        out[has] = values[sub.indices[sub.indptr[:-1][has]]]
        if in_scope:
            inside = self.group_scope(cols, level)
            if inside is not None:
                out[~inside] = None
        return out

    def select(self, min_tokens: int = 1, min_sequences: int = 1) -> ConceptLabels:
        """Keep concepts with at least ``min_tokens`` labelled tokens (token concepts) / ``min_sequences`` sequences."""
        keep_t = np.flatnonzero(self.token_concepts["n_tokens"].to_numpy() >= min_tokens)
        keep_s = np.flatnonzero(self.sequence_concepts["n_sequences"].to_numpy() >= min_sequences)
        return self.subset(keep_t, keep_s)

    def subset(self, token_columns: Sequence[int] | np.ndarray | None = None,
               sequence_columns: Sequence[int] | np.ndarray | None = None) -> ConceptLabels:
        """These labels with only the given token / sequence concept columns (None keeps all); scopes and measures
        are kept."""
        kt = np.arange(self.tokens.shape[1]) if token_columns is None else np.asarray(token_columns, dtype=np.int64)
        ks = np.arange(self.sequences.shape[1]) if sequence_columns is None else np.asarray(sequence_columns, dtype=np.int64)
        return ConceptLabels(
            self.tokens[:, kt], self.instances[:, kt], self.token_concepts.iloc[kt].reset_index(drop=True),
            self.sequences[:, ks], self.sequence_concepts.iloc[ks].reset_index(drop=True),
            dict(self.scopes), dict(self.sequence_scopes), self.measures,
        )


def _clip(text: str, n: int = 150) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _by_source(table: pd.DataFrame) -> str:
    """``"anarci 140 (imgt 128, region 7, ...); user 5 (label 2, ...)"``: concepts per source and group (the text
    before ``=``; concepts without one are counted as ``other``)."""
    sources = table["source"].astype(str).tolist() if "source" in table.columns else [""] * len(table)
    counts: dict[str, dict[str, int]] = {}
    for name, source in zip(table["concept"].astype(str), sources):
        groups = counts.setdefault(source, {})
        g = name.split("=", 1)[0] if "=" in name else "other"
        groups[g] = groups.get(g, 0) + 1
    parts = [f"{source or '(no source)'} {sum(groups.values())} (" + ", ".join(f"{g} {k}" for g, k in groups.items())
             + ")" for source, groups in counts.items()]
    return "; ".join(parts)


def _scope_name(value: Any) -> str:
    """The scope a concept-table cell names: '' (every row) for '', None or NaN."""
    return value if isinstance(value, str) else ""


def scope_labels(labels: ConceptLabels, *, tokens: Any = None, sequences: Any = None, name: str,
                 token_concepts: Sequence[str] | None = None, sequence_concepts: Sequence[str] | None = None) -> ConceptLabels:
    """Give ``labels`` a scope ``name``: ``tokens`` / ``sequences`` are boolean masks (store order) of where its
    concepts are defined; they apply to the named concepts, or to all of that level when none are named. Labels
    outside the mask are an error (a labelled token is always in scope)."""
    for level, mask, names, table, matrix, store in (
        ("token", tokens, token_concepts, labels.token_concepts, labels.tokens, labels.scopes),
        ("sequence", sequences, sequence_concepts, labels.sequence_concepts, labels.sequences, labels.sequence_scopes),
    ):
        if mask is None:
            continue
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (matrix.shape[0],):
            raise InputError(f"{level} scope {name!r} has {mask.shape} entries for {matrix.shape[0]} {level}s")
        cols = (np.arange(len(table)) if names is None
                else np.flatnonzero(table["concept"].isin(list(names)).to_numpy()))
        outside = matrix[:, cols][~mask].nnz if len(cols) else 0
        if outside:
            raise InputError(f"{outside} labels of scope {name!r} lie outside it")
        store[name] = mask
        if "scope" not in table.columns:
            table["scope"] = ""
        scope = table["scope"].to_numpy(dtype=object)
        scope[cols] = name
        table["scope"] = scope
    return labels


def _token_index(obs: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """sequence_id -> (first token row, length), from the store's token order."""
    ids = obs["sequence_id"].to_numpy()
    change = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[change[1:], len(ids)]
    index = {}
    for s, e in zip(change, ends):
        if ids[s] in index:
            raise InputError(f"store tokens of sequence {ids[s]!r} are not contiguous")
        index[str(ids[s])] = (int(s), int(e - s))
    return index


def labels_from_spans(obs: pd.DataFrame, spans: pd.DataFrame, *, sequence_ids: Sequence[str] | None = None,
                      sequence_values: pd.DataFrame | None = None, source: str = "") -> ConceptLabels:
    """Build labels from residue spans (``sequence_id, start, end, concept``; positions 1-based inclusive).

    Every span becomes one instance of its concept. Ids missing from the store and positions outside a sequence
    are errors naming the span. ``sequence_values`` (``sequence_id`` plus one column per attribute) adds
    sequence-level concepts ``"<column>=<value>"``; ``sequence_ids`` gives the store's sequence order for them.
    """
    import pandas as pd
    import scipy.sparse as sp

    index = _token_index(obs)
    n_tokens = len(obs)
    sids = spans["sequence_id"].astype(str).to_numpy()
    concept_col = spans["concept"].astype(str)
    names = sorted(concept_col.unique()) if len(spans) else []
    col_of = {c: j for j, c in enumerate(names)}
    unknown = [sid for sid in pd.unique(sids) if sid not in index]
    if unknown:
        bad = spans[spans["sequence_id"].astype(str) == unknown[0]].iloc[0]
        raise InputError(f"annotation for sequence {unknown[0]!r} ({bad['concept']}), which is not in the store")
    first = np.array([index[sid][0] for sid in sids], dtype=np.int64)
    length = np.array([index[sid][1] for sid in sids], dtype=np.int64)
    start = spans["start"].to_numpy(dtype=np.int64) if len(spans) else np.zeros(0, dtype=np.int64)
    end = spans["end"].to_numpy(dtype=np.int64) if len(spans) else np.zeros(0, dtype=np.int64)
    bad = np.flatnonzero((start < 1) | (end < start) | (end > length))
    if len(bad):
        b = int(bad[0])
        raise InputError(f"annotation {concept_col.iloc[b]} at {start[b]}-{end[b]} is outside sequence {sids[b]!r} (length {length[b]})")
    span_col = concept_col.map(col_of).to_numpy(dtype=np.int64) if len(spans) else np.zeros(0, dtype=np.int64)
    # Instance ids: the k-th span of a concept (in file order) is instance k.
    instance = spans.groupby(concept_col, sort=False).cumcount().to_numpy() + 1 if len(spans) else np.zeros(0, dtype=np.int64)
    counters = np.bincount(span_col, minlength=len(names)).astype(np.int64)
    n_seq = np.bincount(pd.DataFrame({"s": sids, "c": span_col}).drop_duplicates()["c"].to_numpy(), minlength=len(names)).astype(np.int64)
    sizes = end - start + 1
    offsets = np.repeat(np.cumsum(sizes) - sizes, sizes)
    r = np.repeat(first + start - 1, sizes) + (np.arange(int(sizes.sum())) - offsets)
    c = np.repeat(span_col, sizes)
    i = np.repeat(instance, sizes)
    shape = (n_tokens, len(names))
    # Overlapping spans of one concept: keep one entry per (token, concept), the first instance.
    key = r * max(1, len(names)) + c
    _, first_idx = np.unique(key, return_index=True)
    r, c, i = r[first_idx], c[first_idx], i[first_idx]
    tokens = sp.csr_matrix((np.ones(len(r), dtype=bool), (r, c)), shape=shape)
    instances = sp.csr_matrix((i.astype(np.int32), (r, c)), shape=shape)
    token_concepts = pd.DataFrame({
        "concept": names, "source": source, "n_tokens": np.asarray(tokens.sum(0)).ravel().astype(int),
        "n_instances": counters, "n_sequences": n_seq,
    })
    seq_matrix, seq_concepts = labels_from_sequence_values(
        sequence_ids if sequence_ids is not None else list(index), sequence_values, source=source
    )
    return ConceptLabels(tokens, instances, token_concepts, seq_matrix, seq_concepts)


def labels_from_token_values(obs: pd.DataFrame, values: pd.DataFrame, *, sequence_ids: Sequence[str] | None = None,
                             sequence_values: pd.DataFrame | None = None, source: str = "") -> ConceptLabels:
    """One-hot ``"<column>=<value>"`` token concepts from per-token categorical columns (rows in store order).

    Where spans suit sequences, images label every position with a value (a region of the frame, a tertile of
    local brightness): ``values`` has one row per row of ``obs`` and one column per concept group; missing values
    leave the token unlabelled. The tokens of one sequence (image) carrying a concept form one instance of it.
    ``sequence_values`` adds sequence-level concepts as in :func:`labels_from_spans`.
    """
    import pandas as pd
    import scipy.sparse as sp

    if len(values) != len(obs):
        raise InputError(f"token values have {len(values)} rows for {len(obs)} tokens")
    index = _token_index(obs)
    seq_codes = pd.factorize(obs["sequence_id"].astype(str).to_numpy(), sort=False)[0]
    rows_all, cols_all, inst_all, names, n_inst, n_seq = [], [], [], [], [], []
    for column in values.columns:
        col = values[column].reset_index(drop=True)
        present = col.notna().to_numpy()
        if not present.any():
            continue
        codes, uniques = pd.factorize(col[present].astype(str), sort=True)
        rows = np.flatnonzero(present)
        for v, value in enumerate(uniques):
            r = rows[codes == v]
            # instance = the concept's k-th sequence (in store order) holding it
            seq_of = seq_codes[r]
            first_seen, inst = np.unique(seq_of, return_inverse=True)
            names.append(f"{column}={value}")
            rows_all.append(r)
            cols_all.append(np.full(len(r), len(names) - 1))
            inst_all.append(inst.astype(np.int32) + 1)
            n_inst.append(len(first_seen))
            n_seq.append(len(first_seen))
    shape = (len(obs), len(names))
    r = np.concatenate(rows_all) if rows_all else np.zeros(0, dtype=np.int64)
    c = np.concatenate(cols_all) if cols_all else np.zeros(0, dtype=np.int64)
    i = np.concatenate(inst_all) if inst_all else np.zeros(0, dtype=np.int32)
    tokens = sp.csr_matrix((np.ones(len(r), dtype=bool), (r, c)), shape=shape)
    instances = sp.csr_matrix((i, (r, c)), shape=shape)
    token_concepts = pd.DataFrame({
        "concept": names, "source": source, "n_tokens": np.asarray(tokens.sum(0)).ravel().astype(int),
        "n_instances": np.asarray(n_inst, dtype=np.int64), "n_sequences": np.asarray(n_seq, dtype=np.int64),
    })
    seq_matrix, seq_concepts = labels_from_sequence_values(
        sequence_ids if sequence_ids is not None else list(index), sequence_values, source=source
    )
    return ConceptLabels(tokens, instances, token_concepts, seq_matrix, seq_concepts)


def labels_from_sequence_values(sequence_ids: Sequence[str], values: pd.DataFrame | None, *, source: str = "") -> tuple[Any, pd.DataFrame]:
    """One-hot ``"<column>=<value>"`` sequence concepts in the order of ``sequence_ids`` (missing values: no label)."""
    import pandas as pd
    import scipy.sparse as sp

    empty = pd.DataFrame({"concept": pd.Series(dtype=str), "source": pd.Series(dtype=str), "n_sequences": pd.Series(dtype=int)})
    if values is None or values.empty:
        return sp.csr_matrix((len(sequence_ids), 0), dtype=bool), empty
    position = {sid: k for k, sid in enumerate(sequence_ids)}
    unknown = [s for s in values["sequence_id"].astype(str) if s not in position]
    if unknown:
        raise InputError(f"sequence labels for ids not in the store: {unknown[:3]}")
    rows, names = [], []
    cols = []
    for column in [c for c in values.columns if c != "sequence_id"]:
        for value, group in values.groupby(column, sort=True):
            if value is None or (isinstance(value, float) and np.isnan(value)):
                continue
            names.append(f"{column}={value}")
            idx = [position[s] for s in group["sequence_id"].astype(str)]
            rows.extend(idx)
            cols.extend([len(names) - 1] * len(idx))
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=bool), (rows, cols)), shape=(len(sequence_ids), len(names)))
    table = pd.DataFrame({"concept": names, "source": source, "n_sequences": np.asarray(matrix.sum(0)).ravel().astype(int)})
    return matrix, table


def concat_labels(parts: Iterable[ConceptLabels]) -> ConceptLabels:
    """Side-by-side union of label sets for the same store (concept names must not collide; scopes of one name must
    be the same mask; measures are joined by column)."""
    import pandas as pd
    import scipy.sparse as sp

    parts = list(parts)
    if not parts:
        raise InputError("no concept labels to combine")
    if len({p.n_tokens for p in parts}) != 1:
        raise InputError("concept labels come from stores of different sizes")
    scoped_t = any("scope" in p.token_concepts.columns for p in parts)
    scoped_s = any("scope" in p.sequence_concepts.columns for p in parts)

    def with_scope(table: pd.DataFrame, scoped: bool) -> pd.DataFrame:
        return table.assign(scope="") if scoped and "scope" not in table.columns else table

    token_concepts = pd.concat([with_scope(p.token_concepts, scoped_t) for p in parts], ignore_index=True)
    sequence_concepts = pd.concat([with_scope(p.sequence_concepts, scoped_s) for p in parts], ignore_index=True)
    for table in (token_concepts, sequence_concepts):
        dup = table["concept"][table["concept"].duplicated()].tolist()
        if dup:
            raise InputError(f"concept names appear in two sources: {dup[:3]}")
    scopes: dict[str, np.ndarray] = {}
    sequence_scopes: dict[str, np.ndarray] = {}
    for p in parts:
        for merged, own in ((scopes, p.scopes), (sequence_scopes, p.sequence_scopes)):
            for name, mask in own.items():
                if name in merged and not np.array_equal(merged[name], mask):
                    raise InputError(f"two sources define scope {name!r} differently")
                merged[name] = mask
    frames = [p.measures for p in parts if p.measures is not None]
    measures = None
    if frames:
        dup = pd.Index([c for f in frames for c in f.columns])
        if dup.duplicated().any():
            raise InputError(f"measures appear in two sources: {dup[dup.duplicated()].tolist()[:3]}")
        measures = pd.concat([f.reset_index(drop=True) for f in frames], axis=1)
    return ConceptLabels(
        sp.hstack([p.tokens for p in parts], format="csr"), sp.hstack([p.instances for p in parts], format="csr"),
        token_concepts, sp.hstack([p.sequences for p in parts], format="csr"), sequence_concepts,
        scopes, sequence_scopes, measures,
    )
