"""The antibody demo on the bundled real data, end to end: AntiBERTy -> store -> SAE -> annotations -> catalog.

Every stage is reused when its output is already there (stores and SAE training also resume after a kill), so a
second run only redoes what is missing. The stages:

1. AntiBERTy layer 4 on the 2,237 Thera-SAbDab chains (heavy and light, one record per chain), and the same inputs
   through a random-weight copy of AntiBERTy (the control); the 137 Jain antibodies for biophysical-assay probes.
2. A TopK SAE on each of the two Thera stores, with the same settings.
3. Concepts: ANARCI IMGT numbering (with the IMGT anchor check), antibody biology (somatic hypermutation against
   the assigned germline, humanness, developability liabilities, CDR lengths), Thera-SAbDab table columns and
   sequence motifs.
4. :func:`workbench.annotate`: association (SAE, neurons, random control), probes, discovery, rediscovery, causal
   effects, descriptions, families and the catalog; the Jain assays are probed on mean-pooled SAE codes and neurons.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .readers import bundled

__all__ = ["run", "DemoConfig", "THERA_META"]

THERA_META = ["CH1 Isotype", "VD LC", "Est. Status", "Target", "Genetics (Bispecifics delimited with semicolon)"]
THERA_READ = {"id_col": "Therapeutic", "seq_cols": {"HC": "heavy", "LC": "light"}, "meta_cols": THERA_META}
PROBE_SEQUENCE_GROUPS = ("chain_type", "species", "v_family", "CH1 Isotype", "Genetics (Bispecifics delimited with semicolon)")
"""Per-chain probe targets: chain, species and V family from ANARCI; isotype and origin from Thera-SAbDab. (The
per-chain antibody-biology measures are in the catalog's ``sequence_measures`` table.)"""
LABEL_SOURCES = ("anarci", "germline", "humanness", "liability", "cdr", "table", "motif")
"""Annotation sources of the demo (:data:`domains.sequence.annotations.SOURCES`)."""
COMPLETE_SOURCES = ("motif", "liability", "cdr")
"""Sources whose concepts follow from the sequence and its numbering alone (motifs, liability motifs, loop lengths):
never proposed as missing annotations. Germline and humanness stay open: a feature marking mutations that fires
in CDR3, where no germline is compared, is the kind of finding the workbench looks for."""
BIOLOGY_PREFIXES = ("shm=", "germline=", "germline_residue=", "non_human_residue", "liability=", "liability_region=",
                    "cdr_h3_length=", "cdr_l1_length=")
"""Concept names of the antibody-biology sources (germline, humanness, liability, cdr), summarised on their own line."""
FINDING_GROUPS = ("CH1 Isotype", "Target")
"""Thera-SAbDab columns tested at the sequence level (one binary target per frequent value)."""
FINDING_MEASURES = ("shm_count", "non_human_fraction")
"""Per-chain measures tested at the sequence level: somatic mutations against the germline, humanness."""
FINDING_COVARIATES = ("species", "chain_type", "v_family")
"""What every sequence-level target is controlled for (ANARCI's species, chain type and V family)."""
ORIGINS = {"Genetically human": "human", "Genetically Human": "human", "Humanised": "humanised",
           "Humanised by CDR Grafting": "humanised", "Chimeric": "chimeric", "Chimeric (Murine/Human)": "chimeric",
           "Murine": "murine"}
"""Thera-SAbDab's genetics values grouped into the four origins (other values, such as caninised or mixed
chimeric-and-humanised entries, are left out of the origin targets)."""
REDISCOVERY_GROUPS = ("region", "motif", "liability", "shm", "non_human_residue")
"""Concept groups of the rediscovery check: regions (positional) beside liabilities, SHM and non-human residues."""
UNIVERSALITY_KEY = "random-weight control"
"""Name of the demo's feature-level comparison with the random-weight control's SAE in the catalog."""
UNIVERSALITY_TOKENS = 50_000
"""Tokens (whole sequences) of that comparison."""
JAIN_READ = {"id_col": "Name", "seq_cols": {"VH": "heavy", "VL": "light"}, "skip_missing": True}
JAIN_ASSAYS = [
    "HEK Titer (mg/L)", "Fab Tm by DSF (°C)", "SGAC-SINS AS100 ((NH4)2SO4 mM)", "HIC Retention Time (Min)a",
    "SMAC Retention Time (Min)a", "Slope for Accelerated Stability", "Poly-Specificity Reagent (PSR) SMP Score (0-1)",
    "Affinity-Capture Self-Interaction Nanoparticle Spectroscopy (AC-SINS) ∆λmax (nm) Average", "CIC Retention Time (Min)",
    "CSI-BLI Delta Response (nm)", "ELISA", "BVP ELISA",
]


@dataclass
class DemoConfig:
    """Settings of the antibody demo (the defaults fit the 10-minute budget on 2 CPU cores)."""

    model: str = "antiberty"
    """Model card."""
    layer: int = 4
    """Layer analysed (AntiBERTy has 8 blocks; 4 is the middle)."""
    width: int = 4096
    """SAE latents."""
    k: int = 32
    """Active latents per token (TopK)."""
    n_tokens: int = 1_000_000
    """SAE training tokens (about 4 passes over the Thera-SAbDab store)."""
    random_seed: int = 1
    """Seed of the random-weight control model."""
    seed: int = 0
    """Seed of SAE training and of the annotation stage."""
    n_antibodies: int | None = None
    """Use only the first N Thera-SAbDab antibodies (both chains) instead of all 1,132: for quick end-to-end tests."""


def _log(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _store(out: Path, name: str, model: str, data: str, layer: int, read: dict[str, Any], progress: bool,
           random_weights: int | None = None, n_antibodies: int | None = None) -> Any:
    import workbench
    from workbench.demo_support import store_once

    def make() -> Any:
        inputs: Any = bundled(data)
        if n_antibodies is not None:
            from .readers import read_table

            records = read_table(inputs, **read)
            keep = list(dict.fromkeys(_group(r.id) for r in records))[:n_antibodies]
            inputs = [r for r in records if _group(r.id) in set(keep)]
        return workbench.extract(model, inputs, layers=[layer], out=out / name, read_options=None if n_antibodies else read,
                                 progress=progress, random_weights=random_weights)

    what = f"{model} (random weights, seed {random_weights})" if random_weights is not None else model
    return store_once(out / name, make, _log, f"{name}: {what} layer {layer} on bundled {data}")


def _sae(store: Any, out: Path, cfg: DemoConfig, progress: bool) -> Path:
    from workbench.demo_support import topk_sae_once

    return topk_sae_once(store, out, layer=cfg.layer, width=cfg.width, k=cfg.k, n_tokens=cfg.n_tokens, seed=cfg.seed,
                         progress=progress, log=_log)


def _group(sequence_id: str) -> str:
    """The antibody a chain record belongs to (``Abagovomab|heavy`` -> ``Abagovomab``)."""
    return sequence_id.rsplit("|", 1)[0]


def finding_targets(sequence_ids: list[str]) -> Any:
    """Per chain: origin (human / humanised / chimeric / murine, one-vs-rest among the four) and clinical status
    (approved: highest clinical stage "Approved"; discontinued: estimated status "Discontinued"; others NaN), from the
    bundled Thera-SAbDab table."""
    import numpy as np
    import pandas as pd

    table = pd.read_csv(bundled("therasabdab")).drop_duplicates("Therapeutic").set_index("Therapeutic")
    antibodies = pd.Index([_group(i) for i in sequence_ids])
    origin = table["Genetics (Bispecifics delimited with semicolon)"].map(ORIGINS).reindex(antibodies).to_numpy(dtype=object)
    out = {}
    for value in ("human", "humanised", "chimeric", "murine"):
        out[f"origin={value}"] = np.where(pd.isna(origin), None, origin == value)
    approved = (table["Highest_Clin_Trial (Feb '25)"] == "Approved").reindex(antibodies).to_numpy(dtype=bool)
    stopped = (table["Est. Status"] == "Discontinued").reindex(antibodies).to_numpy(dtype=bool)
    out["approved_vs_discontinued"] = np.where(approved & ~stopped, True, np.where(stopped & ~approved, False, None))
    return pd.DataFrame(out, index=pd.Index(sequence_ids, name="sequence_id"))


def jain_probes(jain_store: Any, sae: Any, *, layer: int, seed: int = 0) -> Any:
    """Cross-validated regression of the Jain-137 assays on antibody-level mean-pooled SAE codes and neurons."""
    import numpy as np
    import pandas as pd

    from workbench.associate import feature_matrix
    from workbench.probes import pool, probe_sequences

    ids, token_sequence = jain_store.sequences["sequence_id"].astype(str).tolist(), jain_store.token_sequence()
    antibodies = pd.Index(sorted({_group(i) for i in ids}))
    per_token_ab = np.asarray(antibodies.get_indexer([_group(i) for i in ids]))[token_sequence]
    reps = {"sae": feature_matrix(jain_store, sae, layer=layer).values, "neurons": jain_store.activations(layer)}
    pooled = {name: pool(x, per_token_ab, len(antibodies), how="mean") for name, x in reps.items()}
    table = pd.read_csv(bundled("jain137_biophysical"))
    table = table[table["Name"].notna() & table["VH"].notna()].set_index("Name")
    targets = table.reindex(antibodies)[JAIN_ASSAYS].apply(pd.to_numeric, errors="coerce").reset_index(drop=True)
    return probe_sequences(pooled, targets, seed=seed).scores.assign(dataset="jain137")


def run(out: str | Path, *, progress: bool = True, config: DemoConfig | None = None) -> Any:
    """Run the demo into ``out``; return the :class:`~workbench.catalog.Catalog` and print its summary."""
    import workbench
    from workbench._pipeline import AnnotateConfig
    from workbench.catalog import Catalog
    from workbench.demo_support import Stages
    from workbench.errors import WorkbenchError
    from workbench.sae import load_sae

    from .annotations import sequence_labels

    cfg = config or DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    catalog_dir = out / "catalog"
    try:
        catalog = Catalog.open(catalog_dir)
        _log(f"reusing {catalog_dir}")
        _print_summary(catalog, catalog_dir, time.perf_counter() - t0)
        return catalog
    except WorkbenchError:
        pass
    tag = f"{cfg.model}_L{cfg.layer}"
    stage = Stages()
    seconds = stage.seconds

    thera = stage("extract thera", lambda: _store(out, f"thera_{tag}", cfg.model, "therasabdab", cfg.layer, THERA_READ, progress,
                                                  n_antibodies=cfg.n_antibodies))
    control = stage("extract thera (random weights)", lambda: _store(
        out, f"thera_{tag}_random{cfg.random_seed}", cfg.model, "therasabdab", cfg.layer, THERA_READ, progress,
        random_weights=cfg.random_seed, n_antibodies=cfg.n_antibodies))
    jain = stage("extract jain", lambda: _store(out, f"jain_{tag}", cfg.model, "jain137_biophysical", cfg.layer, JAIN_READ, progress))
    sae_dir = stage("train SAE", lambda: _sae(thera, out / f"sae_thera_{tag}_topk{cfg.k}", cfg, progress))
    control_dir = stage("train SAE (random weights)", lambda: _sae(
        control, out / f"sae_thera_{tag}_random{cfg.random_seed}_topk{cfg.k}", cfg, progress))
    _log("annotating: ANARCI IMGT numbering, germline / SHM, humanness, liabilities, CDR lengths, Thera-SAbDab columns, motifs")
    labels = stage("labels", lambda: sequence_labels(thera, sources=LABEL_SOURCES, table_columns=THERA_META,
                                                     anarci_options={"ncpu": os.cpu_count() or 1}))
    _log(f"  {labels.tokens.shape[1]} token concepts, {labels.sequences.shape[1]} sequence concepts ({seconds['labels']:.0f} s)")
    sae = load_sae(sae_dir)
    _log("probing the Jain-137 assays")
    jain_table = stage("jain probes", lambda: jain_probes(jain, sae, layer=cfg.layer, seed=cfg.seed))
    ids = thera.sequences["sequence_id"].astype(str).tolist()
    catalog = workbench.annotate(
        thera, sae_dir, labels, layer=cfg.layer, out=catalog_dir, control_store=control, control_sae=control_dir,
        sequence_groups=[_group(i) for i in ids], extra_tables={"probes_jain": jain_table},
        finding_targets=finding_targets(ids),
        summary_extra={"demo": "antibody: AntiBERTy on Thera-SAbDab", "jain_r2": _jain_headline(jain_table),
                       "demo_seconds": seconds},
        config=AnnotateConfig(token_probe_groups=("region", "chain_region"), sequence_probe_groups=PROBE_SEQUENCE_GROUPS,
                              complete_sources=COMPLETE_SOURCES, rediscovery_groups=REDISCOVERY_GROUPS,
                              finding_groups=FINDING_GROUPS, finding_measures=FINDING_MEASURES,
                              finding_covariates=FINDING_COVARIATES, seed=cfg.seed),
        progress=progress,
    )
    stage("universality (random control)", lambda: _control_universality(catalog_dir, thera, sae_dir, control, control_dir))
    catalog = Catalog.open(catalog_dir)
    _print_summary(catalog, catalog_dir, time.perf_counter() - t0)
    return catalog


def _control_universality(catalog_dir: Path, store: Any, sae_dir: Path, control: Any, control_dir: Path) -> None:
    """Which SAE features recur, feature for feature, in the SAE of the random-weight control (stored in the catalog's
    ``uns["universality"]``, shown on the app's Universality page)."""
    from workbench import universality, write_universality

    result = universality(sae_dir, store, control_dir, control, n_tokens=UNIVERSALITY_TOKENS, catalog_a=catalog_dir)
    write_universality(catalog_dir, result, key=UNIVERSALITY_KEY)


def _jain_headline(scores: Any) -> dict[str, float]:
    dense = scores[scores["k"] == 0]
    return {rep: round(float(g["score"].mean()), 4) for rep, g in dense.groupby("representation")}


def biology_capture(catalog: Any) -> dict[str, int]:
    """Antibody-biology token concepts captured (test F1 > 0.5) by SAE features, neurons and the random control, and
    how many of them are findings (``concept_findings``: captured beyond position and residue and better than both
    controls by the bootstrap)."""
    from workbench.associate import CAPTURED_F1

    out: dict[str, int] = {}
    for name in ("sae", "neurons", "random"):
        if f"best_{name}" not in catalog.tables:
            continue
        best = catalog.table(f"best_{name}")
        mine = best[best["concept"].astype(str).str.startswith(BIOLOGY_PREFIXES)].set_index("concept")["test_f1"]
        out["n"] = len(mine)
        out[name] = int((mine > CAPTURED_F1).sum())
    if "concept_findings" in catalog.tables:
        findings = catalog.table("concept_findings")
        biology = findings["concept"].astype(str).str.startswith(BIOLOGY_PREFIXES)
        out["findings"] = int((biology & (findings["finding"].astype(str) == "finding")).sum())
    return out


def _print_summary(catalog: Any, path: Path, seconds: float) -> None:
    from workbench.demo_support import fmt

    s = catalog.summary
    lines = [
        f"catalog: {path}  ({s.get('n_features')} features, {s.get('n_sequences')} sequences, {s.get('n_tokens')} tokens)",
        f"SAE fidelity: FVE {fmt(s.get('fve'))}, L0 {fmt(s.get('l0'), 1)}, dead {fmt(s.get('dead_fraction'))}, "
        f"loss recovered {fmt(s.get('loss_recovered'))}",
        f"concepts captured (test F1 > 0.5) of {s.get('n_concepts')}: SAE {s.get('concepts_captured_sae')}, "
        f"neurons {s.get('concepts_captured_neurons')}, random-weight control {s.get('concepts_captured_random')}",
    ]
    biology = biology_capture(catalog)
    if biology:
        lines.append("antibody-biology concepts (SHM, humanness, liabilities, CDR lengths) captured of "
                     f"{biology['n']}: SAE {biology['sae']}, neurons {biology['neurons']}, random-weight control "
                     f"{biology['random']}; findings among them (beyond position and residue and better than both "
                     f"controls): {biology.get('findings', 'n/a')}")
    if "concepts_captured_beyond_sae" in s:
        lines.append(
            f"concepts captured beyond position and residue (strata {s.get('strata')}; {s.get('concepts_testable')} of "
            f"{s.get('n_concepts')} concepts testable): SAE {s['concepts_captured_beyond_sae']}, neurons "
            f"{s.get('concepts_captured_beyond_neurons')}, random-weight control {s.get('concepts_captured_beyond_random')};"
            f" findings (SAE beyond the strata and better than both controls): {s.get('concept_findings')}")
        for item in s.get("top_concept_findings") or []:
            lines.append(f"  - {item}")
    scores = s.get("description_corr_above_0_5")
    if isinstance(scores, dict) and scores:
        lines.append("descriptions that predict held-out activations (r > 0.5): " + ", ".join(
            f"{name} {fmt(100 * float(scores[key]), 0)}%" + (" of features" if key == "sae" else "")
            for key, name in (("sae", "SAE"), ("neurons", "neurons"), ("random", "random-weight control"),
                              ("shuffled", "shuffled descriptions")) if key in scores))
    for key, stored in (getattr(catalog, "universality", None) or {}).items():
        u = stored["summary"]
        groups = sorted(u.get("concept_groups", {}).items(), key=lambda kv: -(kv[1]["shared"] + kv[1]["unshared"]))[:4]
        lines.append(
            f"universality, {key}: {fmt(100 * u['fraction_shared'], 0)}% of the SAE's features have a match (r > "
            f"{u['threshold']:g}) in the other SAE (within-sequence null {fmt(100 * u['null_fraction'], 1)}%); by "
            f"concept group, shared/all: "
            + ", ".join(f"{g} {c['shared']}/{c['shared'] + c['unshared']}" for g, c in groups))
    if "rediscovery_precision_at_k_mean" in s:
        control = (f", random control {s['rediscovery_control_precision_at_k_mean']:.2f}; concepts where the SAE beats "
                   f"the control: {s.get('rediscovery_evidence')}" if "rediscovery_control_precision_at_k_mean" in s else "")
        lines.append(f"rediscovery precision@20 (mean over {s.get('rediscovery_concepts')} concepts): "
                     f"{s['rediscovery_precision_at_k_mean']:.2f} (base rate {s['rediscovery_base_rate_mean']:.2f}{control})")
    if "sequence_targets_tested" in s:
        counts = s.get("sequence_targets_significant") or {}
        lines.append(
            f"sequence-level targets (origin, clinical status, isotype, target, SHM, humanness): best single pooled "
            f"feature chosen on half the antibodies, tested on the other half after control for species, chain type and"
            f" V family; significant of {s['sequence_targets_tested']} (not testable: "
            f"{s.get('sequence_targets_not_testable', 0)}): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        lines.extend(f"  - {item}" for item in s.get("sequence_findings") or [])
    if "jain_r2" in s:
        lines.append(f"Jain-137 assays, mean cross-validated R2: {s['jain_r2']}")
    if "missing_annotations_surviving" in s and not s.get("top_missing_annotations"):
        lines.append(f"candidate missing annotations beyond position and residue: none of the "
                     f"{s.get('missing_annotation_candidates', 0)} listed candidates survives the stratification "
                     f"(numbering artefacts set aside: {s.get('missing_annotation_artefacts', 0)})")
    for title, key in (("top candidate missing annotations beyond position and residue (numbering artefacts set "
                        f"aside: {s.get('missing_annotation_artefacts', 0)})", "top_missing_annotations"),
                       ("top unexplained features (ranked by what the strata do not explain)", "top_unexplained_features")):
        items = s.get(key) or []
        if len(items):
            lines.append(f"{title}:")
            lines.extend(f"  - {item}" for item in items)
    lines.append(f"done in {seconds:.0f} s; open it with workbench.Catalog.open({str(path)!r})")
    print("\n".join(lines), flush=True)
