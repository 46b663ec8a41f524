"""The annotation stage in one call: store + SAE + concept labels -> an annotated feature catalog.

:func:`annotate` runs, in order: the SAE's feature matrix on the store; association with every concept for the SAE
features, the model's neurons and (when given) an SAE trained on a random-weight copy of the model; linear probes on
SAE codes, neurons and the random control; discovery (candidate missing annotations, unexplained features, the
rediscovery check); causal effects of the most interesting features through the adapter's edit hook; feature
descriptions, families and UMAP; description scores (how well each description predicts held-out activations, for
SAE features, neurons and a shuffled null); and writes the catalog atomically. It is domain-free: the labels come
from a domain's annotation sources, and the domain may pass sequence-level targets (for example biophysical assays)
and groups. Its long stages are kept in ``<out>.annotate-work`` as they finish, so a killed run resumes from them
when run again with the same inputs (the folder is removed once the catalog is written).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench._annotate_tables import _finding_examples, _measures_table, _position_strings, _summary, _var_extra
from workbench.errors import InputError, WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench._stream_pipeline import StreamWork
    from workbench.adapter import Adapter
    from workbench.catalog import Catalog
    from workbench.concepts import ConceptLabels
    from workbench.store import ActivationStore

__all__ = ["AnnotateConfig", "annotate", "probe_groups"]


@dataclass
class AnnotateConfig:
    """Options of :func:`annotate` (saved in the catalog's provenance)."""

    n_permutations: int = 20
    """Label permutations for each concept's best-F1 null (0 skips the null); p-values beyond the permutations come
    from the fitted tail (:func:`~workbench.associate.null_pvalues`)."""
    strata_groups: Sequence[str] = ("imgt",)
    """Token concept groups whose value makes up each token's stratum (a numbering) for the stratified association
    (:mod:`workbench.stratified`); groups the labels lack are skipped."""
    strata_columns: Sequence[str] = ("residue",)
    """Columns of ``store.obs()`` in the stratum (the residue)."""
    strata_sequence_groups: Sequence[str] = ("chain_type",)
    """Sequence concept groups in the stratum (the chain type)."""
    stratify: bool = True
    """Stratified association, strata shares of unexplained features and concept findings (False: plain only)."""
    n_bootstrap: int = 1000
    """Bootstrap resamples of test sequences for the SAE-versus-control verdicts (0 skips the verdicts)."""
    finding_groups: Sequence[str] = ()
    """Sequence concept groups tested at the sequence level against pooled features, one binary target per value
    (:func:`workbench.findings.sequence_inputs`), held out and controlled for ``finding_covariates``."""
    finding_measures: Sequence[str] = ()
    """Measures (``labels.measures`` columns) tested the same way as numeric targets."""
    finding_covariates: Sequence[str] = ()
    """Sequence concept groups (categorical) or measures (numeric) every sequence-level target is controlled for."""
    split_seed: int = 0
    """Seed of the validation / test split of sequences."""
    token_probe_groups: Sequence[str] | None = None
    """Concept groups probed per token (``None``: every group with 2-30 values labelling at least half the tokens)."""
    probe_representations: Sequence[str] = ("sae", "neurons", "random_sae")
    """What the probes read: SAE codes, the model's neurons (raw activations; k-sparse = single units), and the
    random-weight control's SAE codes (when the control is given)."""
    sequence_probe_groups: Sequence[str] | None = None
    """Sequence-concept groups probed per sequence (``None``: every group with 2-30 values on half the sequences)."""
    probe_max_samples: int = 20000
    """Tokens subsampled (whole sequences) for token probes."""
    probe_cv: int = 5
    """Cross-validation folds (grouped by sequence group)."""
    rediscovery_groups: Sequence[str] | None = ("region", "chain_region", "motif", "pfam", "pfam_hmm", "uniprot")
    """Concept groups whose concepts get the rediscovery check (``None``: all with enough instances)."""
    rediscovery_k: int = 20
    """Candidates scored in precision@k."""
    rediscovery_withhold: float = 0.5
    """Fraction of each concept's instances withheld."""
    n_causal: int = 16
    """Features whose causal effect is measured (best feature of the best-captured concepts, then unexplained ones);
    0 skips the causal check."""
    causal_sequences: int = 8
    """Sequences per feature in the causal check."""
    complete_sources: Sequence[str] = ("motif",)
    """Annotation sources whose labels are complete by construction (computed from the sequence itself, such as
    motifs and amino-acid identity): their concepts are never proposed as missing annotations."""
    position_group: str | None = "imgt"
    """Concept group giving a per-residue position shown beside examples (stored in obs as a comma-joined string)."""
    profile_groups: Sequence[str] = ("region", "imgt")
    """Concept groups whose per-feature firing profile enters the descriptions (images: regions of the frame)."""
    score_descriptions: bool = True
    """Score every description by how well it predicts its unit's activations on the test sequences
    (:mod:`workbench.description_scores`: built on the validation half from the top concept and the profiles of
    ``profile_groups`` and the residue), for SAE features, neurons and a shuffled-description null."""
    seed: int = 0
    """Seed for subsampling, permutations and the layout."""
    sample_tokens: int = 262_144
    """Streamed mode (``annotate(stream=True)``): tokens in the seeded sample of whole sequences on which the
    analyses that need a ``tokens x features`` matrix run (probes, description scores, missing annotations,
    unexplained features, rediscovery, the causal check); every count-based statistic covers the whole store. A
    memory budget (``max_memory``) sets it from the budget instead."""
    device: str = "cpu"
    """Streamed mode: where the SAE encodes the shards (``"cuda"``: the GPU, this rank's under torchrun); counts,
    sums and the sample's analyses stay on the host. Codes encoded on a GPU equal the CPU's to float32 rounding."""


def check_out(out: Path, *, overwrite: bool) -> None:
    """Refuse an output folder that holds something, unless it may be replaced."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out} exists and is not empty (pass --overwrite or overwrite=True to replace it)")


def check_device(device: str, *, stream: bool) -> None:
    """Refuse an encoding device other than the CPU outside the streamed stage, or one this machine lacks."""
    if device == "cpu":
        return
    if not stream:
        raise InputError(f"device {device!r} is for the streamed stage's encoding: pass stream=True (--stream)")
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: no CUDA GPU here")


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[annotate] {message}", flush=True)


def _groups_of(concepts: Sequence[str]) -> np.ndarray:
    return np.asarray([c.split("=", 1)[0] if "=" in c else "" for c in concepts], dtype=object)


def probe_groups(labels: ConceptLabels, *, level: str, max_values: int = 30, min_coverage: float = 0.5) -> list[str]:
    """Concept groups suitable as probe targets: 2 to ``max_values`` values covering ``min_coverage`` of the rows
    (of the rows inside the group's scope, for a group whose concepts all have a scope: outside it the target is
    NaN, see :func:`~workbench.probes.token_targets`)."""
    if level == "token":
        matrix, table = labels.tokens, labels.token_concepts
    elif level == "sequence":
        matrix, table = labels.sequences, labels.sequence_concepts
    else:
        raise InputError(f"level must be 'token' or 'sequence', not {level!r}")
    if matrix.shape[1] == 0 or matrix.shape[0] == 0:
        return []
    groups = _groups_of(table["concept"].tolist())
    out = []
    for g in dict.fromkeys(groups):
        if not g:
            continue
        cols = np.flatnonzero(groups == g)
        if not 2 <= len(cols) <= max_values:
            continue
        single = np.asarray((matrix[:, cols].sum(1) == 1)).ravel()
        inside = labels.group_scope(cols, level)  # a scoped group: coverage of the rows where it is defined
        covered = single.mean() if inside is None else (single[inside].mean() if inside.any() else 0.0)
        if covered >= min_coverage:
            out.append(str(g))
    return out


def _token_sequence(store: ActivationStore) -> tuple[list[str], np.ndarray, pd.DataFrame]:
    return store.sequences["sequence_id"].astype(str).tolist(), store.token_sequence(), store.obs()


def _same_tokens(store: ActivationStore, other: ActivationStore) -> None:
    """The same sequences, in the same order, with the same number of tokens each (so the same token rows)."""
    columns = ["sequence_id", "n_tokens"]
    a, b = store.sequences[columns].reset_index(drop=True), other.sequences[columns].reset_index(drop=True)
    if len(a) != len(b) or not (a.astype(str) == b.astype(str)).all().all() or store.n_tokens != other.n_tokens:
        raise InputError(f"the control store {other.path} does not hold the same tokens as {store.path}")


def annotate(
    store: ActivationStore | str | Path,
    sae: Any,
    labels: ConceptLabels,
    *,
    layer: int | None = None,
    out: str | Path,
    control_store: ActivationStore | str | Path | None = None,
    control_sae: Any | None = None,
    adapter: Adapter | None = None,
    sequence_groups: Sequence[str] | None = None,
    sequence_targets: pd.DataFrame | None = None,
    finding_targets: pd.DataFrame | None = None,
    extra_tables: Mapping[str, pd.DataFrame] | None = None,
    summary_extra: Mapping[str, Any] | None = None,
    obsm_extra: Mapping[str, np.ndarray] | None = None,
    uns_extra: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    config: AnnotateConfig | None = None,
    overwrite: bool = False,
    progress: bool = True,
    stream: bool = False,
    max_memory: int | None = None,
) -> Catalog:
    """Annotate the features of ``sae`` on ``store`` with ``labels`` and write the catalog to ``out``.

    ``sae`` is a trained :class:`~workbench.sae.SparseAutoencoder` or its folder; ``control_store`` /
    ``control_sae`` are the random-weight control (a store extracted with ``random_weights`` from the same inputs and
    an SAE trained on it the same way). ``adapter`` is the model for the causal check (loaded from the store's
    manifest when omitted and ``config.n_causal > 0``). ``sequence_groups`` gives each store sequence a group key
    (for example the antibody a chain belongs to) so cross-validated probes never split a group; by default each
    sequence is its own group. ``sequence_targets`` (index = sequence id) adds sequence-level probe targets;
    ``finding_targets`` (index = sequence id) adds targets to the held-out sequence-level findings
    (``config.finding_groups``); ``extra_tables`` go into the catalog as they are (``obsm_extra`` / ``uns_extra``
    too: an image domain passes the pixels and their description); ``labels.measures`` (numeric per-sequence values)
    become the table ``sequence_measures`` (``sequence_id`` first); scoped concepts are scored inside their scopes
    throughout, and the ``best_*`` tables give each concept's scope size (``n_scope``); ``metrics`` are the SAE's
    fidelity metrics (read from the SAE folder's ``metrics.json`` when ``sae`` is a folder). Nothing is written at
    ``out`` unless everything succeeds.

    The long stages (the associations, verdicts, description scores, probes, sequence findings, missing annotations,
    unexplained features, rediscovery and the causal check) are kept in ``<out>.annotate-work`` as they finish
    (:class:`~workbench._stream_pipeline.StreamWork`, guarded by a key of every input they depend on): a run killed
    part way resumes from its finished stages when run again with the same inputs (``summary["resumed_stages"]``
    names them) and gives the catalog of an uninterrupted run; other inputs start afresh. The folder is removed once
    the catalog is written, and a refused input leaves none behind.

    ``stream`` (implied by ``max_memory``, a budget in bytes) computes every count-based statistic shard by shard
    over the whole store, never holding its ``tokens x features`` matrix, and runs the analyses that need one on a
    seeded sample of sequences (:mod:`workbench._stream_pipeline`); under ``torchrun`` the shards are split across
    the ranks and rank 0 writes the catalog. A killed streamed run resumes from its finished stages when run again.
    """
    import pandas as pd

    from workbench._stream_pipeline import _load_table, _save_table, load_association, save_association
    from workbench.associate import associate, feature_matrix, neuron_matrix
    from workbench.catalog import Catalog, build_catalog, write_catalog
    from workbench.discovery import causal_effects, missing_annotations, rediscovery, unexplained_features
    from workbench.probes import pool, probe_sequences, probe_tokens, sequence_targets as seq_targets, token_targets
    from workbench.sae import load_sae
    from workbench.store import ActivationStore, open_store

    cfg = config or AnnotateConfig()
    t_start = time.perf_counter()
    out = Path(out)
    check_out(out, overwrite=overwrite)
    store = store if isinstance(store, ActivationStore) else open_store(store)
    if layer is None:
        if len(store.layers) != 1:
            raise InputError(f"{store.path} holds layers {store.layers}: say which one")
        layer = store.layers[0]
    metrics = dict(metrics) if metrics is not None else _sae_metrics(sae)
    sae_path = sae if isinstance(sae, (str, Path)) else None
    sae = load_sae(sae) if isinstance(sae, (str, Path)) else sae
    if labels.n_tokens != store.n_tokens:
        raise InputError(f"the labels cover {labels.n_tokens} tokens but {store.path} holds {store.n_tokens}")
    from workbench.label_shards import LabelShards

    sharded = isinstance(labels, LabelShards)
    stream = stream or max_memory is not None or sharded  # labels held per shard are read by the streamed stage
    check_device(cfg.device, stream=stream)
    from workbench._stream_pipeline import require_shards

    require_shards(store)  # before any shard is read
    if stream:  # only what the strata need: the token table of a large store is never read whole
        ids, token_sequence = store.sequences["sequence_id"].astype(str).tolist(), store.token_sequence()
        from workbench._stream_pipeline import token_columns

        obs = None if sharded else token_columns(store, [c for c in cfg.strata_columns if c in store.obs_columns])
    else:
        ids, token_sequence, obs = _token_sequence(store)
    if sequence_groups is None:
        groups_seq = np.arange(len(ids))
    else:
        if len(sequence_groups) != len(ids):
            raise InputError(f"sequence_groups has {len(sequence_groups)} entries for {len(ids)} sequences")
        groups_seq = pd.factorize(pd.Series(list(sequence_groups), dtype=object))[0]
    assoc_options: dict[str, Any] = {"split_seed": cfg.split_seed, "n_permutations": cfg.n_permutations,
                                     "seed": cfg.seed}
    strata = None
    if cfg.stratify:
        from workbench.stratified import token_strata

        if sharded:
            from workbench._stream_pipeline import shard_strata

            strata = shard_strata(store, labels, groups=cfg.strata_groups, columns=cfg.strata_columns,
                                  sequence_groups=cfg.strata_sequence_groups)
        else:
            strata = token_strata(labels, obs, groups=cfg.strata_groups, columns=cfg.strata_columns,
                                  sequence_groups=cfg.strata_sequence_groups, token_sequence=token_sequence)
        if len(strata.names) > 1:
            assoc_options["strata"] = strata.codes
            _log(progress, f"strata: {strata.description} ({len(strata.names)})")
        else:  # none of the parts exists in these labels: nothing to stratify by
            _log(progress, f"no strata ({', '.join([*cfg.strata_groups, *cfg.strata_columns])} absent): plain "
                           "association only")
            strata = None
    seq_inputs = None
    if cfg.finding_groups or cfg.finding_measures or finding_targets is not None:
        seq_inputs = _sequence_inputs(labels, ids, finding_targets, cfg)  # checked before the long stages start
    unknown = [r for r in cfg.probe_representations if r not in ("sae", "neurons", "random_sae")]
    if unknown:
        raise InputError(f"unknown probe representation(s) {unknown}; use sae, neurons, random_sae")
    if sequence_targets is not None:
        known = set(ids)
        missing = [i for i in sequence_targets.index.astype(str) if i not in known]
        if missing:
            raise InputError(f"sequence targets name sequences not in the store: {missing[:3]}")
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        _log(progress, f"{name} ...")
        result = fn()
        timings[name] = round(time.perf_counter() - t0, 2)
        _log(progress, f"{name}: {timings[name]:.1f} s")
        return result

    def staged(name: str, compute: Callable[[], Any], save: Callable[[Any, Path], None] = _save_table,
               load: Callable[[Path], Any] = _load_table) -> Any:
        """Stage ``name`` of the work folder: read back when an earlier run with these inputs finished it, else
        computed and saved (computed only, without a work folder)."""
        if work is None:
            return compute()
        before = len(work.resumed)
        result = work.stage(name, compute, save=save, load=load)
        if len(work.resumed) > before:
            _log(progress, f"{name}: resumed (finished by an earlier run)")
        return result

    # -- features and association -----------------------------------------------------------------------------------
    if (control_store is None) != (control_sae is None):
        raise InputError("the random-weight control needs both control_store and control_sae")
    if control_store is not None:
        control_store = control_store if isinstance(control_store, ActivationStore) else open_store(control_store)
        control_sae = load_sae(control_sae) if isinstance(control_sae, (str, Path)) else control_sae
        if "random_weights_seed" not in (control_store.manifest.get("control") or {}):
            raise InputError(f"{control_store.path} is not a random-weight control store (extract it with "
                             "random_weights)")
        _same_tokens(store, control_store)
    controls: dict[str, Any] = {}
    random_features = None
    streamed = None
    work: StreamWork | None = None
    fresh = False
    if not stream:  # the finished stages are kept in <out>.annotate-work until the catalog is written
        work, fresh = _open_work(out, _work_key(
            store, sae, labels, control_store, control_sae, layer, cfg, adapter=adapter,
            sequence_groups=sequence_groups, sequence_targets=sequence_targets, finding_targets=finding_targets),
            progress=progress)
    try:
        if stream:
            from workbench._stream_pipeline import run_streamed

            streamed = run_streamed(store, sae, labels, layer=layer, out=out, control_store=control_store,
                                    control_sae=control_sae, strata=strata, cfg=cfg, max_memory=max_memory,
                                    timed=timed)
            if not streamed.writes:  # under torchrun the other ranks helped with the whole-store passes
                return None  # type: ignore[return-value]
            work = streamed.work  # rank 0 goes on: the analyses of the sample are stages of the same folder
            sae_assoc, neuron_assoc = streamed.stats.associations["sae"], streamed.stats.associations["neurons"]
            if "random" in streamed.stats.associations:
                controls["random"] = streamed.stats.associations["random"]
            # From here the analyses that need a tokens x features matrix see the sample (the associations stay
            # whole).
            full_store, full_labels, full_ids, full_token_sequence = store, labels, ids, token_sequence
            sample = streamed.sample
            store, labels = sample.store, sample.labels
            ids, token_sequence, obs = _token_sequence(store)
            features, neurons = sample.features["sae"], sample.features["neurons"]
            random_features = sample.features.get("random")
            raw = store.activations(layer)
            groups_seq = groups_seq[sample.sequences]
            if strata is not None:
                strata = strata._replace(codes=strata.codes[sample.tokens])
            if sequence_groups is not None:
                sequence_groups = [sequence_groups[int(i)] for i in sample.sequences]
            if sequence_targets is not None:
                sequence_targets = sequence_targets[sequence_targets.index.astype(str).isin(set(ids))]
            if finding_targets is not None:
                finding_targets = finding_targets[finding_targets.index.astype(str).isin(set(ids))]
            if seq_inputs is not None:
                seq_inputs = _sequence_inputs(labels, ids, finding_targets, cfg)
        else:
            features = timed("SAE features", lambda: feature_matrix(store, sae, layer=layer))
            raw = timed("raw activations", lambda: store.activations(layer))
            neurons = neuron_matrix(store, layer=layer)
            sae_assoc = staged("association-sae", lambda: timed("association (SAE)", lambda: associate(
                features, labels, ids, token_sequence, **assoc_options)), save_association, load_association)
            neuron_assoc = staged("association-neurons", lambda: timed("association (neurons)", lambda: associate(
                neurons, labels, ids, token_sequence, **assoc_options)), save_association, load_association)
            if control_store is not None:
                random_features = timed("SAE features (random control)", lambda: feature_matrix(
                    control_store, control_sae, layer=layer))
                controls["random"] = staged("association-random", lambda: timed(
                    "association (random control)", lambda: associate(
                        random_features, labels, ids, token_sequence, **assoc_options)),
                    save_association, load_association)
        controls = {"neurons": neuron_assoc, **controls}
        tables: dict[str, pd.DataFrame] = {
            "association": sae_assoc.pairs,
            "best_sae": sae_assoc.best,
            "best_neurons": neuron_assoc.best,
        }
        if sae_assoc.thresholds is not None:
            tables["association_thresholds"] = sae_assoc.thresholds
        if "random" in controls:
            tables["best_random"] = controls["random"].best
        if streamed is not None and streamed.stats.verdicts is not None:
            tables["verdicts"] = streamed.stats.verdicts
        elif cfg.n_bootstrap > 0:
            from workbench.verdicts import concept_verdicts

            results = {"sae": (features, sae_assoc), "neurons": (neurons, neuron_assoc)}
            if random_features is not None:
                results["random"] = (random_features, controls["random"])
            tables["verdicts"] = staged("verdicts", lambda: timed("verdicts (bootstrap)", lambda: concept_verdicts(
                results, labels, ids, token_sequence, n_boot=cfg.n_bootstrap, seed=cfg.seed,
                split_seed=cfg.split_seed)))
        if strata is not None:
            from workbench.findings import concept_findings

            bests = {"sae": sae_assoc.best, "neurons": neuron_assoc.best}
            if "random" in controls:
                bests["random"] = controls["random"].best
            findings = concept_findings(bests, tables.get("verdicts"))
            if streamed is not None:  # over the whole store, shard by shard
                findings["examples"] = streamed.finding_examples(findings)
            else:
                findings["examples"] = _finding_examples(findings, features, token_sequence, ids)
            tables["concept_findings"] = findings
        description_entries: dict[str, Any] = {}
        if cfg.score_descriptions:
            from workbench.description_scores import description_summary, score_descriptions

            def _description_scores() -> dict[str, Any]:
                options: dict[str, Any] = {"token_sequence": token_sequence, "sequence_ids": ids,
                                           "split_seed": cfg.split_seed, "profile_groups": cfg.profile_groups,
                                           "null_seed": cfg.seed}
                random_scores = None
                if random_features is not None:
                    random_scores = score_descriptions(random_features, labels, controls["random"], obs, n_null=0,
                                                       **options)
                sae_scores = score_descriptions(features, labels, sae_assoc, obs, **options)
                neuron_scores = score_descriptions(neurons, labels, neuron_assoc, obs, n_null=0, **options)
                return {"sae": sae_scores.table.reset_index(), "neurons": neuron_scores.table.reset_index(),
                        "summary": description_summary(sae_scores, neuron_scores, random_scores)}

            scores = staged("description-scores", lambda: timed("description scores", _description_scores),
                            _save_parts, _load_parts)
            tables["description_scores"] = scores["sae"]
            tables["description_scores_neurons"] = scores["neurons"]
            description_entries = scores["summary"]

        # -- probes -----------------------------------------------------------------------------------------------
        reps: dict[str, Any] = {"sae": features.values, "neurons": raw}
        if random_features is not None:
            reps["random_sae"] = random_features.values
        reps = {name: x for name, x in reps.items() if name in cfg.probe_representations}
        token_groups = (list(cfg.token_probe_groups) if cfg.token_probe_groups is not None
                        else probe_groups(labels, level="token"))
        seq_groups = (list(cfg.sequence_probe_groups) if cfg.sequence_probe_groups is not None
                      else probe_groups(labels, level="sequence"))
        probe_results = []
        if token_groups and reps:
            tt = token_targets(labels, token_groups)
            probe_results.append(staged("probes-token", lambda: timed("token probes", lambda: _probe_parts(
                _per_representation(probe_tokens, reps, tt, groups_seq[token_sequence], cv=cfg.probe_cv,
                                    max_samples=cfg.probe_max_samples, seed=cfg.seed))), _save_parts, _load_parts))
        pooled = {name: pool(x, token_sequence, len(ids), how="mean") for name, x in reps.items()}
        st = seq_targets(labels, seq_groups) if seq_groups else pd.DataFrame(index=range(len(ids)))
        if sequence_targets is not None:  # every name checked against the store up front
            extra = sequence_targets.reindex(ids).reset_index(drop=True)
            st = pd.concat([st.reset_index(drop=True), extra], axis=1)
        if st.shape[1] and reps:
            probe_results.append(staged("probes-sequence", lambda: timed("sequence probes", lambda: _probe_parts(
                _per_representation(probe_sequences, pooled, st, cv=cfg.probe_cv, seed=cfg.seed,
                                    groups=groups_seq))), _save_parts, _load_parts))
        if seq_inputs is not None:
            tables["sequence_findings"] = staged("sequence-findings", lambda: timed(
                "sequence findings", lambda: _sequence_findings(
                    seq_inputs, pooled, {"sae": features.names, "neurons": neurons.names,
                                         "random_sae": random_features.names if random_features is not None else []},
                    list(sequence_groups) if sequence_groups is not None else ids, cfg)))
        if probe_results:
            tables["probes"] = pd.concat([r["scores"] for r in probe_results], ignore_index=True)
            tables["probe_weights"] = pd.concat([r["weights"] for r in probe_results], ignore_index=True)
            tables["probe_notes"] = pd.concat([r["notes"] for r in probe_results], ignore_index=True)

        # -- discovery --------------------------------------------------------------------------------------------
        open_labels = _without_sources(labels, cfg.complete_sources)
        missing_tab = staged("missing-annotations", lambda: timed("candidate missing annotations", lambda: (
            missing_annotations(features, open_labels, sae_assoc, obs, position_group=cfg.position_group))))
        unexplained = staged("unexplained-features", lambda: timed("unexplained features", lambda: (
            unexplained_features(features, sae_assoc, labels, obs, profile_groups=cfg.profile_groups,
                                 strata=strata.codes if strata is not None else None))))
        tables["missing_annotations"] = missing_tab
        tables["unexplained_features"] = unexplained
        concepts = labels.token_concepts["concept"].tolist()
        if cfg.rediscovery_groups is None:
            chosen = None
        else:
            wanted = set(cfg.rediscovery_groups)
            chosen = [c for c in concepts if c.split("=", 1)[0] in wanted]
        if chosen is None or chosen:
            red_options = {"concepts": chosen, "withhold": cfg.rediscovery_withhold, "k": cfg.rediscovery_k,
                           "seed": cfg.seed, "association_options": {"split_seed": cfg.split_seed, "n_permutations": 0}}
            red = staged("rediscovery", lambda: timed("rediscovery", lambda: rediscovery(
                features, labels, obs, ids, token_sequence, **red_options)))
            if random_features is not None:
                from workbench.findings import rediscovery_evidence

                red_control = staged("rediscovery-random", lambda: timed("rediscovery (random control)", lambda: (
                    rediscovery(random_features, labels, obs, ids, token_sequence, **red_options))))
                red = rediscovery_evidence(red, red_control)
            tables["rediscovery"] = red

        # -- causal check -----------------------------------------------------------------------------------------
        if cfg.n_causal > 0:
            def _causal() -> pd.DataFrame:
                model = adapter
                if model is None:  # not loaded when the stage is resumed
                    from workbench.registry import load_adapter

                    model = timed("load model", lambda: load_adapter(store.manifest.get("model_source", store.model)))
                index = [int(f[1:]) for f in _causal_choice(sae_assoc.best, unexplained, cfg.n_causal)]
                return timed("causal effects", lambda: causal_effects(
                    model, store, sae, layer=layer, features=index, feature_matrix=features,
                    n_sequences=cfg.causal_sequences, seed=cfg.seed))

            tables["causal"] = staged("causal", _causal)

        # -- catalog ----------------------------------------------------------------------------------------------
        parts = None
        if streamed is not None:  # the catalog covers the whole store again
            store, labels, ids, token_sequence = full_store, full_labels, full_ids, full_token_sequence
            parts = streamed.parts
            tables["sample_sequences"] = pd.DataFrame(
                {"sequence_id": np.asarray(ids, dtype=object)[sample.sequences]})
        measures = _measures_table(labels, ids)
        if measures is not None:
            tables["sequence_measures"] = measures
        for name, table in (extra_tables or {}).items():
            tables[name] = table
        var_extra = _var_extra(features.names, tables)
        obs_extra = None
        rows = None if parts is None or parts.rows is None else parts.rows  # the catalog's sequences (None: all)
        if cfg.position_group:
            strings = _position_strings(labels, cfg.position_group, len(ids), token_sequence, rows=rows, store=store)
            if strings is not None:
                kept = ids if rows is None else [ids[int(i)] for i in rows]
                obs_extra = pd.DataFrame({cfg.position_group: strings}, index=pd.Index(kept, name="sequence_id"))
        summary = dict(summary_extra or {})
        summary.update(_summary(tables))
        summary.update(description_entries)
        if strata is not None:
            from workbench.findings import headline

            summary.update(headline(tables))
            summary["strata"] = strata.description
            summary["n_strata"] = len(strata.names)
        summary["annotate_seconds"] = timings
        if streamed is not None:
            summary.update(streamed.summary())
        elif work is not None:
            summary["resumed_stages"] = list(work.resumed)
        adata = timed("catalog", lambda: build_catalog(
            store, sae, None if parts is not None else features, sae_assoc, labels, layer=layer, controls=controls,
            metrics=metrics, tables=tables, var_extra=var_extra, obs_extra=obs_extra, summary_extra=summary,
            obsm_extra=obsm_extra, uns_extra=uns_extra, seed=cfg.seed, profile_groups=cfg.profile_groups,
            parts=parts))
        prov = adata.uns["provenance"]
        prov["model_source"] = str(store.manifest.get("model_source", store.model))
        if sae_path is not None:
            prov["sae_path"] = str(Path(sae_path).resolve())
        prov["annotate_config"] = {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in asdict(cfg).items()
                                   if v is not None}
        path = write_catalog(adata, out, overwrite=overwrite)
    except WorkbenchError:  # a refused input leaves nothing behind; a killed run keeps its work for the resume
        if fresh and work is not None:
            work.remove()
        raise
    if streamed is not None:
        streamed.finish()
    elif work is not None:
        work.remove()
    _log(progress, f"catalog written to {path} in {time.perf_counter() - t_start:.0f} s")
    return Catalog.open(path)


def _work_key(store: ActivationStore, sae: Any, labels: ConceptLabels, control_store: ActivationStore | None,
              control_sae: Any | None, layer: int, cfg: AnnotateConfig, *, adapter: Adapter | None,
              sequence_groups: Sequence[str] | None, sequence_targets: pd.DataFrame | None,
              finding_targets: pd.DataFrame | None) -> dict[str, Any]:
    """What the in-memory stages depend on: the inputs of :func:`~workbench._stream_pipeline.stream_key` (store
    manifest, SAE weights, labels, control store and SAE, layer, options), the label tables it does not hash
    (concept sources, sequence scopes, measures), the sequence groups and targets, and a given adapter of the causal
    check (its class and source)."""
    import hashlib

    from workbench._stream_pipeline import stream_key

    def sha(chunks: Iterable[bytes]) -> str:
        h = hashlib.sha256()
        for chunk in chunks:
            h.update(hashlib.sha256(chunk).digest())
        return h.hexdigest()

    def table(frame: pd.DataFrame | None) -> bytes:
        return b"none" if frame is None else frame.to_csv().encode()

    scopes = [name.encode() + np.packbits(np.asarray(mask, dtype=bool)).tobytes()
              for name, mask in sorted(labels.sequence_scopes.items())]
    extra = {
        "mode": "in-memory",
        "label_tables": sha([table(labels.token_concepts), table(labels.sequence_concepts), table(labels.measures),
                             *scopes]),
        "sequence_groups": None if sequence_groups is None else sha(str(g).encode() for g in sequence_groups),
        "sequence_targets": None if sequence_targets is None else sha([table(sequence_targets)]),
        "finding_targets": None if finding_targets is None else sha([table(finding_targets)]),
        "adapter": (None if adapter is None or cfg.n_causal <= 0
                    else f"{type(adapter).__module__}.{type(adapter).__qualname__}:{getattr(adapter, 'source', '')}"),
    }
    return stream_key(store, sae, labels, control_store, control_sae, layer, cfg, extra)


def _open_work(out: Path, key: Mapping[str, Any], *, progress: bool) -> tuple[StreamWork, bool]:
    """The work folder ``<out>.annotate-work`` of the in-memory stages (:class:`~workbench._stream_pipeline.
    StreamWork`: kept when its key matches, else emptied) and whether it holds nothing of an earlier run (then a
    refused input removes it again)."""
    from workbench._stream_pipeline import LABELS_DIR, StreamWork

    work = StreamWork.open(out, key)
    done = sorted(p.name for p in work.path.iterdir() if p.is_dir() and p.name != LABELS_DIR
                  and not p.name.startswith("."))
    if done:
        _log(progress, f"resuming from {work.path}: {len(done)} finished stage(s) ({', '.join(done)})")
    return work, not done and not (work.path / LABELS_DIR).exists()


def _plain(value: Any) -> Any:
    """A numpy scalar or array as the Python value JSON writes (for :func:`json.dumps`)."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} cannot be saved as JSON")


def _save_parts(parts: Mapping[str, Any], folder: Path) -> None:
    """A stage result of several parts: each table as ``<name>.parquet``, the other values in ``parts.json``."""
    import pandas as pd

    names, values = [], {}
    for name, value in parts.items():
        if isinstance(value, pd.DataFrame):
            value.to_parquet(folder / f"{name}.parquet")
            names.append(name)
        else:
            values[name] = value
    (folder / "parts.json").write_text(json.dumps({"tables": names, "values": values}, default=_plain))


def _load_parts(folder: Path) -> dict[str, Any]:
    """What :func:`_save_parts` saved."""
    import pandas as pd

    meta = json.loads((folder / "parts.json").read_text())
    parts: dict[str, Any] = {name: pd.read_parquet(folder / f"{name}.parquet") for name in meta["tables"]}
    parts.update(meta["values"])
    return parts


def _probe_parts(result: Any) -> dict[str, pd.DataFrame]:
    """The tables of a :class:`~workbench.probes.ProbeResult` that the catalog keeps."""
    return {"scores": result.scores, "weights": result.weights, "notes": result.notes}


def _sequence_inputs(labels: ConceptLabels, ids: Sequence[str], finding_targets: pd.DataFrame | None,
                     cfg: AnnotateConfig) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Targets and covariates of the sequence-level findings, validated (covariates encoded once) up front."""
    from workbench.findings import sequence_inputs
    from workbench.heldout import covariate_matrix

    extra = None
    if finding_targets is not None:
        missing = [i for i in finding_targets.index.astype(str) if i not in set(ids)]
        if missing:
            raise InputError(f"finding targets name sequences not in the store: {missing[:3]}")
        extra = finding_targets.reindex(ids).reset_index(drop=True)
    targets, covariates = sequence_inputs(labels, groups=cfg.finding_groups, measures=cfg.finding_measures,
                                          covariates=cfg.finding_covariates, extra=extra)
    if covariates is not None:
        covariate_matrix(covariates)  # a numeric covariate with missing values is refused here, not after the probes
    return targets, covariates


def _sequence_findings(inputs: tuple[pd.DataFrame, pd.DataFrame | None], pooled: Mapping[str, np.ndarray],
                       names: Mapping[str, Sequence[str]], group_keys: Sequence[str],
                       cfg: AnnotateConfig) -> pd.DataFrame:
    """Held-out sequence-level findings: each target controlled for the covariates; the best single feature chosen on
    the validation half of the sequence groups (the split of the association), tested on the other half."""
    from workbench.associate import sequence_split
    from workbench.heldout import heldout_findings

    targets, covariates = inputs
    train = sequence_split([str(g) for g in group_keys], seed=cfg.split_seed)
    values = {name: np.asarray(x) for name, x in pooled.items() if len(names.get(name, []))}
    return heldout_findings(values, targets, feature_names={n: names[n] for n in values}, covariates=covariates,
                            train=train).table


def _without_sources(labels: ConceptLabels, sources: Sequence[str]) -> ConceptLabels:
    """``labels`` without the token concepts of ``sources`` (scopes and measures kept)."""
    keep = np.flatnonzero(~labels.token_concepts["source"].isin(list(sources)).to_numpy())
    return labels.subset(keep, None)


def _per_representation(fn: Callable[..., Any], reps: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
    """``fn`` once per representation, in parallel processes (one per core; each probe is single-threaded), combined.

    Folds and subsamples depend only on the targets, groups and seed, so the per-representation runs are the same
    experiment as one joint run.
    """
    import os

    from joblib import Parallel, delayed

    from workbench.probes import concat_results

    n_jobs = max(1, min(len(reps), os.cpu_count() or 1))
    results = Parallel(n_jobs=n_jobs, backend="loky")(delayed(fn)({name: x}, *args, **kwargs)
                                                      for name, x in reps.items())
    return concat_results(results)


def _causal_choice(best: pd.DataFrame, unexplained: pd.DataFrame, n: int) -> list[str]:
    """About three quarters best features of the best-captured concepts, the rest top unexplained features; either list
    fills in when the other runs short."""
    matched = list(dict.fromkeys(str(f) for f in best.sort_values("test_f1", ascending=False)["best_feature"]))
    loose = [str(f) for f in unexplained.get("feature", []) if str(f) not in matched]
    n_matched = max(n - min(len(loose), n // 4), 0)
    chosen = matched[:n_matched] + loose[: n - min(n_matched, len(matched))]
    return chosen[:n]


def _sae_metrics(sae: Any) -> dict[str, Any]:
    """The SAE folder's ``metrics.json`` when ``sae`` is a folder that has one."""
    import json

    if isinstance(sae, (str, Path)) and (Path(sae) / "metrics.json").is_file():
        return json.loads((Path(sae) / "metrics.json").read_text())
    return {}


