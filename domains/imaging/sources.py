"""Annotation sources of the imaging domain for ``workbench annotate --domain imaging --source SPEC``.

Specs: ``dataset`` (the images' labels as recorded in the store: ``label=<name>`` per image and per position) and
``measured`` (frame regions and measured image properties; the pixels are read again from the files the store
records). Both are given when no spec is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import InputError, StoreError

if TYPE_CHECKING:  # pragma: no cover
    from workbench.concepts import ConceptLabels
    from workbench.store import ActivationStore

    from .readers import ImageRecord

__all__ = ["labels_from_specs", "select_sources", "reread", "store_records", "SPECS"]

SPECS = ("dataset", "measured")


def reread(pairs: Sequence[tuple[str, dict[str, Any]]]) -> list[ImageRecord]:
    """Read images again from where a store says they came from: ``(image id, {"source": npz} or {"file": path})``.

    Each ``.npz`` is read once; the records come back in the order of ``pairs``.
    """
    from .readers import read_images, read_medmnist

    by_npz: dict[str, dict[str, ImageRecord]] = {}
    out = []
    for image_id, where in pairs:
        source, file = where.get("source"), where.get("file")
        if source and str(source) != "nan":
            if source not in by_npz:
                if not Path(source).is_file():
                    raise StoreError(f"image {image_id!r}: its source {source} is gone")
                name = image_id.split(":", 1)[0]
                by_npz[source] = {r.id: r for r in read_medmnist(source, name=name)}
            if image_id not in by_npz[source]:
                raise StoreError(f"image {image_id!r} is not in {source}")
            out.append(by_npz[source][image_id])
        elif file and str(file) != "nan":
            if not Path(file).is_file():
                raise StoreError(f"image {image_id!r}: its file {file} is gone")
            rec = read_images([file])[0]
            out.append(type(rec)(image_id, rec.image, dict(rec.meta)))
        else:
            raise StoreError(f"image {image_id!r}: the store does not record where it came from")
    return out


def store_records(store: ActivationStore) -> list[ImageRecord]:
    """Every image of ``store``, read again, in store order, with the labels the store recorded."""
    seqs = store.sequences
    cols = [c for c in ("source", "file") if c in seqs.columns]
    if not cols:
        raise StoreError(f"{store.path}: the store does not record where its images came from")
    pairs = [(str(row["sequence_id"]), {c: row[c] for c in cols}) for _, row in seqs.iterrows()]
    records = reread(pairs)
    meta_cols = [c for c in ("split", "label", "label_name") if c in seqs.columns]
    out = []
    for rec, (_, row) in zip(records, seqs.iterrows()):
        meta = dict(rec.meta)
        meta.update({c: row[c] for c in meta_cols})
        out.append(type(rec)(rec.id, rec.image, meta))
    return out


def labels_from_specs(store: ActivationStore, specs: Sequence[str]) -> ConceptLabels:
    """Concept labels of an image store from ``dataset`` and / or ``measured`` (see the module docstring)."""
    from .annotations import image_labels

    chosen = list(specs) or list(SPECS)
    unknown = [s for s in chosen if s not in SPECS]
    if unknown:
        raise InputError(f"unknown imaging annotation source(s) {unknown}; use {', '.join(SPECS)}")
    labels, _ = image_labels(store, store_records(store))
    return select_sources(labels, chosen)


def select_sources(labels: ConceptLabels, sources: Sequence[str]) -> ConceptLabels:
    """The concepts of ``labels`` whose source is one of ``sources`` (scopes and measures kept)."""
    chosen = list(sources)
    keep_t = labels.token_concepts["source"].isin(chosen).to_numpy().nonzero()[0]
    keep_s = labels.sequence_concepts["source"].isin(chosen).to_numpy().nonzero()[0]
    return labels.subset(keep_t, keep_s)
