"""Scored feature descriptions: does a feature's description predict its activations on held-out sequences?

:func:`~workbench.describe.describe_features` gives every feature a rule-based one-line description. This module
scores such descriptions the way the field scores explanations (simulation correlation, Bills et al. 2023; InterPLM
keeps a description when predicted and actual activations correlate above 0.5; detection, as in delphi): a
*simulator* turns the description alone into a predicted activation for every token, and the prediction is compared
with the feature's real activation on tokens the description never saw.

**Held-out protocol.** Sequences are split into validation and test halves by
:func:`~workbench.associate.sequence_split` (the split of the association, same ``split_seed``). Everything that
defines a description (its concept, its profile shares, its activation level, the detection threshold) comes from
validation tokens only; every score from test tokens only.

**The description** of a feature is what its one-line text states, as numbers:

* its top concept: the pair of ``association.pairs`` with the best *validation* F1, stated when the pair is
  significant as :func:`~workbench.describe.describe_features` requires (q <= ``alpha`` and F1 >= ``min_f1``, here
  the validation F1). The q-value is the association's, over both halves: it only decides whether the concept is
  stated; the concept's numbers come from validation tokens. A concept the profiles already name (its tokens are
  those of a named value: ``region=CDR3`` with CDR3 in the region profile, ``aa=C`` with C in the residue profile)
  is not counted twice.
* its profiles: for each of ``profile_groups`` that the labels hold (:func:`~workbench.describe.feature_profile` on
  validation tokens) and for the residue (``obs[residue_column]``, when present), the share of the feature's
  activation mass on the values the profile text names (:func:`~workbench.describe._stated_items`: the top three
  values; for positions the peak window and two more positions), against the share of tokens carrying them. The
  values it does not name (and tokens without a value) share the rest of the mass in proportion to their tokens.
* its activation level: the mean normalised activation on validation tokens.

**Simulator** (a naive-Bayes lift). For token ``t``::

    predicted(t) = min(1, level * prod_parts lift_part(t)),   lift = stated share / share of tokens

where a part's lift is that of the named item ``t`` falls in (a peak window counts as one item), or
``(1 - named shares) / (1 - their token shares)`` for the rest; the concept is a part with two items, its tokens and
the others. For one part this is exactly the mean activation given the part's value; several parts multiply as if
independent, and the cap is the maximum of a normalised activation. The prediction is constant within a *cell* (a
combination of part values, in or out of the concept), so every score comes from per-cell sums and the feature's
non-zero activations: no dense tokens x features matrix is built.

**Scores** on test tokens (real activation: the normalised ``features.values``; "fires": activation > 0, for SAE
features and neurons alike, so both are held to one rule that no concept chose):

* ``description_detection``: balanced accuracy of "predicted >= threshold" against firing, the threshold being the
  predicted level with the best balanced accuracy on validation tokens (predict nothing when no level beats chance);
* ``description_f1``: F1 of "predicted >= threshold", the threshold being the level with the best F1 on validation
  tokens (balanced accuracy favours recall on rare features, so its level would make F1 low by construction);
* ``description_corr`` / ``description_spearman``: Pearson / Spearman correlation of predicted and real activation
  over all test tokens, zeros included (average ranks for ties); NaN for a constant prediction.

A feature without activation on validation tokens has no description, one without activation on test tokens nothing
to score: NaN. Controls: the model's neurons scored the same way (:func:`score_descriptions` on
:func:`~workbench.associate.neuron_matrix` with their own association), and a shuffled-description null: ``n_null``
permutations of the descriptions among described features (none keeps its own), scored the same way.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from workbench.associate import sequence_split
from workbench.describe import DESCRIBE_ALPHA, DESCRIBE_MIN_F1, _is_int, _profile, _stated_items
from workbench.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from workbench.associate import Association, FeatureMatrix
    from workbench.concepts import ConceptLabels

__all__ = ["DescriptionScores", "score_descriptions", "description_summary", "GOOD_CORR", "SCORE_COLUMNS"]

GOOD_CORR = 0.5
"""A description predicts its feature when predicted and real held-out activations correlate above this (InterPLM)."""
SCORE_COLUMNS = ("description_detection", "description_f1", "description_corr", "description_spearman")
"""The per-feature scores (module docstring), as the catalog's feature columns name them."""
_CELL_BUDGET = 1_000_000
"""Features x cells per chunk of the scoring: bounds the memory of the per-cell tables (a few arrays of this size)."""


class DescriptionScores(NamedTuple):
    """Result of :func:`score_descriptions`."""

    table: pd.DataFrame
    """One row per feature (index ``feature``): the :data:`SCORE_COLUMNS`, ``description_null_corr`` (Pearson
    correlation when simulated from another feature's description, mean over the null's permutations; NaN without
    them), ``description_concept`` (the concept the description states; None when none),
    ``description_threshold`` and ``description_f1_threshold`` (the levels of predicted activation above which the
    detection and its F1 call a token firing, chosen on validation tokens)."""
    summary: dict[str, Any]
    """``n_features``; ``n_described`` (active on validation tokens); ``n_scored`` (described and active on test
    tokens); ``corr_above_0_5`` (share of scored features with Pearson above :data:`GOOD_CORR`, NaN counting as
    no) and ``null_corr_above_0_5`` (the same under the null, over every permutation); over scored features the
    medians ``median_corr``, ``median_spearman``, ``median_detection``, ``median_f1`` and ``median_null_corr``;
    ``parts`` (what the descriptions are made of) and ``seconds``."""


@dataclass
class _Descriptions:
    """Every feature's description as simulator inputs, and the token side: each token's combination of part values."""

    level: np.ndarray
    """(features,) mean normalised activation on validation tokens (0: no description)."""
    lifts: list[np.ndarray]
    """Per part, (features, codes): the lift of each value code (last code: tokens without a value)."""
    concept: np.ndarray
    """(features,) the stated concept's column among ``used`` (``len(used)``: none, or carried by a profile)."""
    concept_lift: np.ndarray
    """(features, 2): lift off and on the concept's tokens."""
    concept_name: list[str | None]
    """The stated concept of every feature (also when a profile carries it)."""
    used: np.ndarray
    """Columns of ``labels.tokens`` of the concepts some description uses as a part."""
    combo: np.ndarray
    """(tokens,) each token's combination of part values."""
    codes: np.ndarray
    """(combinations, parts) the value code of each part in each combination."""
    parts: list[str]


@dataclass
class _Split:
    """The tokens of one half, prepared once for every chunk of features and every null permutation."""

    n: int
    x: Any
    """CSC (tokens x features), sorted indices."""
    combo: np.ndarray
    combo_count: np.ndarray
    member: Any
    """CSC (tokens x (used + 1)): the tokens of each used concept; the last column empty."""
    inside: np.ndarray
    """(combinations, used + 1): tokens of each combination inside each used concept."""


def score_descriptions(
    features: FeatureMatrix,
    labels: ConceptLabels,
    association: Association,
    obs: pd.DataFrame | None,
    *,
    token_sequence: np.ndarray,
    sequence_ids: Sequence[str],
    split_seed: int = 0,
    profile_groups: Sequence[str] = ("region", "imgt"),
    residue_column: str | None = "residue",
    null_seed: int = 0,
    n_null: int = 1,
    alpha: float = DESCRIBE_ALPHA,
    min_f1: float = DESCRIBE_MIN_F1,
) -> DescriptionScores:
    """Score every feature's description by how well it predicts the feature's activations on held-out sequences.

    Parameters
    ----------
    features
        The feature matrix (SAE features or neurons) the association was computed on.
    labels
        Token concepts of the same tokens.
    association
        :func:`~workbench.associate.associate` of ``features`` with ``labels`` (same ``split_seed``).
    obs
        Token metadata in store order (``store.obs()``); its ``residue_column`` becomes a profile part when present.
        None: no residue part.
    token_sequence, sequence_ids
        Each token's index into the store's sequence order, and that order (the split is by sequence).
    split_seed
        Seed of :func:`~workbench.associate.sequence_split`; must be the association's.
    profile_groups
        Concept groups profiled as parts (groups the labels lack are skipped).
    residue_column
        Column of ``obs`` with each token's residue (None: no residue part).
    null_seed, n_null
        Seed and number of permutations of the shuffled-description null (0: no null).
    alpha, min_f1
        When the top concept is stated (:func:`~workbench.describe.describe_features`).

    Returns
    -------
    :class:`DescriptionScores`: the per-feature table and the summary (see the module docstring for the method).
    """
    import pandas as pd

    t0 = time.perf_counter()
    n_tokens, n_features = features.values.shape
    if labels.n_tokens != n_tokens:
        raise InputError(f"features cover {n_tokens} tokens but the labels {labels.n_tokens}: they come from different "
                         "stores")
    if len(features.names) != n_features:
        raise InputError(f"{len(features.names)} feature names for {n_features} feature columns")
    token_sequence = np.asarray(token_sequence, dtype=np.int64)
    if len(token_sequence) != n_tokens:
        raise InputError(f"token_sequence has {len(token_sequence)} entries for {n_tokens} tokens")
    if len(token_sequence) and (token_sequence.min() < 0 or token_sequence.max() >= len(sequence_ids)):
        raise InputError(f"token_sequence points outside the {len(sequence_ids)} sequences")
    if obs is not None and len(obs) != n_tokens:
        raise InputError(f"obs has {len(obs)} rows for {n_tokens} tokens")
    used_seed = association.params.get("split_seed", split_seed)
    if used_seed != split_seed:
        raise InputError(f"the association used split_seed {used_seed}, not {split_seed}: its validation half differs")
    if n_null < 0:
        raise InputError(f"n_null must be >= 0, not {n_null}")
    is_val = sequence_split([str(s) for s in sequence_ids], seed=split_seed)[token_sequence]
    val_rows, test_rows = np.flatnonzero(is_val), np.flatnonzero(~is_val)

    desc = _describe(features, labels, association, obs, val_rows, profile_groups=profile_groups,
                     residue_column=residue_column, alpha=alpha, min_f1=min_f1)
    x = features.values.tocsr()
    lab = labels.tokens.tocsc()[:, desc.used] if len(desc.used) else None
    halves = {name: _split(x, lab, desc, rows) for name, rows in (("val", val_rows), ("test", test_rows))}
    described = desc.level > 0
    source = np.where(described, np.arange(n_features), -1)
    scores = _score(desc, halves, source)

    null_corr = np.full((n_null, n_features), np.nan)
    live = np.flatnonzero(described)
    rng = np.random.default_rng(null_seed)
    for r in range(n_null if len(live) > 1 else 0):
        order = rng.permutation(live)
        shuffled = np.full(n_features, -1)
        shuffled[order] = np.roll(order, -1)  # each feature gets the next one's description: none keeps its own
        null_corr[r] = _score(desc, halves, shuffled)["corr"]

    table = pd.DataFrame(index=pd.Index([str(n) for n in features.names], name="feature"))
    table["description_detection"] = scores["detection"]
    table["description_f1"] = scores["f1"]
    table["description_corr"] = scores["corr"]
    table["description_spearman"] = scores["spearman"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: features without a description
        table["description_null_corr"] = np.nanmean(null_corr, 0) if n_null else np.nan
    table["description_concept"] = pd.Series(desc.concept_name, index=table.index, dtype=object)
    table["description_threshold"] = scores["threshold"]
    table["description_f1_threshold"] = scores["f1_threshold"]

    scored = described & (np.diff(halves["test"].x.indptr) > 0)
    summary = {
        "n_features": int(n_features), "n_described": int(described.sum()), "n_scored": int(scored.sum()),
        "corr_above_0_5": _share_above(scores["corr"][scored]),
        "null_corr_above_0_5": _share_above(null_corr[:, scored].ravel()) if n_null else float("nan"),
        "median_corr": _median(scores["corr"][scored]), "median_spearman": _median(scores["spearman"][scored]),
        "median_detection": _median(scores["detection"][scored]), "median_f1": _median(scores["f1"][scored]),
        "median_null_corr": _median(table["description_null_corr"].to_numpy()[scored]),
        "parts": list(desc.parts), "n_null": int(n_null), "split_seed": int(split_seed),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return DescriptionScores(table, summary)


def description_summary(sae: DescriptionScores, neurons: DescriptionScores | None = None,
                        random: DescriptionScores | None = None) -> dict[str, Any]:
    """Catalog summary entries comparing the SAE's descriptions with the neurons', the random-weight control's SAE
    (when given) and the shuffled null: ``description_corr_above_0_5`` (``{"sae", "neurons", "random", "shuffled"}``:
    share of scored units whose description predicts held-out activations with Pearson above :data:`GOOD_CORR`),
    ``description_corr_median``, ``description_detection_median`` (same keys), ``description_scored`` (units scored)
    and ``description_corr_ratio_sae_neurons`` (SAE share over neuron share; NaN when the neurons' is 0)."""
    s = sae.summary
    above = {"sae": s["corr_above_0_5"]}
    median = {"sae": s["median_corr"]}
    detection = {"sae": s["median_detection"]}
    scored = {"sae": s["n_scored"]}
    for name, control in (("neurons", neurons), ("random", random)):
        if control is not None:
            n = control.summary
            above[name], median[name] = n["corr_above_0_5"], n["median_corr"]
            detection[name], scored[name] = n["median_detection"], n["n_scored"]
    above["shuffled"], median["shuffled"] = s["null_corr_above_0_5"], s["median_null_corr"]
    out: dict[str, Any] = {
        "description_corr_above_0_5": {k: _round(v) for k, v in above.items()},
        "description_corr_median": {k: _round(v) for k, v in median.items()},
        "description_detection_median": {k: _round(v) for k, v in detection.items()},
        "description_scored": scored,
    }
    if neurons is not None:
        ratio = above["sae"] / above["neurons"] if above["neurons"] and np.isfinite(above["neurons"]) else float("nan")
        out["description_corr_ratio_sae_neurons"] = _round(ratio)
    return out


# -- descriptions ------------------------------------------------------------------------------------------------------
def _describe(features: FeatureMatrix, labels: ConceptLabels, association: Association, obs: pd.DataFrame | None,
              val_rows: np.ndarray, *, profile_groups: Sequence[str], residue_column: str | None, alpha: float,
              min_f1: float) -> _Descriptions:
    """Every feature's description from validation tokens (module docstring), and each token's part values."""
    import pandas as pd
    import scipy.sparse as sp

    n_tokens, n_features = features.values.shape
    x_val = sp.csr_matrix(features.values, dtype=np.float32)[val_rows]
    n_val = max(len(val_rows), 1)
    mass = np.asarray(x_val.sum(0), dtype=np.float64).ravel()
    concepts = labels.token_concepts["concept"].astype(str).tolist()
    parts, token_codes, lifts, named = [], [], [], []
    for group in dict.fromkeys(profile_groups):
        prof = _profile(labels, features, group, rows=val_rows)
        if prof is None:
            continue
        values, share, baseline, in_scope = prof
        if in_scope is not None:  # a scoped group: shares of all the mass and of all validation tokens
            cols = [j for j, c in enumerate(concepts) if c.startswith(group + "=")]
            scope = labels.group_scope(cols)
            share = share * in_scope[:, None]
            baseline = baseline * (float(scope[val_rows].mean()) if scope is not None and len(val_rows) else 1.0)
        index = {v: i for i, v in enumerate(values)}
        per_token = pd.Series(labels.group_values(group, "token"), dtype=object).map(index)
        token_codes.append(per_token.fillna(len(values)).to_numpy(dtype=np.int64))
        lift, said = _lift_table(share, baseline, all(_is_int(v) for v in values))
        lifts.append(lift)
        named.append(said)
        parts.append(group)
    if residue_column is not None and obs is not None and residue_column in obs.columns:
        codes, uniques = pd.factorize(obs[residue_column].to_numpy(), use_na_sentinel=True)
        k = len(uniques)
        codes = np.where(codes < 0, k, codes).astype(np.int64)
        onehot = sp.csr_matrix((np.ones(len(val_rows), dtype=np.float32), (np.arange(len(val_rows)), codes[val_rows])),
                               shape=(len(val_rows), k + 1))
        on_value = np.asarray((x_val.T @ onehot).todense(), dtype=np.float64)[:, :k]
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(mass[:, None] > 0, on_value / np.where(mass > 0, mass, 1)[:, None], 0.0)
        baseline = np.bincount(codes[val_rows], minlength=k + 1)[:k] / n_val
        token_codes.append(codes)
        lift, said = _lift_table(share, baseline, False)
        lifts.append(lift)
        named.append(said)
        parts.append(residue_column)

    # the stated concept: best validation F1 among significant pairs
    names = [str(n) for n in features.names]
    concept_name: list[str | None] = [None] * n_features
    concept = np.full(n_features, -1, dtype=np.int64)
    pairs = association.pairs
    if len(pairs):
        unknown = set(pairs["feature"].astype(str)) - set(names)
        if unknown:
            raise InputError(f"the association names features these activations lack: {sorted(unknown)[:3]}")
        ok = pairs[(pairs["q_value"] <= alpha) & (pairs["val_f1"] >= min_f1)]
        top = ok.sort_values(["val_f1", "q_value", "concept"], ascending=[False, True, True], kind="stable")
        top = top.drop_duplicates("feature")
        col_of = {c: j for j, c in enumerate(concepts)}
        row_of = {n: i for i, n in enumerate(names)}
        for f, c in zip(top["feature"].astype(str), top["concept"].astype(str)):
            concept_name[row_of[f]] = c
            concept[row_of[f]] = col_of.get(c, -1)
    _fold_concepts(concept, labels, val_rows, [c[val_rows] for c in token_codes], named)
    used, local = np.unique(concept[concept >= 0], return_inverse=True)
    concept_local = np.full(n_features, len(used), dtype=np.int64)
    concept_local[concept >= 0] = local
    concept_lift = np.ones((n_features, 2))
    if len(used):
        lab_val = sp.csr_matrix(labels.tokens.tocsc()[:, used], dtype=np.float32)[val_rows]
        on_concept = np.asarray((x_val.T @ lab_val).todense(), dtype=np.float64)
        base = np.asarray(lab_val.sum(0), dtype=np.float64).ravel() / n_val
        i = np.flatnonzero(concept >= 0)
        c = concept_local[i]
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where(mass[i] > 0, on_concept[i, c] / np.where(mass[i] > 0, mass[i], 1), 0.0)
            concept_lift[i, 1] = np.where(base[c] > 0, s / np.where(base[c] > 0, base[c], 1), 1.0)
            rest = np.where(base[c] < 1, 1 - base[c], 1)
            concept_lift[i, 0] = np.where(base[c] < 1, np.maximum(1 - s, 0) / rest, 1.0)

    if token_codes:
        table = np.stack(token_codes, axis=1)
        codes_of, combo = np.unique(table, axis=0, return_inverse=True)
        combo = np.asarray(combo).ravel()
    else:
        codes_of, combo = np.zeros((1, 0), dtype=np.int64), np.zeros(n_tokens, dtype=np.int64)
    return _Descriptions(level=mass / n_val, lifts=lifts, concept=concept_local, concept_lift=concept_lift,
                         concept_name=concept_name, used=used, combo=combo, codes=codes_of, parts=parts)


def _lift_table(share: np.ndarray, baseline: np.ndarray, numeric: bool) -> tuple[np.ndarray, np.ndarray]:
    """(features, values + 1) lift of each value for each feature from what its profile names
    (:func:`~workbench.describe._stated_items`; unnamed values and the last code, no value, share the rest), and
    which values the profile names."""
    n_features, k = share.shape
    out = np.ones((n_features, k + 1))
    named = np.zeros((n_features, k + 1), dtype=bool)
    for j in range(n_features):
        stated = _stated_items(share[j], numeric)
        if not stated:
            continue
        row, said = out[j], named[j]
        rest_share = rest_base = 1.0
        for item in stated:
            s, b = float(share[j, item].sum()), float(baseline[item].sum())
            row[item] = s / b if b > 0 else 1.0
            rest_share -= s
            rest_base -= b
            said[item] = True
        row[~said] = max(rest_share, 0.0) / rest_base if rest_base > 1e-12 else 1.0
    return out, named


_SAME_TOKENS = 0.95
"""A concept whose validation tokens and those of one value of a part overlap at least this much (Jaccard) is that
value (``region=CDR3`` and the region profile's CDR3; ``aa=C`` and the residue C)."""


def _fold_concepts(concept: np.ndarray, labels: ConceptLabels, val_rows: np.ndarray, codes: list[np.ndarray],
                   named: list[np.ndarray]) -> None:
    """Set ``concept`` (per feature, a column of ``labels.tokens`` or -1) to -1 where a profile part already names the
    concept's tokens (:data:`_SAME_TOKENS`), so that naive Bayes does not count one statement twice."""
    import scipy.sparse as sp

    cand = np.unique(concept[concept >= 0])
    if not len(cand) or not codes:
        return
    lab = sp.csr_matrix(labels.tokens.tocsc()[:, cand], dtype=np.float32)[val_rows]
    n_con = np.asarray(lab.sum(0), dtype=np.float64).ravel()
    where = {c: i for i, c in enumerate(cand)}
    feats = np.flatnonzero(concept >= 0)
    k = np.array([where[c] for c in concept[feats]], dtype=np.int64)
    fold = np.zeros(len(feats), dtype=bool)
    for code, said in zip(codes, named):
        n_codes = said.shape[1]
        onehot = sp.csr_matrix((np.ones(len(code), dtype=np.float32), (code, np.arange(len(code)))),
                               shape=(n_codes, len(code)))
        both = np.asarray((onehot @ lab).todense(), dtype=np.float64)  # (codes, candidates)
        n_value = np.bincount(code, minlength=n_codes).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            jaccard = np.nan_to_num(both / (n_value[:, None] + n_con[None, :] - both))
        jaccard[-1] = 0  # the last code is "no value"
        value = jaccard.argmax(0)
        same = jaccard.max(0) >= _SAME_TOKENS
        fold |= same[k] & said[feats, value[k]]
    concept[feats[fold]] = -1


# -- scoring -----------------------------------------------------------------------------------------------------------
def _split(x: Any, lab: Any, desc: _Descriptions, rows: np.ndarray) -> _Split:
    import scipy.sparse as sp

    n = len(rows)
    xs = sp.csc_matrix(x[rows])
    xs.sort_indices()
    combo = desc.combo[rows]
    n_combos = len(desc.codes)
    count = np.bincount(combo, minlength=n_combos).astype(np.float64)
    n_used = len(desc.used)
    if n_used:
        member = sp.hstack([sp.csc_matrix(lab[rows], dtype=np.float32), sp.csc_matrix((n, 1), dtype=np.float32)],
                           format="csc")
    else:
        member = sp.csc_matrix((n, 1), dtype=np.float32)
    member.sort_indices()
    onehot = sp.csr_matrix((np.ones(n, dtype=np.float32), (combo, np.arange(n))), shape=(n_combos, n))
    inside = np.asarray((onehot @ member).todense(), dtype=np.float64)
    return _Split(n=n, x=xs, combo=combo, combo_count=count, member=member, inside=inside)


def _score(desc: _Descriptions, halves: dict[str, _Split], source: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of every feature ``j`` simulated from the description of feature ``source[j]`` (-1: none, NaN)."""
    n_features = len(source)
    out = {k: np.full(n_features, np.nan) for k in ("detection", "f1", "corr", "spearman", "threshold", "f1_threshold")}
    if halves["val"].n == 0 or halves["test"].n == 0:  # a split with an empty half: nothing to describe or score
        return out
    n_cells = 2 * len(desc.codes)
    step = max(1, _CELL_BUDGET // n_cells)
    for j0 in range(0, n_features, step):
        j1 = min(j0 + step, n_features)
        src = source[j0:j1]
        has = src >= 0
        if not has.any():
            continue
        src = np.where(has, src, 0)
        pred, cl = _predictions(desc, src)
        val = _cells(halves["val"], j0, j1, cl, n_cells)
        thr, thr_f1 = _thresholds(pred, val["count"], val["fire"])
        res = _test_scores(pred, thr, thr_f1, _cells(halves["test"], j0, j1, cl, n_cells), halves["test"].n)
        res["threshold"], res["f1_threshold"] = thr, thr_f1
        for k, v in res.items():
            out[k][j0:j1] = np.where(has, v, np.nan)
    return out


def _predictions(desc: _Descriptions, src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features, cells) predicted activation (cell ``2 c + b``: combination ``c``, in the concept when ``b``) of the
    descriptions ``src``, and their concepts' columns."""
    m, n_combos = len(src), len(desc.codes)
    table = np.repeat(desc.level[src][:, None], n_combos, axis=1)
    for p, lift in enumerate(desc.lifts):
        table *= lift[src][:, desc.codes[:, p]]
    pred = np.empty((m, 2 * n_combos))
    pred[:, 0::2] = table * desc.concept_lift[src, 0][:, None]
    pred[:, 1::2] = table * desc.concept_lift[src, 1][:, None]
    np.minimum(pred, 1.0, out=pred)
    return pred, desc.concept[src]


def _cells(half: _Split, j0: int, j1: int, concept: np.ndarray, n_cells: int) -> dict[str, np.ndarray]:
    """The tokens of each cell (``count``), the firing ones (``fire``), and every non-zero activation of features
    ``j0:j1`` with its feature (``row``, local), ``token`` and ``cell``."""
    import scipy.sparse as sp

    m = j1 - j0
    xc = half.x[:, j0:j1]
    row = np.repeat(np.arange(m, dtype=np.int64), np.diff(xc.indptr))
    token = xc.indices.astype(np.int64)
    flag = np.zeros(len(token), dtype=np.int64)
    mem = half.member[:, concept]
    if mem.nnz and len(token):  # non-zeros on their feature's concept: number them, keep those the mask keeps
        ids = sp.csc_matrix((np.arange(1, len(token) + 1, dtype=np.float64), xc.indices, xc.indptr), shape=xc.shape)
        hit = sp.csc_matrix(ids.multiply(mem))
        flag[hit.data[hit.data > 0].astype(np.int64) - 1] = 1
    cell = 2 * half.combo[token] + flag
    inside = half.inside[:, concept].T  # (m, combinations)
    count = np.empty((m, n_cells))
    count[:, 1::2] = inside
    count[:, 0::2] = half.combo_count[None, :] - inside
    fire = np.bincount(row * n_cells + cell, minlength=m * n_cells).reshape(m, n_cells).astype(np.float64)
    return {"count": count, "fire": fire, "row": row, "cell": cell, "value": xc.data.astype(np.float64)}


def _thresholds(pred: np.ndarray, count: np.ndarray, fire: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per feature, the predicted levels with the best balanced accuracy and the best F1 of "predicted >= level"
    (validation tokens); +inf (predict nothing) when no level beats chance (balanced accuracy 0.5, F1 0)."""
    order = np.argsort(-pred, axis=1, kind="stable")
    v = np.take_along_axis(pred, order, 1)
    cum_n = np.cumsum(np.take_along_axis(count, order, 1), 1)
    cum_f = np.cumsum(np.take_along_axis(fire, order, 1), 1)
    pos = cum_f[:, -1:]
    neg = cum_n[:, -1:] - pos
    with np.errstate(divide="ignore", invalid="ignore"):
        ba = 0.5 * (cum_f / pos + 1 - (cum_n - cum_f) / neg)
        f1 = 2 * cum_f / (cum_n + pos)
    cut = np.ones(v.shape, dtype=bool)
    cut[:, :-1] = v[:, :-1] > v[:, 1:]  # cut only between distinct levels
    ba = np.where(cut & np.isfinite(ba), ba, -np.inf)
    f1 = np.where(cut & np.isfinite(f1), f1, -np.inf)
    rows = np.arange(len(v))
    best, best_f1 = ba.argmax(1), f1.argmax(1)
    return (np.where(ba[rows, best] > 0.5 + 1e-12, v[rows, best], np.inf),
            np.where(f1[rows, best_f1] > 1e-12, v[rows, best_f1], np.inf))


def _test_scores(pred: np.ndarray, thr: np.ndarray, thr_f1: np.ndarray, test: dict[str, np.ndarray],
                 n: int) -> dict[str, np.ndarray]:
    """Detection (balanced accuracy, F1), Pearson and Spearman correlation on the test tokens, from per-cell sums."""
    m = len(pred)
    count, fire, row, cell, value = test["count"], test["fire"], test["row"], test["cell"], test["value"]
    nnz = np.bincount(row, minlength=m).astype(np.float64)
    present = count > 0
    hi = np.where(present, pred, -np.inf).max(1)
    lo = np.where(present, pred, np.inf).min(1)
    constant = ~(hi - lo > 1e-12 * np.maximum(np.abs(hi), 1e-300))
    on = pred >= thr[:, None]
    pp, tp = (count * on).sum(1), (fire * on).sum(1)
    on_f1 = pred >= thr_f1[:, None]
    pp_f1, tp_f1 = (count * on_f1).sum(1), (fire * on_f1).sum(1)
    neg = n - nnz
    with np.errstate(divide="ignore", invalid="ignore"):
        detection = np.where((nnz > 0) & (neg > 0), 0.5 * (tp / nnz + (neg - (pp - tp)) / neg), np.nan)
        f1 = np.where(nnz > 0, 2 * tp_f1 / (pp_f1 + nnz), np.nan)
    p_at = pred[row, cell]
    corr = _pearson(n, (count * pred).sum(1), (count * pred**2).sum(1), np.bincount(row, value, m),
                    np.bincount(row, value**2, m), np.bincount(row, value * p_at, m))
    # Spearman: Pearson of average ranks; zeros share the lowest rank r0, so sum(rp * rr) needs only the non-zeros
    rank_cell = _cell_ranks(pred, count)
    rr = _value_ranks(row, value, nnz, n)
    r0 = (n - nnz + 1) / 2
    total = n * (n + 1) / 2
    rp = rank_cell[row, cell]
    s_rr = (n - nnz) * r0**2 + np.bincount(row, rr**2, m)
    s_pr = r0 * total + np.bincount(row, rp * (rr - r0[row]), m)
    spearman = _pearson(n, np.full(m, total), (count * rank_cell**2).sum(1), np.full(m, total), s_rr, s_pr)
    bad = constant | (nnz == 0)
    return {"detection": detection, "f1": f1, "corr": np.where(bad, np.nan, corr),
            "spearman": np.where(bad, np.nan, spearman)}


def _pearson(n: int, s_p: np.ndarray, s_pp: np.ndarray, s_r: np.ndarray, s_rr: np.ndarray,
             s_pr: np.ndarray) -> np.ndarray:
    """Pearson correlation from sums over ``n`` tokens (NaN without variance)."""
    cov = s_pr - s_p * s_r / n
    var_p = s_pp - s_p**2 / n
    var_r = s_rr - s_r**2 / n
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where((var_p > 0) & (var_r > 0), cov / np.sqrt(np.maximum(var_p * var_r, 1e-300)), np.nan)
    return np.clip(r, -1.0, 1.0)


def _cell_ranks(pred: np.ndarray, count: np.ndarray) -> np.ndarray:
    """(features, cells) average rank (1-based, ascending) of a cell's tokens among all tokens, ties shared."""
    m, c = pred.shape
    order = np.argsort(pred, axis=1, kind="stable")
    v = np.take_along_axis(pred, order, 1)
    cnt = np.take_along_axis(count, order, 1)
    new = np.ones((m, c), dtype=bool)
    new[:, 1:] = v[:, 1:] != v[:, :-1]
    group = np.cumsum(new.ravel()) - 1  # tie groups, never across features (each row starts one)
    size = np.bincount(group, weights=cnt.ravel())
    before = (np.cumsum(cnt, 1) - cnt).ravel()[new.ravel()]
    ranks_sorted = (before + (size + 1) / 2)[group].reshape(m, c)
    ranks = np.empty_like(ranks_sorted)
    np.put_along_axis(ranks, order, ranks_sorted, 1)
    return ranks


def _value_ranks(row: np.ndarray, value: np.ndarray, nnz: np.ndarray, n: int) -> np.ndarray:
    """Average rank among all ``n`` tokens of each non-zero activation of its feature (the zeros rank lowest)."""
    if len(row) == 0:
        return np.zeros(0)
    # one float sort: the feature in the integer part, the activation (in (0, 1], float32 precision) in the fraction
    order = np.argsort(row + 0.5 * value)
    r, v = row[order], value[order]
    new = np.ones(len(r), dtype=bool)
    new[1:] = (r[1:] != r[:-1]) | (v[1:] != v[:-1])
    group = np.cumsum(new) - 1
    start = np.cumsum(nnz) - nnz  # first non-zero of each feature
    within = np.arange(len(r)) - start[r]
    size = np.bincount(group)
    avg = within[new] + (size + 1) / 2
    out = np.empty(len(r))
    out[order] = (n - nnz[r]) + avg[group]
    return out


# -- summaries ---------------------------------------------------------------------------------------------------------
def _share_above(values: np.ndarray, level: float = GOOD_CORR) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(np.mean(np.nan_to_num(values, nan=-np.inf) > level)) if len(values) else float("nan")


def _median(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else float("nan")


def _round(value: float) -> float:
    return round(float(value), 4) if np.isfinite(value) else float("nan")
