"""Antibody-biology concept sources: IMGT anchors, somatic hypermutation, humanness, liabilities, CDR lengths.

Germline-built chains (a real IMGT germline V gene from ANARCI's set, a CDR3 and a real J gene) give exact
expectations: no mutation, no non-human residue; point mutations placed at known IMGT positions must come back
as exactly those mutations. The anchor rescue is tested on nine real Thera-SAbDab kappa chains that ANARCI run
over all species numbers with the rhesus HMM, which skips IMGT 21.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import workbench
from domains.sequence.annotations import (
    SOURCES,
    germline_labels,
    number_sequences,
    sequence_labels,
)
from domains.sequence.annotations.cdrs import H3_BINS, cdr_lengths
from domains.sequence.annotations.germline import germline_residues, humanness_residues
from domains.sequence.readers import bundled, read_table
from domains.sequence.records import SequenceRecord
from workbench.concepts import ConceptLabels
from workbench.store import ActivationStore

pytestmark = pytest.mark.skipif(importlib.util.find_spec("anarci") is None or shutil.which("hmmscan") is None,
                                reason="needs ANARCI and HMMER's hmmscan")

# Nine human kappa chains of the bundled Thera-SAbDab that the rhesus kappa HMM misnumbers (S/T at 23, Y at 104).
RHESUS_MISNUMBERED = ["Nurulimab", "Abrezekimab", "Abrilumab", "Acrixolimab", "Actoxumab", "Afimkibart", "Amlenetug",
                      "Anrukinzumab", "Armocibart"]
CDR3_H = "DRGYSSGWYFDY"   # after the germline's "AK" (IMGT 105-106): a 14-residue IMGT CDR-H3
FR4_H = "WGQGTLVTVSS"     # IGHJ4*01, IMGT 118-128
CDR3_K = "PLTF"           # after the germline's "QQSY": CDR-L3 QQSYPLT ... with IGKJ FR4
FR4_K = "GQGTKVEIK"


def _germlines() -> dict:
    from anarci.germlines import all_germlines

    return all_germlines


def _index_of(gapped: str, imgt: int) -> int:
    """0-based index in the ungapped germline of the residue at IMGT position ``imgt``."""
    assert gapped[imgt - 1] != "-"
    return len(gapped[: imgt - 1].replace("-", ""))


def _heavy(species: str = "human", gene: str = "IGHV3-23*01", mutations: dict[int, str] | None = None) -> str:
    gapped = _germlines()["V"]["H"][species][gene]
    seq = list(gapped.replace("-", ""))
    for imgt, aa in (mutations or {}).items():
        seq[_index_of(gapped, imgt)] = aa
    return "".join(seq) + CDR3_H + FR4_H


def _light() -> str:
    return _germlines()["V"]["K"]["human"]["IGKV1-39*01"].replace("-", "") + CDR3_K + FR4_K


def _absent_everywhere(chain: str, imgt: int, aa: str) -> bool:
    g = _germlines()
    return all(seq[imgt - 1] != aa for seg in ("V", "J") for genes in g[seg][chain].values() for seq in genes.values())


# Three mutations to W at FR positions where no germline of any species has W (checked in a test below).
MUTATIONS = {3: "W", 16: "W", 84: "W"}
LYSOZYME = "KVFGRCELAAAMKRHGLDNYRGYSLGNWVCAAKFESNFNTQATNRNTDGSTDYGILQINSRWWCNDGRTPGSRNLCNIPCSALLSSDITAS"


@pytest.fixture(scope="module")
def records() -> list[SequenceRecord]:
    return [
        SequenceRecord("germline_h", _heavy(), {"v_call": "IGHV3-23*01"}),
        SequenceRecord("mutated_h", _heavy(mutations=MUTATIONS), {"v_call": "IGHV3-23*01,IGHV3-23*04"}),
        SequenceRecord("mouse_h", _heavy("mouse", "IGHV1-11*01"), {"v_call": "IGHV99-1*01"}),
        SequenceRecord("germline_k", _light(), {"v_call": "IGKV1-39*01"}),
        SequenceRecord("lysozyme", LYSOZYME, {}),
    ]


@pytest.fixture(scope="module")
def store(tiny_esm2: Path, records: list[SequenceRecord], tmp_path_factory: pytest.TempPathFactory) -> ActivationStore:
    return workbench.extract(str(tiny_esm2), records, layers=[1], out=tmp_path_factory.mktemp("abc") / "s", progress=False)


@pytest.fixture(scope="module")
def labels(store: ActivationStore) -> ConceptLabels:
    return sequence_labels(store, sources=("anarci", "germline", "humanness", "liability", "cdr"))


@pytest.fixture(scope="module")
def obs(store: ActivationStore) -> pd.DataFrame:
    return store.obs(["sequence_id", "position", "residue"])


def _tokens(labels: ConceptLabels, obs: pd.DataFrame, concept: str, sequence_id: str | None = None) -> pd.DataFrame:
    names = labels.token_concepts["concept"].tolist()
    if concept not in names:
        return obs.iloc[:0]
    rows = np.sort(labels.tokens[:, names.index(concept)].nonzero()[0])
    out = obs.iloc[rows]
    return out if sequence_id is None else out[out["sequence_id"] == sequence_id]


def _measure(labels: ConceptLabels, store: ActivationStore, sequence_id: str, column: str) -> float:
    i = store.sequences["sequence_id"].astype(str).tolist().index(sequence_id)
    return float(labels.measures[column].iloc[i])


def _sequence_concepts(labels: ConceptLabels, store: ActivationStore, sequence_id: str) -> set[str]:
    i = store.sequences["sequence_id"].astype(str).tolist().index(sequence_id)
    return set(labels.sequence_concepts["concept"].iloc[labels.sequences[i].nonzero()[1]])


# ----------------------------------------------------------------------------------------------- anchors


@pytest.fixture(scope="module")
def rhesus_chains() -> dict[str, str]:
    recs = read_table(bundled("therasabdab"), id_col="Therapeutic", seq_cols={"LC": "light"}, skip_missing=True)
    chosen = {r.id.split("|")[0]: r.sequence for r in recs if r.id.split("|")[0] in RHESUS_MISNUMBERED}
    assert sorted(chosen) == sorted(RHESUS_MISNUMBERED)
    return chosen


def _anchor_residues(numbering, sequence_id: str) -> dict[int, str]:
    r = numbering.residues
    r = r[(r["sequence_id"] == sequence_id) & (r["insertion"] == "")]
    return {p: a for p, a in zip(r["imgt_position"], r["residue"]) if p in (21, 23, 41, 104)}


def test_all_species_numbering_breaks_the_anchors_of_nine_kappa_chains(rhesus_chains: dict[str, str]) -> None:
    raw = number_sequences(rhesus_chains, check_anchors=False)
    assert (raw.domains["anchor_breaks"] != "").all()
    assert set(raw.domains["hmm_species"]) == {"rhesus"}
    assert _anchor_residues(raw, "Nurulimab")[23] == "S" and _anchor_residues(raw, "Nurulimab")[104] == "Y"
    assert 21 not in _anchor_residues(raw, "Nurulimab")  # the rhesus HMM skips IMGT 21


def test_anchor_rescue_renumbers_them_with_the_human_hmm(rhesus_chains: dict[str, str]) -> None:
    fixed = number_sequences(rhesus_chains)
    d = fixed.domains
    assert (d["anchor_breaks"] == "").all()
    assert (d["anchor_breaks_first"] != "").all()
    assert set(d["hmm_species_first"]) == {"rhesus"} and set(d["hmm_species_used"]) == {"human"}
    for name in RHESUS_MISNUMBERED:
        at = _anchor_residues(fixed, name)
        assert (at[23], at[41], at[104]) == ("C", "W", "C"), name
    report = fixed.anchor_report()
    assert report["anarci_anchor_breaks_before"] == 9 and report["anarci_anchor_breaks_after"] == 0
    assert report["anarci_renumbered"] == 9 and report["anarci_anchor_broken_ids"] == []


def test_a_chain_that_truly_lacks_an_anchor_is_reported_not_hidden() -> None:
    heavy = _heavy(mutations={41: "F"})  # Trp 41 -> Phe: no HMM can restore it
    numbering = number_sequences({"w41f": heavy, "ok": _heavy()})
    d = numbering.domains.set_index("sequence_id")
    assert d.loc["w41f", "anchor_breaks"] == "41:F" and d.loc["ok", "anchor_breaks"] == ""
    assert numbering.anchor_report()["anarci_anchor_broken_ids"] == ["w41f"]


# ----------------------------------------------------------------------------------------------- SHM


def test_mutation_positions_are_absent_from_every_germline() -> None:
    for imgt, aa in MUTATIONS.items():
        assert _absent_everywhere("H", imgt, aa)


def test_a_germline_chain_has_no_mutation(labels: ConceptLabels, obs: pd.DataFrame, store: ActivationStore) -> None:
    assert _tokens(labels, obs, "shm=mutated", "germline_h").empty
    conserved = _tokens(labels, obs, "germline=conserved", "germline_h")
    # every V residue of FR1-FR3 (IMGT 1-104) and J residue of FR4 (118-128) is compared
    v_len = len(_germlines()["V"]["H"]["human"]["IGHV3-23*01"][:104].replace("-", ""))
    assert len(conserved) == v_len + len(FR4_H)
    assert _measure(labels, store, "germline_h", "shm_count") == 0
    assert "shm_count=0" in _sequence_concepts(labels, store, "germline_h")


def test_point_mutations_come_back_exactly(labels: ConceptLabels, obs: pd.DataFrame, store: ActivationStore) -> None:
    gapped = _germlines()["V"]["H"]["human"]["IGHV3-23*01"]
    mutated = _tokens(labels, obs, "shm=mutated", "mutated_h")
    assert sorted(mutated["position"]) == sorted(_index_of(gapped, p) + 1 for p in MUTATIONS)
    assert set(mutated["residue"]) == {"W"}
    for imgt in MUTATIONS:
        before = gapped[imgt - 1]
        hit = _tokens(labels, obs, f"germline_residue={before}", "mutated_h")
        assert _index_of(gapped, imgt) + 1 in set(hit["position"])
    assert _measure(labels, store, "mutated_h", "shm_count") == 3
    assert "shm_count=1-3" in _sequence_concepts(labels, store, "mutated_h")
    # CDR3 residues are never compared (the junction has no germline residue)
    cdr3 = _tokens(labels, obs, "region=CDR3", "mutated_h")["position"]
    compared = np.flatnonzero(labels.scopes["germline:compared"])
    assert not set(obs.iloc[compared].query("sequence_id == 'mutated_h'")["position"]) & set(cdr3)


def test_unnumbered_and_unassigned_chains_are_unlabelled_not_negative(labels: ConceptLabels, obs: pd.DataFrame,
                                                                       store: ActivationStore) -> None:
    lyso = (obs["sequence_id"] == "lysozyme").to_numpy()
    assert not labels.scopes["germline:compared"][lyso].any()
    assert not labels.scopes["anarci:numbered"][lyso].any()
    assert labels.token_scope("shm=mutated") is labels.scopes["germline:compared"]
    assert np.isnan(_measure(labels, store, "lysozyme", "shm_count"))
    assert labels.token_concepts.attrs["germline_unnumbered"] == 1
    i = store.sequences["sequence_id"].tolist().index("lysozyme")
    assert not labels.sequence_scopes["germline:assigned"][i]


def test_named_genes_missing_from_anarci_are_counted_and_unlabelled(store: ActivationStore, obs: pd.DataFrame) -> None:
    lab = germline_labels(store, v_call_column="v_call")
    assert lab.token_concepts.attrs["germline_genes_not_in_anarci"] == 1
    assert lab.token_concepts.attrs["germline_genes_not_in_anarci_names"] == ["IGHV99-1*01"]
    mouse = (obs["sequence_id"] == "mouse_h").to_numpy()
    assert lab.scopes["germline:compared"][mouse].sum() == len(FR4_H)  # only the J gene (ANARCI's) is compared
    mutated = _tokens(lab, obs, "shm=mutated", "mutated_h")
    assert len(mutated) == 3  # the named gene (first call of two) is the one compared with


def test_unknown_v_call_column_is_refused(store: ActivationStore) -> None:
    from workbench.errors import InputError

    with pytest.raises(InputError, match="no column 'nope'"):
        germline_labels(store, v_call_column="nope")


def test_germline_residues_table_matches_the_labels(store: ActivationStore, labels: ConceptLabels) -> None:
    from domains.sequence.annotations._common import _sequences_from_obs

    numbering = number_sequences(_sequences_from_obs(store.obs(["sequence_id", "position", "residue"])))
    table = germline_residues(numbering)
    assert int(table["mutated"].sum()) == labels.token_concepts.attrs["germline_mutated_residues"]
    assert int((table["germline"] != "").sum()) == int(labels.scopes["germline:compared"].sum())


# ----------------------------------------------------------------------------------------------- humanness


def test_a_human_germline_chain_has_no_non_human_residue(labels: ConceptLabels, obs: pd.DataFrame,
                                                         store: ActivationStore) -> None:
    assert _tokens(labels, obs, "non_human_residue", "germline_h").empty
    assert _tokens(labels, obs, "non_human_residue", "germline_k").empty
    assert _measure(labels, store, "germline_h", "non_human_fraction") == 0
    assert "non_human_fraction=0%" in _sequence_concepts(labels, store, "germline_h")


def test_non_human_residues_are_absent_from_human_germlines(labels: ConceptLabels, store: ActivationStore) -> None:
    from domains.sequence.annotations._common import _sequences_from_obs

    numbering = number_sequences(_sequences_from_obs(store.obs(["sequence_id", "position", "residue"])))
    r = humanness_residues(numbering)
    mouse = r[r["sequence_id"] == "mouse_h"]
    foreign = mouse[~mouse["human"]]
    assert len(foreign) >= 3
    g = _germlines()
    for pos, aa in zip(foreign["imgt_position"], foreign["residue"]):
        human = {s[pos - 1] for seg in ("V", "J") for s in g[seg]["H"]["human"].values()}
        assert aa not in human
    assert mouse["any_germline"].all()  # a mouse germline explains every one of them
    assert _measure(labels, store, "mouse_h", "non_human_fraction") == pytest.approx(len(foreign) / len(mouse))


def test_mutations_nowhere_in_any_germline_are_no_germline(labels: ConceptLabels, obs: pd.DataFrame) -> None:
    hits = _tokens(labels, obs, "non_human_residue=no_germline", "mutated_h")
    assert len(hits) == 3 and set(hits["residue"]) == {"W"}
    assert _tokens(labels, obs, "non_human_residue=other_species", "mutated_h").empty


# ----------------------------------------------------------------------------------------------- liabilities


def test_liability_motifs_and_regions(tiny_esm2: Path, tmp_path: Path) -> None:
    gapped = _germlines()["V"]["H"]["human"]["IGHV3-23*01"]
    base = list(_heavy())
    # CDR2 (IMGT 57-58) -> "NG" (deamidation in a CDR); FR3 IMGT 85-86 -> "DP" (fragmentation in a framework)
    for imgt, aa in ((57, "N"), (58, "G"), (85, "D"), (86, "P")):
        base[_index_of(gapped, imgt)] = aa
    one_cys = list(_heavy(mutations={16: "C"}))
    two_cys = list(_heavy(mutations={16: "C", 84: "C"}))
    recs = [SequenceRecord("motifs", "".join(base)), SequenceRecord("one_cys", "".join(one_cys)),
            SequenceRecord("two_cys", "".join(two_cys))]
    store = workbench.extract(str(tiny_esm2), recs, layers=[1], out=tmp_path / "s", progress=False)
    lab = sequence_labels(store, sources=("liability",))
    ob = store.obs(["sequence_id", "position", "residue"])
    ng = _index_of(gapped, 57) + 1
    deam = _tokens(lab, ob, "liability_region=deamidation:CDR", "motifs")
    assert {ng, ng + 1} <= set(deam["position"])
    dp = _index_of(gapped, 85) + 1
    assert set(_tokens(lab, ob, "liability_region=fragmentation:FR", "motifs")["position"]) == {dp, dp + 1}
    whole = "".join(base)
    starts = [i + 1 for i in range(len(whole) - 1) if whole[i] == "N" and whole[i + 1] in "GSTNH"]
    deam_all = _tokens(lab, ob, "liability=deamidation", "motifs")
    assert set(deam_all["position"]) == {p for s in starts for p in (s, s + 1)}
    assert lab.token_concepts.attrs["liability_deamidation"] == sum(
        1 for r in recs for i in range(len(r.sequence) - 1) if r.sequence[i] == "N" and r.sequence[i + 1] in "GSTNH")
    assert len(_tokens(lab, ob, "liability_region=unpaired Cys:FR", "one_cys")) == 1
    assert _tokens(lab, ob, "liability_region=unpaired Cys:FR", "two_cys").empty
    # oxidation: every M / W of the CDRs, none elsewhere
    ox = _tokens(lab, ob, "liability_region=oxidation:CDR", "motifs")
    assert set(ox["residue"]) <= {"M", "W"}
    assert lab.token_scope("liability=deamidation") is None  # whole-sequence motifs are complete: no scope
    assert lab.token_scope("liability_region=deamidation:CDR") is not None


# ----------------------------------------------------------------------------------------------- CDR lengths


def test_cdr_lengths(labels: ConceptLabels, obs: pd.DataFrame, store: ActivationStore) -> None:
    assert _measure(labels, store, "germline_h", "cdr3_length") == len("AK" + CDR3_H)
    assert "cdr_h3_length=14-16" in _sequence_concepts(labels, store, "germline_h")
    h3 = _tokens(labels, obs, "cdr_h3_length=14-16", "germline_h")
    cdr3 = _tokens(labels, obs, "region=CDR3", "germline_h")
    assert list(h3["position"]) == list(cdr3["position"])
    assert _measure(labels, store, "germline_k", "cdr1_length") == 6  # IGKV1-39 CDR-L1 QSISSY
    assert "cdr_l1_length=6" in _sequence_concepts(labels, store, "germline_k")
    assert labels.token_scope("cdr_h3_length=14-16").sum() == sum(
        len(_tokens(labels, obs, "region=CDR3", s)) for s in ("germline_h", "mutated_h", "mouse_h"))
    assert [b[0] for b in H3_BINS] == ["<=10", "11-13", "14-16", "17-19", "20+"]


def test_cdr_lengths_table_counts_insertions() -> None:
    long_h3 = _heavy()[: -len(CDR3_H + FR4_H)] + "DRGYSSGWYFDYGGGGSSSSY" + FR4_H
    numbering = number_sequences({"long": long_h3})
    table = cdr_lengths(numbering)
    assert int(table["cdr3_length"].iloc[0]) == 2 + len("DRGYSSGWYFDYGGGGSSSSY")
    assert (numbering.residues["insertion"] != "").any()


# ----------------------------------------------------------------------------------------------- combined


def test_numbering_sources_share_one_anarci_run(store: ActivationStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import domains.sequence.annotations as ann

    calls = []
    real = ann.number_sequences

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ann, "number_sequences", counted)
    lab = ann.sequence_labels(store, sources=("anarci", "germline", "humanness", "liability", "cdr", "motif"))
    assert len(calls) == 1
    assert {"anarci", "germline", "humanness", "liability", "cdr", "motif"} == set(lab.token_concepts["source"])
    assert set(SOURCES) >= {"germline", "humanness", "liability", "cdr", "airr"}
    assert {"shm_count", "non_human_fraction", "cdr3_length", "liabilities_cdr"} <= set(lab.measures.columns)
    assert len(lab.measures) == len(store.sequences)


# ----------------------------------------------------------------------------------------------- AIRR


def test_real_airr_rearrangements_agree_with_the_anarci_germline_label(tiny_esm2: Path, tmp_path: Path) -> None:
    from domains.sequence.annotations.airr import residue_germline_labels
    from domains.sequence.readers import read_airr_table

    path = bundled("scirpy_bcr_rearrangements")
    result = read_airr_table(path)
    assert len(result.records) == 153
    records = result.records[:12]
    store = workbench.extract(str(tiny_esm2), records, layers=[1], out=tmp_path / "s", progress=False)
    lab = sequence_labels(store, sources=("germline",), airr=path)
    attrs = lab.token_concepts.attrs
    assert attrs["airr_sequences_matched"] == 12 and attrs["airr_residue_mismatches"] == 0
    both = lab.scopes["germline:compared"] & lab.scopes["airr:compared"]
    assert both.sum() > 1000
    names = lab.token_concepts["concept"].tolist()
    anarci = lab.tokens[:, names.index("shm=mutated")].toarray().ravel()
    airr = lab.tokens[:, names.index("shm_airr=mutated")].toarray().ravel()
    assert (anarci[both] == airr[both]).mean() > 0.97
    assert anarci[both].sum() > 10  # real memory / plasma cells carry mutations
    table = residue_germline_labels(path, {r.id: r.sequence for r in records})
    assert int(table["mutated"].sum()) == int(airr.sum())


def test_vectorised_germline_assignment_is_anarcis(rhesus_chains: dict[str, str], records: list[SequenceRecord]) -> None:
    import importlib

    from domains.sequence.annotations.anarci import ANARCI_SPECIES, assign_germlines

    an = importlib.import_module("anarci.anarci")
    items = [*rhesus_chains.items(), *((r.id, r.sequence) for r in records[:4])]
    alignments = an.run_hmmer(items, hmm_database="ALL", ncpu=1, hmmer_species=list(ANARCI_SPECIES))
    compared = 0
    for (_sid, seq), (_hits, vectors, details) in zip(items, alignments):
        for vector, d in zip(vectors, details):
            species = [s for s in ANARCI_SPECIES if s in an.all_germlines["V"].get(d["chain_type"], {})]
            assert assign_germlines(vector, seq, d["chain_type"], species) == an.run_germline_assignment(
                vector, seq, d["chain_type"], allowed_species=species)
            compared += 1
    assert compared == len(items)
