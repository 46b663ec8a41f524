"""The feature catalog: one ``catalog.h5ad`` (AnnData) per catalog folder, and the :class:`Catalog` reader.

A catalog holds, for one SAE on one layer of one store: the analysed sequences (``obs``), the features (``var``:
statistics, best concept, one-line description, family), sequence x feature activations (``X``: max over the
sequence's tokens; ``layers["mean"]``: mean), decoder directions and a UMAP layout (``varm``), the top-activating
and quantile-sampled examples of every feature with per-token activations, and the association tables, summary,
SAE metrics and provenance (``uns``). Every field is documented in ``docs/catalog_schema.md``; the layout is
versioned by :data:`SCHEMA_VERSION`. Nothing in the file is pickled, so notebooks, apps and batch jobs can open
any catalog safely; :class:`Catalog` reads only what a call needs (the schema version and feature ids on open;
summaries, the feature table, examples, tables, the decoder and example activations on first use; ``X`` backed on
disk for large files) and reads the HDF5 file with h5py, without importing anndata unless ``adata`` is asked for.

This module is the reading and querying half; building and writing (:func:`build_catalog`, :func:`write_catalog`,
:func:`catalog_parts`, :class:`CatalogParts`) live in :mod:`workbench._catalog_write` and are importable from here
(loaded on first use, so that opening a catalog loads none of the building code).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from workbench._catalog_views import FeatureInfo
from workbench.errors import InputError, WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    import anndata
    import pandas as pd

    from workbench._catalog_encode import EncodedSequences
    from workbench._catalog_write import CatalogParts, build_catalog, catalog_parts, write_catalog
    from workbench.describe import describe_features, feature_families

__all__ = [
    "SCHEMA_VERSION", "CATALOG_FILE", "SCHEMA_FILE", "EXAMPLE_QUANTILES", "Catalog", "Example", "FeatureInfo", "Units",
    "EncodedSequences", "build_catalog", "CatalogParts", "catalog_parts", "write_catalog", "describe_features",
    "feature_families",
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
UNS_DICTS = ("summary", "provenance", "metrics", "images")
"""Small ``uns`` dicts, read together on first use of any of them (a few hundred tiny HDF5 datasets: 0.1-0.3 s)."""

_ELSEWHERE = {
    "CatalogParts": "workbench._catalog_write",
    "catalog_parts": "workbench._catalog_write",
    "build_catalog": "workbench._catalog_write",
    "write_catalog": "workbench._catalog_write",
    "describe_features": "workbench.describe",
    "feature_families": "workbench.describe",
    "EncodedSequences": "workbench._catalog_encode",
}


def __getattr__(name: str) -> Any:
    if name in _ELSEWHERE:
        import importlib

        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    raise AttributeError(f"module 'workbench.catalog' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class Units(NamedTuple):
    """What a catalog's rows and tokens are called in text (:attr:`Catalog.units`)."""

    item: str
    """One row of ``obs``: ``"sequence"`` or ``"image"``."""
    items: str
    """Its plural."""
    token: str
    """One token: ``"residue"`` or ``"position"`` (of the layer's grid)."""
    tokens: str
    """Its plural."""


class Example(NamedTuple):
    """One example sequence of a feature."""

    sequence_id: str
    kind: str
    """``"top"`` or the quantile bin it was sampled from, e.g. ``"q0.25-0.5"``."""
    sequence: str
    activations: np.ndarray
    """Per-token activation normalised by the feature's maximum (0..1, quantised to 1/255)."""

    def __repr__(self) -> str:
        from workbench._catalog_views import example_repr

        return example_repr(self)


class Catalog:
    """Read access to a written catalog (see ``docs/catalog_schema.md``); open with :meth:`Catalog.open`.

    Opening checks the schema version and reads the feature ids and the names of the ``uns`` entries (h5py only:
    no pandas, no anndata); the summary, provenance and metrics, the feature table, the example index, tables,
    sequences, the decoder and example activations are read on first use and cached (thread-safe, never
    unpickled); ``adata`` gives the whole AnnData (``X`` backed on disk when the file is large). :meth:`encode`
    runs new sequences through the catalog's model and SAE.
    """

    def __init__(self, path: Path, *, names: list[str], uns: dict[str, Any], table_names: list[str],
                 uns_keys: Sequence[str] = ()) -> None:
        self.path = path
        self._names = list(names)
        self._uns = dict(uns)
        self._uns_keys = list(uns_keys)
        self._table_names = table_names
        self._cache: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._position = {name: i for i, name in enumerate(self._names)}

    # -- opening -----------------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Catalog:
        """Open a catalog folder (or its ``catalog.h5ad``); a non-catalog or a newer major schema is refused."""
        import h5py

        from workbench._catalog_build import to_python
        from workbench._catalog_read import frame_index, read_elem, schema_major

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
            version = str(to_python(read_elem(h5["uns/schema_version"])))
            major = schema_major(version)
            ours = schema_major(SCHEMA_VERSION)
            if major > ours:
                raise WorkbenchError(f"{file}: catalog schema {version} is newer than this workbench reads "
                                     f"({SCHEMA_VERSION}); upgrade the workbench")
            if major < ours:
                raise WorkbenchError(f"{file}: catalog schema {version} is older than this workbench reads "
                                     f"({SCHEMA_VERSION}); rebuild the catalog")
            if "var" not in h5:
                raise WorkbenchError(f"{file}: an h5ad file but not a workbench catalog (no var)")
            names = frame_index(h5["var"])
            uns_keys = [str(k) for k in h5["uns"].keys()]
            tables = sorted(h5["uns/tables"].keys()) if "tables" in uns_keys else []
        return cls(file, names=names, uns={"schema_version": version}, table_names=tables, uns_keys=uns_keys)

    def __repr__(self) -> str:
        s = self.summary
        return (f"Catalog({str(self.path)!r}, model={self.provenance.get('model')!r}, "
                f"layer={self.provenance.get('layer')}, features={len(self._names)}, "
                f"sequences={s.get('n_sequences')}, tables={self._table_names})")

    def _cached(self, key: str, load: Any) -> Any:
        with self._lock:
            if key not in self._cache:
                self._cache[key] = load()
            return self._cache[key]

    def _h5(self, key: str) -> Any:
        import h5py

        from workbench._catalog_read import read_elem, read_frame

        with h5py.File(self.path, "r") as h5:
            node = h5[key]
            return read_frame(node) if isinstance(node, h5py.Group) else read_elem(node)

    @property
    def _var(self) -> pd.DataFrame:
        return self._cached("var", lambda: self._h5("var"))

    def _uns_dict(self, key: str) -> dict[str, Any]:
        """One of the small ``uns`` dicts (:data:`UNS_DICTS`, all read on first use); empty when absent."""

        def load() -> dict[str, Any]:
            import h5py

            from workbench._catalog_build import to_python
            from workbench._catalog_read import read_elem

            with h5py.File(self.path, "r") as h5:
                return {k: to_python(read_elem(h5["uns"][k])) for k in UNS_DICTS if k in self._uns_keys}

        return dict(self._cached("uns_dicts", load).get(key) or {})

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
        """``uns["summary"]``: headline numbers (concepts captured, fidelity, counts...)."""
        return self._uns_dict("summary")

    @property
    def provenance(self) -> dict[str, Any]:
        """``uns["provenance"]``: model, layer, store, SAE and parameters the catalog was built from."""
        return self._uns_dict("provenance")

    @property
    def metrics(self) -> dict[str, Any]:
        """``uns["metrics"]``: the SAE's fidelity metrics."""
        return self._uns_dict("metrics")

    @property
    def universality(self) -> dict[str, dict[str, Any]]:
        """Stored cross-model comparisons (``uns["universality"]``, :func:`workbench.write_universality`):
        key -> ``{"summary": dict, "features": DataFrame}``; empty when the catalog has none."""
        from workbench._catalog_build import to_python
        from workbench._universality import stored

        if "universality" not in self._uns_keys:
            return {}
        return stored(self._cached("universality", lambda: to_python(self._h5("uns/universality"))))

    @property
    def features(self) -> pd.DataFrame:
        """The feature table (``var``; index = feature id), read on first use. Shared, do not modify in place."""
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
    def units(self) -> Units:
        """What the catalog's rows and tokens are, for text: ``Units("image", "images", "position", "positions")``
        for image catalogs, ``Units("sequence", "sequences", "residue", "residues")`` otherwise."""
        if self.image_info is not None:
            return Units("image", "images", "position", "positions")
        return Units("sequence", "sequences", "residue", "residues")

    @property
    def image_info(self) -> dict[str, Any] | None:
        """For image catalogs, ``uns["images"]``: ``shape`` (C, H, W) of the stored pixels, ``grid`` (h, w) of the
        analysed layer, ``classes``, ``positive_class`` and the data set; ``None`` for sequence catalogs."""
        info = self._uns_dict("images")
        return info or None

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

    def heatmap(self, activations: np.ndarray, *, mode: str = "nearest") -> np.ndarray:
        """An example's per-position activations laid on the layer's grid and brought to the image size: ``(H, W)``
        float32 in the activations' units (image catalogs only).

        ``mode="nearest"`` (default) gives every grid cell its own block of pixels, cell-aligned (pixel row ``y``
        belongs to cell ``y * grid_h // H``): what the layer resolves, nothing more. ``"bilinear"`` interpolates
        between cell centres (smoother, for a glance; it spreads each cell over its neighbours)."""
        from scipy.ndimage import zoom

        info = self.image_info
        if info is None:
            raise WorkbenchError(f"{self.path} is not an image catalog")
        if mode not in ("nearest", "bilinear"):
            raise WorkbenchError(f"heatmap mode is 'nearest' or 'bilinear', got {mode!r}")
        gh, gw = (int(v) for v in info["grid"])
        _, h, w = (int(v) for v in info["shape"])
        acts = np.asarray(activations, dtype=np.float32)
        if acts.size != gh * gw:
            raise WorkbenchError(f"{acts.size} activations do not fill the {gh}x{gw} grid")
        grid = acts.reshape(gh, gw)
        if (gh, gw) == (h, w):
            return grid
        if mode == "nearest":
            rows = np.arange(h) * gh // h
            cols = np.arange(w) * gw // w
            return np.ascontiguousarray(grid[rows[:, None], cols[None, :]], dtype=np.float32)
        out = zoom(grid, (h / gh, w / gw), order=1, mode="nearest", grid_mode=True)
        return np.clip(out[:h, :w], 0.0, None).astype(np.float32)

    def table(self, name: str) -> pd.DataFrame:
        """A table of ``uns["tables"]`` (read on first use; returns a shallow copy)."""
        if name not in self._table_names:
            raise WorkbenchError(f"no table {name!r} in {self.path}; tables: {', '.join(self._table_names) or 'none'}")
        return self._cached(f"table:{name}", lambda: self._h5(f"uns/tables/{name}")).copy(deep=False)

    # -- one feature ---------------------------------------------------------------------------------------------------
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
        if not 0 <= j < len(self._names):
            raise WorkbenchError(f"feature {fid!r} is out of range (the catalog has {len(self._names)} features)")
        return j

    def feature_id(self, fid: str | int) -> str:
        """The feature's name (``f00012``) from a name, an index or a bare number."""
        return self._names[self._index(fid)]


    def feature(self, fid: str | int, *, n_concepts: int = 10) -> FeatureInfo:
        """Everything about one feature, as a dict (:class:`FeatureInfo`, whose ``repr`` is a short summary): its
        ``var`` row, ``umap``, its best concepts (``concepts`` DataFrame from the association table, by test F1) and
        its ``examples`` (see :meth:`examples`)."""
        from workbench._catalog_build import to_python
        from workbench._catalog_read import equals

        j = self._index(fid)
        name = self._names[j]
        row = {str(k): to_python(v) for k, v in self._var.iloc[j].items()}
        row = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        concepts = None
        if "association" in self._table_names:
            pairs = self.table("association")
            hit = pairs[equals(pairs["feature"], name)]
            concepts = hit.sort_values(["test_f1", "val_f1"], ascending=False, kind="stable").head(n_concepts)
            concepts = concepts.reset_index(drop=True)
        info = FeatureInfo({"feature": name, "index": j, **row, "umap": self.umap[j].tolist(), "concepts": concepts,
                            "examples": self.examples(j)})
        info.units = self.units
        if self.image_info is not None:
            info.grid = tuple(int(v) for v in self.image_info["grid"])
        return info

    def examples(self, fid: str | int) -> list[Example]:
        """The feature's examples: top sequences first, then the quantile-bin samples, each with per-token
        activations (normalised to the feature's maximum). :meth:`examples_frame` gives them as a table."""
        j = self._index(fid)
        a, b = self._example_range(j)
        if a == b:
            return []
        rows = self._example_table().iloc[a:b]
        offsets = rows["offset"].to_numpy(dtype=np.int64)
        lengths = rows["length"].to_numpy(dtype=np.int64)
        lo, hi = int(offsets.min()), int((offsets + lengths).max())
        block = self._example_activations(lo, hi)
        seqs = self.sequences["sequence"]
        out = []
        for sid, kind, off, n in zip(rows["sequence_id"].astype(str), rows["kind"].astype(str), offsets, lengths):
            acts = block[off - lo : off - lo + n].astype(np.float32) / 255.0
            out.append(Example(sid, kind, str(seqs.loc[sid]), acts))
        return out

    def examples_frame(self, feature: str | int | None = None) -> pd.DataFrame:
        """The examples of ``feature`` (None: of every feature, feature by feature) as a tidy table, one row per
        example: ``feature``, ``kind`` (``top`` or the quantile bin), ``rank``, ``sequence_id``, ``activation`` (the
        sequence's maximum, normalised to the feature's maximum), ``length``, ``peak`` (1-based position of the
        strongest residue), ``imgt`` (its IMGT number, when the catalog numbers its sequences), ``residue`` and
        ``window`` (the strongest residue in brackets with five residues on each side: ``"GYTFT[N]YWMQW"``). Image
        catalogs have ``row`` and ``col`` instead of ``residue`` and ``window``: the grid cell of ``peak`` (0-based,
        as the store's ``y`` and ``x``)."""
        from workbench._catalog_views import examples_frame

        return examples_frame(self, feature)

    def _example_index(self) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        """``uns["examples"]`` sorted by feature (read once), and each feature's first and end row in it."""
        from workbench._catalog_read import example_index

        return self._cached("examples", lambda: example_index(
            self._h5("uns/examples") if "examples" in self._uns_keys else None, self._names))

    def _example_table(self) -> pd.DataFrame:
        return self._example_index()[0]

    def _example_range(self, j: int) -> tuple[int, int]:
        _, start, end = self._example_index()
        return int(start[j]), int(end[j])

    def _example_activations(self, lo: int | None = None, hi: int | None = None) -> np.ndarray:
        """``uns["example_activations"][lo:hi]`` (uint8, x 255 of the normalised activation)."""
        import h5py

        with h5py.File(self.path, "r") as h5:
            if "example_activations" not in h5["uns"]:
                return np.zeros(0, np.uint8)
            return np.asarray(h5["uns/example_activations"][lo:hi])

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


    # -- searching -----------------------------------------------------------------------------------------------------
    def search(self, query: str, *, limit: int = 20) -> pd.DataFrame:
        """Features matching ``query`` (case-insensitive): a feature id or number, a concept-name substring (ranked by
        the pair's test F1), a sequence-level concept substring (per-sequence labels: the best feature of its
        held-out finding, then its largest sequence-probe weights; ``match`` = ``sequence concept``, no test F1), or
        words that all occur in the description. Columns: ``feature, match, concept, test_f1, description,
        family``."""
        from workbench._catalog_query import search

        return search(self, query, limit=limit)

    def concept(self, name: str, *, limit: int = 10) -> pd.DataFrame:
        """The best features for concept ``name`` (each pair at its chosen threshold), by test F1, followed by the best
        unit of each control (``set`` = ``neurons`` / ``random``) for comparison.

        A sequence-level concept (``<column>=<value>`` of per-sequence labels, or a numeric target) has no token
        association: its rows come from the catalog's ``sequence_findings`` (``table``; one row per representation:
        the best single feature held out, its AUROC before and after the covariates, q-value, ``status``) and the
        ``limit`` largest SAE weights of its sequence-level probe (``table`` = ``probe_weights``, ``weight``).
        A unit-level concept of an image catalog (``pathology``) comes from its pooled association tables: per
        representation (``set`` ``sae`` / ``neurons`` / ``random_sae``) the ``limit`` units most associated after
        confound control (adjusted q, then ``|partial_r|``), with AUROC before and after control and, for SAE
        features, where in the frame they fire (``region_share``, ``region``)."""
        from workbench._catalog_query import concept

        return concept(self, name, limit=limit)

    # -- new sequences -------------------------------------------------------------------------------------------------
    def encode(self, sequences: str | Sequence[Any], *, features: Sequence[str | int] | None = None,
               adapter: Any = None, sae: Any = None) -> pd.DataFrame:
        """Run new ``sequences`` through the catalog's model and SAE: one row per residue with ``sequence_id``,
        ``position`` (1-based), ``residue``, ``imgt`` (when the catalog numbers its sequences: the IMGT number of the
        residues of sequences the catalog holds, missing otherwise) and one column per feature of ``features`` (ids
        such as ``"f00042"``, bare numbers or indices; None: every feature that fires on the input), holding the
        activation divided by the feature's maximum over the catalog (``var["max_activation"]``), as in the
        catalog's ``X`` and examples (1 = its strongest catalog firing; new input may exceed 1).

        ``sequences`` is one sequence string, or a list of strings (ids ``seq0``, ``seq1``, ...), ``(id,
        sequence)`` pairs or :class:`workbench.SequenceRecord` s, validated by the model's adapter. The model
        (``provenance["model_source"]``) and the SAE (``provenance["sae_path"]``) are loaded on first use and kept;
        ``adapter`` / ``sae`` pass ones already loaded (a GPU copy, say). :meth:`encode_sparse` returns the codes
        of every feature as a sparse matrix instead."""
        names = None if features is None else [self.feature_id(f) for f in features]
        return self.encode_sparse(sequences, adapter=adapter, sae=sae).frame(names)

    def encode_sparse(self, sequences: str | Sequence[Any], *, adapter: Any = None,
                      sae: Any = None) -> EncodedSequences:
        """What :meth:`encode` computes, for every feature: an :class:`~workbench.catalog.EncodedSequences` with the
        per-residue table (``obs``) and the ``(n_residues, n_features)`` CSR matrix of normalised codes (``codes``);
        ``.frame(features)`` turns it into :meth:`encode`'s DataFrame."""
        from workbench._catalog_encode import encode_records, with_positions

        if self.image_info is not None:
            raise WorkbenchError(f"{self.path} holds images; encode takes sequences (extract new images with "
                                 "workbench.extract and build a catalog from them)")
        adapter, sae = self._encoder(adapter, sae)
        records = self._records(adapter, sequences)
        var = self.features
        prov = self.provenance
        layer = int(prov.get("layer", getattr(sae.cfg, "layer", 0)))
        result = encode_records(adapter, sae, records, layer=layer, max_activation=var["max_activation"].to_numpy(),
                                feature_names=list(self._names))
        column = str((prov.get("annotate_config") or {}).get("position_group") or "imgt")
        return with_positions(result, self.sequences, column, str(prov.get("sequence_separator") or ""))

    def _encoder(self, adapter: Any, sae: Any) -> tuple[Any, Any]:
        """The model adapter and SAE the catalog was built with (loaded once), unless given."""
        from workbench._catalog_encode import encode_sources

        model_source, sae_path, problem = encode_sources(self.provenance)
        if adapter is None and model_source is None:
            raise WorkbenchError(f"{self.path}: {problem}")
        if sae is None:
            sae_problem = encode_sources({"model_source": "-", "sae_path": sae_path})[2]
            if sae_problem is not None:
                raise WorkbenchError(f"{self.path}: {sae_problem}")
            from workbench.sae import load_sae

            sae = self._cached("encode:sae", lambda: load_sae(str(sae_path)))
        if adapter is None:
            from workbench.registry import load_adapter

            adapter = self._cached("encode:adapter", lambda: load_adapter(str(model_source)))
        return adapter, sae

    @staticmethod
    def _records(adapter: Any, sequences: str | Sequence[Any]) -> list[Any]:
        from workbench.records import as_records

        items = [sequences] if isinstance(sequences, str) else list(sequences)
        if not items:
            raise InputError("no sequences to encode")
        records, _ = as_records(items)
        return adapter.validate(records)

    # -- export --------------------------------------------------------------------------------------------------------
    def export(self, out: str | os.PathLike[str], *, formats: str | Sequence[str] = ("parquet", "csv", "json"),
               overwrite: bool = False) -> list[Path]:
        """Write the features, sequences, examples (with per-token activations) and every table in each format,
        plus ``summary.json``, ``provenance.json``, ``metrics.json`` and ``schema.json``, to folder ``out``
        (atomically: ``<out>.partial`` renamed at the end). Returns the written files.

        ``formats`` is a list of ``parquet``, ``csv``, ``json``, or one string of them (``"parquet"``,
        ``"parquet,csv"``). JSON tables are arrays of row objects (missing values are ``null``); CSV holds the
        shortest exact text of every float (read it with ``pandas.read_csv(..., float_precision="round_trip")`` for
        bit-exact values) and example activations as space-separated numbers; Parquet keeps dtypes, categoricals
        and lists."""
        from workbench._catalog_export import export_catalog

        return export_catalog(self, out, formats=formats, overwrite=overwrite)
