"""Building and writing a catalog: :func:`build_catalog` assembles the AnnData, :func:`write_catalog` writes it.

The public names are importable from :mod:`workbench.catalog` (which documents the layout); this module holds the
building half of it so that opening and querying a catalog (:class:`workbench.catalog.Catalog`) loads none of it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from workbench.associate import CAPTURED_F1, _check_sae_matches
from workbench.catalog import CATALOG_FILE, EXAMPLE_QUANTILES, SCHEMA_FILE, SCHEMA_VERSION
from workbench.describe import DESCRIBE_ALPHA, DESCRIBE_MIN_F1, FeatureStats, describe_features, feature_families
from workbench.errors import InputError, StoreError, WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    import anndata
    import pandas as pd

    from workbench.associate import Association, FeatureMatrix
    from workbench.concepts import ConceptLabels
    from workbench.store import ActivationStore

__all__ = ["CatalogParts", "catalog_parts", "build_catalog", "write_catalog", "describe_features", "feature_families"]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _decoder(sae: Any) -> np.ndarray:
    w = sae.W_dec
    w = w.detach().cpu().numpy() if hasattr(w, "detach") else np.asarray(w)
    return np.asarray(w, dtype=np.float32)


def _join_extra(frame: pd.DataFrame, extra: pd.DataFrame, index: Sequence[str], key: str, what: str,
                owner: str) -> pd.DataFrame:
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
    return CatalogParts(layout, x_max, x_mean, stats, np.asarray(features.max_activation),
                        [str(n) for n in features.names], picked, offsets, lengths, flat)


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
            raise WorkbenchError(f"features cover {n_tokens} tokens and labels {labels.n_tokens}, but {store.path} "
                                 f"holds {store.n_tokens}: they come from different stores")
        if n_features != sae.cfg.width or len(features.names) != n_features:
            raise WorkbenchError(f"features have {n_features} columns ({len(features.names)} names) but the SAE has "
                                 f"width {sae.cfg.width}")
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
        obs = _join_extra(obs, obs_extra, layout.sequence_ids, "sequence_id", "obs_extra",
                          "the store's sequence columns")
    if parts.pooled is not None:  # which rows of X carry pooled activations (the others hold an example only)
        obs["pooled"] = np.asarray(parts.pooled, dtype=bool)
    obs = clean_frame(obs, keep_index=True)
    obs.index.name = None

    # -- activations per sequence --------------------------------------------------------------------------------------
    x_max, x_mean = parts.x_max, parts.x_mean

    # -- features ------------------------------------------------------------------------------------------------------
    units = ("positions", "images") if "images" in dict(uns_extra or {}) else ("tokens", "sequences")
    desc = describe_features(association, labels, None, profile_groups=profile_groups, stats=parts.stats, names=names,
                             units=units)
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
    fam_order = (sorted({f for f in fam if f not in ("dead", "none")}, key=int)
                 + [f for f in ("none", "dead") if f in set(fam)])
    var["family"] = pd.Categorical(fam, categories=fam_order)
    if var_extra is not None:
        var = _join_extra(var, var_extra, names, "feature", "var_extra", "the catalog's own feature columns")
    var = clean_frame(var, keep_index=True)
    var.index.name = None

    # -- examples ------------------------------------------------------------------------------------------------------
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

    # -- tables --------------------------------------------------------------------------------------------------------
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

    # -- summary, metrics, provenance ----------------------------------------------------------------------------------
    metrics_clean = {k: v for k, v in dict(metrics or {}).items() if k != "density"}
    summary = _summary(association, controls, metrics_clean, n_features=n_features, n_sequences=n_store_sequences,
                       n_tokens=n_tokens, nnz=int(parts.stats.nnz.sum()), dead=dead, families=var["family"],
                       n_examples=len(examples))
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


def _summary(association: Association, controls: Mapping[str, Association], metrics: Mapping[str, Any], *,
             n_features: int, n_sequences: int, n_tokens: int, nnz: int, dead: np.ndarray, families: Any,
             n_examples: int) -> dict[str, Any]:
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
