"""Universality of SAE features: does a feature of one dictionary recur in another model, or another seed?

A feature is a property of the data, rather than an accident of one model and one training run, when a dictionary
trained elsewhere has a feature that fires on the same tokens. :func:`universality` measures that on tokens both
stores hold (matched by ``sequence_id`` and ``position``, so the two models may tokenise the same records into
stores of different widths):

1. whole sequences are sampled (seeded) up to ``n_tokens`` tokens and encoded with each SAE on its own store;
2. the Pearson correlation of every live feature of A with every live feature of B is computed over those tokens
   from sparse codes (one sparse product per block of A's features and centred moments; dense ``features x
   features`` in float32). Features that never fire on the sample are dead: excluded and counted;
3. each feature of A gets its best match in B (largest r) and a one-to-one match from the Hungarian assignment
   (:func:`scipy.optimize.linear_sum_assignment` maximising the summed r); it is *shared* when r exceeds
   ``threshold`` (0.5, as in the ESM-2 / ESM-3 comparison where 78% of features were shared against a 14.2% null);
4. the null: B's codes shuffled across tokens *within each sequence* (each sequence's rows permuted), which keeps a
   sequence's composition and breaks the alignment of tokens (position included), then the same best-match r. The
   null fraction is the share of A's live features above ``threshold`` under it, averaged over ``n_null`` repeats.

Features get concepts from catalogs (``catalog_a`` / ``catalog_b``: ``var["top_concept"]`` and ``description``) or
from ``labels`` aligned to store A (the token concept with the highest token-level F1 on the sampled tokens, for
both sides: tokens are shared). The summary counts the concept groups (``region``, ``imgt``, ``aa``...) of the shared
and the unshared features of A.

:func:`write_universality` stores a result in an existing catalog's ``uns["universality"][key]`` (summary and the
per-feature table); :attr:`workbench.catalog.Catalog.universality` reads them back.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from workbench.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import scipy.sparse as sp

    from workbench.concepts import ConceptLabels
    from workbench.store import ActivationStore

__all__ = ["universality", "Universality", "write_universality", "summary_lines", "THRESHOLD", "UNS_KEY"]

THRESHOLD = 0.5
"""A feature of A is shared when its best match in B correlates above this over the sampled tokens."""
UNS_KEY = "universality"
"""Key of the catalog's ``uns`` holding stored comparisons."""
_BLOCK = 512
"""Features of A per block of the correlation (a dense ``block x n_live_b`` float64 array at a time)."""
_LABEL_MIN_F1 = 0.2
"""A label-derived concept is given to a feature only when its token-level F1 on the sample reaches this."""


class Universality(NamedTuple):
    """Output of :func:`universality`."""

    features: pd.DataFrame
    """One row per live feature of A: ``feature``, ``density_a`` (share of sampled tokens where it fires),
    ``best_b`` / ``r_best`` (best match in B and its r), ``hungarian_b`` / ``r_hungarian`` (one-to-one match; empty
    and NaN when B has fewer live features), ``r_null_best`` (best r against B's shuffled codes, mean over the null
    repeats), ``shared`` (``r_best > threshold``), ``shared_hungarian``; with catalogs ``top_concept_a``,
    ``description_a``, ``top_concept_b``, ``description_b`` (B's side for ``best_b``); with labels ``label_a``,
    ``label_f1_a``, ``label_b``, ``label_f1_b`` (token concept of highest F1 on the sample; empty below F1 0.2)."""
    summary: dict[str, Any]
    """``n_tokens``, ``n_sequences`` (sampled), ``n_features_a/b``, ``n_live_a/b``, ``n_dead_a/b``,
    ``fraction_shared``, ``fraction_shared_hungarian``, ``null_fraction`` (mean over repeats; per repeat in
    ``null_fractions``), ``median_r``, ``median_r_hungarian``, ``median_r_null``, ``concept_source``,
    ``concept_groups`` (group -> shared / unshared counts of A's features), ``shared_concepts`` (the 15 most common
    concepts of shared features), ``concept_agreement`` (with labels: share of shared features whose best match has
    the same label) and the settings (stores, SAEs, layers, models, threshold, n_null, seed, on)."""


# ------------------------------------------------------------------------------------------------ inputs


def _open_sae(sae: Any, which: str) -> tuple[Any, str]:
    from workbench.sae import SparseAutoencoder, load_sae

    if isinstance(sae, (str, os.PathLike)):
        return load_sae(sae), str(sae)
    if not isinstance(sae, SparseAutoencoder):
        raise InputError(f"sae_{which} must be a workbench SparseAutoencoder or an SAE folder, not {type(sae).__name__}")
    cfg = sae.cfg
    return sae, f"SAE {which.upper()} ({cfg.model or '?'} layer {cfg.layer}, width {cfg.width})"


def _open_store(store: Any, which: str) -> ActivationStore:
    from workbench.store import ActivationStore, open_store

    if isinstance(store, (str, os.PathLike)):
        return open_store(store)
    if not isinstance(store, ActivationStore):
        raise InputError(f"store_{which} must be an ActivationStore or a store folder, not {type(store).__name__}")
    return store


def _layer(store: ActivationStore, sae: Any, layer: int | None, which: str) -> int:
    if layer is None:
        if sae.cfg.layer in store.layers:
            layer = int(sae.cfg.layer)
        elif len(store.layers) == 1:
            layer = int(store.layers[0])
        else:
            raise InputError(f"{store.path} has layers {store.layers}; choose one with layer_{which}")
    if layer not in store.layers:
        raise InputError(f"{store.path}: layer {layer} was not extracted (store has layers {store.layers})")
    return int(layer)


def _match_tokens(store_a: ActivationStore, store_b: ActivationStore, on: str) -> pd.DataFrame:
    """``sequence_id``, ``row_a``, ``row_b`` of the tokens both stores hold (A's order); all of them for ``"same"``."""
    import pandas as pd

    def keys(store: ActivationStore, row: str) -> pd.DataFrame:
        obs = store.obs(["sequence_id", "position"])
        frame = pd.DataFrame({"sequence_id": obs["sequence_id"].astype(str).to_numpy(),
                              "position": obs["position"].to_numpy(dtype=np.int64), row: np.arange(len(obs))})
        dup = frame.duplicated(["sequence_id", "position"])
        if dup.any():
            first = frame[dup].iloc[0]
            raise InputError(f"{store.path} holds token ({first['sequence_id']!r}, {first['position']}) twice: tokens"
                             " cannot be matched by sequence id and position")
        return frame

    ka, kb = keys(store_a, "row_a"), keys(store_b, "row_b")
    merged = ka.merge(kb, on=["sequence_id", "position"], how="outer", indicator=True, sort=False)
    odd = merged[merged["_merge"] != "both"]
    if len(odd) and on == "same":
        sid = str(odd["sequence_id"].iloc[0])
        na, nb = int((ka["sequence_id"] == sid).sum()), int((kb["sequence_id"] == sid).sum())
        raise InputError(
            f"stores {store_a.path} and {store_b.path} do not hold the same tokens: {len(ka)} tokens in"
            f" {ka['sequence_id'].nunique()} sequences vs {len(kb)} in {kb['sequence_id'].nunique()}; first differing"
            f" sequence {sid!r} ({na} tokens in A, {nb} in B); compare the shared tokens with on='common'")
    both = merged[merged["_merge"] == "both"]
    if both.empty:
        raise InputError(f"stores {store_a.path} and {store_b.path} hold no token in common (sequence id, position)")
    both = both.sort_values("row_a", kind="stable")
    return pd.DataFrame({"sequence_id": both["sequence_id"].to_numpy(), "row_a": both["row_a"].to_numpy(np.int64),
                         "row_b": both["row_b"].to_numpy(np.int64)})


def _sample(tokens: pd.DataFrame, n_tokens: int | None, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    """Whole sequences in random order until ``n_tokens`` (at least one); the kept tokens and their sequence codes."""
    import pandas as pd

    codes, _ = pd.factorize(tokens["sequence_id"])
    counts = np.bincount(codes)
    order = rng.permutation(len(counts))
    if n_tokens is None or n_tokens <= 0:
        chosen = order
    else:
        n_keep = max(1, int(np.searchsorted(np.cumsum(counts[order]), n_tokens, side="right")))
        chosen = order[:n_keep]
    keep = np.isin(codes, chosen)
    kept = tokens[keep].reset_index(drop=True)
    return kept, pd.factorize(kept["sequence_id"])[0].astype(np.int64)


def _encode(store: ActivationStore, sae: Any, layer: int, rows: np.ndarray, batch_size: int) -> sp.csr_matrix:
    """Codes (``len(rows) x width``, model-independent raw values) of the store's tokens ``rows``, in that order."""
    import scipy.sparse as sp
    import torch

    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    starts = np.cumsum([0] + [s.n_tokens for s in store.shards])
    shard_of = np.searchsorted(starts, ordered, side="right") - 1
    r_parts, c_parts, v_parts = [], [], []
    done = 0
    for shard in np.unique(shard_of):
        local = ordered[shard_of == shard] - starts[shard]
        acts = store.shard_activations(int(shard), layer)
        for lo in range(0, len(local), batch_size):
            x = np.asarray(acts[local[lo : lo + batch_size]], dtype=np.float32)
            if not np.isfinite(x).all():
                raise InputError(f"{store.path}: layer {layer} holds NaN or infinite values")
            with torch.no_grad():
                codes = sae.encode_sparse(torch.from_numpy(x))
            keep = (codes.values > 0).numpy()
            r_parts.append(order[done + codes.rows.numpy()[keep]])
            c_parts.append(codes.cols.numpy()[keep])
            v_parts.append(codes.values.float().numpy()[keep])
            done += len(x)
    shape = (len(rows), int(sae.cfg.width))
    if not r_parts:
        return sp.csr_matrix(shape, dtype=np.float64)
    out = sp.csr_matrix((np.concatenate(v_parts).astype(np.float64), (np.concatenate(r_parts), np.concatenate(c_parts))),
                        shape=shape)
    out.sum_duplicates()
    return out


def _moments(codes: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Live columns (firing on some token with non-zero variance), their means and standard deviations."""
    n = codes.shape[0]
    mean = np.asarray(codes.sum(axis=0)).ravel() / n
    sq = np.asarray(codes.multiply(codes).sum(axis=0)).ravel() / n
    sd = np.sqrt(np.maximum(sq - mean**2, 0.0))
    live = np.flatnonzero((np.diff(codes.tocsc().indptr) > 0) & (sd > 1e-12 * np.maximum(np.sqrt(sq), 1e-30)))
    return live, mean[live], sd[live]


def _correlations(a_t: sp.csr_matrix, b: sp.csr_matrix, ma: np.ndarray, sa: np.ndarray, mb: np.ndarray,
                  sb: np.ndarray, *, keep: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Best match (index, r) of every row of ``a_t`` (features x tokens) among the columns of ``b``; the full r
    matrix (float32) when ``keep``."""
    n = b.shape[0]
    p, q = a_t.shape[0], b.shape[1]
    best = np.zeros(p, dtype=np.int64)
    r_best = np.full(p, np.nan)
    full = np.empty((p, q), dtype=np.float32) if keep else None
    for lo in range(0, p, _BLOCK):
        hi = min(p, lo + _BLOCK)
        cross = (a_t[lo:hi] @ b).toarray()
        r = (cross / n - ma[lo:hi, None] * mb[None, :]) / (sa[lo:hi, None] * sb[None, :])
        np.clip(r, -1.0, 1.0, out=r)
        best[lo:hi] = np.argmax(r, axis=1)
        r_best[lo:hi] = r[np.arange(hi - lo), best[lo:hi]]
        if full is not None:
            full[lo:hi] = r
    return best, r_best, full


def _within_sequence_permutation(seq: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``perm`` such that row ``i`` takes row ``perm[i]``, always a row of the same sequence."""
    base = np.argsort(seq, kind="stable")
    shuffled = np.lexsort((rng.random(len(seq)), seq))
    perm = np.empty(len(seq), dtype=np.int64)
    perm[base] = shuffled
    return perm


def _catalog_concepts(catalog: Any, width: int, which: str) -> pd.DataFrame:
    """``top_concept`` and ``description`` per feature (rows in feature order) from a Catalog, its folder, or a
    DataFrame indexed by feature name."""
    import pandas as pd

    if isinstance(catalog, (str, os.PathLike)):
        from workbench.catalog import Catalog

        catalog = Catalog.open(catalog)
    var = catalog.features if hasattr(catalog, "features") else catalog
    if not isinstance(var, pd.DataFrame) or "top_concept" not in var.columns:
        raise InputError(f"catalog_{which} must be a Catalog, a catalog folder or a DataFrame with a 'top_concept' column")
    if len(var) != width:
        raise InputError(f"catalog_{which} describes {len(var)} features but SAE {which.upper()} has width {width}")
    out = pd.DataFrame(index=pd.RangeIndex(width))
    for col in ("top_concept", "description"):
        values = var[col].astype(object).to_numpy() if col in var.columns else np.full(width, None, dtype=object)
        out[col] = [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values]
    return out


def _label_concepts(labels: ConceptLabels, rows_a: np.ndarray, codes: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``codes``: the token concept of highest token-level F1 on the sampled tokens (None below
    :data:`_LABEL_MIN_F1`) and that F1."""
    tokens = labels.tokens[rows_a].astype(np.float64).tocsc()
    active = codes.copy()
    active.data[:] = 1.0
    tp = (active.T.tocsr() @ tokens).toarray()
    n_active = np.asarray(active.sum(axis=0)).ravel()
    n_labelled = np.asarray(tokens.sum(axis=0)).ravel()
    denom = n_active[:, None] + n_labelled[None, :]
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    names = labels.token_concepts["concept"].astype(str).to_numpy(dtype=object)
    if f1.shape[1] == 0:
        return np.full(codes.shape[1], None, dtype=object), np.zeros(codes.shape[1])
    best = np.argmax(f1, axis=1)
    top = f1[np.arange(len(best)), best]
    return np.where(top >= _LABEL_MIN_F1, names[best], None), top


def _concept_summary(concepts: list[Any], shared: np.ndarray) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    from collections import Counter

    groups: dict[str, dict[str, int]] = {}
    values: Counter[str] = Counter()
    for concept, is_shared in zip(concepts, shared):
        group = str(concept).split("=", 1)[0] if concept else "none"
        entry = groups.setdefault(group, {"shared": 0, "unshared": 0})
        entry["shared" if is_shared else "unshared"] += 1
        if is_shared and concept:
            values[str(concept)] += 1
    order = sorted(groups, key=lambda g: (-(groups[g]["shared"] + groups[g]["unshared"]), g))
    return {g: groups[g] for g in order}, dict(values.most_common(15))


# ------------------------------------------------------------------------------------------------ measurement


def universality(sae_a: Any, store_a: Any, sae_b: Any, store_b: Any, *, layer_a: int | None = None,
                 layer_b: int | None = None, on: str = "same", n_tokens: int | None = 100_000,
                 threshold: float = THRESHOLD, n_null: int = 1, seed: int = 0, labels: ConceptLabels | None = None,
                 catalog_a: Any = None, catalog_b: Any = None, batch_size: int = 8192,
                 progress: bool = False) -> Universality:
    """Correlate every feature of ``sae_a`` on ``store_a`` with every feature of ``sae_b`` on ``store_b``.

    Parameters
    ----------
    sae_a, sae_b
        :class:`~workbench.sae.SparseAutoencoder` objects or SAE folders; each must read its own store's width.
    store_a, store_b
        Activation stores (objects or folders) of the same records: tokens are matched by ``sequence_id`` and
        ``position``. The two models may have different ``d_model``.
    layer_a, layer_b
        Layers of the stores; default: the layer the SAE was trained on, or the store's only layer.
    on
        ``"same"``: both stores must hold exactly the same tokens (else :class:`~workbench.errors.InputError`
        naming both stores, their counts and the first differing sequence); ``"common"``: use the tokens both hold.
    n_tokens
        Whole sequences are sampled (seeded) up to this many tokens; ``None`` or 0 uses every matched token.
    threshold
        A feature of A is shared when its best-match r exceeds this.
    n_null
        Repeats of the within-sequence permutation null (each a fresh shuffle of B's codes).
    seed
        Seed of the sequence sample and of the null's shuffles.
    labels
        Concept labels aligned to ``store_a`` (its token order): a concept for the features of both sides.
    catalog_a, catalog_b
        Catalogs (objects or folders) of the SAEs, or DataFrames indexed by feature with ``top_concept`` (and
        ``description``): concepts of A's features and of their best matches.
    batch_size
        Tokens encoded at a time.
    progress
        Report the stages on stderr.

    Returns
    -------
    :class:`Universality` (``features``: one row per live feature of A; ``summary``: fractions, null, medians,
    concept groups and settings).
    """
    import pandas as pd

    def say(msg: str) -> None:
        if progress:
            print(f"[universality] {msg}", file=sys.stderr, flush=True)

    if on not in ("same", "common"):
        raise InputError(f"on must be 'same' or 'common', not {on!r}")
    if n_null < 1 or not -1.0 <= float(threshold) < 1.0:
        raise InputError(f"need n_null >= 1 and -1 <= threshold < 1 (got n_null={n_null}, threshold={threshold})")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1 (got {batch_size})")
    sae_a, name_a = _open_sae(sae_a, "a")
    sae_b, name_b = _open_sae(sae_b, "b")
    store_a, store_b = _open_store(store_a, "a"), _open_store(store_b, "b")
    for sae, name, store, which in ((sae_a, name_a, store_a, "A"), (sae_b, name_b, store_b, "B")):
        if sae.cfg.d_in != store.d_model:
            raise InputError(f"SAE {which} ({name}) reads width {sae.cfg.d_in} but store {which} ({store.path}) holds"
                             f" d_model {store.d_model}: train or pick the SAE of that store")
    layer_a, layer_b = _layer(store_a, sae_a, layer_a, "a"), _layer(store_b, sae_b, layer_b, "b")
    if labels is not None and labels.n_tokens != store_a.n_tokens:
        raise InputError(f"labels cover {labels.n_tokens} tokens but store A ({store_a.path}) holds {store_a.n_tokens}:"
                         " labels must be aligned to store A")
    width_a, width_b = int(sae_a.cfg.width), int(sae_b.cfg.width)
    concepts_a = _catalog_concepts(catalog_a, width_a, "a") if catalog_a is not None else None
    concepts_b = _catalog_concepts(catalog_b, width_b, "b") if catalog_b is not None else None

    say("matching tokens")
    rng = np.random.default_rng(seed)
    tokens, seq = _sample(_match_tokens(store_a, store_b, on), n_tokens, rng)
    n = len(tokens)
    if n < 3:
        raise InputError(f"only {n} tokens to correlate: need at least 3")
    rows_a, rows_b = tokens["row_a"].to_numpy(), tokens["row_b"].to_numpy()
    say(f"encoding {n:,} tokens of {seq.max() + 1:,} sequences with both SAEs")
    codes_a = _encode(store_a, sae_a, layer_a, rows_a, batch_size)
    codes_b = _encode(store_b, sae_b, layer_b, rows_b, batch_size)
    live_a, ma, sa = _moments(codes_a)
    live_b, mb, sb = _moments(codes_b)
    if len(live_a) == 0 or len(live_b) == 0:
        raise InputError(f"no live feature on the {n} sampled tokens (A: {len(live_a)}, B: {len(live_b)})")
    a_live = codes_a[:, live_a]
    a_t = a_live.T.tocsr()
    b_live = codes_b[:, live_b].tocsr()

    say(f"correlating {len(live_a):,} x {len(live_b):,} live features")
    best, r_best, full = _correlations(a_t, b_live, ma, sa, mb, sb, keep=True)
    say("Hungarian matching")
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(full, maximize=True)
    hung = np.full(len(live_a), -1, dtype=np.int64)
    hung[rows] = cols
    r_hung = np.where(hung >= 0, full[np.arange(len(live_a)), np.maximum(hung, 0)], np.nan).astype(np.float64)
    del full

    null_best = np.zeros(len(live_a))
    null_fractions = []
    for k in range(n_null):
        say(f"null {k + 1} / {n_null}: B's codes shuffled within each sequence")
        perm = _within_sequence_permutation(seq, rng)
        _, r_null, _ = _correlations(a_t, b_live[perm], ma, sa, mb, sb, keep=False)
        null_best += r_null / n_null
        null_fractions.append(float(np.mean(r_null > threshold)))

    names_a = np.asarray([f"f{i:05d}" for i in live_a], dtype=object)
    names_b = np.asarray([f"f{j:05d}" for j in live_b], dtype=object)
    shared = r_best > threshold
    shared_h = np.nan_to_num(r_hung, nan=-np.inf) > threshold
    table = pd.DataFrame({
        "feature": names_a,
        "density_a": np.diff(a_live.tocsc().indptr) / n,
        "best_b": names_b[best],
        "r_best": r_best,
        "hungarian_b": np.where(hung >= 0, names_b[np.maximum(hung, 0)], ""),
        "r_hungarian": r_hung,
        "r_null_best": null_best,
        "shared": shared,
        "shared_hungarian": shared_h,
    })
    concept_source = "none"
    if concepts_a is not None:
        table["top_concept_a"] = concepts_a["top_concept"].to_numpy()[live_a]
        table["description_a"] = concepts_a["description"].to_numpy()[live_a]
        concept_source = "catalog_a"
    if concepts_b is not None:
        table["top_concept_b"] = concepts_b["top_concept"].to_numpy()[live_b[best]]
        table["description_b"] = concepts_b["description"].to_numpy()[live_b[best]]
    agreement = None
    if labels is not None:
        say("concepts of both sides from the labels")
        lab_a, f1_a = _label_concepts(labels, rows_a, a_live)
        lab_b, f1_b = _label_concepts(labels, rows_a, b_live)
        table["label_a"], table["label_f1_a"] = lab_a, f1_a
        table["label_b"], table["label_f1_b"] = lab_b[best], f1_b[best]
        both = shared & (lab_a != None) & (lab_b[best] != None)  # noqa: E711 - object arrays
        agreement = float(np.mean(lab_a[both] == lab_b[best][both])) if both.any() else None
        concept_source = concept_source if concepts_a is not None else "labels"
    concept_col = {"catalog_a": "top_concept_a", "labels": "label_a"}.get(concept_source)
    groups, shared_concepts = _concept_summary(list(table[concept_col]) if concept_col else [None] * len(table), shared)

    summary: dict[str, Any] = {
        "n_tokens": int(n), "n_sequences": int(seq.max() + 1),
        "n_features_a": width_a, "n_features_b": width_b,
        "n_live_a": int(len(live_a)), "n_live_b": int(len(live_b)),
        "n_dead_a": int(width_a - len(live_a)), "n_dead_b": int(width_b - len(live_b)),
        "fraction_shared": float(np.mean(shared)),
        "fraction_shared_hungarian": float(np.mean(shared_h)),
        "null_fraction": float(np.mean(null_fractions)),
        "null_fractions": null_fractions,
        "median_r": float(np.median(r_best)),
        "median_r_hungarian": float(np.nanmedian(r_hung)) if np.isfinite(r_hung).any() else float("nan"),
        "median_r_null": float(np.median(null_best)),
        "concept_source": concept_source,
        "concept_groups": groups,
        "shared_concepts": shared_concepts,
        "concept_agreement": agreement,
        "threshold": float(threshold), "n_null": int(n_null), "seed": int(seed), "on": on,
        "n_tokens_requested": None if n_tokens is None else int(n_tokens),
        "sae_a": name_a, "sae_b": name_b, "store_a": str(store_a.path), "store_b": str(store_b.path),
        "model_a": store_a.model, "model_b": store_b.model, "layer_a": layer_a, "layer_b": layer_b,
        "control_a": store_a.manifest.get("control"), "control_b": store_b.manifest.get("control"),
    }
    say(f"shared {summary['fraction_shared']:.3f} (null {summary['null_fraction']:.3f})")
    return Universality(table, summary)


def summary_lines(result: Universality) -> list[str]:
    """The headline of a comparison as printable lines (what ``workbench universality`` prints)."""
    s = result.summary
    lines = [
        f"A: {s['sae_a']} on {s['store_a']} (layer {s['layer_a']}); B: {s['sae_b']} on {s['store_b']} (layer {s['layer_b']})",
        f"tokens: {s['n_tokens']:,} in {s['n_sequences']:,} sequences; live features A {s['n_live_a']:,} of"
        f" {s['n_features_a']:,}, B {s['n_live_b']:,} of {s['n_features_b']:,}",
        f"shared (best-match r > {s['threshold']:g}): {s['fraction_shared']:.3f}; one-to-one (Hungarian):"
        f" {s['fraction_shared_hungarian']:.3f}; null (shuffled within sequences, {s['n_null']}x):"
        f" {s['null_fraction']:.3f}",
        f"median r: best {s['median_r']:.3f}, Hungarian {s['median_r_hungarian']:.3f}, null {s['median_r_null']:.3f}",
    ]
    if s["concept_source"] != "none":
        parts = [f"{g} {c['shared']}/{c['shared'] + c['unshared']}" for g, c in s["concept_groups"].items()]
        lines.append(f"concept groups of A ({s['concept_source']}), shared/all: " + ", ".join(parts))
    if s.get("concept_agreement") is not None:
        lines.append(f"shared features whose match has the same label: {s['concept_agreement']:.3f}")
    return lines


# ------------------------------------------------------------------------------------------------ storing


def write_universality(catalog_path: str | os.PathLike[str], result: Universality, *, key: str) -> Path:
    """Store ``result`` in an existing catalog's ``uns["universality"][key]`` (``summary`` and ``features``).

    The catalog folder is copied to ``<folder>.partial``, the copy's ``catalog.h5ad`` (and ``schema.json``) updated,
    and the copy renamed into place: a failure leaves the catalog as it was. An existing ``key`` is replaced.
    Returns the catalog folder.
    """
    import json
    import shutil

    import h5py

    from workbench._catalog_build import clean_frame, fresh_partial, publish, to_h5, write_json
    from workbench.catalog import CATALOG_FILE, SCHEMA_FILE, Catalog

    try:
        from anndata.io import write_elem
    except ImportError:  # pragma: no cover - anndata < 0.11
        from anndata.experimental import write_elem

    if not isinstance(key, str) or not key.strip() or "/" in key:
        raise InputError(f"key must be a non-empty name without '/', not {key!r}")
    if not isinstance(result, Universality):
        raise InputError(f"result must be a Universality (from workbench.universality), not {type(result).__name__}")
    path = Path(catalog_path)
    Catalog.open(path)  # a clear error for anything that is not a catalog
    folder = path if path.is_dir() else path.parent
    tmp = fresh_partial(folder)
    try:
        for item in folder.iterdir():
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        payload = {"summary": to_h5(dict(result.summary)), "features": clean_frame(result.features)}
        with h5py.File(tmp / CATALOG_FILE, "r+") as h5:
            uns = h5["uns"]
            if UNS_KEY not in uns:
                write_elem(uns, UNS_KEY, {key: payload})
            else:
                if key in uns[UNS_KEY]:
                    del uns[UNS_KEY][key]
                write_elem(uns[UNS_KEY], key, payload)
            uns_keys = sorted(str(k) for k in uns.keys())
        schema = tmp / SCHEMA_FILE
        if schema.is_file():
            data = json.loads(schema.read_text())
            data["uns"] = uns_keys
            write_json(schema, data)
        publish(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def stored(uns_value: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The comparisons of a catalog's ``uns["universality"]`` as read: key -> ``{"summary": dict, "features":
    DataFrame}`` (features with a fresh integer index)."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in dict(uns_value or {}).items():
        value = dict(value)
        features = value.get("features")
        if features is not None:
            features = features.reset_index(drop=True)
        out[str(key)] = {"summary": dict(value.get("summary") or {}), "features": features}
    return out
