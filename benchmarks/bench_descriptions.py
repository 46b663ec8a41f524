"""Scored feature descriptions on the antibody demo (issue 13, part 1): do descriptions predict held-out activations?

Run on demand (not a test), after ``benchmarks/bench_demo.py`` (or ``workbench demo --out DIR``):

    .venv/bin/python benchmarks/bench_descriptions.py [--demo benchmarks/out/demo] [--labels labels.pkl] [--no-write]

Every feature's description (:func:`workbench.describe.describe_features`: top concept, region / IMGT profile) plus
the residue profile is rebuilt on the validation half of the sequences and turned into a predicted activation per
token (:mod:`workbench.description_scores`); on the test half it is scored by Pearson / Spearman correlation with
the real activation and by detection (balanced accuracy, F1). Measured for the SAE's features, the model's neurons
(their own association and descriptions), the SAE trained on the random-weight copy of the model, and a
shuffled-description null; broken down by description kind (named concept / weak / unexplained) and by what the
description is made of (concept only, profiles only, all). Goal from the issue: the share of SAE features with
r > 0.5 at least twice the neurons', the shuffled null near 0.

``--labels`` is a pickled :class:`~workbench.concepts.ConceptLabels` of the demo's thera store (rebuilt from the
demo's annotation sources when absent). Outputs (per-unit tables, summary) go to ``benchmarks/out/descriptions/``;
the markdown section is appended to ``benchmarks/RESULTS.md`` (one write at the end).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pickle
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

KINDS = ("named", "weak", "unexplained")


def _f(x: Any, digits: int = 2) -> str:
    x = float(x)
    return "n/a" if x != x else f"{x:.{digits}f}"


def _pct(x: Any) -> str:
    x = float(x)
    return "n/a" if x != x else f"{100 * x:.1f}%"


def _kind(description: str) -> str:
    d = str(description)
    if d == "dead":
        return "dead"
    if d.startswith("weak:"):
        return "weak"
    if d.startswith("unexplained"):
        return "unexplained"
    return "named"


def _labels(path: Path | None, store: Any) -> Any:
    if path is not None and path.is_file():
        with open(path, "rb") as fh:
            return pickle.load(fh)
    from domains.sequence.annotations import sequence_labels
    from domains.sequence.demo import LABEL_SOURCES, THERA_META

    return sequence_labels(store, sources=LABEL_SOURCES, table_columns=THERA_META,
                           anarci_options={"ncpu": os.cpu_count() or 1})


def _row(name: str, s: dict[str, Any], table: Any) -> str:
    scored = table["description_detection"].notna()
    t = table[scored]
    return (f"| {name} | {s['n_scored']} of {s['n_features']} | **{_pct(s['corr_above_0_5'])}** | "
            f"{_f(s['median_corr'])} | {_f(s['median_spearman'])} | {_f(s['median_detection'])} | {_f(s['median_f1'])} | "
            f"{_pct((t['description_corr'] > 0.8).mean()) if len(t) else 'n/a'} | {_f(s['seconds'], 1)} s |")


def main() -> None:
    from _machine import cpu_model, record

    from workbench.associate import associate, feature_matrix, neuron_matrix
    from workbench.describe import describe_features
    from workbench.description_scores import score_descriptions
    from workbench.sae import load_sae
    from workbench.store import open_store

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=HERE / "out" / "demo")
    parser.add_argument("--labels", type=Path, default=Path("/tmp/exp/labels.pkl"))
    parser.add_argument("--out", type=Path, default=HERE / "out" / "descriptions")
    parser.add_argument("--n-null", type=int, default=3)
    parser.add_argument("--no-random", action="store_true", help="skip the random-weight control SAE")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    t_all = time.perf_counter()
    store = open_store(next(p for p in args.demo.glob("thera_*_L4") if "random" not in p.name))
    control = next(args.demo.glob("thera_*_random*"), None)
    sae_dir = next(p for p in args.demo.glob("sae_thera_*topk*") if "random" not in p.name)
    ctl_dir = next(args.demo.glob("sae_thera_*random*topk*"), None)
    layer = store.layers[0]
    labels = _labels(args.labels, store)
    ids, ts, obs = store.sequences["sequence_id"].astype(str).tolist(), store.token_sequence(), store.obs()
    timings: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        out = fn()
        timings[name] = round(time.perf_counter() - t0, 1)
        print(f"[bench_descriptions] {name}: {timings[name]} s", flush=True)
        return out

    feats = {"sae": timed("SAE features", lambda: feature_matrix(store, load_sae(sae_dir), layer=layer)),
             "neurons": timed("neurons", lambda: neuron_matrix(store, layer=layer))}
    if control is not None and ctl_dir is not None and not args.no_random:
        feats["random"] = timed("random-control features", lambda: feature_matrix(
            open_store(control), load_sae(ctl_dir), layer=layer))
    assoc = {r: timed(f"association ({r})", lambda fm=fm: associate(fm, labels, ids, ts, n_permutations=0))
             for r, fm in feats.items()}
    kinds = {r: describe_features(assoc[r], labels, fm, token_sequence=ts)["description"] for r, fm in feats.items()}
    opts = {"token_sequence": ts, "sequence_ids": ids}
    res = {}
    for r, fm in feats.items():
        res[r] = timed(f"scores ({r})", lambda r=r, fm=fm: score_descriptions(
            fm, labels, assoc[r], obs, n_null=args.n_null if r == "sae" else 0, **opts))
    # what the description is made of: concept only / profiles only (region, IMGT, residue)
    ablation = {}
    for r in ("sae", "neurons"):
        ablation[(r, "concept only")] = score_descriptions(feats[r], labels, assoc[r], obs, profile_groups=(),
                                                           residue_column=None, n_null=0, **opts).summary
        ablation[(r, "region + IMGT profiles only")] = score_descriptions(
            feats[r], labels, assoc[r].__class__(assoc[r].pairs.iloc[:0], assoc[r].best, assoc[r].params), obs,
            residue_column=None, n_null=0, **opts).summary
        ablation[(r, "concept + region + IMGT (no residue)")] = score_descriptions(
            feats[r], labels, assoc[r], obs, residue_column=None, n_null=0, **opts).summary

    # -- outputs ------------------------------------------------------------------------------------------------------
    tmp = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for r, out in res.items():
        table = out.table.copy()
        table["description"] = kinds[r].reindex(table.index).to_numpy()
        table.reset_index().to_parquet(tmp / f"scores_{r}.parquet", index=False)
    (tmp / "summary.json").write_text(json.dumps({r: out.summary for r, out in res.items()} | {"timings": timings},
                                                 indent=1, default=float))
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)

    # -- report -------------------------------------------------------------------------------------------------------
    s = {r: out.summary for r, out in res.items()}
    names = {"sae": "SAE features", "neurons": "neurons", "random": "SAE on the random-weight model"}
    lines = [f"## {dt.date.today().isoformat()} — bench_descriptions (issue 13, part 1: scored descriptions)", "",
             f"Machine: {cpu_model()}, {os.cpu_count()} cores, CPU only. Demo folder `{args.demo}` (AntiBERTy layer "
             f"{layer}, {store.n_tokens:,} tokens of {len(ids):,} Thera-SAbDab chains; SAE `{sae_dir.name}`), "
             f"{len(labels.token_concepts)} token concepts. Split: `sequence_split(seed=0)` (the association's); "
             f"descriptions from the validation half, scores on the test half. Parts: {', '.join(s['sae']['parts'])} "
             f"and the top concept; shuffled null: {args.n_null} permutations of the SAE's descriptions.", "",
             "| units | scored | r > 0.5 | median r | median Spearman | median detection (bal. acc.) | median F1 | "
             "r > 0.8 | time |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res:
        lines.append(_row(names[r], s[r], res[r].table))
    null = res["sae"].table["description_null_corr"]
    scored = res["sae"].table["description_detection"].notna()
    lines.append(f"| shuffled SAE descriptions | {int(scored.sum())} x {args.n_null} | **{_pct(s['sae']['null_corr_above_0_5'])}** | "
                 f"{_f(s['sae']['median_null_corr'])} | | | | {_pct((null[scored] > 0.8).mean())} (mean over permutations) | |")
    ratio = s["sae"]["corr_above_0_5"] / s["neurons"]["corr_above_0_5"] if s["neurons"]["corr_above_0_5"] else float("nan")
    met = ratio >= 2
    null_ok = s["sae"]["null_corr_above_0_5"] <= 0.05
    lines += ["", f"Goal SAE >= 2x neurons (share with r > 0.5): {_pct(s['sae']['corr_above_0_5'])} vs "
                  f"{_pct(s['neurons']['corr_above_0_5'])}, ratio {_f(ratio)} (**{'met' if met else 'not met'}**); "
                  f"shuffled null near 0: {_pct(s['sae']['null_corr_above_0_5'])} (**{'met' if null_ok else 'not met'}**, "
                  "taking 'near 0' as at most 5%).", ""]

    lines += ["### By description kind (describe_features: named concept / weak concept / unexplained)", "",
              "| units | kind | features | scored | r > 0.5 | median r | median detection | shuffled r > 0.5 |",
              "|---|---|---|---|---|---|---|---|"]
    for r in res:
        t = res[r].table
        kind = kinds[r].reindex(t.index).map(_kind)
        for k in KINDS:
            sel = (kind == k).to_numpy()
            sc = sel & t["description_detection"].notna().to_numpy()
            corr = t["description_corr"].to_numpy()[sc]
            det = t["description_detection"].to_numpy()[sc]
            nul = t["description_null_corr"].to_numpy()[sc]
            lines.append(f"| {names[r]} | {k} | {int(sel.sum())} | {int(sc.sum())} | "
                         f"{_pct(np.mean(np.nan_to_num(corr, nan=-1) > 0.5)) if sc.any() else 'n/a'} | "
                         f"{_f(np.nanmedian(corr)) if sc.any() and np.isfinite(corr).any() else 'n/a'} | "
                         f"{_f(np.nanmedian(det)) if sc.any() else 'n/a'} | "
                         f"{_pct(np.mean(np.nan_to_num(nul, nan=-1) > 0.5)) if r == 'sae' and sc.any() else ''} |")
    lines += ["", "### What the descriptions are made of (share with r > 0.5; median r)", "",
              "| description | SAE features | neurons |", "|---|---|---|"]
    for part in ("concept only", "region + IMGT profiles only", "concept + region + IMGT (no residue)"):
        a, b = ablation[("sae", part)], ablation[("neurons", part)]
        lines.append(f"| {part} | {_pct(a['corr_above_0_5'])}; {_f(a['median_corr'])} | "
                     f"{_pct(b['corr_above_0_5'])}; {_f(b['median_corr'])} |")
    lines.append(f"| all (concept + region + IMGT + residue) | {_pct(s['sae']['corr_above_0_5'])}; "
                 f"{_f(s['sae']['median_corr'])} | {_pct(s['neurons']['corr_above_0_5'])}; {_f(s['neurons']['median_corr'])} |")

    t = res["sae"].table.copy()
    t["description"] = kinds["sae"].reindex(t.index).to_numpy()
    t = t[t["description_detection"].notna()]
    lines += ["", "### Examples (SAE features)", "", "| feature | description | r | Spearman | detection | F1 | shuffled r |",
              "|---|---|---|---|---|---|---|"]
    picks = list(t.sort_values("description_corr", ascending=False).index[:4])
    named = t[t["description"].map(_kind) == "named"].sort_values("description_corr")
    picks += list(named.index[:3])  # named concepts whose description predicts least
    for fid in picks:
        row = t.loc[fid]
        lines.append(f"| {fid} | {str(row['description']).replace('|', '/')} | {_f(row['description_corr'])} | "
                     f"{_f(row['description_spearman'])} | {_f(row['description_detection'])} | "
                     f"{_f(row['description_f1'])} | {_f(row['description_null_corr'])} |")
    lines += ["", "Timings: " + ", ".join(f"{k} {v} s" for k, v in timings.items())
              + f"; total {time.perf_counter() - t_all:.0f} s (the machine was shared with other jobs). "
              f"Outputs: `{args.out}`.", ""]
    density = {r: fm.values.nnz / max(fm.values.shape[0] * fm.values.shape[1], 1) for r, fm in feats.items()}
    kind_sae = kinds["sae"].map(_kind)
    rand = f", the SAE on the random-weight model {_pct(s['random']['corr_above_0_5'])}" if "random" in s else ""
    a_sae, a_neu = ablation[("sae", "concept only")], ablation[("sae", "region + IMGT profiles only")]
    lines += [
        "### Reading (generated from the numbers above)", "",
        f"- Share of units whose description predicts held-out activations with r > 0.5: SAE "
        f"{_pct(s['sae']['corr_above_0_5'])}, neurons {_pct(s['neurons']['corr_above_0_5'])}{rand}, shuffled SAE "
        f"descriptions {_pct(s['sae']['null_corr_above_0_5'])}. The goal (SAE >= 2x neurons, null near 0) is "
        f"**{'met' if met and null_ok else 'not met'}** (ratio {_f(ratio)}).",
        f"- Named descriptions are {_pct((kind_sae == 'named').mean())} of the SAE's. Share of SAE features with "
        f"r > 0.5 by what the description holds: the concept alone {_pct(a_sae['corr_above_0_5'])}, region + IMGT "
        f"profiles alone {_pct(a_neu['corr_above_0_5'])}, concept + profiles "
        f"{_pct(ablation[('sae', 'concept + region + IMGT (no residue)')]['corr_above_0_5'])}, all with the residue "
        f"{_pct(s['sae']['corr_above_0_5'])}. The top concept is chosen by InterPLM's F1 with domain-level recall, "
        "which counts a span as found when any of its tokens fires, so it is often a whole region (region=FR4 for "
        "a feature of one FR4 position): it says where, the profiles say which positions and residues. These "
        "descriptions state where and on which residue a unit fires, which a unit of the random-weight control "
        "can also do (its row above).",
        f"- Spearman over all test tokens is low for sparse units (SAE median {_f(s['sae']['median_spearman'])}): the "
        f"real activation is 0, one tied rank, on most tokens (SAE features fire on {_pct(density['sae'])} of "
        "tokens on average), so any variation of the prediction among them costs rank agreement; Pearson weighs "
        "the firing tokens by their activation.",
        f"- F1 depends on how often a unit fires (neurons: {_pct(density['neurons'])} of tokens, where predicting "
        "'fires everywhere' already gives F1 about 2p / (1 + p)); balanced accuracy (detection) is the comparable "
        f"detection score: SAE {_f(s['sae']['median_detection'])}, neurons {_f(s['neurons']['median_detection'])}.",
        "",
    ]
    record("\n".join(lines) + "\n", write=not args.no_write)


if __name__ == "__main__":
    main()
