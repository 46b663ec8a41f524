"""Concept labels built and held shard by shard, for stores whose token labels should not be one matrix in memory.

:func:`build_label_shards` runs a labelling function (a domain's annotation sources) on each shard of a store seen
as a store of its own (:meth:`~workbench.store.ActivationStore.shard_view`), on one process or split across
``torchrun`` ranks, and keeps each shard's labels on disk; a killed run resumes from the shards already labelled.
Then the shards' concepts are merged into one vocabulary (per source and concept group; sorted when every shard lists
a group sorted, as the sources do, else in order of first appearance), their counts summed, instance ids made
unique across shards (a span lies inside one record and so inside one shard), and each shard's labels rewritten in
that vocabulary. :class:`LabelShards` reads the result: the concept tables and the sequence-level labels (one row
per sequence, small) whole, the token labels one shard (or any token range) at a time.

Folder layout::

    labels.json                    key, tokens per shard, token and sequence scope names, source counters
    token_concepts.parquet         one row per token concept (summed counts)
    sequence_concepts.parquet
    sequences.npz                  sequences x sequence concepts (store sequence order)
    sequence_scopes.npz, measures.parquet (when any)
    shards/shard-00000.npz         the shard's token labels, instance ids and scope masks, in the merged vocabulary

A source that keeps only concepts seen often enough (the UniProt source's ``min_count``) decides that per shard here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from workbench._dist import Dist
from workbench.errors import InputError, WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import scipy.sparse as sp

    from workbench.concepts import ConceptLabels
    from workbench.store import ActivationStore

__all__ = ["LabelShards", "TokenBlock", "build_label_shards", "token_block", "token_scope_index"]

FORMAT = 1
META = "labels.json"


class TokenBlock(NamedTuple):
    """The token labels of a range of tokens."""

    tokens: sp.csr_matrix
    """``(n, n_token_concepts)`` boolean."""
    instances: sp.csr_matrix
    """Same shape, int32 instance ids (unique per concept across the store)."""
    scopes: np.ndarray | None
    """``(n, n_scopes)`` boolean scope masks (columns as :func:`token_scope_index` names them), None when no concept
    is scoped."""


def token_scope_index(labels: ConceptLabels | LabelShards) -> tuple[list[str], np.ndarray]:
    """The token scopes' names (the columns of :attr:`TokenBlock.scopes`; empty when nothing is scoped) and, per
    token concept, the column of its scope (-1: defined on every token)."""
    if isinstance(labels, LabelShards):
        return list(labels.scope_names), labels.scope_index.copy()
    masks, index = labels.scope_matrix("token")
    return ([] if masks is None else list(labels.scopes)), index


def token_block(labels: ConceptLabels | LabelShards, lo: int, hi: int) -> TokenBlock:
    """Tokens ``lo .. hi`` of ``labels`` (whole-store :class:`~workbench.concepts.ConceptLabels` or
    :class:`LabelShards`)."""
    if isinstance(labels, LabelShards):
        return labels.block(lo, hi)
    masks, _ = labels.scope_matrix("token")
    return TokenBlock(labels.tokens[lo:hi].tocsr(), labels.instances[lo:hi].tocsr(), None if masks is None else masks[lo:hi])


class LabelShards:
    """Concept labels of a store kept per shard on disk (module docstring). The concept tables, the sequence-level
    labels, their scopes and measures are attributes, as on :class:`~workbench.concepts.ConceptLabels`; token labels
    come from :meth:`shard`, :meth:`block` and :meth:`take`."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        import pandas as pd
        import scipy.sparse as sp

        self.folder = Path(folder)
        try:
            self.meta: dict[str, Any] = json.loads((self.folder / META).read_text())
        except (OSError, ValueError) as exc:
            raise WorkbenchError(f"{self.folder}: not a folder of label shards ({exc})") from exc
        if self.meta.get("format") != FORMAT:
            raise WorkbenchError(f"{self.folder}: label shards format {self.meta.get('format')} is not {FORMAT}")
        self.token_concepts: pd.DataFrame = pd.read_parquet(self.folder / "token_concepts.parquet")
        self.token_concepts.attrs = dict(self.meta.get("attrs") or {})
        self.sequence_concepts: pd.DataFrame = pd.read_parquet(self.folder / "sequence_concepts.parquet")
        self.sequences: sp.csr_matrix = sp.load_npz(self.folder / "sequences.npz").tocsr()
        self.sequence_scopes: dict[str, np.ndarray] = {}
        if (self.folder / "sequence_scopes.npz").is_file():
            with np.load(self.folder / "sequence_scopes.npz") as z:
                self.sequence_scopes = {name: z[name] for name in self.meta["sequence_scopes"]}
        self.measures = pd.read_parquet(self.folder / "measures.parquet") if (self.folder / "measures.parquet").is_file() else None
        self._stored_scopes: list[str] = list(self.meta["token_scopes"])
        col = {n: k for k, n in enumerate(self._stored_scopes)}
        scope = self.token_concepts["scope"].astype(str) if "scope" in self.token_concepts.columns else None
        self.scope_index = np.asarray([col[s] if s else -1 for s in scope] if scope is not None
                                      else [-1] * len(self.token_concepts), dtype=np.int64)
        self.scope_names: list[str] = self._stored_scopes if (self.scope_index >= 0).any() else []
        """The token scopes (the columns of :attr:`TokenBlock.scopes`); empty when no concept is scoped."""
        self.starts = np.concatenate([[0], np.cumsum(self.meta["shard_tokens"])]).astype(np.int64)
        self._cache: OrderedDict[int, TokenBlock] = OrderedDict()

    def __repr__(self) -> str:
        return (f"LabelShards({str(self.folder)!r}, n_shards={self.n_shards}, n_tokens={self.n_tokens}, "
                f"token_concepts={len(self.token_concepts)}, sequence_concepts={len(self.sequence_concepts)})")

    @property
    def n_tokens(self) -> int:
        return int(self.starts[-1])

    @property
    def n_shards(self) -> int:
        return len(self.starts) - 1

    @property
    def key(self) -> str:
        """What the labels were built from (given to :func:`build_label_shards`)."""
        return str(self.meta["key"])

    def sha256(self) -> str:
        """A key of the labels' content: every file's bytes (each shard once)."""
        from workbench.store import file_sha256

        h = hashlib.sha256()
        for path in sorted(p for p in self.folder.rglob("*") if p.is_file()):
            h.update(str(path.relative_to(self.folder)).encode() + file_sha256(path).encode())
        return h.hexdigest()

    def __getattr__(self, name: str) -> Any:
        if name in ("tokens", "instances", "scopes"):
            raise WorkbenchError(f"token labels are held per shard ({name}): use LabelShards.shard(i) or .block(lo, hi)")
        raise AttributeError(name)

    # -- token labels ---------------------------------------------------------------------------------------------
    def _shard_block(self, i: int) -> TokenBlock:
        import scipy.sparse as sp

        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        n, n_con = int(self.starts[i + 1] - self.starts[i]), len(self.token_concepts)
        with np.load(self.folder / "shards" / f"shard-{i:05d}.npz") as z:
            indptr, indices, ids = z["indptr"], z["indices"], z["instances"]
            scopes = (np.unpackbits(z["scopes"], axis=1, count=len(self._stored_scopes)).astype(bool)
                      if self.scope_names else None)
        tokens = sp.csr_matrix((np.ones(len(indices), dtype=bool), indices, indptr), shape=(n, n_con))
        instances = sp.csr_matrix((ids, indices, indptr), shape=(n, n_con))
        block = TokenBlock(tokens, instances, scopes)
        self._cache[i] = block
        while len(self._cache) > 2:  # a window of two shards: a range crosses at most one boundary at a time
            self._cache.popitem(last=False)
        return block

    def block(self, lo: int, hi: int) -> TokenBlock:
        """The token labels of tokens ``lo .. hi`` (store order; may span shards)."""
        import scipy.sparse as sp

        if not 0 <= lo <= hi <= self.n_tokens:
            raise WorkbenchError(f"tokens {lo}..{hi} are outside the labels' {self.n_tokens}")
        first = max(int(np.searchsorted(self.starts, lo, side="right")) - 1, 0)
        parts = []
        k = first
        while k < self.n_shards and (self.starts[k] < hi or not parts):
            a, b = int(self.starts[k]), int(self.starts[k + 1])
            got = self._shard_block(k)
            s = slice(max(lo, a) - a, min(hi, b) - a) if hi > a else slice(0, 0)
            parts.append(TokenBlock(got.tokens[s], got.instances[s], None if got.scopes is None else got.scopes[s]))
            k += 1
        if len(parts) == 1:
            return parts[0]
        return TokenBlock(sp.vstack([p.tokens for p in parts], format="csr"),
                          sp.vstack([p.instances for p in parts], format="csr"),
                          None if parts[0].scopes is None else np.concatenate([p.scopes for p in parts]))

    def shard_sequences(self, i: int) -> np.ndarray:
        """The store sequence rows of shard ``i``'s records."""
        got = self.meta["shard_sequences"][i]
        return np.arange(got["start"], got["start"] + got["count"]) if "start" in got else np.asarray(got["rows"], dtype=np.int64)

    def shard(self, i: int) -> ConceptLabels:
        """Shard ``i``'s labels as a :class:`~workbench.concepts.ConceptLabels` in the merged vocabulary: its tokens
        and its records' sequence labels, as labels of :meth:`~workbench.store.ActivationStore.shard_view`. The
        concept tables keep the whole store's counts."""
        from workbench.concepts import ConceptLabels

        block = self._shard_block(i)
        rows = self.shard_sequences(i)
        return ConceptLabels(
            block.tokens, block.instances, self.token_concepts, self.sequences[rows], self.sequence_concepts,
            {} if block.scopes is None else {n: block.scopes[:, k] for k, n in enumerate(self.scope_names)},
            {n: m[rows] for n, m in self.sequence_scopes.items()},
            None if self.measures is None else self.measures.iloc[rows].reset_index(drop=True))

    def take(self, tokens: np.ndarray) -> ConceptLabels:
        """The labels of token rows ``tokens`` (sorted store rows) with every sequence's labels, as a whole-store
        :class:`~workbench.concepts.ConceptLabels` of those tokens (for :func:`workbench._subset.labels_of_tokens`)."""
        import scipy.sparse as sp

        from workbench.concepts import ConceptLabels

        tokens = np.asarray(tokens, dtype=np.int64)
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= self.n_tokens):
            raise WorkbenchError(f"token rows outside the labels' {self.n_tokens}")
        parts = []
        shard_of = np.searchsorted(self.starts, tokens, side="right") - 1
        order = np.argsort(shard_of, kind="stable")  # read shard by shard, then back to the order asked for
        for k in np.unique(shard_of):
            got = self._shard_block(int(k))
            local = tokens[order][shard_of[order] == k] - self.starts[k]
            parts.append(TokenBlock(got.tokens[local], got.instances[local], None if got.scopes is None else got.scopes[local]))
        back = np.argsort(order, kind="stable")
        n_con = len(self.token_concepts)
        tok = sp.vstack([p.tokens for p in parts], format="csr")[back] if parts else sp.csr_matrix((0, n_con), dtype=bool)
        inst = (sp.vstack([p.instances for p in parts], format="csr")[back] if parts
                else sp.csr_matrix((0, n_con), dtype=np.int32))
        scopes = {}
        if self.scope_names:
            masks = (np.concatenate([p.scopes for p in parts])[back] if parts
                     else np.zeros((0, len(self.scope_names)), dtype=bool))
            scopes = {n: masks[:, k] for k, n in enumerate(self.scope_names)}
        return ConceptLabels(tok, inst, self.token_concepts, self.sequences, self.sequence_concepts, scopes,
                             dict(self.sequence_scopes), self.measures)

    # -- what needs no token labels --------------------------------------------------------------------------------
    def _sequence_view(self) -> ConceptLabels:
        import scipy.sparse as sp

        from workbench.concepts import ConceptLabels

        n_con = len(self.token_concepts)
        return ConceptLabels(sp.csr_matrix((0, n_con), dtype=bool), sp.csr_matrix((0, n_con), dtype=np.int32),
                             self.token_concepts, self.sequences, self.sequence_concepts, {}, self.sequence_scopes,
                             self.measures)

    def scope_matrix(self, level: str = "token") -> tuple[np.ndarray | None, np.ndarray]:
        if level == "token":
            raise WorkbenchError("token scopes are held per shard: use LabelShards.block(lo, hi).scopes")
        return self._sequence_view().scope_matrix("sequence")

    def sequence_scope(self, concept: int | str) -> np.ndarray | None:
        return self._sequence_view().sequence_scope(concept)

    def group_values(self, group: str, level: str = "token", **options: Any) -> np.ndarray | None:
        """As :meth:`ConceptLabels.group_values <workbench.concepts.ConceptLabels.group_values>` for sequence
        groups; token groups are read per shard (:meth:`shard`)."""
        if level == "token":
            raise WorkbenchError("token labels are held per shard: use LabelShards.shard(i).group_values(...)")
        return self._sequence_view().group_values(group, level, **options)

    def group_scope(self, columns: Sequence[int] | np.ndarray, level: str = "token") -> np.ndarray | None:
        if level == "token":
            raise WorkbenchError("token scopes are held per shard: use LabelShards.shard(i).group_scope(...)")
        return self._sequence_view().group_scope(columns, level)


# -- building ---------------------------------------------------------------------------------------------------------
def build_label_shards(store: ActivationStore, label_fn: Callable[[ActivationStore], ConceptLabels],
                       folder: str | os.PathLike[str], *, key: str = "", dist: Dist | None = None,
                       progress: Callable[[str], None] | None = None) -> LabelShards:
    """Label ``store`` shard by shard with ``label_fn`` (called on :meth:`~workbench.store.ActivationStore.shard_view`
    of each shard; it returns that shard's :class:`~workbench.concepts.ConceptLabels`) and merge the shards into
    ``folder`` (module docstring). ``key`` names what the labels are built from (the sources and their options): a
    folder built with another key, or for another store, is started afresh; one with the same key is reused, and
    the shards already labelled are kept when a run was killed. Under ``torchrun`` rank ``r`` labels shards ``r, r +
    N, ...`` and rank 0 merges; every rank returns the same labels."""
    dist = dist or Dist.setup("cpu", keep=True)
    folder = Path(folder)
    full_key = f"{store.manifest_sha256()}:{key}"
    raw = folder / "raw"
    if dist.rank == 0:
        done = _read_meta(folder)
        if done is not None and done.get("key") != full_key:
            shutil.rmtree(folder)
        raw_key = raw / "key.txt"
        if raw.is_dir() and (not raw_key.is_file() or raw_key.read_text() != full_key):
            shutil.rmtree(raw)
        if _read_meta(folder) is None:
            raw.mkdir(parents=True, exist_ok=True)
            raw_key.write_text(full_key)
    dist.barrier()
    if _read_meta(folder) is None:
        status, error = 0, None
        try:
            for i in range(dist.rank, len(store.shards), dist.world_size):
                target = raw / f"shard-{i:05d}"
                if target.is_dir():
                    continue
                labels = label_fn(store.shard_view(i))
                if labels.n_tokens != store.shards[i].n_tokens:
                    raise WorkbenchError(f"labels of shard {i} cover {labels.n_tokens} tokens, the shard "
                                         f"{store.shards[i].n_tokens}")
                tmp = raw / f".shard-{i:05d}.tmp-{os.getpid()}"
                _save_raw(labels, tmp)
                os.replace(tmp, target)
                if progress is not None:
                    progress(f"labels: shard {i + 1} of {len(store.shards)}")
        except Exception as exc:  # noqa: BLE001 - every rank must reach the status check below
            status, error = 1, exc
        _raise_any(dist, status, error, "labelling its shards")
        status = 0
        if dist.rank == 0:
            try:
                _merge(store, raw, folder, full_key)
            except Exception as exc:  # noqa: BLE001
                status, error = 1, exc
        _raise_any(dist, status, error, "merging the label shards")
    return LabelShards(folder)


def _raise_any(dist: Dist, status: int, error: BaseException | None, what: str) -> None:
    """Raise on every rank when one failed: its own error, or a note that another rank failed."""
    if dist.worst(status):
        if error is not None:
            raise error
        raise WorkbenchError(f"another rank failed while {what}")


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return None


def _save_raw(labels: ConceptLabels, folder: Path) -> None:
    """One shard's labels as written by its source, in their own vocabulary."""
    import scipy.sparse as sp

    folder.mkdir(parents=True)
    sp.save_npz(folder / "tokens.npz", sp.csr_matrix(labels.tokens, dtype=bool), compressed=False)
    sp.save_npz(folder / "instances.npz", sp.csr_matrix(labels.instances, dtype=np.int32), compressed=False)
    sp.save_npz(folder / "sequences.npz", sp.csr_matrix(labels.sequences, dtype=bool), compressed=False)
    labels.token_concepts.to_parquet(folder / "token_concepts.parquet")
    labels.sequence_concepts.to_parquet(folder / "sequence_concepts.parquet")
    np.savez(folder / "scopes.npz", **{f"s{k}": np.asarray(m, dtype=bool) for k, m in enumerate(labels.scopes.values())})
    np.savez(folder / "sequence_scopes.npz",
             **{f"s{k}": np.asarray(m, dtype=bool) for k, m in enumerate(labels.sequence_scopes.values())})
    if labels.measures is not None:
        labels.measures.reset_index(drop=True).to_parquet(folder / "measures.parquet")
    (folder / "meta.json").write_text(json.dumps({
        "scopes": list(labels.scopes), "sequence_scopes": list(labels.sequence_scopes),
        "attrs": _jsonable(labels.token_concepts.attrs)}))


def _jsonable(attrs: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(attrs, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def _vocabulary(tables: list[pd.DataFrame], what: str) -> pd.DataFrame:
    """The merged concept table: per source and concept group (``group=value``; in order of first appearance) the
    union of the shards' concepts, sorted when every shard lists that group sorted (as the sources do), else in order
    of first appearance; count columns (``n_*``) summed, the rest from the first shard that has the concept
    (``source`` and ``scope`` must agree)."""
    import pandas as pd

    order: dict[tuple[str, str], list[str]] = {}
    is_sorted: dict[tuple[str, str], bool] = {}
    first: dict[str, dict[str, Any]] = {}
    counts: dict[str, dict[str, int]] = {}
    columns: list[str] = []
    for table in tables:
        columns += [c for c in table.columns if c not in columns]
        names = table["concept"].astype(str).tolist()
        sources = table["source"].astype(str).tolist() if "source" in table.columns else [""] * len(names)
        keys = [(src, name.split("=", 1)[0]) for src, name in zip(sources, names)]
        for key in dict.fromkeys(keys):
            own = [n for n, k in zip(names, keys) if k == key]
            is_sorted[key] = is_sorted.get(key, True) and own == sorted(own)
        for row, name, key in zip(table.to_dict("records"), names, keys):
            if name not in first:
                order.setdefault(key, []).append(name)
                first[name] = row
                counts[name] = {c: 0 for c in row if c.startswith("n_")}
            else:
                for c in ("source", "scope"):
                    if str(first[name].get(c, "")) != str(row.get(c, "")):
                        raise InputError(f"{what} {name!r} has {c} {first[name].get(c)!r} in one shard and "
                                         f"{row.get(c)!r} in another")
            for c in counts[name]:
                counts[name][c] += int(row.get(c, 0) or 0)
    names = [n for key, own in order.items() for n in (sorted(own) if is_sorted[key] else own)]
    rows = [{**first[n], **counts[n]} for n in names]
    out = pd.DataFrame(rows, columns=columns) if rows else pd.DataFrame(columns=columns or ["concept", "source"])
    if "scope" in out.columns:
        out["scope"] = out["scope"].fillna("").astype(str)
    return out


def _merge_attrs(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Source counters of the shards: numbers summed, lists joined, anything else from the first shard."""
    out: dict[str, Any] = {}
    for attrs in parts:
        for k, v in attrs.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(out.get(k, 0), (int, float)):
                out[k] = out.get(k, 0) + v
            elif isinstance(v, list) and isinstance(out.get(k, []), list):
                out[k] = out.get(k, []) + v
            elif isinstance(v, dict) and isinstance(out.get(k, {}), dict):
                out[k] = _merge_attrs([out.get(k, {}), v])
            else:
                out.setdefault(k, v)
    return out


def _merge(store: ActivationStore, raw: Path, folder: Path, key: str) -> None:
    """Rewrite the raw shards in one vocabulary (module docstring); one shard in memory at a time."""
    import pandas as pd
    import scipy.sparse as sp

    n = len(store.shards)
    shard_dirs = [raw / f"shard-{i:05d}" for i in range(n)]
    metas = [json.loads((d / "meta.json").read_text()) for d in shard_dirs]
    tok_tables = [pd.read_parquet(d / "token_concepts.parquet") for d in shard_dirs]
    seq_tables = [pd.read_parquet(d / "sequence_concepts.parquet") for d in shard_dirs]
    token_concepts = _vocabulary(tok_tables, "token concept")
    sequence_concepts = _vocabulary(seq_tables, "sequence concept")
    t_col = {c: j for j, c in enumerate(token_concepts["concept"].astype(str))}
    s_col = {c: j for j, c in enumerate(sequence_concepts["concept"].astype(str))}
    token_scopes = list(dict.fromkeys(s for m in metas for s in m["scopes"]))
    seq_scope_names = list(dict.fromkeys(s for m in metas for s in m["sequence_scopes"]))
    seq_shard = store.sequences["shard"].to_numpy()
    n_seq = len(seq_shard)
    work = folder / f".merge-{os.getpid()}"
    if work.exists():
        shutil.rmtree(work)
    (work / "shards").mkdir(parents=True)
    offset = np.zeros(len(token_concepts), dtype=np.int64)  # instance ids of the earlier shards, per concept
    seq_parts, measure_parts = [], []
    seq_scopes = {name: np.zeros(n_seq, dtype=bool) for name in seq_scope_names}
    shard_sequences = []
    for i, (d, meta, table, stable) in enumerate(zip(shard_dirs, metas, tok_tables, seq_tables)):
        cols = np.asarray([t_col[c] for c in table["concept"].astype(str)], dtype=np.int64)
        tokens = sp.load_npz(d / "tokens.npz").tocoo()
        inst = sp.load_npz(d / "instances.npz").tocsr()
        r, c = tokens.row, tokens.col
        ids = np.asarray(inst[r, c]).ravel().astype(np.int64)
        gc = cols[c]
        ids = ids + offset[gc]
        top = np.zeros(len(token_concepts), dtype=np.int64)
        np.maximum.at(top, gc, ids)
        offset = np.maximum(offset, top)
        shape = (tokens.shape[0], len(token_concepts))
        merged = sp.csr_matrix((ids.astype(np.int32), (r, gc)), shape=shape)
        merged.sort_indices()
        with np.load(d / "scopes.npz") as z:
            masks = {name: z[f"s{k}"] for k, name in enumerate(meta["scopes"])}
        scope_bits = np.zeros((shape[0], len(token_scopes)), dtype=bool)
        for k, name in enumerate(token_scopes):
            if name in masks:
                scope_bits[:, k] = masks[name]
        np.savez(work / "shards" / f"shard-{i:05d}.npz", indptr=merged.indptr.astype(np.int64),
                 indices=merged.indices.astype(np.int32), instances=merged.data.astype(np.int32),
                 scopes=np.packbits(scope_bits, axis=1))
        rows = np.flatnonzero(seq_shard == i)
        contiguous = len(rows) > 0 and bool((np.diff(rows) == 1).all())
        shard_sequences.append({"start": int(rows[0]), "count": len(rows)} if contiguous else {"rows": rows.tolist()})
        seqs = sp.load_npz(d / "sequences.npz").tocoo()
        if seqs.shape[0] != len(rows):
            raise WorkbenchError(f"labels of shard {i} hold {seqs.shape[0]} sequences, the shard {len(rows)}")
        scols = np.asarray([s_col[c] for c in stable["concept"].astype(str)], dtype=np.int64)
        seq_parts.append((rows[seqs.row], scols[seqs.col]))
        with np.load(d / "sequence_scopes.npz") as z:
            for k, name in enumerate(meta["sequence_scopes"]):
                seq_scopes[name][rows] = z[f"s{k}"]
        if (d / "measures.parquet").is_file():
            measure_parts.append(pd.read_parquet(d / "measures.parquet").set_axis(rows))
    r = np.concatenate([p[0] for p in seq_parts]) if seq_parts else np.zeros(0, dtype=np.int64)
    c = np.concatenate([p[1] for p in seq_parts]) if seq_parts else np.zeros(0, dtype=np.int64)
    sequences = sp.csr_matrix((np.ones(len(r), dtype=bool), (r, c)), shape=(n_seq, len(sequence_concepts)))
    sp.save_npz(work / "sequences.npz", sequences, compressed=False)
    if seq_scope_names:
        np.savez(work / "sequence_scopes.npz", **seq_scopes)
    if measure_parts:
        measures = pd.concat(measure_parts).reindex(np.arange(n_seq))
        measures.reset_index(drop=True).to_parquet(work / "measures.parquet")
    token_concepts.to_parquet(work / "token_concepts.parquet")
    sequence_concepts.to_parquet(work / "sequence_concepts.parquet")
    (work / META).write_text(json.dumps({
        "format": FORMAT, "key": key, "shard_tokens": [s.n_tokens for s in store.shards], "token_scopes": token_scopes,
        "sequence_scopes": seq_scope_names, "shard_sequences": shard_sequences,
        "attrs": _merge_attrs([m["attrs"] for m in metas])}))
    for item in sorted(work.iterdir(), key=lambda p: p.name == META):  # the meta last: it marks the folder done
        if (folder / item.name).is_dir():
            shutil.rmtree(folder / item.name)
        os.replace(item, folder / item.name)
    work.rmdir()
    shutil.rmtree(raw)
