"""Per-concept verdicts: does the SAE beat the model's neurons, and the random-weight control, on held-out sequences?

:func:`~workbench.associate.associate` gives each concept its best feature and threshold (chosen on the validation
half of the sequences) and that pair's test F1, for every representation (SAE features, neurons, an SAE on a
random-weight model). Comparing those test F1s needs an interval: test sequences are the unit of sampling, so the
test sequences are resampled with replacement and every representation's F1 recomputed from the resampled sums of
its per-sequence counts. The same resamples serve every representation and concept, so the differences are paired.

Nothing is re-chosen: the feature and threshold of each (representation, concept) come from ``association.best``,
and with every sequence counted once the point estimate is ``association.best["test_f1"]``. The counts are
InterPLM's as :func:`~workbench.associate.associate` computes them on the test half: ``tp`` (active and labelled
tokens), ``n_active`` (active tokens, inside the concept's scope for a scoped concept), hit instances (spans with
an active token) and instances, with F1 = 2 P R_domain / (P + R_domain), P = tp / n_active, R_domain = hit /
instances (0 where undefined).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.associate import CAPTURED_F1, Association, FeatureMatrix, sequence_split
from workbench.concepts import ConceptLabels
from workbench.errors import InputError, WorkbenchError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["concept_verdicts", "block_counts", "add_counts", "verdicts_from_counts"]

_CONSISTENCY = 1e-6
"""Largest allowed gap between a recomputed test F1 and the association's: beyond it, inputs do not match."""


def concept_verdicts(results: Mapping[str, tuple[FeatureMatrix, Association]], labels: ConceptLabels,
                     sequence_ids: Sequence[str], token_sequence: np.ndarray, *, reference: str = "sae",
                     n_boot: int = 1000, ci: float = 0.95, seed: int = 0, split_seed: int = 0,
                     captured_f1: float = CAPTURED_F1) -> pd.DataFrame:
    """Paired bootstrap comparison of each concept's test F1 between ``reference`` and every other representation.

    ``results`` maps a representation name (``"sae"``, ``"neurons"``, ``"random"``...) to its feature matrix and
    the :class:`~workbench.associate.Association` computed on it with these ``labels``, ``sequence_ids``,
    ``token_sequence`` and ``split_seed``. ``n_boot`` resamples of the test sequences (``np.random.default_rng(
    seed)``) give percentile intervals at level ``ci``. Returns one row per token concept (labels order) with:

    * ``concept``; ``n_test_sequences``: test sequences holding a labelled token of the concept;
    * per representation ``r``: ``f1_<r>`` (test F1 of its best feature, every test sequence once; equals the
      association's ``test_f1``) and ``feature_<r>`` (that feature's name);
    * per representation ``r`` other than ``reference``: ``diff_<r>`` (F1 of ``reference`` minus F1 of ``r``),
      ``diff_<r>_low`` / ``diff_<r>_high`` (percentile interval of the bootstrapped difference; NaN without test
      sequences), ``p_<r>`` (one-sided: share of resamples with a difference <= 0, at least 1 / (n_boot + 1); NaN
      without test sequences) and ``beats_<r>`` (the reference captures the concept, F1 > ``captured_f1``, and
      ``diff_<r>_low > 0``);
    * ``verdict``: ``"no test sequences"`` (no labelled test token), ``"not captured"`` (reference F1 <=
      ``captured_f1``), else ``"; "``-joined parts ``"beats <names>"``, ``"<names> as good"`` (interval holds 0),
      ``"<names> better"`` (interval below 0), e.g. ``"beats neurons; random as good"``.
    """
    _check_options(list(results), reference, n_boot, ci)
    token_sequence = np.asarray(token_sequence, dtype=np.int64)
    if len(token_sequence) != labels.n_tokens:
        raise WorkbenchError(f"token_sequence has {len(token_sequence)} entries for {labels.n_tokens} labelled tokens")
    concepts = labels.token_concepts["concept"].astype(str).tolist()
    for name, (features, assoc) in results.items():
        seed_used = assoc.params.get("split_seed")
        if seed_used != split_seed:
            raise WorkbenchError(f"association {name!r} used split_seed {seed_used}, not {split_seed}: recompute it")
        if features.values.shape[0] != labels.n_tokens:
            raise WorkbenchError(f"features {name!r} cover {features.values.shape[0]} tokens, labels {labels.n_tokens}")
        if assoc.best["concept"].astype(str).tolist() != concepts:
            raise WorkbenchError(f"association {name!r} was computed on other concepts than these labels")

    tok_test, n_test = _test_tokens(sequence_ids, token_sequence, split_seed)
    masks, scope_index = labels.scope_matrix("token")
    counts = block_counts({name: (features.values, features.names, assoc.best) for name, (features, assoc) in results.items()},
                          labels.tokens, labels.instances, masks, scope_index, tok_test, n_test)
    return verdicts_from_counts(counts, {name: assoc for name, (_, assoc) in results.items()}, concepts,
                                reference=reference, n_boot=n_boot, ci=ci, seed=seed, captured_f1=captured_f1)


def _check_options(names: Sequence[str], reference: str, n_boot: int, ci: float) -> None:
    if reference not in names:
        raise InputError(f"reference {reference!r} is not among the representations {list(names)}")
    if n_boot < 1 or not 0 < ci < 1:
        raise InputError(f"need n_boot >= 1 and 0 < ci < 1, got n_boot={n_boot}, ci={ci}")


def _test_tokens(sequence_ids: Sequence[str], token_sequence: np.ndarray, split_seed: int) -> tuple[np.ndarray, int]:
    """Each token's index among the test sequences (-1 for validation tokens) and the number of test sequences."""
    is_val = sequence_split(sequence_ids, seed=split_seed)
    test_index = np.full(len(is_val), -1, dtype=np.int64)
    test_index[~is_val] = np.arange(int((~is_val).sum()))
    return test_index[np.asarray(token_sequence, dtype=np.int64)], int((~is_val).sum())


def block_counts(reps: Mapping[str, tuple[Any, Sequence[str], pd.DataFrame]], lab: Any, inst: Any, masks: np.ndarray | None,
                 scope_index: np.ndarray, tok_test: np.ndarray, n_test: int) -> dict[str, Any]:
    """The per-test-sequence counts behind the verdicts on one block of tokens (a shard, or the whole store):
    ``n_labelled`` and ``n_instances`` (concepts x test sequences) and per representation ``tp``, ``n_active`` and
    ``hit`` of each concept's chosen feature and threshold. ``reps`` maps a representation to the block's normalised
    values (tokens x features), its feature names and its association's ``best``; ``lab``, ``inst``, ``masks`` are the
    block's rows of the labels, ``tok_test`` its tokens' test-sequence index. Counts of blocks whose spans stay inside
    them (shards: records never cross one) add up to the whole store's."""
    shared = _concept_tokens(lab, inst, masks, scope_index, tok_test, n_test)
    out: dict[str, Any] = {"n_labelled": shared["n_labelled"], "n_instances": shared["n_instances"]}
    for name, (values, names, best) in reps.items():
        out[name] = _sequence_counts(name, values, names, best, shared, tok_test, n_test)
    return out


def add_counts(total: dict[str, Any] | None, part: dict[str, Any]) -> dict[str, Any]:
    """The sum of two :func:`block_counts` (in place on ``total``)."""
    if total is None:
        return part
    for key, value in part.items():
        if isinstance(value, dict):
            for k, v in value.items():
                total[key][k] += v
        else:
            total[key] += value
    return total


def verdicts_from_counts(counts: dict[str, Any], associations: Mapping[str, Association], concepts: Sequence[str], *,
                         reference: str = "sae", n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
                         captured_f1: float = CAPTURED_F1) -> pd.DataFrame:
    """:func:`concept_verdicts` from the whole store's :func:`block_counts` (summed over blocks)."""
    import pandas as pd

    names = list(associations)
    _check_options(names, reference, n_boot, ci)
    shared = {"n_labelled": counts["n_labelled"], "n_instances": counts["n_instances"]}
    n_test = shared["n_labelled"].shape[1]
    ones = np.ones((1, n_test))
    point = {name: _f1_from(ones, counts[name], shared)[0] for name in names}
    for name, assoc in associations.items():
        gap = np.nan_to_num(np.abs(point[name] - assoc.best["test_f1"].to_numpy(dtype=np.float64)), nan=np.inf)
        if len(gap) and gap.max() > _CONSISTENCY:
            j = int(gap.argmax())
            raise WorkbenchError(f"test F1 of {concepts[j]!r} for {name!r} recomputes as {point[name][j]:.6f}, not "
                                 f"{assoc.best['test_f1'].iloc[j]:.6f}: features or labels are not the association's")

    weights = _resample_weights(n_boot, n_test, seed)
    boot = {name: _f1_from(weights, counts[name], shared) for name in names}
    has_test = shared["n_labelled"].sum(1) > 0
    captured = point[reference] > captured_f1
    out: dict[str, Any] = {"concept": list(concepts), "n_test_sequences": (shared["n_labelled"] > 0).sum(1)}
    for name, assoc in associations.items():
        out[f"f1_{name}"] = point[name]
        out[f"feature_{name}"] = assoc.best["best_feature"].astype(str).to_numpy()
    others = [n for n in names if n != reference]
    status = {}
    for name in others:
        diff_boot = boot[reference] - boot[name]  # n_boot x concepts
        low, high = np.quantile(diff_boot, [(1 - ci) / 2, (1 + ci) / 2], axis=0)
        p = np.maximum((diff_boot <= 0).mean(0), 1 / (n_boot + 1))
        out[f"diff_{name}"] = point[reference] - point[name]
        out[f"diff_{name}_low"] = np.where(has_test, low, np.nan)
        out[f"diff_{name}_high"] = np.where(has_test, high, np.nan)
        out[f"p_{name}"] = np.where(has_test, p, np.nan)
        out[f"beats_{name}"] = captured & has_test & (low > 0)
        status[name] = np.where(out[f"beats_{name}"], "beats", np.where(has_test & (high < 0), "better", "as good"))
    out["verdict"] = [_verdict(bool(has_test[j]), bool(captured[j]), {n: status[n][j] for n in others})
                      for j in range(len(concepts))]
    return pd.DataFrame(out)


def _concept_tokens(lab: Any, inst: Any, masks: np.ndarray | None, scope_index: np.ndarray, tok_test: np.ndarray,
                    n_test: int) -> dict[str, Any]:
    """Per concept, its labelled test tokens and test instances; per-sequence ``n_labelled`` and ``n_instances``
    (concepts x test sequences). An instance belongs to the sequence of its first test token."""
    lab = lab.tocsc()
    lab.eliminate_zeros()
    inst = inst.tocsc()
    inst.eliminate_zeros()
    n_con = lab.shape[1]
    n_labelled = np.zeros((n_con, n_test), dtype=np.float32)  # per-sequence counts: exact in float32
    n_instances = np.zeros((n_con, n_test), dtype=np.float32)
    rows_of, inst_rows, inst_of, inst_seq = [], [], [], []
    for j in range(n_con):
        rows = lab.indices[lab.indptr[j]: lab.indptr[j + 1]]
        rows = rows[tok_test[rows] >= 0]
        rows_of.append(rows)
        n_labelled[j] = np.bincount(tok_test[rows], minlength=n_test)
        r = inst.indices[inst.indptr[j]: inst.indptr[j + 1]]
        ids = inst.data[inst.indptr[j]: inst.indptr[j + 1]]
        keep = tok_test[r] >= 0
        r, ids = r[keep], ids[keep]
        _, first, local = np.unique(ids, return_index=True, return_inverse=True)
        seq = tok_test[r[first]]
        inst_rows.append(r)
        inst_of.append(local.ravel())
        inst_seq.append(seq)
        n_instances[j] = np.bincount(seq, minlength=n_test)
    return {"rows": rows_of, "inst_rows": inst_rows, "inst_of": inst_of, "inst_seq": inst_seq,
            "n_labelled": n_labelled, "n_instances": n_instances, "masks": masks, "scope_index": scope_index}


def _sequence_counts(name: str, values: Any, names: Sequence[str], best: pd.DataFrame, shared: dict[str, Any],
                     tok_test: np.ndarray, n_test: int) -> dict[str, np.ndarray]:
    """``tp``, ``n_active`` and ``hit`` (concepts x test sequences) of each concept's chosen feature and threshold."""
    import scipy.sparse as sp

    position = {f: k for k, f in enumerate(names)}
    chosen = best["best_feature"].astype(str).tolist()
    missing = [f for f in chosen if f not in position]
    if missing:
        raise WorkbenchError(f"association {name!r} names feature {missing[0]!r}, which its feature matrix lacks")
    uniq, col_of = np.unique([position[f] for f in chosen], return_inverse=True)
    sub = sp.csr_matrix(values)[:, uniq].tocsc() if len(uniq) else None
    thresholds = best["threshold"].to_numpy(dtype=np.float64)
    masks, scope_index = shared["masks"], shared["scope_index"]
    n_con = len(chosen)
    tp, n_active, hit = (np.zeros((n_con, n_test), dtype=np.float32) for _ in range(3))
    is_active = np.zeros(len(tok_test), dtype=bool)
    for j in range(n_con):
        k = col_of[j]
        lo, hi = sub.indptr[k], sub.indptr[k + 1]
        rows = sub.indices[lo:hi][sub.data[lo:hi] > float(thresholds[j])]  # python float: compared in float32
        rows = rows[tok_test[rows] >= 0]
        scoped = rows if scope_index[j] < 0 else rows[masks[rows, scope_index[j]]]
        n_active[j] = np.bincount(tok_test[scoped], minlength=n_test)
        is_active[rows] = True
        lab_rows = shared["rows"][j]
        tp[j] = np.bincount(tok_test[lab_rows[is_active[lab_rows]]], minlength=n_test)
        spans_hit = np.zeros(len(shared["inst_seq"][j]), dtype=bool)
        spans_hit[shared["inst_of"][j][is_active[shared["inst_rows"][j]]]] = True
        hit[j] = np.bincount(shared["inst_seq"][j][spans_hit], minlength=n_test)
        is_active[rows] = False
    return {"tp": tp, "n_active": n_active, "hit": hit}


def _resample_weights(n_boot: int, n_test: int, seed: int) -> np.ndarray:
    """``(n_boot, n_test)``: how often each test sequence is drawn in each resample (rows sum to ``n_test``)."""
    if n_test == 0:
        return np.zeros((n_boot, 0))
    draws = np.random.default_rng(seed).integers(0, n_test, size=(n_boot, n_test))
    flat = (np.arange(n_boot)[:, None] * n_test + draws).ravel()
    return np.bincount(flat, minlength=n_boot * n_test).reshape(n_boot, n_test).astype(np.float64)


def _f1_from(weights: np.ndarray, counts: dict[str, np.ndarray], shared: dict[str, Any]) -> np.ndarray:
    """F1 (resamples x concepts) from weighted sums of per-sequence counts, with :func:`associate`'s arithmetic
    (precision in float32, as its counts are), so that unit weights reproduce its test F1 to the last bit."""
    tp = (weights @ counts["tp"].T).astype(np.float32)
    n_active = (weights @ counts["n_active"].T).astype(np.float32)
    hit = weights @ counts["hit"].T
    n_inst = weights @ shared["n_instances"].T
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(n_active > 0, tp / n_active, np.float32(0))
        domain = np.where(n_inst > 0, hit / n_inst, 0.0)
        return np.where(precision + domain > 0, 2 * precision * domain / (precision + domain), 0.0)


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _verdict(has_test: bool, captured: bool, status: dict[str, str]) -> str:
    if not has_test:
        return "no test sequences"
    if not captured:
        return "not captured"
    parts = []
    for kind in ("beats", "as good", "better"):
        group = [n for n, s in status.items() if s == kind]
        if group:
            parts.append(f"beats {_names(group)}" if kind == "beats" else f"{_names(group)} {kind}")
    return "; ".join(parts) or "captured"
