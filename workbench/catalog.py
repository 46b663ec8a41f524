"""The feature catalog: one ``catalog.h5ad`` (AnnData) per catalog folder, and the :class:`Catalog` reader.

A catalog holds, for one SAE on one layer of one store: the analysed sequences (``obs``), the features (``var``:
statistics, best concept, one-line description, family), sequence x feature activations (``X``: max over the
sequence's tokens; ``layers["mean"]``: mean), decoder directions and a UMAP layout (``varm``), the top-activating
and quantile-sampled examples of every feature with per-token activations, and the association tables, summary,
SAE metrics and provenance (``uns``). Every field is documented in ``docs/catalog_schema.md``; the layout is
versioned by :data:`SCHEMA_VERSION`. Nothing in the file is pickled, so notebooks, apps and batch jobs can open
any catalog safely; :class:`Catalog` reads only what a call needs (features and summaries on open; tables, the
decoder and example activations on first use; ``X`` backed on disk for large files).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from workbench.associate import CAPTURED_F1, _check_sae_matches
from workbench.describe import DESCRIBE_ALPHA, DESCRIBE_MIN_F1, FeatureStats, describe_features, feature_families
from workbench.errors import InputError, StoreError, WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    import anndata
    import pandas as pd

    from workbench.associate import Association, FeatureMatrix
    from workbench.concepts import ConceptLabels
    from workbench.store import ActivationStore

__all__ = [
    "SCHEMA_VERSION", "CATALOG_FILE", "SCHEMA_FILE", "EXAMPLE_QUANTILES", "Catalog", "Example", "build_catalog",
    "CatalogParts", "catalog_parts", "write_catalog", "describe_features", "feature_families",
]

SCHEMA_VERSION = "1.0"
"""Catalog layout version ``major.minor``: readers accept any minor of their major (minors only add fields)."""
CATALOG_FILE = "catalog.h5ad"
SCHEMA_FILE = "schema.json"
EXAMPLE_QUANTILES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
"""Quantile bins of a feature's per-sequence maxima that examples are sampled from (besides the top ones)."""
BACKED_BYTES = 256 * 2**20
"""``Catalog.adata`` keeps ``X`` on disk (backed ``"r"``) for files larger than this."""
BUILTIN_TABLES = ("association", "best_sae", "best_neurons", "best_random", "profile")
VAR_COLUMNS = ("density", "max_activation", "n_sequences", "top_concept", "top_f1", "top_precision", "top_q",
               "top_threshold", "profile", "description", "family")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _decoder(sae: Any) -> np.ndarray:
    w = sae.W_dec
    w = w.detach().cpu().numpy() if hasattr(w, "detach") else np.asarray(w)
    return np.asarray(w, dtype=np.float32)


def _join_extra(frame: pd.DataFrame, extra: pd.DataFrame, index: Sequence[str], key: str, what: str, owner: str) -> pd.DataFrame:
    """``frame`` with the columns of ``extra`` (aligned by :func:`_frame_for`) appended; clashing names refused."""
    import pandas as pd

    aligned = _frame_for(extra, index, key, what)
    clash = [c for c in aligned.columns if c in frame.columns]
    if clash:
        raise InputError(f"{what} columns {clash} clash with {owner}")
    return pd.concat([frame, aligned.set_index(frame.index)], axis=1)


def _frame_for(extra: pd.DataFrame, index: Sequence[str], key: str, what: str) -> pd.DataFrame:
    """``extra`` aligned to ``index`` (by its index, or by a ``key`` column when it has one)."""
    import pandas as pd

    df = extra.set_index(extra[key].astype(str)).drop(columns=[key]) if key in extra.columns else extra.copy()
    df.index = df.index.astype(str)
    if df.index.duplicated().any():
        raise InputError(f"{what} has duplicate ids: {list(df.index[df.index.duplicated()][:3])}")
    unknown = [i for i in df.index if i not in set(index)]
    if unknown:
        raise InputError(f"{what} names ids that are not in the catalog: {unknown[:3]}")
    return df.reindex(pd.Index(list(index)))


class CatalogParts(NamedTuple):
    """Everything :func:`build_catalog` reads from the feature matrix, computed in memory (:func:`catalog_parts`)
    or shard by shard (:func:`workbench._stream_catalog.catalog_parts_streaming`)."""

    layout: Any
    """The store's token layout (sequence ids, lengths, residues)."""
    x_max: Any
    """``(n_sequences, n_features)`` CSR: each sequence's max activation of each feature."""
    x_mean: Any
    """The same with the mean over the sequence's tokens."""
    stats: FeatureStats
    """Active tokens, sequences fired in and activation profiles per feature."""
    max_activation: np.ndarray
    """Per-feature maximum before normalisation."""
    names: list[str]
    picked: dict[str, np.ndarray]
    """The examples (``select_examples``' format)."""
    offsets: np.ndarray
    lengths: np.ndarray
    flat: np.ndarray
    """The examples' per-token activations, quantised and concatenated."""
    rows: np.ndarray | None = None
    """The store sequences the catalog holds (its rows, in store order; ``layout`` and the examples' ``sequence``
    index them); None: every sequence."""
    pooled: np.ndarray | None = None
    """Per catalog row: ``x_max`` / ``x_mean`` hold its pooled activations (False: a sequence held only for its
    examples, an empty row); None: every row."""


def catalog_parts(store: ActivationStore, features: FeatureMatrix, labels: ConceptLabels, *,
                  profile_groups: Sequence[str] = ("region", "imgt"), n_top: int = 10, n_per_bin: int = 2,
                  example_quantiles: Sequence[float] = EXAMPLE_QUANTILES, seed: int = 0) -> CatalogParts:
    """The :class:`CatalogParts` of a feature matrix held in memory."""
    from workbench._catalog_build import pack_activations, pool_sequences, select_examples, token_layout

    if n_top < 1 or n_per_bin < 0:
        raise InputError(f"n_top must be >= 1 and n_per_bin >= 0 (got {n_top}, {n_per_bin})")
    layout = token_layout(store)
    values = features.values.tocsr()
    x_max, x_mean = pool_sequences(values, layout.token_sequence, layout.lengths)
    stats = FeatureStats.of(labels, features, profile_groups=profile_groups, token_sequence=layout.token_sequence)
    picked = select_examples(x_max, n_top=n_top, n_per_bin=n_per_bin, quantiles=example_quantiles, seed=seed)
    offsets, lengths, flat = pack_activations(values, picked, layout)
    return CatalogParts(layout, x_max, x_mean, stats, np.asarray(features.max_activation), [str(n) for n in features.names],
                        picked, offsets, lengths, flat)


def build_catalog(
    store: ActivationStore,
    sae: Any,
    features: FeatureMatrix | None,
    association: Association,
    labels: ConceptLabels,
    *,
    layer: int,
    controls: Mapping[str, Association] | None = None,
    metrics: Mapping[str, Any] | None = None,
    tables: Mapping[str, pd.DataFrame] | None = None,
    var_extra: pd.DataFrame | None = None,
    obs_extra: pd.DataFrame | None = None,
    summary_extra: Mapping[str, Any] | None = None,
    obsm_extra: Mapping[str, np.ndarray] | None = None,
    uns_extra: Mapping[str, Any] | None = None,
    n_top: int = 10,
    n_per_bin: int = 2,
    families: bool = True,
    seed: int = 0,
    profile_groups: Sequence[str] = ("region", "imgt"),
    example_quantiles: Sequence[float] = EXAMPLE_QUANTILES,
    n_neighbors: int = 15,
    resolution: float = 1.0,
    parts: CatalogParts | None = None,
) -> anndata.AnnData:
    """Assemble the catalog AnnData of ``sae`` on ``layer`` of ``store`` (see ``docs/catalog_schema.md``).

    ``features`` is :func:`~workbench.associate.feature_matrix` of the SAE on the store and ``association`` its
    association with ``labels``; ``controls`` (``"neurons"``, ``"random"``) give the control rows of the summary and
    their best-per-concept tables. ``metrics`` are the SAE's fidelity metrics (``metrics.json``); ``tables`` extra
    DataFrames for ``uns["tables"]`` (a name of a built-in table replaces it); ``var_extra`` per-feature and
    ``obs_extra`` per-sequence columns (indexed by feature name / sequence id); ``summary_extra`` extra summary
    entries; ``obsm_extra`` per-sequence arrays (rows in store sequence order; images keep their pixels in
    ``obsm["image"]``) and ``uns_extra`` extra ``uns`` entries (``uns["images"]`` describes them). Each feature
    keeps its ``n_top`` top sequences and ``n_per_bin`` seeded samples from each quantile bin
    of ``example_quantiles``. ``families`` computes Leiden families and the UMAP layout of decoder directions.
    ``parts`` (:func:`catalog_parts`, or computed shard by shard by :mod:`workbench._stream_catalog`) replaces
    ``features``: everything the catalog reads from the feature matrix.
    """
    import anndata as ad
    import pandas as pd

    from workbench._catalog_build import clean_frame, quantile_kinds, to_h5
    from workbench._version import __version__

    # -- consistency -----------------------------------------------------------------------------------------------
    if layer not in store.layers:
        raise StoreError(f"{store.path}: layer {layer} was not extracted (store has layers {store.layers})")
    if not hasattr(sae, "cfg") or not hasattr(sae, "W_dec"):
        raise InputError("build_catalog needs a workbench SparseAutoencoder (with .cfg and .W_dec)")
    _check_sae_matches(store, sae, layer)
    if parts is None:
        if features is None:
            raise InputError("build_catalog needs the feature matrix or its catalog parts")
        n_tokens, n_features = features.values.shape
        if n_tokens != store.n_tokens or labels.n_tokens != store.n_tokens:
            raise WorkbenchError(f"features cover {n_tokens} tokens and labels {labels.n_tokens}, but {store.path} holds"
                                 f" {store.n_tokens}: they come from different stores")
        if n_features != sae.cfg.width or len(features.names) != n_features:
            raise WorkbenchError(f"features have {n_features} columns ({len(features.names)} names) but the SAE has width"
                                 f" {sae.cfg.width}")
    elif labels.n_tokens != store.n_tokens or parts.stats.n_tokens != store.n_tokens:
        raise WorkbenchError(f"catalog parts cover {parts.stats.n_tokens} tokens and labels {labels.n_tokens}, but "
                             f"{store.path} holds {store.n_tokens}: they come from different stores")
    n_tokens = store.n_tokens
    n_features = sae.cfg.width
    if parts is not None and len(parts.names) != n_features:
        raise WorkbenchError(f"catalog parts have {len(parts.names)} features but the SAE has width {n_features}")
    decoder = _decoder(sae)
    if decoder.shape != (n_features, store.d_model):
        raise WorkbenchError(f"SAE decoder has shape {decoder.shape}, expected ({n_features}, {store.d_model})")
    for name, assoc in {"association": association, **dict(controls or {})}.items():
        t = assoc.params.get("n_tokens")
        if t is not None and int(t) != store.n_tokens:
            raise WorkbenchError(f"{name} was computed on {t} tokens, the store holds {store.n_tokens}")
    names = [str(n) for n in (features.names if parts is None else parts.names)]
    unknown = set(association.pairs["feature"].astype(str)) - set(names) if len(association.pairs) else set()
    if unknown:
        raise WorkbenchError(f"association names features the SAE does not have: {sorted(unknown)[:3]}")
    if n_top < 1 or n_per_bin < 0:
        raise InputError(f"n_top must be >= 1 and n_per_bin >= 0 (got {n_top}, {n_per_bin})")

    if parts is None:
        parts = catalog_parts(store, features, labels, profile_groups=profile_groups, n_top=n_top, n_per_bin=n_per_bin,
                              example_quantiles=example_quantiles, seed=seed)
    layout = parts.layout
    n_store_sequences = store.n_sequences

    # -- sequences ----------------------------------------------------------------------------------------------------
    seqs = store.sequences.reset_index(drop=True)
    if parts.rows is not None:  # a catalog of some of the store's sequences (the streamed stage on a large store)
        seqs = seqs.iloc[parts.rows].reset_index(drop=True)
    obs = seqs.drop(columns=["sequence_id"]).copy()
    obs.index = pd.Index(layout.sequence_ids)
    obs["sequence"] = layout.sequences
    if obs_extra is not None:
        obs = _join_extra(obs, obs_extra, layout.sequence_ids, "sequence_id", "obs_extra", "the store's sequence columns")
    if parts.pooled is not None:  # which rows of X carry pooled activations (the others hold an example only)
        obs["pooled"] = np.asarray(parts.pooled, dtype=bool)
    obs = clean_frame(obs, keep_index=True)
    obs.index.name = None

    # -- activations per sequence ---------------------------------------------------------------------------------------
    x_max, x_mean = parts.x_max, parts.x_mean

    # -- features ---------------------------------------------------------------------------------------------------------
    desc = describe_features(association, labels, None, profile_groups=profile_groups, stats=parts.stats, names=names)
    nnz_tokens = parts.stats.nnz
    var = pd.DataFrame(index=pd.Index(names))
    var["density"] = nnz_tokens / max(n_tokens, 1)
    var["max_activation"] = np.asarray(parts.max_activation, dtype=np.float32)
    var["n_sequences"] = (np.diff(x_max.tocsc().indptr) if parts.stats.fires_in is None
                          else parts.stats.fires_in).astype(np.int64)
    for col in ("top_concept", "top_f1", "top_precision", "top_q", "top_threshold", "profile", "description"):
        var[col] = desc[col].to_numpy()
    dead = nnz_tokens == 0
    if families:
        fam, umap_xy = feature_families(decoder, n_neighbors=n_neighbors, resolution=resolution, seed=seed, dead=dead)
    else:
        fam = np.where(dead, "dead", "none").astype(object)
        umap_xy = np.full((n_features, 2), np.nan, dtype=np.float32)
    fam_order = sorted({f for f in fam if f not in ("dead", "none")}, key=int) + [f for f in ("none", "dead") if f in set(fam)]
    var["family"] = pd.Categorical(fam, categories=fam_order)
    if var_extra is not None:
        var = _join_extra(var, var_extra, names, "feature", "var_extra", "the catalog's own feature columns")
    var = clean_frame(var, keep_index=True)
    var.index.name = None

    # -- examples -----------------------------------------------------------------------------------------------------------
    picked, offsets, lengths, flat = parts.picked, parts.offsets, parts.lengths, parts.flat
    kinds = quantile_kinds(example_quantiles)
    examples = pd.DataFrame({
        "feature": pd.Categorical.from_codes(picked["feature"], categories=names),
        "kind": pd.Categorical.from_codes(picked["kind"].astype(np.int64), categories=kinds),
        "rank": picked["rank"].astype(np.int32),
        "sequence_id": pd.Categorical.from_codes(picked["sequence"], categories=layout.sequence_ids),
        "max_activation": picked["max_activation"],
        "offset": offsets.astype(np.int64),
        "length": lengths.astype(np.int32),
    })

    # -- tables -------------------------------------------------------------------------------------------------------------
    controls = dict(controls or {})
    out_tables: dict[str, pd.DataFrame] = {"association": association.pairs, "best_sae": association.best}
    for name, assoc in controls.items():
        out_tables[f"best_{name}"] = assoc.best
    out_tables["profile"] = _profile_table(parts.stats, names, profile_groups)
    for name, table in (tables or {}).items():
        if not isinstance(table, pd.DataFrame):
            raise InputError(f"table {name!r} is a {type(table).__name__}, not a DataFrame")
        if not name or "/" in name:
            raise InputError(f"table name {name!r} is empty or holds '/'")
        out_tables[str(name)] = table
    out_tables = {k: clean_frame(v, categorize=True) for k, v in out_tables.items()}

    # -- summary, metrics, provenance -------------------------------------------------------------------------------------
    metrics_clean = {k: v for k, v in dict(metrics or {}).items() if k != "density"}
    summary = _summary(association, controls, metrics_clean, n_features=n_features, n_sequences=n_store_sequences,
                       n_tokens=n_tokens, nnz=int(parts.stats.nnz.sum()), dead=dead, families=var["family"], n_examples=len(examples))
    for key, value in dict(summary_extra or {}).items():
        if key in summary and key not in ("fve", "l0", "dead_fraction", "loss_recovered"):
            raise InputError(f"summary_extra key {key!r} clashes with a computed summary entry")
        summary[key] = value
    provenance = {
        "schema_version": SCHEMA_VERSION,
        "created": _now(),
        "workbench_version": __version__,
        "model": store.model,
        "layer": int(layer),
        "store_path": str(store.path),
        "store_manifest_sha256": store.manifest_sha256(),
        "weights_sha256": store.manifest.get("weights_sha256"),
        "store_control": store.manifest.get("control"),
        "sae_config": dataclasses.asdict(sae.cfg),
        "association_params": dict(association.params),
        "control_params": {k: dict(v.params) for k, v in controls.items()},
        "catalog_params": {
            "n_top": n_top, "n_per_bin": n_per_bin, "example_quantiles": list(example_quantiles), "families": families,
            "n_neighbors": n_neighbors, "resolution": resolution, "seed": seed, "profile_groups": list(profile_groups),
            "describe_alpha": DESCRIBE_ALPHA, "describe_min_f1": DESCRIBE_MIN_F1,
        },
        "sequence_separator": layout.separator,
    }

    obsm = {}
    for key, arr in dict(obsm_extra or {}).items():
        arr = np.asarray(arr)
        if arr.ndim != 2 or arr.shape[0] != len(layout.sequence_ids):
            raise InputError(f"obsm_extra[{key!r}] has shape {arr.shape}; want ({len(layout.sequence_ids)}, n)")
        obsm[str(key)] = arr
    reserved = {"schema_version", "provenance", "metrics", "summary", "tables", "examples", "example_activations"}
    clash = reserved & set(uns_extra or {})
    if clash:
        raise InputError(f"uns_extra keys {sorted(clash)} are reserved")
    adata = ad.AnnData(X=x_max, obs=obs, var=var, layers={"mean": x_mean}, obsm=obsm,
                       varm={"decoder": decoder, "umap": np.asarray(umap_xy, dtype=np.float32)})
    for key, value in dict(uns_extra or {}).items():
        adata.uns[str(key)] = to_h5(value)
    adata.uns["schema_version"] = SCHEMA_VERSION
    adata.uns["provenance"] = to_h5(provenance)
    adata.uns["metrics"] = to_h5(metrics_clean)
    adata.uns["summary"] = to_h5(summary)
    adata.uns["tables"] = out_tables
    adata.uns["examples"] = examples
    adata.uns["example_activations"] = flat
    return adata


def _profile_table(stats: FeatureStats, names: Sequence[str], groups: Sequence[str]) -> pd.DataFrame:
    """Long table of activation-mass shares >= 1%: ``feature, group, value, share, baseline`` (share of all tokens)."""
    import pandas as pd

    parts = []
    for group in groups:
        prof = stats.profile(group)
        if prof is None:
            continue
        values, share, baseline, _ = prof
        fi, vi = np.nonzero(share >= 0.01)
        parts.append(pd.DataFrame({"feature": np.asarray(names, dtype=object)[fi], "group": group,
                                   "value": np.asarray(values, dtype=object)[vi], "share": share[fi, vi],
                                   "baseline": baseline[vi]}))
    if not parts:
        return pd.DataFrame({"feature": pd.Series(dtype=object), "group": pd.Series(dtype=object),
                             "value": pd.Series(dtype=object), "share": pd.Series(dtype=np.float64),
                             "baseline": pd.Series(dtype=np.float64)})
    return pd.concat(parts, ignore_index=True)


def _summary(association: Association, controls: Mapping[str, Association], metrics: Mapping[str, Any], *, n_features: int,
             n_sequences: int, n_tokens: int, nnz: int, dead: np.ndarray, families: Any, n_examples: int) -> dict[str, Any]:
    def metric(key: str) -> Any:
        v = metrics.get(key)
        return float(v) if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else None

    lr = metrics.get("loss_recovered")
    loss_rec = lr.get("loss_recovered") if isinstance(lr, Mapping) else lr
    loss_rec = float(loss_rec) if isinstance(loss_rec, (int, float, np.number)) else None
    fams = [f for f in set(families.astype(str)) if f not in ("dead", "none")]
    summary: dict[str, Any] = {
        "concepts_captured_sae": association.concepts_captured,
        "concepts_captured_neurons": controls["neurons"].concepts_captured if "neurons" in controls else None,
        "concepts_captured_random": controls["random"].concepts_captured if "random" in controls else None,
        "captured_f1": CAPTURED_F1,
        "n_concepts": int(len(association.best)),
        "n_features": int(n_features),
        "n_sequences": int(n_sequences),
        "n_tokens": int(n_tokens),
        "fve": metric("fve"),
        "l0": metric("l0"),
        "dead_fraction": metric("dead_fraction"),
        "loss_recovered": loss_rec,
        "metrics_source": "sae metrics" if metrics else "none",
        "l0_catalog": float(nnz / max(n_tokens, 1)),
        "dead_fraction_catalog": float(np.mean(dead)) if len(dead) else 0.0,
        "n_dead": int(np.sum(dead)),
        "n_families": len(fams),
        "n_examples": int(n_examples),
    }
    for name, assoc in controls.items():
        if name not in ("neurons", "random"):
            summary[f"concepts_captured_{name}"] = assoc.concepts_captured
    return summary


# ------------------------------------------------------------------------------------------------------------ writing


def _prepare_for_write(adata: anndata.AnnData) -> None:
    """Make every field of ``adata`` natively writable (in place): values added after build_catalog included."""
    from workbench._catalog_build import clean_frame, to_h5

    if "schema_version" not in adata.uns:
        raise WorkbenchError("not a catalog AnnData: uns['schema_version'] is missing (build it with build_catalog)")
    adata.obs = clean_frame(adata.obs, keep_index=True)
    adata.var = clean_frame(adata.var, keep_index=True)
    tables = adata.uns.get("tables", {})
    adata.uns["tables"] = {str(k): clean_frame(v, categorize=True) for k, v in dict(tables).items()}
    for key in list(adata.uns.keys()):
        if key in ("tables", "examples", "example_activations"):
            continue
        adata.uns[key] = to_h5(adata.uns[key])


def write_catalog(adata: anndata.AnnData, out: str | os.PathLike[str], *, overwrite: bool = False,
                  compression: str | None = None) -> Path:
    """Write ``<out>/catalog.h5ad`` and ``<out>/schema.json`` atomically; returns the folder ``out``.

    Everything is written to ``<out>.partial`` first and renamed into place at the end, so a failure leaves no
    catalog behind. An existing non-empty ``out`` is refused unless ``overwrite``, which replaces it by renames.
    ``compression`` (``"gzip"`` or ``"lzf"``) shrinks the file at some cost in reading speed.
    """
    import shutil

    from workbench._catalog_build import check_target, fresh_partial, publish, write_json

    out = Path(out)
    check_target(out, overwrite)
    _prepare_for_write(adata)
    tmp = fresh_partial(out)
    try:
        adata.write_h5ad(tmp / CATALOG_FILE, compression=compression)
        write_json(tmp / SCHEMA_FILE, _schema_json(adata))
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _schema_json(adata: anndata.AnnData) -> dict[str, Any]:
    return {
        "schema_version": str(adata.uns["schema_version"]),
        "file": CATALOG_FILE,
        "n_features": int(adata.n_vars),
        "n_sequences": int(adata.n_obs),
        "obs_columns": [str(c) for c in adata.obs.columns],
        "var_columns": [str(c) for c in adata.var.columns],
        "layers": [str(k) for k in adata.layers.keys()],
        "varm": [str(k) for k in adata.varm.keys()],
        "uns": sorted(str(k) for k in adata.uns.keys()),
        "tables": sorted(str(k) for k in adata.uns.get("tables", {}).keys()),
        "examples_columns": [str(c) for c in adata.uns["examples"].columns] if "examples" in adata.uns else [],
    }


# ------------------------------------------------------------------------------------------------------------ reading


class Example(NamedTuple):
    """One example sequence of a feature."""

    sequence_id: str
    kind: str
    """``"top"`` or the quantile bin it was sampled from, e.g. ``"q0.25-0.5"``."""
    sequence: str
    activations: np.ndarray
    """Per-token activation normalised by the feature's maximum (0..1, quantised to 1/255)."""


def _read_elem(node: Any) -> Any:
    try:
        from anndata.io import read_elem
    except ImportError:  # pragma: no cover - anndata < 0.11
        from anndata.experimental import read_elem
    return read_elem(node)


def _read_frame(group: Any) -> pd.DataFrame:
    """An anndata-encoded DataFrame, column by column (anndata's own reader turns integer indexes into strings, which
    takes seconds on million-row tables); a ``0..n-1`` integer index comes back as a RangeIndex."""
    import pandas as pd

    attrs = dict(group.attrs)
    if attrs.get("encoding-type") != "dataframe":
        return _read_elem(group)
    order = [str(c) for c in np.atleast_1d(attrs.get("column-order", []))]
    key = str(attrs.get("_index", "_index"))
    columns = {c: _read_elem(group[c]) for c in order}
    index = _read_elem(group[key]) if key in group else None
    frame = pd.DataFrame(columns, columns=order, copy=False)
    if index is not None:
        index = np.asarray(index)
        if index.dtype.kind in "iu" and np.array_equal(index, np.arange(len(index))):
            frame.index = pd.RangeIndex(len(index))
        else:
            frame.index = pd.Index(index.astype(str) if index.dtype == object else index, name=None if key == "_index" else key)
    return frame


def _equals(series: pd.Series, value: str) -> np.ndarray:
    """``series == value`` as strings, through the codes when the column is categorical (fast on big tables)."""
    if hasattr(series, "cat"):
        hit = np.flatnonzero(series.cat.categories.astype(str) == value)
        return series.cat.codes.to_numpy() == (int(hit[0]) if len(hit) else -2)
    return (series.astype(str) == value).to_numpy()


def _schema_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise WorkbenchError(f"catalog schema version {version!r} is not 'major.minor'") from None


class Catalog:
    """Read access to a written catalog (see ``docs/catalog_schema.md``); open with :meth:`Catalog.open`.

    Opening reads the feature table, summary, provenance, metrics and the example index; tables, sequences, the
    decoder and example activations are read on first use and cached (thread-safe, never unpickled); ``adata``
    gives the whole AnnData (``X`` backed on disk when the file is large).
    """

    def __init__(self, path: Path, *, var: pd.DataFrame, uns: Mapping[str, Any], examples: pd.DataFrame,
                 table_names: list[str]) -> None:
        import pandas as pd

        self.path = path
        self._var = var
        self._uns = dict(uns)
        self._examples = examples
        self._table_names = table_names
        self._cache: dict[str, Any] = {}
        self._lock = threading.RLock()
        # Examples index: rows of each feature form one block (written sorted by feature).
        feat = (pd.Categorical(examples["feature"].astype(str), categories=list(var.index)).codes if len(examples)
                else np.zeros(0, np.int64))
        order = np.argsort(feat, kind="stable")
        if np.any(order != np.arange(len(order))):
            self._examples = examples.iloc[order].reset_index(drop=True)
            feat = feat[order]
        self._ex_start = np.searchsorted(feat, np.arange(len(var)), side="left")
        self._ex_end = np.searchsorted(feat, np.arange(len(var)), side="right")
        self._position = {name: i for i, name in enumerate(var.index)}

    # -- opening -----------------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Catalog:
        """Open a catalog folder (or its ``catalog.h5ad``); a non-catalog or a newer major schema is refused."""
        import h5py

        from workbench._catalog_build import to_python

        path = Path(path)
        file = path / CATALOG_FILE if path.is_dir() else path
        if not file.is_file():
            partial = path.with_name(path.name + ".partial")
            hint = f" (an unfinished write is in {partial})" if partial.exists() else ""
            raise WorkbenchError(f"{path}: not a catalog, no {CATALOG_FILE}{hint}")
        try:
            h5 = h5py.File(file, "r")
        except OSError as exc:
            raise WorkbenchError(f"{file}: not a catalog (not an HDF5 / h5ad file: {exc})") from None
        with h5:
            if "uns" not in h5 or "schema_version" not in h5["uns"]:
                raise WorkbenchError(f"{file}: an h5ad file but not a workbench catalog (no uns/schema_version)")
            version = str(to_python(_read_elem(h5["uns/schema_version"])))
            major = _schema_major(version)
            ours = _schema_major(SCHEMA_VERSION)
            if major > ours:
                raise WorkbenchError(f"{file}: catalog schema {version} is newer than this workbench reads ({SCHEMA_VERSION});"
                                     " upgrade the workbench")
            if major < ours:
                raise WorkbenchError(f"{file}: catalog schema {version} is older than this workbench reads ({SCHEMA_VERSION});"
                                     " rebuild the catalog")
            var = _read_frame(h5["var"])
            uns = {k: to_python(_read_elem(h5["uns"][k])) for k in ("summary", "provenance", "metrics", "images", "universality")
                   if k in h5["uns"]}
            uns["schema_version"] = version
            examples = _read_frame(h5["uns/examples"]) if "examples" in h5["uns"] else None
            tables = sorted(h5["uns/tables"].keys()) if "tables" in h5["uns"] else []
        if examples is None:
            import pandas as pd

            examples = pd.DataFrame({"feature": pd.Series(dtype=object), "kind": pd.Series(dtype=object),
                                     "rank": pd.Series(dtype=np.int32), "sequence_id": pd.Series(dtype=object),
                                     "max_activation": pd.Series(dtype=np.float32), "offset": pd.Series(dtype=np.int64),
                                     "length": pd.Series(dtype=np.int32)})
        return cls(file, var=var, uns=uns, examples=examples, table_names=tables)

    def __repr__(self) -> str:
        s = self.summary
        return (f"Catalog({str(self.path)!r}, model={self.provenance.get('model')!r}, layer={self.provenance.get('layer')},"
                f" features={len(self._var)}, sequences={s.get('n_sequences')}, tables={self._table_names})")

    def _cached(self, key: str, load: Any) -> Any:
        with self._lock:
            if key not in self._cache:
                self._cache[key] = load()
            return self._cache[key]

    def _h5(self, key: str) -> Any:
        import h5py

        with h5py.File(self.path, "r") as h5:
            node = h5[key]
            return _read_frame(node) if isinstance(node, h5py.Group) else _read_elem(node)

    # -- whole-catalog views -------------------------------------------------------------------------------------------
    @property
    def adata(self) -> anndata.AnnData:
        """The full AnnData (cached); ``X`` stays on disk (backed ``"r"``) when the file exceeds 256 MiB."""
        import anndata as ad

        def load() -> Any:
            backed = "r" if self.path.stat().st_size > BACKED_BYTES else None
            return ad.read_h5ad(self.path, backed=backed)

        return self._cached("adata", load)

    @property
    def schema_version(self) -> str:
        return str(self._uns["schema_version"])

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self._uns.get("summary", {}))

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self._uns.get("provenance", {}))

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self._uns.get("metrics", {}))

    @property
    def universality(self) -> dict[str, dict[str, Any]]:
        """Stored cross-model comparisons (``uns["universality"]``, :func:`workbench.write_universality`):
        key -> ``{"summary": dict, "features": DataFrame}``; empty when the catalog has none."""
        from workbench._universality import stored

        return stored(self._uns.get("universality"))

    @property
    def features(self) -> pd.DataFrame:
        """The feature table (``var``; index = feature id). Shared, do not modify in place."""
        return self._var

    @property
    def tables(self) -> list[str]:
        """Names of the tables in ``uns["tables"]``."""
        return list(self._table_names)

    @property
    def sequences(self) -> pd.DataFrame:
        """The sequence table (``obs``; index = sequence id), read on first use."""
        return self._cached("obs", lambda: self._h5("obs"))

    @property
    def decoder(self) -> np.ndarray:
        """``(n_features, d_in)`` decoder directions (unit rows, SAE-normalised units), read on first use."""
        return self._cached("decoder", lambda: np.asarray(self._h5("varm/decoder"), dtype=np.float32))

    @property
    def umap(self) -> np.ndarray:
        """``(n_features, 2)`` UMAP coordinates (NaN for dead features)."""
        return self._cached("umap", lambda: np.asarray(self._h5("varm/umap"), dtype=np.float32))

    @property
    def image_info(self) -> dict[str, Any] | None:
        """For image catalogs, ``uns["images"]``: ``shape`` (C, H, W) of the stored pixels, ``grid`` (h, w) of the
        analysed layer, ``classes``, ``positive_class`` and the data set; ``None`` for sequence catalogs."""
        info = self._uns.get("images")
        return dict(info) if info else None

    def image(self, sequence_id: str) -> np.ndarray:
        """The stored pixels of one image, ``(C, H, W)`` uint8 (image catalogs only)."""
        info = self.image_info
        if info is None:
            raise WorkbenchError(f"{self.path} is not an image catalog")
        index = self._cached("obs_position", lambda: {str(s): i for i, s in enumerate(self.sequences.index)})
        if str(sequence_id) not in index:
            raise WorkbenchError(f"no image {sequence_id!r} in {self.path}")
        pixels = self._cached("obsm:image", lambda: np.asarray(self._h5("obsm/image")))
        return pixels[index[str(sequence_id)]].reshape([int(v) for v in info["shape"]])

    def heatmap(self, activations: np.ndarray) -> np.ndarray:
        """An example's per-position activations laid on the layer's grid and upsampled (bilinear) to the image size:
        ``(H, W)`` float32 in the activations' units (image catalogs only)."""
        from scipy.ndimage import zoom

        info = self.image_info
        if info is None:
            raise WorkbenchError(f"{self.path} is not an image catalog")
        gh, gw = (int(v) for v in info["grid"])
        _, h, w = (int(v) for v in info["shape"])
        acts = np.asarray(activations, dtype=np.float32)
        if acts.size != gh * gw:
            raise WorkbenchError(f"{acts.size} activations do not fill the {gh}x{gw} grid")
        grid = acts.reshape(gh, gw)
        if (gh, gw) == (h, w):
            return grid
        out = zoom(grid, (h / gh, w / gw), order=1, mode="nearest", grid_mode=True)
        return np.clip(out[:h, :w], 0.0, None).astype(np.float32)

    def table(self, name: str) -> pd.DataFrame:
        """A table of ``uns["tables"]`` (read on first use; returns a shallow copy)."""
        if name not in self._table_names:
            raise WorkbenchError(f"no table {name!r} in {self.path}; tables: {', '.join(self._table_names) or 'none'}")
        return self._cached(f"table:{name}", lambda: self._h5(f"uns/tables/{name}")).copy(deep=False)

    # -- one feature ----------------------------------------------------------------------------------------------------------
    def _index(self, fid: str | int) -> int:
        if isinstance(fid, (int, np.integer)) and not isinstance(fid, bool):
            j = int(fid)
        else:
            text = str(fid).strip()
            if text in self._position:
                return self._position[text]
            digits = text[1:] if text[:1].lower() in ("f", "u") else text
            if not digits.isdigit():
                raise WorkbenchError(f"no feature {fid!r} in {self.path}")
            j = int(digits)
        if not 0 <= j < len(self._var):
            raise WorkbenchError(f"feature {fid!r} is out of range (the catalog has {len(self._var)} features)")
        return j

    def feature_id(self, fid: str | int) -> str:
        """The feature's name (``f00012``) from a name, an index or a bare number."""
        return str(self._var.index[self._index(fid)])

    def feature(self, fid: str | int, *, n_concepts: int = 10) -> dict[str, Any]:
        """Everything about one feature: its ``var`` row, its best concepts (``concepts`` DataFrame from the
        association table, by test F1) and its ``examples`` (see :meth:`examples`)."""
        from workbench._catalog_build import to_python

        j = self._index(fid)
        name = str(self._var.index[j])
        row = {str(k): to_python(v) for k, v in self._var.iloc[j].items()}
        row = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        concepts = None
        if "association" in self._table_names:
            pairs = self.table("association")
            hit = pairs[_equals(pairs["feature"], name)]
            concepts = hit.sort_values(["test_f1", "val_f1"], ascending=False, kind="stable").head(n_concepts)
            concepts = concepts.reset_index(drop=True)
        return {"feature": name, "index": j, **row, "umap": self.umap[j].tolist(), "concepts": concepts,
                "examples": self.examples(j)}

    def examples(self, fid: str | int) -> list[Example]:
        """The feature's examples: top sequences first, then the quantile-bin samples, each with per-token
        activations (normalised to the feature's maximum)."""
        import h5py

        j = self._index(fid)
        a, b = int(self._ex_start[j]), int(self._ex_end[j])
        if a == b:
            return []
        rows = self._examples.iloc[a:b]
        offsets = rows["offset"].to_numpy(dtype=np.int64)
        lengths = rows["length"].to_numpy(dtype=np.int64)
        lo, hi = int(offsets.min()), int((offsets + lengths).max())
        with h5py.File(self.path, "r") as h5:
            block = np.asarray(h5["uns/example_activations"][lo:hi])
        seqs = self.sequences["sequence"]
        out = []
        for sid, kind, off, n in zip(rows["sequence_id"].astype(str), rows["kind"].astype(str), offsets, lengths):
            acts = block[off - lo : off - lo + n].astype(np.float32) / 255.0
            out.append(Example(sid, kind, str(seqs.loc[sid]), acts))
        return out

    def neighbors(self, fid: str | int, k: int = 10) -> pd.DataFrame:
        """The ``k`` features whose decoder directions are closest in cosine similarity."""
        import pandas as pd

        j = self._index(fid)
        dec = self.decoder
        norms = np.linalg.norm(dec, axis=1)
        sims = dec @ dec[j] / np.maximum(norms * norms[j], 1e-12)
        sims[j] = -np.inf
        k = max(0, min(int(k), len(sims) - 1))
        top = np.argpartition(-sims, k - 1)[:k] if k else np.zeros(0, dtype=int)
        top = top[np.lexsort((top, -sims[top]))]
        var = self._var.iloc[top]
        return pd.DataFrame({"feature": var.index.astype(str), "cosine": sims[top].astype(np.float64),
                             "family": var["family"].astype(str).to_numpy() if "family" in var else "",
                             "top_concept": var["top_concept"].to_numpy() if "top_concept" in var else None,
                             "description": var["description"].astype(str).to_numpy()})

    # -- searching -------------------------------------------------------------------------------------------------------------
    def search(self, query: str, *, limit: int = 20) -> pd.DataFrame:
        """Features matching ``query`` (case-insensitive): a feature id or number, a concept-name substring (ranked by
        the pair's test F1), or words that all occur in the description. Columns: ``feature, match, concept,
        test_f1, description, family``."""
        import pandas as pd

        q = query.strip()
        ql = q.lower()
        rows: list[tuple[str, str, Any, float]] = []
        if not ql:
            return _search_frame(rows, self._var, limit)
        try:
            j = self._index(q)
            rows.append((self.feature_id(j), "id", self._var["top_concept"].iat[j], _f(self._var["top_f1"].iat[j])))
        except WorkbenchError:
            pass
        if "association" in self._table_names:
            pairs = self.table("association")
            concept = pairs["concept"]
            if hasattr(concept, "cat"):
                cats = pd.Series(concept.cat.categories.astype(str))
                match = np.flatnonzero(cats.str.lower().str.contains(ql, regex=False).to_numpy())
                mask = np.isin(concept.cat.codes.to_numpy(), match)
            else:
                mask = concept.astype(str).str.lower().str.contains(ql, regex=False).to_numpy()
            hit = pairs[mask].sort_values(["test_f1", "val_f1"], ascending=False, kind="stable").drop_duplicates("feature")
            rows += [(str(f), "concept", str(c), _f(v)) for f, c, v in zip(hit["feature"], hit["concept"], hit["test_f1"])]
        words = ql.split()
        text = (self._var["description"].astype(str) + " " + self._var["top_concept"].astype(str)).str.lower()
        mask = np.ones(len(text), dtype=bool)
        for w in words:
            mask &= text.str.contains(w, regex=False).to_numpy()
        found = self._var[mask]
        order = np.argsort(-np.nan_to_num(found["top_f1"].to_numpy(dtype=np.float64), nan=-1.0), kind="stable")
        rows += [(str(found.index[i]), "description", found["top_concept"].iat[i], _f(found["top_f1"].iat[i])) for i in order]
        return _search_frame(rows, self._var, limit)

    def concept(self, name: str, *, limit: int = 10) -> pd.DataFrame:
        """The best features for concept ``name`` (each pair at its chosen threshold), by test F1, followed by the best
        unit of each control (``set`` = ``neurons`` / ``random``) for comparison."""
        import difflib

        import pandas as pd

        if "association" not in self._table_names:
            raise WorkbenchError(f"{self.path} has no association table")
        pairs = self.table("association")
        known = list(pairs["concept"].cat.categories.astype(str)) if hasattr(pairs["concept"], "cat") else \
            sorted(pairs["concept"].astype(str).unique())
        best_tables = {t.removeprefix("best_"): self.table(t) for t in self._table_names if t.startswith("best_")}
        for t in best_tables.values():
            known += [str(c) for c in t["concept"]]
        known = list(dict.fromkeys(known))
        target = name if name in known else next((c for c in known if c.lower() == name.lower()), None)
        if target is None:
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise WorkbenchError(f"no concept {name!r} in {self.path}{hint}")
        hit = pairs[_equals(pairs["concept"], target)]
        hit = hit.sort_values(["test_f1", "val_f1"], ascending=False, kind="stable").head(limit)
        cols = [c for c in ("feature", "concept", "threshold", "val_f1", "test_f1", "test_precision", "test_recall",
                            "test_domain_recall", "q_value") if c in hit.columns]
        sae = hit[cols].astype({"feature": str, "concept": str}).assign(set="sae")
        var = self._var.reindex(sae["feature"])
        sae["description"] = var["description"].astype(str).to_numpy()
        sae["family"] = var["family"].astype(str).to_numpy()
        parts = [sae]
        for set_name, best in best_tables.items():
            if set_name == "sae":
                continue
            row = best[_equals(best["concept"], target)]
            if len(row):
                r = row.iloc[0]
                stats = {c: r[c] for c in ("threshold", "val_f1", "test_f1", "q_value") if c in row.columns}
                parts.append(pd.DataFrame([{"set": set_name, "feature": str(r["best_feature"]), "concept": target, **stats}]))
        out = pd.concat(parts, ignore_index=True)
        front = ["set", "feature", "concept"]
        return out[front + [c for c in out.columns if c not in front]]

    # -- export ---------------------------------------------------------------------------------------------------------------
    def export(self, out: str | os.PathLike[str], *, formats: Sequence[str] = ("parquet", "csv", "json"),
               overwrite: bool = False) -> list[Path]:
        """Write the features, sequences, examples (with per-token activations) and every table in each format,
        plus ``summary.json``, ``provenance.json``, ``metrics.json`` and ``schema.json``, to folder ``out``
        (atomically: ``<out>.partial`` renamed at the end). Returns the written files.

        JSON tables are arrays of row objects (missing values are ``null``); CSV holds the shortest exact text of
        every float (read it with ``pandas.read_csv(..., float_precision="round_trip")`` for bit-exact values) and
        example activations as space-separated numbers; Parquet keeps dtypes, categoricals and lists."""
        import shutil

        from workbench._catalog_build import check_target, fresh_partial, publish, write_json

        formats = tuple(dict.fromkeys(formats))
        bad = [f for f in formats if f not in ("parquet", "csv", "json")]
        if bad or not formats:
            raise InputError(f"unknown export format(s) {bad or list(formats)}; use parquet, csv, json")
        out = Path(out)
        check_target(out, overwrite)
        tmp = fresh_partial(out)
        written: list[Path] = []
        try:
            frames = {"features": self._export_features(), "sequences": self.sequences.rename_axis("sequence_id").reset_index(),
                      "examples": self._export_examples()}
            frames.update({f"tables/{name}": self.table(name) for name in self._table_names})
            for stem, frame in frames.items():
                for fmt in formats:
                    path = tmp / f"{stem}.{fmt}"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    _write_frame(frame, path, fmt)
                    written.append(path)
            for stem, data in (("summary", self.summary), ("provenance", self.provenance), ("metrics", self.metrics)):
                write_json(tmp / f"{stem}.json", data)
                written.append(tmp / f"{stem}.json")
            schema = self.path.with_name(SCHEMA_FILE)
            if schema.is_file():
                shutil.copyfile(schema, tmp / SCHEMA_FILE)
                written.append(tmp / SCHEMA_FILE)
            publish(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return [out / p.relative_to(tmp) for p in written]

    def _export_features(self) -> pd.DataFrame:
        df = self._var.rename_axis("feature").reset_index()
        xy = self.umap
        df["umap_1"], df["umap_2"] = xy[:, 0], xy[:, 1]
        return df

    def _export_examples(self) -> pd.DataFrame:
        import h5py

        ex = self._examples.copy()
        with h5py.File(self.path, "r") as h5:
            flat = np.asarray(h5["uns/example_activations"]) if "example_activations" in h5["uns"] else np.zeros(0, np.uint8)
        seqs = self.sequences["sequence"]
        ex["sequence"] = seqs.reindex(ex["sequence_id"].astype(str)).to_numpy()
        ex["activations"] = [(flat[o : o + n].astype(np.float32) / 255.0).round(4).tolist()
                             for o, n in zip(ex["offset"].to_numpy(), ex["length"].to_numpy())]
        return ex.drop(columns=["offset"])


def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _search_frame(rows: list[tuple[str, str, Any, float]], var: pd.DataFrame, limit: int) -> pd.DataFrame:
    import pandas as pd

    seen: set[str] = set()
    keep = []
    for r in rows:
        if r[0] not in seen:
            seen.add(r[0])
            keep.append(r)
        if len(keep) >= limit:
            break
    df = pd.DataFrame(keep, columns=["feature", "match", "concept", "test_f1"])
    sub = var.reindex(df["feature"])
    df["concept"] = [None if c is None or (isinstance(c, float) and np.isnan(c)) else str(c) for c in df["concept"]]
    df["description"] = sub["description"].astype(str).to_numpy() if len(df) else pd.Series(dtype=object)
    df["family"] = sub["family"].astype(str).to_numpy() if len(df) else pd.Series(dtype=object)
    return df


def _write_frame(frame: pd.DataFrame, path: Path, fmt: str) -> None:
    """One DataFrame in one format (list columns become space-separated text in CSV)."""
    import pandas as pd

    df = frame.reset_index(drop=True) if isinstance(frame.index, pd.RangeIndex) else frame.reset_index()
    if fmt == "parquet":
        df.to_parquet(path, index=False)
    elif fmt == "csv":
        csv = df.copy()
        for col in csv.columns:
            if csv[col].dtype == object and len(csv) and isinstance(csv[col].iloc[0], list):
                csv[col] = [" ".join(f"{v:g}" for v in values) for values in csv[col]]
        csv.to_csv(path, index=False)
    else:
        _write_json_records(df, path)


def _write_json_records(df: pd.DataFrame, path: Path, chunk: int = 100_000) -> None:
    """A JSON array of row objects with exact floats (Python's repr; pandas' writer keeps only 15 decimals, which
    turns small p-values to 0) and null for missing values."""
    import json

    import pandas as pd

    from workbench._catalog_build import _json_default

    names = [str(c) for c in df.columns]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("[")
        first = True
        for start in range(0, len(df), chunk):
            part = df.iloc[start : start + chunk]
            columns = []
            for c in part.columns:
                values = part[c].astype(object).tolist() if isinstance(part[c].dtype, pd.CategoricalDtype) else part[c].tolist()
                missing = part[c].isna().to_numpy()
                if missing.any():
                    values = [None if m else v for v, m in zip(values, missing)]
                columns.append(values)
            for row in zip(*columns):
                fh.write(("" if first else ",") + json.dumps(dict(zip(names, row)), ensure_ascii=False, default=_json_default))
                first = False
        fh.write("]")

