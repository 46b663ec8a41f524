"""Cross-model universality of SAE features (issue 13): do features recur across seeds and models, beyond a null?

Run on demand (not a test; run ``bench_demo.py`` / ``workbench demo`` first for ``benchmarks/out/demo``):

    .venv/bin/python benchmarks/bench_universality.py [--prepare-only] [--tokens 100000] [--no-write]

Three pairs of SAEs, each compared on the same tokens with :func:`workbench.universality` (Pearson
correlation of every feature of A with every feature of B over whole sampled sequences; best match per feature of A
and a one-to-one Hungarian matching; a permutation null that shuffles B's codes within each sequence):

a. seed reference: the demo SAE (AntiBERTy layer 4, TopK width 4096 k 32, seed 0) against an SAE trained on the same
   store with the demo's settings read from its ``cfg.json`` and ``TrainConfig(seed=1)``;
b. AntiBERTy vs Sapiens: the Thera-SAbDab heavy chains through ``sapiens-vh`` layer 2 (the middle of its 4 blocks),
   a Sapiens SAE with the same settings; compared with the demo SAE on the demo AntiBERTy store restricted to the same
   heavy-chain tokens (``on="common"``: matched by sequence id and position, residues checked equal);
c. AntiBERTy vs its random-weight copy: the demo SAE against the demo's control SAE on ``thera_antiberty_L4_random1``.

Concepts: the demo catalog's ``top_concept`` for A; for every side, the token concept with the highest token-level F1
on the sampled tokens from the demo's concept labels (``/tmp/exp/labels.pkl``, or rebuilt with the demo's sources).
The three results go into a copy of the demo catalog under ``benchmarks/out/universality/catalog`` (for the app
view) and a dated section is appended to ``benchmarks/RESULTS.md``.
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

DEMO = HERE / "out" / "demo"
OUT = HERE / "out" / "universality"
SAPIENS = "sapiens-vh"
SAPIENS_LAYER = 2
LABELS = Path("/tmp/exp/labels.pkl")


def _log(msg: str) -> None:
    print(f"[universality] {msg}", flush=True)


def _demo_settings() -> dict:
    cfg = json.loads((DEMO / "sae_thera_antiberty_L4_topk32" / "cfg.json").read_text())
    return {"arch": cfg["sae"]["arch"], "width": int(cfg["sae"]["width"]), "k": int(cfg["sae"]["k"]),
            "normalize": bool(cfg["sae"]["normalize"]), "train": dict(cfg["train"])}


def _train_once(store, out: Path, *, layer: int, seed: int) -> Path:
    from workbench.sae import TrainConfig, train_sae

    if (out / "metrics.json").is_file():
        _log(f"reusing {out}")
        return out
    s = _demo_settings()
    train = TrainConfig.from_dict({**s["train"], "seed": seed})
    _log(f"training {s['arch']} width {s['width']} k {s['k']} on {store.path.name} layer {layer}, seed {seed},"
         f" {train.n_tokens:,} tokens")
    t0 = time.perf_counter()
    train_sae(store, out=out, layer=layer, arch=s["arch"], width=s["width"], k=s["k"], normalize=s["normalize"],
              train=train, overwrite=True, progress=False)
    _log(f"  trained in {time.perf_counter() - t0:.0f} s")
    return out


def heavy_records() -> list:
    from domains.sequence.demo import THERA_READ
    from domains.sequence.readers import bundled, read_table

    return [r for r in read_table(bundled("therasabdab"), **THERA_READ) if r.id.endswith("|heavy")]


def prepare() -> dict[str, Path]:
    """The seed-1 SAE, the Sapiens heavy-chain store and its SAE (each reused when finished)."""
    import workbench
    from workbench.errors import StoreError

    OUT.mkdir(parents=True, exist_ok=True)
    thera = workbench.open_store(DEMO / "thera_antiberty_L4")
    seed1 = _train_once(thera, OUT / "sae_thera_antiberty_L4_topk32_seed1", layer=4, seed=1)
    sap_path = OUT / f"thera_heavy_sapiens_vh_L{SAPIENS_LAYER}"
    try:
        sap = workbench.open_store(sap_path)
        _log(f"reusing {sap_path}")
    except StoreError:
        recs = heavy_records()
        _log(f"extracting {len(recs)} Thera-SAbDab heavy chains through {SAPIENS} layer {SAPIENS_LAYER}")
        t0 = time.perf_counter()
        sap = workbench.extract(SAPIENS, recs, layers=[SAPIENS_LAYER], out=sap_path, progress=False)
        _log(f"  extracted {sap.n_tokens:,} tokens in {time.perf_counter() - t0:.0f} s")
    sap_sae = _train_once(sap, OUT / f"sae_thera_heavy_sapiens_vh_L{SAPIENS_LAYER}_topk32", layer=SAPIENS_LAYER, seed=0)
    return {"seed1": seed1, "sapiens_store": sap_path, "sapiens_sae": sap_sae}


POSITIONAL = ("imgt", "region", "chain_region", "cdr_h3_length", "cdr_l1_length")
"""Concept groups that a token's place in the chain decides (IMGT position, region, loop length)."""


def load_labels(store):
    """The demo's concept labels of the Thera-SAbDab store (prebuilt pickle, else rebuilt with the demo's sources)."""
    labels = None
    if LABELS.is_file():
        with open(LABELS, "rb") as fh:
            labels = pickle.load(fh)
    if labels is None or labels.n_tokens != store.n_tokens:
        from domains.sequence.demo import LABEL_SOURCES, THERA_META
        from domains.sequence.annotations import sequence_labels

        _log("building the demo's concept labels (ANARCI, germline, ...)")
        labels = sequence_labels(store, sources=LABEL_SOURCES, table_columns=THERA_META,
                                 anarci_options={"ncpu": os.cpu_count() or 1})
    return labels


def random_catalog_concepts(cat) -> "object":
    """B's concepts for the random-weight control: each control feature named by the concept it is the best feature of
    in the demo catalog's ``best_random`` table (highest test F1 when several); others have none."""
    import pandas as pd

    best = cat.table("best_random").astype({"concept": str, "best_feature": str})
    best = best.sort_values("test_f1", ascending=False, kind="stable").drop_duplicates("best_feature")
    index = pd.Index([f"f{i:05d}" for i in range(len(cat.features))])
    frame = pd.DataFrame({"top_concept": None, "description": None}, index=index, dtype=object)
    for fid, concept, f1 in zip(best["best_feature"], best["concept"], best["test_f1"]):
        if fid in frame.index:
            frame.at[fid, "top_concept"] = concept
            frame.at[fid, "description"] = f"best random-control feature for {concept} (test F1 {float(f1):.2f})"
    return frame


def check_heavy_tokens(thera, sap) -> dict:
    """Every Sapiens heavy-chain token is a token of the demo AntiBERTy store with the same residue."""
    a = thera.obs(["sequence_id", "position", "residue"]).astype({"sequence_id": str, "residue": str})
    b = sap.obs(["sequence_id", "position", "residue"]).astype({"sequence_id": str, "residue": str})
    m = b.merge(a, on=["sequence_id", "position"], how="left", suffixes=("_sap", "_ab"))
    found = int(m["residue_ab"].notna().sum())
    same = int((m["residue_ab"] == m["residue_sap"]).sum())
    if found != len(b) or same != len(b):
        raise SystemExit(f"Sapiens heavy tokens do not match the AntiBERTy store: {found} of {len(b)} found,"
                         f" {same} with the same residue")
    return {"n_tokens": len(b), "n_sequences": int(b["sequence_id"].nunique()), "residues_equal": same}


def _groups(features, column: str, shared_col: str = "shared") -> dict:
    out: dict = {}
    for concept, shared in zip(features[column], features[shared_col]):
        group = str(concept).split("=", 1)[0] if isinstance(concept, str) and concept else "none"
        entry = out.setdefault(group, [0, 0])
        entry[0 if shared else 1] += 1
    return out


def _fmt(x) -> str:
    return "n/a" if x is None or x != x else f"{x:.3f}"


def main(paths: dict, *, n_tokens: int, n_null: int, write: bool, reuse: bool, reading: Path | None) -> None:
    import workbench
    from workbench.catalog import Catalog
    from workbench.sae import load_sae
    from _machine import cpu_model, record
    from workbench._universality import Universality, summary_lines, universality, write_universality

    thera = workbench.open_store(DEMO / "thera_antiberty_L4")
    random_store = workbench.open_store(DEMO / "thera_antiberty_L4_random1")
    sap = workbench.open_store(paths["sapiens_store"])
    demo_cat = Catalog.open(DEMO / "catalog")
    demo_sae = load_sae(DEMO / "sae_thera_antiberty_L4_topk32")
    labels = load_labels(thera)
    heavy = check_heavy_tokens(thera, sap)
    _log(f"Sapiens heavy tokens all found in the AntiBERTy store with equal residues: {heavy}")

    catalog = OUT / "catalog"
    if catalog.exists():
        shutil.rmtree(catalog)
    shutil.copytree(DEMO / "catalog", catalog)

    pairs = [
        ("a", "seed 0 vs seed 1 (AntiBERTy L4)", "antiberty_seed0_vs_seed1",
         dict(sae_b=load_sae(paths["seed1"]), store_b=thera, on="same", catalog_b=None)),
        ("b", "AntiBERTy L4 vs Sapiens-VH L2 (heavy chains)", "antiberty_vs_sapiens_vh",
         dict(sae_b=load_sae(paths["sapiens_sae"]), store_b=sap, on="common", catalog_b=None)),
        ("c", "AntiBERTy L4 vs random-weight AntiBERTy L4", "antiberty_vs_random_weights",
         dict(sae_b=load_sae(DEMO / "sae_thera_antiberty_L4_random1_topk32"), store_b=random_store, on="same",
              catalog_b=random_catalog_concepts(demo_cat))),
    ]
    results = {}
    for tag, title, key, opts in pairs:
        _log(f"pair {tag}: {title}")
        saved = OUT / f"{key}.summary.json"
        if reuse and saved.is_file():
            import pandas as pd

            data = json.loads(saved.read_text())
            res = Universality(pd.read_csv(OUT / f"{key}.csv", keep_default_na=False, na_values=[""]), data["summary"])
            seconds = data["seconds"]
        else:
            t0 = time.perf_counter()
            res = universality(demo_sae, thera, opts["sae_b"], opts["store_b"], on=opts["on"], n_tokens=n_tokens,
                               n_null=n_null, seed=0, labels=labels, catalog_a=demo_cat.features,
                               catalog_b=opts["catalog_b"], progress=True)
            seconds = time.perf_counter() - t0
            res.features.to_csv(OUT / f"{key}.csv", index=False)
            saved.write_text(json.dumps({"summary": res.summary, "seconds": seconds}, indent=1, default=str))
        print("\n".join(summary_lines(res)), flush=True)
        write_universality(catalog, res, key=key)
        results[tag] = (title, key, res, seconds)

    # ---------------------------------------------------------------------------------------------- report
    today = dt.date.today().isoformat()
    lines = [f"## {today} — bench_universality (issue 13, part 2: cross-model universality of SAE features)", "",
             f"Machine: {cpu_model()}, {os.cpu_count()} cores (shared with other jobs). `benchmarks/bench_universality.py`;"
             " outputs under `benchmarks/out/universality/` (per-feature CSVs, the three comparisons stored in a copy"
             " of the demo catalog for the app's Universality page).", "",
             "Method: `workbench.universality`. Whole sequences sampled (seed 0) up to"
             f" {n_tokens:,} tokens; both SAEs encode those tokens (matched by sequence id and position); Pearson r"
             " of every live feature of A with every live feature of B; best match per feature of A and a one-to-one"
             " Hungarian matching; shared = r > 0.5. Null: B's codes shuffled among the tokens of each sequence"
             f" ({n_null} repeats), the same best-match r. A is always the demo SAE (AntiBERTy layer 4, TopK width"
             " 4096, k 32, seed 0, 1M training tokens on the 2,237 Thera-SAbDab chains).", "",
             "Pairs:",
             "- a. B = the same recipe (demo `cfg.json`: topk, width 4096, k 32, lr 1e-3, 1M tokens, batch 4096)"
             " with `TrainConfig(seed=1)` on the same store: the seed reference.",
             f"- b. B = a Sapiens SAE (`sapiens-vh` layer {SAPIENS_LAYER}, the middle of its 4 blocks, d_model 128;"
             f" same recipe) on the {heavy['n_sequences']:,} Thera-SAbDab heavy chains ({heavy['n_tokens']:,} tokens)."
             " A is read on the same heavy-chain tokens of the demo AntiBERTy store (`on=\"common\"`: every Sapiens"
             " token found there with the same residue, so no second AntiBERTy extraction was needed).",
             "- c. B = the demo's control SAE on the random-weight AntiBERTy store (same inputs, same recipe).", "",
             "| pair | tokens (seqs) | live A / B | shared (best match) | shared (Hungarian) | null | median r |"
             " median r (null) | same label when shared | time |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for tag, (title, key, res, seconds) in results.items():
        s = res.summary
        lines.append(f"| {tag}. {title} | {s['n_tokens']:,} ({s['n_sequences']:,}) | {s['n_live_a']:,} / {s['n_live_b']:,}"
                     f" | **{s['fraction_shared']:.3f}** | {s['fraction_shared_hungarian']:.3f} |"
                     f" {s['null_fraction']:.3f} (repeats {', '.join(f'{v:.3f}' for v in s['null_fractions'])}) |"
                     f" {s['median_r']:.3f} | {s['median_r_null']:.3f} | {_fmt(s.get('concept_agreement'))} |"
                     f" {seconds:.0f} s |")
    lines += ["", "Concept groups of A's features (demo catalog `top_concept`): shared / all, per pair (share shared).", ""]
    all_groups = list(dict.fromkeys(g for _, _, res, _ in results.values() for g in res.summary["concept_groups"]))
    lines.append("| concept group | " + " | ".join(f"pair {t}" for t in results) + " |")
    lines.append("|---|" + "---|" * len(results))
    for g in all_groups:
        cells = []
        for _, _, res, _ in results.values():
            c = res.summary["concept_groups"].get(g, {"shared": 0, "unshared": 0})
            n = c["shared"] + c["unshared"]
            cells.append(f"{c['shared']} / {n} ({c['shared'] / n:.2f})" if n else "–")
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    lines += ["", "Shared fraction by what A's feature marks, from the token-level labels (the token concept of highest"
              " F1 on the sampled tokens, F1 >= 0.2; pair b's sample holds heavy chains only): positional = "
              + ", ".join(POSITIONAL) + "; residue = aa; other = any other labelled group; none = no label reaches"
              " F1 0.2. Last column: features firing on >= 0.1% of the sampled tokens.", "",
              "| pair | positional | residue | other | none | not positional (residue + other + none) |"
              " density >= 0.1% |", "|---|---|---|---|---|---|---|"]
    split = {}
    for tag, (title, key, res, _) in results.items():
        f = res.features
        group = f["label_a"].map(lambda v: str(v).split("=", 1)[0] if isinstance(v, str) and v else "none")
        kind = group.map(lambda g: "positional" if g in POSITIONAL else "residue" if g == "aa" else
                         "none" if g == "none" else "other")
        masks = {k: (kind == k).to_numpy() for k in ("positional", "residue", "other", "none")}
        masks["not positional"] = ~masks["positional"]
        masks["dense"] = (f["density_a"] >= 1e-3).to_numpy()
        shared = f["shared"].to_numpy(dtype=bool)
        null = (f["r_null_best"] > res.summary["threshold"]).to_numpy()
        split[tag] = {k: (float(shared[m].mean()) if m.any() else float("nan"), float(null[m].mean()) if m.any()
                          else float("nan"), int(m.sum())) for k, m in masks.items()}
        lines.append(f"| {tag} | " + " | ".join(f"{v[0]:.3f} of {v[2]:,}" for v in split[tag].values()) + " |")
    lines += ["", "Most common catalog concepts of the shared features:"]
    for tag, (title, key, res, _) in results.items():
        lines.append(f"- pair {tag}: " + ", ".join(f"`{k}` {v}" for k, v in list(res.summary["shared_concepts"].items())[:8]))
    a, b, c = (results[t][2].summary for t in "abc")
    lines += ["", "Goals, as computed:",
              f"- seed-to-seed well above the null: shared {a['fraction_shared']:.3f} vs null {a['null_fraction']:.3f}"
              f" -> {'met' if a['fraction_shared'] >= 2 * a['null_fraction'] + 0.1 else 'NOT met'};",
              f"- AntiBERTy-to-Sapiens well above the null: shared {b['fraction_shared']:.3f} vs null"
              f" {b['null_fraction']:.3f} -> {'met' if b['fraction_shared'] >= 2 * b['null_fraction'] + 0.1 else 'NOT met'};",
              f"- random-weight pairing near the null: all features shared {c['fraction_shared']:.3f} vs null"
              f" {c['null_fraction']:.3f} -> {'met' if c['fraction_shared'] <= c['null_fraction'] + 0.1 else 'NOT met'};"
              f" except positional features: shared {split['c']['not positional'][0]:.3f} vs null"
              f" {split['c']['not positional'][1]:.3f} -> "
              f"{'met' if split['c']['not positional'][0] <= split['c']['not positional'][1] + 0.1 else 'NOT met'}"
              " (criteria: 'near' = within 0.1 of the null; 'well above' = at least twice the null plus 0.1)."]
    if reading is not None:
        lines += ["", reading.read_text().strip()]
    lines.append("")
    text = "\n".join(lines)
    (OUT / "report.md").write_text(text)
    _log(f"report in {OUT / 'report.md'}")
    if write:
        record(text)
    else:
        print(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--nulls", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--reuse", action="store_true", help="reuse the per-pair results saved by an earlier run")
    parser.add_argument("--reading", type=Path, help="a markdown file with the reading, appended to the section")
    args = parser.parse_args()
    paths = prepare()
    if not args.prepare_only:
        main(paths, n_tokens=args.tokens, n_null=args.nulls, write=not args.no_write, reuse=args.reuse,
             reading=args.reading)
