"""Antibody-biology concepts on real data: IMGT anchors, somatic hypermutation, humanness, AIRR agreement, capture.

Run on demand (not a test):

    .venv/bin/python benchmarks/bench_antibody_concepts.py [--catalog benchmarks/out/demo/catalog] [--no-write]

Measures, appended to ``benchmarks/RESULTS.md``:

1. Numbering: chains of the bundled Thera-SAbDab whose ANARCI numbering breaks an IMGT anchor (Cys 23, Trp 41,
   Cys 104), run over all species and after the anchor rescue, by chain type.
2. Somatic hypermutation against ANARCI's assigned germline: mutation counts of the 1,999 OAS human IgG memory-B
   heavy chains, and of Thera-SAbDab chains by origin (with their non-human residue fraction).
3. Agreement of the ANARCI-germline SHM label with the AIRR ``germline_alignment`` label, per residue, on the
   bundled real AIRR rearrangements (both labels on the same residues; confusion counts and Cohen's kappa).
4. For every antibody-biology concept of the demo catalog (``workbench demo``; run ``bench_demo.py`` first):
   instances in the demo data and the best SAE feature's test F1 beside the best neuron and the best feature of
   the random-weight control's SAE (plain association).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

ORIGIN = "Genetics (Bispecifics delimited with semicolon)"


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def _thera() -> tuple[dict[str, str], dict[str, str]]:
    from domains.sequence.readers import bundled, read_table

    recs = read_table(bundled("therasabdab"), id_col="Therapeutic", seq_cols={"HC": "heavy", "LC": "light"},
                      meta_cols=[ORIGIN], skip_missing=True)
    origin = {r.id: (str(r.meta.get(ORIGIN)).split(";")[0] if r.meta.get(ORIGIN) is not None else "n/a") for r in recs}
    return {r.id: r.sequence for r in recs}, origin


def numbering_section(thera: dict[str, str]) -> tuple[list[str], object]:
    from domains.sequence.annotations import number_sequences

    t0 = time.perf_counter()
    numbering = number_sequences(thera, ncpu=os.cpu_count() or 1)
    seconds = time.perf_counter() - t0
    d = numbering.domains
    lines = ["### IMGT anchors (Cys 23, Trp 41, Cys 104) on the bundled Thera-SAbDab", "",
             f"{len(thera)} chains, {len(d)} numbered domains, ANARCI over all species then the anchor rescue: "
             f"{seconds:.0f} s on {os.cpu_count()} cores.", "",
             "| chain type | domains | break an anchor (all species) | HMM species then | after the rescue |",
             "|---|---|---|---|---|"]
    for chain, g in d.groupby("chain_type"):
        first = g[g["anchor_breaks_first"] != ""]
        species = ", ".join(f"{k} {v}" for k, v in first["hmm_species_first"].value_counts().items()) or "-"
        lines.append(f"| {chain} | {len(g)} | {len(first)} | {species} | {int((g['anchor_breaks'] != '').sum())} |")
    still = d[d["anchor_breaks"] != ""]
    lines += ["", "Still breaking one after the rescue (real non-canonical residues, reported not hidden): "
              + (", ".join(f"{r.sequence_id} ({r.anchor_breaks})" for r in still.itertuples()) or "none") + ".", ""]
    return lines, numbering


def shm_section(thera_numbering: object, origin: dict[str, str]) -> list[str]:
    import pandas as pd

    from domains.sequence.annotations import number_sequences
    from domains.sequence.annotations.germline import germline_residues, humanness_residues
    from domains.sequence.readers import bundled, read_table

    oas = read_table(bundled("oas_human_igg_memory_b_vh"), id_col="seq_id", seq_cols="sequence_alignment_aa")
    t0 = time.perf_counter()
    oas_numbering = number_sequences({r.id: r.sequence for r in oas}, ncpu=os.cpu_count() or 1)
    seconds = time.perf_counter() - t0

    def per_chain(numbering: object) -> pd.DataFrame:
        g = germline_residues(numbering)
        g = g[g["germline"] != ""]
        shm = g.groupby("sequence_id").agg(shm_count=("mutated", "sum"), compared=("mutated", "size"))
        h = humanness_residues(numbering)
        nh = h.groupby("sequence_id")["human"].apply(lambda s: float((~s).mean())).rename("non_human_fraction")
        out = shm.join(nh, how="outer")
        out["shm_fraction"] = out["shm_count"] / out["compared"]
        return out

    o = per_chain(oas_numbering)
    q = o["shm_count"].quantile([0.25, 0.5, 0.75])
    lines = ["### Somatic hypermutation against ANARCI's assigned germline", "",
             f"OAS human IgG memory-B heavy chains: {len(o)} of {len(oas)} numbered with a germline ({seconds:.0f} s). "
             f"Mutations per chain (IMGT 1-104 and 118-128 compared; CDR3 not): median **{q[0.5]:.0f}** "
             f"(IQR {q[0.25]:.0f}-{q[0.75]:.0f}), median **{100 * o['shm_fraction'].median():.1f}%** of compared residues; "
             f"{100 * (o['shm_count'] == 0).mean():.1f}% of chains unmutated. (OAS's sequences start a few residues into "
             "FR1, so fewer positions are compared than in a full V domain.)", "",
             "Thera-SAbDab by origin (first value of the Genetics column), all chains:", "",
             "| origin | chains | median mutations | median % mutated | median non-human residue % |", "|---|---|---|---|---|"]
    t = per_chain(thera_numbering)
    t["origin"] = [origin.get(i, "n/a") for i in t.index]
    for name, g in t.groupby("origin"):
        lines.append(f"| {name} | {len(g)} | {g['shm_count'].median():.0f} | {100 * g['shm_fraction'].median():.1f} | "
                     f"{100 * g['non_human_fraction'].median():.1f} |")
    lines.append("")
    return lines


def airr_section() -> list[str]:
    import numpy as np
    import pandas as pd

    from domains.sequence.annotations import number_sequences
    from domains.sequence.annotations.airr import residue_germline_labels
    from domains.sequence.annotations.germline import germline_residues
    from domains.sequence.readers import bundled, read_airr

    path = bundled("scirpy_bcr_rearrangements")
    records = read_airr(path)
    numbering = number_sequences({r.id: r.sequence for r in records}, ncpu=os.cpu_count() or 1)
    anarci = germline_residues(numbering)
    anarci = anarci[anarci["germline"] != ""][["sequence_id", "position", "mutated"]]
    airr = residue_germline_labels(path, {r.id: r.sequence for r in records})
    both = anarci.merge(airr.rename(columns={"mutated": "mutated_airr"}), on=["sequence_id", "position"], how="inner")
    a, b = both["mutated"].to_numpy(bool), both["mutated_airr"].to_numpy(bool)
    agree = float((a == b).mean()) if len(both) else float("nan")
    pe = a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()) if len(both) else float("nan")
    kappa = (agree - pe) / (1 - pe) if len(both) and pe < 1 else float("nan")
    per = both.groupby("sequence_id")[["mutated", "mutated_airr"]].sum()
    r = float(np.corrcoef(per["mutated"], per["mutated_airr"])[0, 1]) if len(per) > 2 else float("nan")
    confusion = pd.crosstab(pd.Series(a, name="ANARCI"), pd.Series(b, name="AIRR"))
    lines = ["### ANARCI-germline SHM vs the AIRR `germline_alignment` label", "",
             f"`{path.name}` ({len(records)} productive rearrangements read): {len(both)} residues labelled by both. "
             f"Agreement **{100 * agree:.1f}%**, Cohen's kappa **{_fmt(kappa)}**; per-chain mutation counts correlate "
             f"r = {_fmt(r)} over {len(per)} chains.", "",
             "| ANARCI \\ AIRR | conserved | mutated |", "|---|---|---|"]
    for val, name in ((False, "conserved"), (True, "mutated")):
        row = confusion.loc[val] if val in confusion.index else pd.Series(dtype=int)
        lines.append(f"| {name} | {int(row.get(False, 0))} | {int(row.get(True, 0))} |")
    lines += ["", "Differences come from the germline each method compares with: ANARCI takes the closest gene by "
              "amino-acid identity over IMGT positions (over all species in its set), the AIRR row the gene its "
              "aligner (IgBLAST / IMGT/HighV-QUEST) assigned from nucleotides, with its own allele set.", ""]
    return lines


def capture_section(catalog_dir: Path) -> list[str]:
    from domains.sequence.demo import BIOLOGY_PREFIXES
    from workbench.associate import CAPTURED_F1
    from workbench.catalog import Catalog

    cat = Catalog.open(catalog_dir)
    best = {n: cat.table(f"best_{n}").set_index("concept") for n in ("sae", "neurons", "random") if f"best_{n}" in cat.tables}
    concepts = [c for c in best["sae"].index if str(c).startswith(BIOLOGY_PREFIXES)]
    counts = {n: int((b.loc[[c for c in concepts if c in b.index], "test_f1"] > CAPTURED_F1).sum()) for n, b in best.items()}
    lines = ["### Antibody-biology concepts in the demo catalog (plain association, test F1)", "",
             f"`{catalog_dir}`: {len(concepts)} concepts; captured (test F1 > {CAPTURED_F1}): SAE **{counts.get('sae')}**, "
             f"neurons {counts.get('neurons')}, random-weight control {counts.get('random')}. Residues = labelled "
             "residues; scope = residues on which the concept is defined (negatives only there).", "",
             "| concept | residues | scope | best SAE feature | SAE F1 | neuron F1 | random-control F1 |",
             "|---|---|---|---|---|---|---|"]
    for c in sorted(concepts):
        s = best["sae"].loc[c]
        row = [c, str(int(s["n_labelled"])), str(int(s["n_scope"])) if "n_scope" in s else "", str(s["best_feature"]),
               _fmt(float(s["test_f1"]))]
        for n in ("neurons", "random"):
            row.append(_fmt(float(best[n].loc[c, "test_f1"])) if n in best and c in best[n].index else "")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    return lines


def main() -> None:
    from _machine import cpu_model, record

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=HERE / "out" / "demo" / "catalog")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    thera, origin = _thera()
    lines = [f"## {dt.date.today().isoformat()} — bench_antibody_concepts", "",
             f"Machine: {cpu_model()}, {os.cpu_count()} cores, CPU only.", ""]
    part, numbering = numbering_section(thera)
    lines += part
    lines += shm_section(numbering, origin)
    lines += airr_section()
    if (args.catalog / "catalog.h5ad").is_file() or args.catalog.is_dir():
        lines += capture_section(args.catalog)
    else:
        lines += [f"(no demo catalog at {args.catalog}: run benchmarks/bench_demo.py first for the capture table)", ""]
    record("\n".join(lines) + "\n", write=not args.no_write)


if __name__ == "__main__":
    main()
