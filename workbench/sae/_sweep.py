"""Sweeps over architecture, k, width and sparsity coefficient: one row per run for the FVE-L0 trade-off curve.

With concept labels, every row also gets the SAE-quality columns of :func:`workbench.sae_eval.sae_quality` (sparse
probing F1 at k = 1, 2, 5, 20 and feature absorption), computed once per run and cached in its ``quality.json``.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.store import ActivationStore, open_store

from ._config import TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from workbench.concepts import ConceptLabels

__all__ = ["sweep", "run_quality", "QUALITY_FILE", "MAX_QUALITY_L0"]

QUALITY_FILE = "quality.json"
"""Per run: the SAE-quality summary and tables, with the digest of the labels and options they were computed on."""


def sweep(
    store: ActivationStore | str | os.PathLike[str],
    *,
    out: str | os.PathLike[str],
    layer: int | None = None,
    arch: list[str] = ("topk",),  # type: ignore[assignment]
    k: list[int] = (32,),  # type: ignore[assignment]
    width: list[int] = (4096,),  # type: ignore[assignment]
    l1_coeff: list[float] | None = None,
    train: TrainConfig | None = None,
    labels: ConceptLabels | None = None,
    quality: dict[str, Any] | None = None,
    progress: bool = True,
    one_pass: bool = False,
    device: str = "cpu",
) -> Any:
    """Train one dictionary per combination into ``out/<run>`` and write ``out/sweep.csv``.

    With ``one_pass`` the runs still to train are trained together by :func:`~workbench.sae.train_saes`: each batch
    is read from the store once and given to every run (each run's result is the same as training it alone).

    ``k`` applies to the TopK family, ``l1_coeff`` to ``relu`` and ``jumprelu`` (a list of coefficients traces
    their L0 range; every row records the achieved held-out ``l0``). Runs already finished in ``out`` are reused, so
    an interrupted sweep continues (a run made with other training settings or on another store is trained again). With ``labels`` (concept labels of ``store``), each row also gets
    :data:`workbench.sae_eval.QUALITY_COLUMNS` plus ``n_probe_concepts`` and ``n_absorption_parents``, computed on
    the whole store with :func:`workbench.sae_eval.quality_report` (options from ``quality``; the SAE's decoder is
    passed for the alignment condition of absorption) and cached in ``out/<run>/quality.json``; a cache made from
    other labels or options is recomputed, and a run denser than :data:`MAX_QUALITY_L0` gets NaN there. Returns the
    table as a pandas DataFrame.
    """
    import json

    import pandas as pd

    from ._train import RunSpec, train_sae, train_saes

    store = store if isinstance(store, ActivationStore) else open_store(store)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if labels is not None and labels.n_tokens != store.n_tokens:
        from workbench.errors import InputError

        raise InputError(f"labels cover {labels.n_tokens} tokens but {store.path} holds {store.n_tokens}")
    digest = _quality_digest(labels, quality or {}) if labels is not None else ""
    train = train or TrainConfig()
    plan = []
    for a, w in itertools.product(arch, width):
        knobs = [("k", v) for v in k] if a in ("topk", "batchtopk", "matryoshka") else [("l1_coeff", v) for v in (l1_coeff or [None])]
        for name, value in knobs:
            run = out / f"{a}_w{w}_{name}{value if value is not None else 'default'}"
            options: dict[str, Any] = {name: value} if value is not None else {}
            plan.append((run, a, w, options))
    todo = [(run, a, w, options) for run, a, w, options in plan if not _finished_with(run, train, store)]
    if one_pass and todo:
        train_saes(store, [RunSpec(run, arch=a, width=w, k=options.get("k", 32), l1_coeff=options.get("l1_coeff"))
                           for run, a, w, options in todo],
                   layer=layer, train=train, progress=progress, overwrite=True, device=device)
    else:
        for run, a, w, options in todo:
            train_sae(store, out=run, layer=layer, arch=a, width=w, train=train, progress=progress, overwrite=True, device=device, **options)
    rows = []
    for run, a, w, options in plan:
        m = json.loads((run / "metrics.json").read_text())
        lr = m.get("loss_recovered", {})
        row = {
            "run": run.name, "arch": a, "width": w, "k": options.get("k"), "l1_coeff": options.get("l1_coeff"),
            "fve": m["fve"], "l0": m["l0"], "dead_fraction": m["dead_fraction"], "mse": m["mse"],
            "loss_recovered": lr.get("loss_recovered"), "ce_increase": lr.get("ce_increase"),
            "train_tokens_per_s": m.get("train_tokens_per_s"),
        }
        if labels is not None:
            row.update(run_quality(store, run, labels, layer=layer, options=quality, digest=digest))
        rows.append(row)
    table = pd.DataFrame(rows)
    tmp = out / ".sweep.csv.tmp"
    table.to_csv(tmp, index=False)
    tmp.replace(out / "sweep.csv")
    return table


def _finished_with(run: Path, train: TrainConfig, store: ActivationStore) -> bool:
    """Whether ``run`` holds a finished dictionary trained with these training settings on this store (a run made
    with other settings, such as another token budget, is trained again rather than silently reused)."""
    import json

    if not (run / "metrics.json").is_file() or not (run / "cfg.json").is_file():
        return False
    try:
        cfg = json.loads((run / "cfg.json").read_text())
    except json.JSONDecodeError:
        return False
    same_store = cfg.get("sae", {}).get("store_manifest_sha256") == store.manifest_sha256()
    return bool(same_store and train.same_settings(cfg.get("train") or {}))


def _quality_digest(labels: ConceptLabels, options: dict[str, Any]) -> str:
    """Hash of the token labels (concept names and the labelled entries) and the quality options."""
    import hashlib
    import json

    import numpy as np

    h = hashlib.sha256()
    h.update("\n".join(labels.token_concepts["concept"].astype(str)).encode())
    tokens = labels.tokens.tocsr()
    for part in (tokens.indptr, tokens.indices):
        h.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
    masks, index = labels.scope_matrix("token")
    h.update(index.tobytes())
    if masks is not None:
        h.update(np.packbits(masks).tobytes())
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    return h.hexdigest()


MAX_QUALITY_L0 = 256.0
"""Runs whose held-out L0 exceeds this get NaN quality columns: their token x latent matrix would hold more than
``L0 x n_tokens`` entries (a ReLU run that failed to sparsify can fire on half its latents)."""


def run_quality(store: ActivationStore, run: Path, labels: ConceptLabels, *, layer: int | None = None,
                options: dict[str, Any] | None = None, digest: str | None = None,
                max_l0: float = MAX_QUALITY_L0) -> dict[str, Any]:
    """The quality summary of the SAE in ``run`` (a finished run folder), from ``run/quality.json`` when it was made
    with the same labels and options, else computed and cached there. A run with held-out L0 above ``max_l0`` is
    not evaluated (NaN columns and a warning)."""
    import json
    import warnings

    from workbench.associate import feature_matrix
    from workbench.sae_eval import QUALITY_COLUMNS, quality_report
    from workbench.store import write_json_atomic

    from ._io import load_sae

    options = dict(options or {})
    l0 = float(json.loads((run / "metrics.json").read_text()).get("l0", 0.0))
    if l0 > max_l0:
        warnings.warn(f"{run.name}: L0 {l0:.0f} > {max_l0:.0f}, too dense for the quality metrics; skipped", stacklevel=2)
        return {**{c: float("nan") for c in QUALITY_COLUMNS}, "n_probe_concepts": 0, "n_absorption_parents": 0}
    digest = digest or _quality_digest(labels, options)
    path = run / QUALITY_FILE
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            if cached.get("digest") == digest:
                return _ordered(cached["summary"])
        except (json.JSONDecodeError, KeyError, TypeError):
            pass  # unreadable cache: recompute
    sae = load_sae(run)
    if layer is None:
        layer = sae.cfg.layer if sae.cfg.layer in store.layers else store.layers[0]
    features = feature_matrix(store, sae, layer=layer)
    report = quality_report(features, labels, store.sequences["sequence_id"].astype(str).tolist(), store.token_sequence(),
                            decoder=sae.W_dec.detach().cpu().numpy(), **options)
    write_json_atomic(path, {
        "digest": digest, "summary": report.summary,
        "probing": report.probing.to_dict(orient="records"),
        "absorption": report.absorption.parents.to_dict(orient="records"),
        "absorption_levels": report.absorption.levels.to_dict(orient="records"),
    })
    return _ordered(report.summary)


def _ordered(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary in the order of :data:`workbench.sae_eval.QUALITY_COLUMNS`, then the counts (JSON sorts keys)."""
    from workbench.sae_eval import QUALITY_COLUMNS

    first = [c for c in QUALITY_COLUMNS if c in summary]
    return {**{c: summary[c] for c in first}, **{c: v for c, v in sorted(summary.items()) if c not in first}}
