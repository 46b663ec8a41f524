"""Labels built and held shard by shard: equal to whole-store labels, resumable, and read by the streamed stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from workbench.errors import WorkbenchError


def span_labels(store: Any) -> Any:
    """Residue concepts (one-token spans), an N-terminal and a middle region scoped to residues 1-60, and a sequence
    concept: what an annotation source returns for ``store`` (a whole store or one shard's view)."""
    from workbench.concepts import labels_from_spans, scope_labels

    obs = store.obs(["sequence_id", "position", "residue"])
    ids = store.sequences["sequence_id"].astype(str).tolist()
    residues = pd.DataFrame({"sequence_id": obs["sequence_id"], "start": obs["position"], "end": obs["position"],
                             "concept": "aa=" + obs["residue"]})
    regions = pd.DataFrame({"sequence_id": ids * 2, "start": [1] * len(ids) + [30] * len(ids),
                            "end": [12] * len(ids) + [45] * len(ids), "concept": ["region=nterm"] * len(ids) + ["region=mid"] * len(ids)})
    length = store.sequences["n_tokens"].to_numpy()
    values = pd.DataFrame({"sequence_id": ids, "long": np.where(length > 115, "yes", "no")})
    labels = labels_from_spans(obs, pd.concat([residues, regions], ignore_index=True), sequence_ids=ids,
                               sequence_values=values, source="spans")
    labels.token_concepts.attrs = {"n_spans": int(len(residues) + len(regions)), "ids": ids[:1]}
    return scope_labels(labels, tokens=obs["position"].to_numpy() <= 60, name="first60",
                        token_concepts=["region=nterm", "region=mid"])


@pytest.fixture(scope="module")
def sharded(stream_case: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from workbench.label_shards import build_label_shards

    store = stream_case[0]
    shards = build_label_shards(store, span_labels, tmp_path_factory.mktemp("labels") / "labels", key="spans")
    return store, span_labels(store), shards


def test_shard_view_is_a_store_of_one_shard(stream_case: Any) -> None:
    store = stream_case[0]
    view = store.shard_view(2)
    rows = store.sequences["shard"].to_numpy() == 2
    assert view.n_tokens == store.shards[2].n_tokens and view.n_sequences == int(rows.sum()) and len(view.shards) == 1
    assert view.sequences["sequence_id"].tolist() == store.sequences["sequence_id"][rows].tolist()
    pd.testing.assert_frame_equal(view.obs(), store.shard_obs(2))
    assert np.array_equal(view.activations(1), store.shard_activations(2, 1))
    with pytest.raises(WorkbenchError, match="no shard 99"):
        store.shard_view(99)


def test_label_shards_equal_the_whole_store_labels(sharded: Any) -> None:
    from workbench.label_shards import token_block, token_scope_index

    store, whole, shards = sharded
    assert shards.n_shards == len(store.shards) >= 4 and shards.n_tokens == whole.n_tokens
    pd.testing.assert_frame_equal(shards.token_concepts, whole.token_concepts)
    pd.testing.assert_frame_equal(shards.sequence_concepts, whole.sequence_concepts)
    assert (shards.sequences != whole.sequences.tocsr()).nnz == 0
    assert shards.token_concepts.attrs["n_spans"] == whole.token_concepts.attrs["n_spans"]  # counters summed
    assert len(shards.token_concepts.attrs["ids"]) == shards.n_shards  # lists joined
    assert token_scope_index(shards)[0] == ["first60"] and (token_scope_index(shards)[1] == 0).sum() == 2
    assert np.array_equal(token_scope_index(shards)[1], token_scope_index(whole)[1])
    for lo, hi in ((0, whole.n_tokens), (5, 3000), (int(shards.starts[1]) - 1, int(shards.starts[3]) + 7)):
        a, b = token_block(whole, lo, hi), token_block(shards, lo, hi)
        assert (a.tokens != b.tokens).nnz == 0 and (a.instances != b.instances).nnz == 0  # instance ids: whole-store
        assert np.array_equal(a.scopes, b.scopes)
    one = shards.shard(1)
    a, b = int(shards.starts[1]), int(shards.starts[2])
    assert one.n_tokens == b - a and (one.tokens != whole.tokens.tocsr()[a:b]).nnz == 0
    assert np.array_equal(one.scopes["first60"], whole.scopes["first60"][a:b])
    rows = np.flatnonzero(store.sequences["shard"].to_numpy() == 1)
    assert (one.sequences != whole.sequences.tocsr()[rows]).nnz == 0
    picked = np.random.default_rng(0).choice(whole.n_tokens, 500, replace=False)  # any order
    taken = shards.take(picked)
    assert (taken.tokens != whole.tokens.tocsr()[picked]).nnz == 0
    assert (taken.instances != whole.instances.tocsr()[picked]).nnz == 0
    assert np.array_equal(taken.scopes["first60"], whole.scopes["first60"][picked])
    with pytest.raises(WorkbenchError, match="held per shard"):
        shards.tokens  # noqa: B018 - the whole-store matrix is not there to read


def test_label_shards_resume_and_rebuild(stream_case: Any, tmp_path: Path) -> None:
    from workbench.label_shards import LabelShards, build_label_shards

    store = stream_case[0]
    calls: list[int] = []

    def failing(view: Any) -> Any:
        calls.append(view.manifest["view_of_shard"])
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while labelling the third shard
        return span_labels(view)

    with pytest.raises(KeyboardInterrupt):
        build_label_shards(store, failing, tmp_path / "labels", key="spans")
    assert sorted(p.name for p in (tmp_path / "labels" / "raw").glob("shard-*")) == ["shard-00000", "shard-00001"]
    calls.clear()
    shards = build_label_shards(store, _counting(calls), tmp_path / "labels", key="spans")
    assert calls == list(range(2, len(store.shards)))  # only the shards not yet labelled
    assert not (tmp_path / "labels" / "raw").exists()
    calls.clear()
    again = build_label_shards(store, _counting(calls), tmp_path / "labels", key="spans")
    assert calls == [] and again.sha256() == shards.sha256()  # finished: reused as it is
    rebuilt = build_label_shards(store, _counting(calls), tmp_path / "labels", key="other sources")
    assert calls == list(range(len(store.shards))) and rebuilt.key.endswith(":other sources")
    assert isinstance(LabelShards(tmp_path / "labels"), LabelShards)


def _counting(calls: list[int]) -> Any:
    def fn(view: Any) -> Any:
        calls.append(view.manifest["view_of_shard"])
        return span_labels(view)

    return fn


def test_streamed_association_and_verdicts_from_label_shards(sharded: Any, stream_case: Any) -> None:
    from workbench._stream_pipeline import shard_strata
    from workbench.stratified import token_strata
    from workbench.stream_associate import ShardFeatures, associate_streaming, verdicts_streaming

    store, whole, shards = sharded
    sae = stream_case[2]
    obs = store.obs(["sequence_id", "residue"])
    strata = token_strata(whole, obs, groups=("aa",), columns=("residue",), sequence_groups=("long",))
    assert len(strata.names) > 10
    by_shard = shard_strata(store, shards, groups=("aa",), columns=("residue",), sequence_groups=("long",))
    assert by_shard.names == strata.names and np.array_equal(by_shard.codes, strata.codes)
    assert by_shard.description == strata.description
    options = dict(layer=1, sae=sae, n_permutations=3, strata=strata.codes, null_memory=1 << 16)
    a = associate_streaming(store, whole, **options)
    b = associate_streaming(store, shards, **options)
    pd.testing.assert_frame_equal(a.pairs, b.pairs, check_exact=True)
    pd.testing.assert_frame_equal(a.best, b.best, check_exact=True)
    assert a.pairs["p_cmh"].notna().any() and a.best["null_p"].notna().any()
    features = ShardFeatures(store, 1, sae, maxima=None)
    va = verdicts_streaming(store, whole, {"sae": (features, a)}, n_boot=50)
    vb = verdicts_streaming(store, shards, {"sae": (features, b)}, n_boot=50)
    pd.testing.assert_frame_equal(va, vb, check_exact=True)


def test_catalog_statistics_from_label_shards(sharded: Any, stream_case: Any) -> None:
    from workbench._stream_catalog import catalog_parts_streaming
    from workbench.stream_associate import ShardFeatures

    store, whole, shards = sharded
    features = ShardFeatures(store, 1, stream_case[2])
    a = catalog_parts_streaming(store, features, whole, profile_groups=("aa", "region"))
    b = catalog_parts_streaming(store, features, shards, profile_groups=("aa", "region"))
    assert np.array_equal(a.stats.nnz, b.stats.nnz) and np.array_equal(a.stats.fires_in, b.stats.fires_in)
    assert set(a.stats.profiles) == {"aa", "region"}
    assert a.stats.profile("region")[3] is not None  # the region group is scoped: its in-scope share is computed
    for group in ("aa", "region"):
        for x, y in zip(a.stats.profile(group), b.stats.profile(group)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_two_processes_label_their_shards_and_build_the_same_folder(stream_case: Any, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import textwrap

    from domains.sequence.sources import labels_from_specs
    from workbench.label_shards import build_label_shards

    store = stream_case[0]
    one = build_label_shards(store, lambda view: labels_from_specs(view, ["motif"]), tmp_path / "one", key="motif")
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import os
        from domains.sequence.sources import labels_from_specs
        from workbench.label_shards import build_label_shards
        from workbench.store import open_store

        rank = os.environ["RANK"]

        def fn(view):
            with open({str(tmp_path)!r} + f"/rank{{rank}}.txt", "a") as fh:
                fh.write(f"{{view.manifest['view_of_shard']}}\\n")
            return labels_from_specs(view, ["motif"])

        shards = build_label_shards(open_store({str(store.path)!r}), fn, {str(tmp_path / 'two')!r}, key="motif")
        open({str(tmp_path)!r} + f"/sha{{rank}}.txt", "w").write(shards.sha256())
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(28800 + os.getpid() % 1000), str(script)], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[2], timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    n = len(store.shards)
    for rank in (0, 1):
        assert [int(x) for x in (tmp_path / f"rank{rank}.txt").read_text().split()] == list(range(rank, n, 2))
        assert (tmp_path / f"sha{rank}.txt").read_text() == one.sha256()  # the same files as one process writes
