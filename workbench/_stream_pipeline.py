"""The streamed annotation stage: what :func:`workbench.annotate` does with ``stream=True``.

Every statistic that is a sum of counts is computed over the whole store, shard by shard, with bounded memory (and
split across ``torchrun`` ranks): the association of the SAE features, the neurons and the random-weight control
with every concept, the stratified test, the permutation null, the threshold curves, the SAE-versus-control
verdicts, and the catalog's per-sequence activations, examples and profiles. These equal the in-memory results
(tested). The analyses that need a ``tokens x features`` matrix (probes, description scores, candidate missing
annotations, unexplained features, rediscovery, the causal check) run on a seeded sample of whole sequences capped
at ``AnnotateConfig.sample_tokens`` tokens (:mod:`workbench._subset`), and the catalog says so
(``summary["sample"]``).

The stage keeps its work in ``<out>.annotate-work``: the SAE codes of every shard and each finished stage's tables.
A run killed part way is resumed by running it again with the same inputs (a key of the store, the SAEs, the
labels and the options guards the folder; other inputs start it afresh); the folder is removed once the catalog is
written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.errors import InputError, StoreError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.associate import Association, FeatureMatrix
    from workbench.concepts import ConceptLabels
    from workbench.label_shards import LabelShards
    from workbench.store import ActivationStore
    from workbench.stratified import Strata
    from workbench.stream_associate import ShardFeatures

__all__ = ["StreamWork", "StreamedStatistics", "Sample", "streamed_statistics", "sample_inputs", "peak_rss_bytes",
           "memory_plan", "token_columns", "run_streamed"]

WORK_SUFFIX = ".annotate-work"
LABELS_DIR = "labels"
"""The label shards of a streamed run in the work folder (built by the CLI; :func:`label_shards_for`)."""


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def memory_plan(store: ActivationStore, *, layer: int, width: int, k: int | None, max_memory: int) -> dict[str, int]:
    """Split a memory budget (bytes) between the parts of the streamed stage, or refuse it when one shard does not
    fit: a shard's activations (float32) and SAE codes (index and value per active latent) are held at once. The
    permutation counts get a quarter of the budget and the in-memory sample the rest (about 8 KiB per token: the
    feature matrices, labels, probes and catalog of the analyses on the sample)."""
    per_token = 4 * store.d_model + 12 * (k or width) + 64
    for i, shard in enumerate(store.shards):
        need = shard.n_tokens * per_token
        if need > max_memory // 2:
            raise InputError(f"a memory budget of {max_memory / 2**30:.2f} GiB is too small for shard {shard.name} "
                             f"({shard.n_tokens} tokens need about {need / 2**30:.2f} GiB at once; give at least "
                             f"{2 * need / 2**30:.2f} GiB)")
    return {"null_memory": max(max_memory // 4, 1 << 20), "sample_tokens": max(int(max_memory // 2 // 8192), 1000)}


def token_columns(store: ActivationStore, columns: list[str]) -> pd.DataFrame:
    """Columns of the store's token table as categoricals, read one shard at a time (no string per token)."""
    import pandas as pd
    from pandas.api.types import union_categoricals

    parts: dict[str, list[Any]] = {c: [] for c in columns}
    for i in range(len(store.shards)):
        frame = store.shard_obs(i, columns) if columns else None
        for c in columns:
            parts[c].append(pd.Categorical(frame[c].astype(str)))  # type: ignore[index]
    data = {c: pd.Series(union_categoricals(v) if v else pd.Categorical([])) for c, v in parts.items()}
    return pd.DataFrame(data, index=pd.RangeIndex(store.n_tokens)) if data else pd.DataFrame(index=pd.RangeIndex(store.n_tokens))


def labels_sha256(labels: ConceptLabels | LabelShards) -> str:
    """A key of the labels' content (concept names, token and sequence matrices, scopes)."""
    from workbench.label_shards import LabelShards

    if isinstance(labels, LabelShards):
        return labels.sha256()
    h = hashlib.sha256()
    for matrix in (labels.tokens.tocsr(), labels.instances.tocsr(), labels.sequences.tocsr()):
        for arr in (matrix.indptr, matrix.indices, matrix.data):
            h.update(np.ascontiguousarray(arr).tobytes())
    h.update("\n".join(labels.token_concepts["concept"].astype(str)).encode())
    h.update("\n".join(labels.sequence_concepts["concept"].astype(str)).encode())
    for name in sorted(labels.scopes):
        h.update(name.encode() + np.packbits(np.asarray(labels.scopes[name], dtype=bool)).tobytes())
    return h.hexdigest()


def sae_sha256(sae: Any) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(sae.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class StreamWork:
    """The work folder of one streamed annotation: SAE code caches and finished stages, guarded by a key."""

    path: Path
    writer: bool = True
    """This process saves the stages (rank 0; every rank computes them together)."""
    resumed: list[str] = field(default_factory=list)
    """Stages read back from an earlier run."""

    @classmethod
    def open(cls, out: Path, key: Mapping[str, Any]) -> StreamWork:
        """``<out>.annotate-work`` for these inputs: kept when its key matches (a resumed run), else emptied."""
        path = out.with_name(out.name + WORK_SUFFIX)
        marker = path / "key.json"
        text = json.dumps(dict(key), sort_keys=True, default=str)
        try:
            same = marker.read_text() == text
        except OSError:
            same = False
        if path.exists() and not same:  # another run's work; label shards keep their own key (build_label_shards)
            for item in path.iterdir():
                if item.name != LABELS_DIR:
                    shutil.rmtree(item) if item.is_dir() else item.unlink()
        path.mkdir(parents=True, exist_ok=True)
        if not same:
            marker.write_text(text)
        return cls(path)

    def stage(self, name: str, compute: Callable[[], Any], *, save: Callable[[Any, Path], None],
              load: Callable[[Path], Any]) -> Any:
        """The result of stage ``name``: read back when an earlier run finished it, else computed and saved (into a
        temporary folder renamed at the end, so a kill never leaves half a stage)."""
        done = self.path / name
        if done.is_dir():
            self.resumed.append(name)
            return load(done)
        result = compute()
        if not self.writer:
            return result
        tmp = self.path / f".{name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save(result, tmp)
        tmp.rename(done)
        return result

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def save_association(assoc: Association, folder: Path) -> None:
    assoc.pairs.to_parquet(folder / "pairs.parquet")
    assoc.best.to_parquet(folder / "best.parquet")
    if assoc.thresholds is not None:
        assoc.thresholds.to_parquet(folder / "thresholds.parquet")
    (folder / "params.json").write_text(json.dumps(assoc.params, default=str))


def load_association(folder: Path) -> Association:
    import pandas as pd

    from workbench.associate import Association

    curves = folder / "thresholds.parquet"
    return Association(pd.read_parquet(folder / "pairs.parquet"), pd.read_parquet(folder / "best.parquet"),
                       json.loads((folder / "params.json").read_text()),
                       pd.read_parquet(curves) if curves.is_file() else None)


def _save_table(table: pd.DataFrame, folder: Path) -> None:
    table.to_parquet(folder / "table.parquet")


def _load_table(folder: Path) -> pd.DataFrame:
    import pandas as pd

    return pd.read_parquet(folder / "table.parquet")


VERIFIED_FILE = "verified.json"
"""The shard files a run hashed, with their size and modification time: a resumed run hashes only what changed."""


def verify_shards(stores: Sequence[ActivationStore], *, layer: int, work: StreamWork, dist: Any = None) -> None:
    """Check every shard's files against the hashes of the stores' manifests (:meth:`~workbench.store.ActivationStore.
    verify_shard`), the ranks splitting the shards; a file verified earlier in this work folder whose size and
    modification time are unchanged is not hashed again. Every rank raises the first failure, naming the file."""
    import os

    from workbench._dist import Dist

    dist = dist or Dist()
    marker = work.path / VERIFIED_FILE
    try:
        seen: dict[str, list[int]] = json.loads(marker.read_text())
    except (OSError, ValueError):
        seen = {}
    done: dict[str, list[int]] = {}
    failure = ""
    try:
        for store in stores:
            for i in range(dist.rank, len(store.shards), dist.world_size):
                paths = [store.shard_dir(i) / name for name in store.shard_files(i, layer=layer)]
                stamps = {str(p): [st.st_size, st.st_mtime_ns] for p in paths if p.is_file() for st in [os.stat(p)]}
                if len(stamps) == len(paths) and all(seen.get(k) == v for k, v in stamps.items()):
                    done.update(stamps)
                    continue
                store.verify_shard(i, layer=layer)
                done.update(stamps)
    except StoreError as exc:
        failure = str(exc)
    if dist.world_size > 1:
        gathered = dist.gather((failure, done))
        failure = next((f for f, _ in gathered if f), "")  # type: ignore[misc]
        for _, d in gathered:  # type: ignore[misc]
            done.update(d)
    if failure:
        raise StoreError(failure)
    if work.writer:
        tmp = marker.with_name(f".{VERIFIED_FILE}.tmp")
        tmp.write_text(json.dumps(done))
        os.replace(tmp, marker)


@dataclass
class StreamedStatistics:
    """The whole-store results of the streamed stage."""

    associations: dict[str, Association]
    """``"sae"``, ``"neurons"`` and (with the control) ``"random"``."""
    features: dict[str, ShardFeatures]
    """The same keys: each representation's normalised values, shard by shard."""
    verdicts: pd.DataFrame | None


def require_shards(store: ActivationStore) -> None:
    """Refuse a store with a missing shard file, naming it (existence only: no shard is read)."""
    missing = store.missing_shards()
    if missing:
        raise StoreError(f"{store.path}: shard file {missing[0]} is missing"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def check_stores(store: ActivationStore, control_store: ActivationStore | None, layer: int) -> None:
    """Refuse, naming the shard, a store whose shards are missing or changed since its manifest; a control store
    whose shards do not line up with the store's (the verdicts count both shard by shard)."""
    for s in [store] + ([control_store] if control_store is not None else []):
        require_shards(s)
    if control_store is not None and [x.n_tokens for x in control_store.shards] != [x.n_tokens for x in store.shards]:
        raise InputError(f"the control store {control_store.path} is cut into other shards than {store.path}: extract "
                         "both with the same shard_tokens to stream them")


def streamed_statistics(store: ActivationStore, sae: Any, labels: ConceptLabels | LabelShards, *, layer: int,
                        control_store: ActivationStore | None, control_sae: Any | None, strata: np.ndarray | None,
                        cfg: Any, work: StreamWork, null_memory: int, timed: Callable[[str, Callable[[], Any]], Any],
                        dist: Any = None) -> StreamedStatistics:
    """Association of every representation (with the stratified test and the permutation null) and the verdicts,
    over the whole store; each a resumable stage of ``work``."""
    from workbench.stream_associate import ShardFeatures, associate_streaming, verdicts_streaming

    sources: dict[str, tuple[ActivationStore, Any]] = {"sae": (store, sae), "neurons": (store, None)}
    if control_store is not None:
        sources["random"] = (control_store, control_sae)
    verify_shards([store] + ([control_store] if control_store is not None else []), layer=layer, work=work,
                  dist=dist)  # changed shards are refused before any work
    features: dict[str, ShardFeatures] = {}
    associations: dict[str, Association] = {}
    for name, (st, model) in sources.items():
        cache = work.path / f"codes-{name}" if model is not None else None
        features[name] = timed(f"feature maxima ({name})", lambda st=st, model=model, cache=cache: ShardFeatures(
            st, layer, model, cache=cache, dist=dist, device=cfg.device))
        f = features[name]
        associations[name] = work.stage(f"association-{name}", lambda st=st, f=f, cache=cache: timed(
            f"association ({name}, streamed)", lambda: associate_streaming(
                st, labels, layer=layer, sae=f.sae, maxima=f.maxima, code_cache=cache if cache is not None else False,
                strata=strata, n_permutations=cfg.n_permutations, seed=cfg.seed, split_seed=cfg.split_seed,
                null_memory=null_memory)), save=save_association, load=load_association)
    verdicts = None
    if cfg.n_bootstrap > 0:
        verdicts = work.stage("verdicts", lambda: timed("verdicts (bootstrap, streamed)", lambda: verdicts_streaming(
            store, labels, {name: (features[name], associations[name]) for name in features}, n_boot=cfg.n_bootstrap,
            seed=cfg.seed, split_seed=cfg.split_seed)), save=_save_table, load=_load_table)
    return StreamedStatistics(associations, features, verdicts)


@dataclass
class Sample:
    """The analyses' view of a sample of whole sequences: a small store of its own and everything on its tokens."""

    store: ActivationStore
    control_store: ActivationStore | None
    labels: ConceptLabels
    features: dict[str, FeatureMatrix]
    """Normalised by the whole store's maxima, so the association's thresholds mean the same."""
    tokens: np.ndarray
    """The sample's tokens' rows in the whole store."""
    sequences: np.ndarray
    """The sample's sequences' rows in the whole store."""

    def describe(self, store: ActivationStore, cap: int) -> dict[str, Any]:
        return {"n_sequences": int(len(self.sequences)), "n_tokens": int(len(self.tokens)),
                "fraction_of_tokens": round(len(self.tokens) / max(store.n_tokens, 1), 6), "max_tokens": int(cap),
                "used_for": "probes, description scores, missing annotations, unexplained features, rediscovery, "
                            "causal check"}


def sample_inputs(store: ActivationStore, labels: ConceptLabels | LabelShards, stats: StreamedStatistics, *, layer: int,
                  control_store: ActivationStore | None, index: np.ndarray, work: StreamWork) -> Sample:
    """The sample ``index`` (store sequence indices, :func:`~workbench._subset.sample_sequences`) written as stores
    in ``work`` (reused when already there), its labels, and each representation's feature matrix on it."""
    import scipy.sparse as sp

    from workbench._subset import labels_of_tokens, subset_store
    from workbench.associate import FeatureMatrix
    from workbench.label_shards import LabelShards
    from workbench.store import open_store

    def written(source: ActivationStore, name: str) -> ActivationStore:
        path = work.path / name
        if (path / "manifest.json").is_file():
            return open_store(path)
        return subset_store(source, index, path, layers=[layer])

    sub = written(store, "sample-store")
    sub_control = written(control_store, "sample-control") if control_store is not None else None
    seqs = store.sequences
    starts = np.concatenate([[0], np.cumsum([s.n_tokens for s in store.shards])]).astype(np.int64)
    first = starts[seqs["shard"].to_numpy()[index]] + seqs["offset"].to_numpy()[index]
    lengths = seqs["n_tokens"].to_numpy()[index]
    tokens = np.concatenate([np.arange(a, a + n) for a, n in zip(first, lengths)]) if len(index) else np.zeros(0, int)
    token_sequence = np.repeat(np.arange(len(index)), lengths)
    if isinstance(labels, LabelShards):  # the sample's token rows read shard by shard
        sample_labels = labels_of_tokens(labels.take(tokens), np.arange(len(tokens)), index, token_sequence)
    else:
        sample_labels = labels_of_tokens(labels, tokens, index, token_sequence)
    features = {}
    shard_of = np.searchsorted(starts, tokens, side="right") - 1
    for name, full in stats.features.items():  # the whole store's normalised values (cached codes), the sample's rows
        blocks = [full.shard(int(i))[tokens[shard_of == i] - starts[i]] for i in np.unique(shard_of)]
        values = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, len(full.names)), dtype=np.float32)
        features[name] = FeatureMatrix(values, np.asarray(full.maxima, dtype=np.float32), list(full.names))
    return Sample(sub, sub_control, sample_labels, features, tokens, index)


def stream_key(store: ActivationStore, sae: Any, labels: ConceptLabels | LabelShards, control_store: ActivationStore | None,
               control_sae: Any | None, layer: int, cfg: Any, extra: Mapping[str, Any]) -> dict[str, Any]:
    """What the work folder's results depend on."""
    return {"store": store.manifest_sha256(), "sae": sae_sha256(sae), "labels": labels_sha256(labels), "layer": layer,
            "control_store": control_store.manifest_sha256() if control_store is not None else None,
            "control_sae": sae_sha256(control_sae) if control_sae is not None else None,
            "config": {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in asdict(cfg).items()},
            **dict(extra)}


@dataclass
class Streamed:
    """Everything the streamed stage hands to :func:`workbench.annotate`."""

    stats: StreamedStatistics
    sample: Sample | None
    """The sample (rank 0 only)."""
    parts: Any
    """The catalog's :class:`~workbench.catalog.CatalogParts` of the whole store."""
    top_sequences: dict[str, list[str]]
    """For each concept's best feature beyond the strata: the sequences where it carries the most activation."""
    work: StreamWork
    writes: bool
    """This process writes the catalog (rank 0)."""
    info: dict[str, Any]

    def finding_examples(self, findings: pd.DataFrame) -> list[str]:
        """:func:`workbench._annotate_tables._finding_examples` from the whole-store top sequences."""
        return [", ".join(self.top_sequences.get(str(f), [])) if status in ("finding", "control as good") else ""
                for f, status in zip(findings["beyond_feature"].astype(str), findings["finding"])]

    def summary(self) -> dict[str, Any]:
        return {"streamed": {**self.info, "resumed_stages": list(self.work.resumed),
                             "peak_rss_gib": round(peak_rss_bytes() / 2**30, 3)}}

    def finish(self) -> None:
        self.work.remove()


def top_sequences(store: ActivationStore, features: ShardFeatures, wanted: list[str], *, n: int = 3,
                  dist: Any = None) -> dict[str, list[str]]:
    """For each feature name in ``wanted``, the ``n`` sequences with the largest summed activation (ties: store
    order), over the whole store shard by shard; sequences where it never fires are left out."""
    from workbench._stream_catalog import sequence_mass

    index = {name: j for j, name in enumerate(features.names)}
    names = [w for w in dict.fromkeys(wanted) if w in index]
    mass = sequence_mass(store, features, [index[w] for w in names], dist=dist)
    ids = store.sequences["sequence_id"].astype(str).tolist()
    out = {}
    for k, name in enumerate(names):
        top = np.argsort(-mass[k], kind="stable")[:n]
        out[name] = [ids[i] for i in top if mass[k, i] > 0]
    return out


def run_streamed(store: ActivationStore, sae: Any, labels: ConceptLabels | LabelShards, *, layer: int, out: Path,
                 control_store: ActivationStore | None, control_sae: Any | None, strata: Any, cfg: Any,
                 max_memory: int | None, timed: Callable[[str, Callable[[], Any]], Any]) -> Streamed:
    """The whole-store passes of the streamed annotation (every rank) and the sample (rank 0)."""
    from workbench._dist import Dist
    from workbench._stream_catalog import catalog_parts_streaming
    from workbench._subset import sample_sequences
    from workbench.stream_associate import NULL_MEMORY

    check_stores(store, control_store, layer)
    if max_memory is not None:
        plan = memory_plan(store, layer=layer, width=sae.cfg.width, k=getattr(sae.cfg, "k", None), max_memory=max_memory)
    else:
        plan = {"null_memory": NULL_MEMORY, "sample_tokens": cfg.sample_tokens}
    dist = Dist.setup("cpu", keep=True)
    key = stream_key(store, sae, labels, control_store, control_sae, layer, cfg,
                     {"plan": plan, "world_size": dist.world_size})
    if dist.world_size > 1:  # every rank must stream the same inputs, or the summed counts mean nothing
        keys = dist.gather(key)
        for part in ("store", "labels", "sae", "control_store", "control_sae", "layer", "config", "plan"):
            seen = [k[part] for k in keys]  # type: ignore[index]
            if any(v != seen[0] for v in seen):
                r = next(i for i, v in enumerate(seen) if v != seen[0])
                raise InputError(f"the ranks see different inputs: rank {r}'s {part.replace('_', ' ')} differs from "
                                 "rank 0's (give every process the same store, SAE, labels and options)")
    work = StreamWork.open(out, key) if dist.rank == 0 else StreamWork(out.with_name(out.name + WORK_SUFFIX), writer=False)
    dist.barrier()  # the folder exists (and holds the right key) before any rank writes into it
    codes = strata.codes if strata is not None else None
    stats = streamed_statistics(store, sae, labels, layer=layer, control_store=control_store, control_sae=control_sae,
                                strata=codes, cfg=cfg, work=work, null_memory=plan["null_memory"], timed=timed,
                                dist=dist)
    best = stats.associations["sae"].best
    wanted = [f for f in best.get("beyond_feature", best["best_feature"]).astype(str) if f]
    tops = timed("finding examples (streamed)", lambda: top_sequences(store, stats.features["sae"], wanted, dist=dist))
    index = sample_sequences(store, max_tokens=plan["sample_tokens"], seed=cfg.seed)
    position = {sid: i for i, sid in enumerate(store.sequences["sequence_id"].astype(str))}
    keep = np.union1d(index, [position[sid] for ids in tops.values() for sid in ids])
    parts = timed("catalog parts (streamed)", lambda: catalog_parts_streaming(
        store, stats.features["sae"], labels, profile_groups=cfg.profile_groups, seed=cfg.seed, dist=dist,
        keep=None if len(index) == store.n_sequences else keep))
    sample = None
    if dist.rank == 0:
        sample = timed("sample", lambda: sample_inputs(store, labels, stats, layer=layer, control_store=control_store,
                                                       index=index, work=work))
    info = {"world_size": dist.world_size, "memory_budget_gib": None if max_memory is None else round(max_memory / 2**30, 3),
            "null_memory_gib": round(plan["null_memory"] / 2**30, 3), "n_shards": len(store.shards)}
    if sample is not None:
        info["sample"] = sample.describe(store, plan["sample_tokens"])
    info["catalog_sequences"] = ("all" if parts.rows is None else "the sample's, the findings' and the examples' "
                                                                     "sequences; X pooled for the first two (obs['pooled'])")
    return Streamed(stats, sample, parts, tops, work, dist.rank == 0, info)


def label_shards_for(store: ActivationStore, label_fn: Callable[[ActivationStore], ConceptLabels], out: Path, *,
                     key: str, progress: Callable[[str], None] | None = None) -> LabelShards:
    """``store``'s labels built shard by shard (:func:`~workbench.label_shards.build_label_shards`) in the work
    folder of the streamed annotation into ``out`` (kept across a resumed run, removed with the folder)."""
    from workbench._dist import Dist
    from workbench.label_shards import build_label_shards

    folder = out.with_name(out.name + WORK_SUFFIX) / LABELS_DIR
    dist = Dist.setup("cpu", keep=True)
    if dist.rank == 0:
        folder.parent.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    return build_label_shards(store, label_fn, folder, key=key, dist=dist, progress=progress)


def shard_strata(store: ActivationStore, labels: LabelShards, *, groups: Sequence[str], columns: Sequence[str],
                 sequence_groups: Sequence[str]) -> Strata:
    """:func:`~workbench.stratified.token_strata` of the whole store from labels held per shard: each shard's strata
    by name, numbered in the sorted order of every shard's names (as the whole-store function numbers them)."""
    from workbench.stratified import Strata, token_strata

    token_seq = store.token_sequence()
    starts = np.concatenate([[0], np.cumsum([s.n_tokens for s in store.shards])]).astype(np.int64)
    present = [c for c in columns if c in store.obs_columns]
    parts = []
    for i in range(len(store.shards)):
        rows = labels.shard_sequences(i)
        local = np.searchsorted(rows, token_seq[starts[i]: starts[i + 1]])
        got = token_strata(labels.shard(i), store.shard_obs(i, present) if present else _empty_obs(store.shards[i].n_tokens),
                           groups=groups, columns=columns, sequence_groups=sequence_groups, token_sequence=local)
        parts.append((got.codes.astype(np.int32), got.names, got.description))
    names = sorted({n for _, own, _ in parts for n in own})
    codes = np.empty(store.n_tokens, dtype=np.int64)
    for i, (own_codes, own, _) in enumerate(parts):
        codes[starts[i]: starts[i + 1]] = np.searchsorted(names, own)[own_codes] if len(own) else 0
    descriptions = {d for *_, d in parts}
    return Strata(codes, names, max(descriptions, key=len) if descriptions else "none (one stratum)")


def _empty_obs(n: int) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(index=range(n))
