"""Concept labels for sequence stores: ANARCI numbering, table columns, user files, UniProt features, motifs.

Stores are extracted with the tiny ESM-2 from real records (Thera-SAbDab, OAS, UniProt); the checks are facts one
can verify by hand in the source files (published IMGT CDRs of trastuzumab, OAS's own CDR3 and V family column,
feature lines of the UniProt flat file).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import workbench
from domains.sequence.annotations import (
    IMGT_REGIONS,
    UNIPROT_FEATURE_KEYS,
    anarci_labels,
    anarci_numbering,
    imgt_region,
    motif_labels,
    sequence_labels,
    store_sequences,
    table_labels,
    uniprot_labels,
    user_labels,
)
from domains.sequence.readers import bundled, read_table, read_uniprot
from domains.sequence.records import SequenceRecord
from workbench.concepts import ConceptLabels
from workbench.errors import InputError
from workbench.store import ActivationStore

SHARED = Path(os.environ.get("WORKBENCH_SHARED_DATA", "/work/shared/data"))
PROTEIN = SHARED / "protein"
SWISS_100 = PROTEIN / "swissprot_human_100.dat"
CASES = PROTEIN / "swissprot_format_cases"
needs_shared = pytest.mark.skipif(not SWISS_100.is_file(), reason=f"shared reference data not found at {SHARED}")
needs_anarci = pytest.mark.skipif(importlib.util.find_spec("anarci") is None or shutil.which("hmmscan") is None,
                                  reason="needs ANARCI and HMMER's hmmscan")

THERA_IDS = ["Trastuzumab", "Adalimumab", "Avelumab", "Abagovomab", "Caplacizumab", "Nivolumab"]
THERA_META = ["CH1 Isotype", "VD LC", "Genetics (Bispecifics delimited with semicolon)"]
# Hen egg-white lysozyme (UniProt P00698, mature chain): a protein ANARCI must not number.
LYSOZYME = ("KVFGRCELAAAMKRHGLDNYRGYSLGNWVCAAKFESNFNTQATNRNTDGSTDYGILQINSRWWCNDGRTPGSRNLCNIPCSALLSSDITAS"
            "VNCAKKIVSDGNGMNAWVAWRNRCKGTDVQAWIRGCRL")


def _column(labels: ConceptLabels, concept: str) -> int:
    names = labels.token_concepts["concept"].tolist()
    assert concept in names, f"{concept} not in {names[:10]}..."
    return names.index(concept)


def residues_with(labels: ConceptLabels, obs: pd.DataFrame, concept: str) -> pd.DataFrame:
    """Token rows carrying ``concept``, with their instance id."""
    j = _column(labels, concept)
    rows = labels.tokens[:, j].nonzero()[0]
    out = obs.iloc[np.sort(rows)].copy()
    out["instance"] = np.asarray(labels.instances[np.sort(rows), j].todense()).ravel()
    return out


def text_of(labels: ConceptLabels, obs: pd.DataFrame, concept: str, sequence_id: str) -> str:
    sel = residues_with(labels, obs, concept)
    return "".join(sel.loc[sel["sequence_id"] == sequence_id, "residue"])


def sequence_concepts_of(labels: ConceptLabels, store: ActivationStore, sequence_id: str) -> set[str]:
    i = store.sequences["sequence_id"].tolist().index(sequence_id)
    cols = labels.sequences[i].nonzero()[1]
    return set(labels.sequence_concepts["concept"].iloc[cols])


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def thera_records() -> list[SequenceRecord]:
    recs = read_table(bundled("therasabdab"), id_col="Therapeutic", seq_cols={"HC": "heavy", "LC": "light"},
                      meta_cols=THERA_META)
    chosen = [r for r in recs if r.id.split("|")[0] in THERA_IDS]
    assert len(chosen) == 2 * len(THERA_IDS) - 1  # caplacizumab is a nanobody: no light chain
    return [*chosen, SequenceRecord("lysozyme", LYSOZYME, {"VD LC": None})]


@pytest.fixture(scope="module")
def thera_store(
    tiny_esm2: Path, thera_records: list[SequenceRecord], tmp_path_factory: pytest.TempPathFactory,
) -> ActivationStore:
    return workbench.extract(str(tiny_esm2), thera_records, layers=[1], out=tmp_path_factory.mktemp("ann") / "thera",
                             progress=False)


@pytest.fixture(scope="module")
def thera_labels(thera_store: ActivationStore) -> ConceptLabels:
    return anarci_labels(thera_store)


@pytest.fixture(scope="module")
def thera_obs(thera_store: ActivationStore) -> pd.DataFrame:
    return thera_store.obs(["sequence_id", "position", "residue"])


@pytest.fixture(scope="module")
def uniprot_store(tiny_esm2: Path, tmp_path_factory: pytest.TempPathFactory) -> ActivationStore:
    """Five short entries of the human Swiss-Prot sample plus one longer than the model's 1022 (truncated)."""
    if not SWISS_100.is_file():
        pytest.skip(f"shared reference data not found at {SHARED}")
    by_id = {r.id: r for r in read_uniprot(SWISS_100)}
    # 87-201 residues; P01023 (alpha-2-macroglobulin) has 1474.
    chosen = [by_id[i] for i in ("P07108", "Q13541", "Q9NRW3", "P36639", "P02763", "P01023")]
    return workbench.extract(str(tiny_esm2), chosen, layers=[1], out=tmp_path_factory.mktemp("ann") / "up",
                             truncate=True, progress=False)


@pytest.fixture(scope="module")
def uniprot_result(uniprot_store: ActivationStore) -> ConceptLabels:
    return uniprot_labels(uniprot_store, SWISS_100)


# ----------------------------------------------------------------------------------------------- store


def test_store_sequences_rebuilds_the_inputs_in_store_order(
    thera_store: ActivationStore, thera_records: list[SequenceRecord],
) -> None:
    seqs = store_sequences(thera_store)
    assert list(seqs) == thera_store.sequences["sequence_id"].tolist()
    assert seqs == {r.id: r.sequence for r in thera_records}


def test_imgt_region_boundaries() -> None:
    for name, first, last in IMGT_REGIONS:
        assert imgt_region(first) == name and imgt_region(last) == name
    assert list(imgt_region(np.array([26, 27, 104, 105, 117, 118]))) == ["FR1", "CDR1", "FR3", "CDR3", "CDR3", "FR4"]
    assert imgt_region(0) is None and imgt_region(129) is None


# ----------------------------------------------------------------------------------------------- ANARCI


@needs_anarci
def test_trastuzumab_imgt_cdrs_match_the_published_ones(thera_labels: ConceptLabels, thera_obs: pd.DataFrame) -> None:
    # IMGT/mAb-DB CDRs of trastuzumab (IMGT numbering: CDR1 27-38, CDR2 56-65, CDR3 105-117).
    expected = {
        ("Trastuzumab|heavy", "H"): ("GFNIKDTY", "IYPTNGYT", "SRWGGDGFYAMDY"),
        ("Trastuzumab|light", "K"): ("QDVNTA", "SAS", "QQHYTTPPT"),
    }
    for (sid, chain), cdrs in expected.items():
        got = tuple(text_of(thera_labels, thera_obs, f"chain_region={chain}:CDR{k}", sid) for k in (1, 2, 3))
        assert got == cdrs
        assert tuple(text_of(thera_labels, thera_obs, f"region=CDR{k}", sid) for k in (1, 2, 3)) == cdrs


@needs_anarci
def test_cdr3_lies_between_conserved_cys104_and_trp118(
    thera_labels: ConceptLabels, thera_obs: pd.DataFrame, thera_records: list[SequenceRecord],
) -> None:
    seqs = {r.id: r.sequence for r in thera_records}
    cys = residues_with(thera_labels, thera_obs, "imgt=104")
    trp = residues_with(thera_labels, thera_obs, "imgt=118")
    heavy = [sid for sid in seqs if sid.endswith("|heavy")]
    for sid in heavy:
        c = cys.loc[cys["sequence_id"] == sid]
        w = trp.loc[trp["sequence_id"] == sid]
        assert c["residue"].tolist() == ["C"] and w["residue"].tolist() == ["W"]
        between = seqs[sid][int(c["position"].iloc[0]) : int(w["position"].iloc[0]) - 1]
        assert text_of(thera_labels, thera_obs, "region=CDR3", sid) == between


@needs_anarci
def test_numbered_chains_have_all_regions_in_order_once(thera_labels: ConceptLabels, thera_obs: pd.DataFrame) -> None:
    order = [name for name, _, _ in IMGT_REGIONS]
    starts: dict[str, dict[str, list[int]]] = {}
    for name in order:
        sel = residues_with(thera_labels, thera_obs, f"region={name}")
        for sid, group in sel.groupby("sequence_id"):
            assert group["instance"].nunique() == 1, (sid, name)  # one contiguous span per domain
            assert group["position"].diff().dropna().eq(1).all(), (sid, name)
            starts.setdefault(sid, {})[name] = [int(group["position"].min()), int(group["position"].max())]
    assert "lysozyme" not in starts
    assert len(starts) == 11
    for sid, regions in starts.items():
        assert list(regions) == order, sid
        bounds = [regions[name] for name in order]
        assert all(a[1] + 1 == b[0] for a, b in zip(bounds, bounds[1:])), sid


@needs_anarci
def test_chain_type_species_and_germlines_per_sequence(
    thera_store: ActivationStore, thera_labels: ConceptLabels,
) -> None:
    seqs = thera_store.sequences
    for sid, vd_lc in zip(seqs["sequence_id"], seqs["VD LC"]):
        concepts = sequence_concepts_of(thera_labels, thera_store, sid)
        if sid == "lysozyme":
            assert concepts == set()
            continue
        chain = {c.split("=")[1] for c in concepts if c.startswith("chain_type=")}
        v_family = {c.split("=")[1] for c in concepts if c.startswith("v_family=")}
        v_gene = {c.split("=")[1] for c in concepts if c.startswith("v_gene=")}
        assert len(chain) == len(v_family) == len(v_gene) == 1, (sid, concepts)
        if sid.endswith("|heavy"):
            assert chain == {"H"} and next(iter(v_family)).startswith("IGHV")
        else:  # Thera-SAbDab's light-chain type: Kappa / Lambda
            assert chain == {{"Kappa": "K", "Lambda": "L"}[vd_lc]}
            assert next(iter(v_family)).startswith({"Kappa": "IGKV", "Lambda": "IGLV"}[vd_lc])
        assert next(iter(v_gene)).startswith(next(iter(v_family)))
        assert any(c.startswith("j_gene=IG") for c in concepts) and any(c.startswith("species=") for c in concepts)
    # The nanobody is a camelid VHH, the murine antibody mouse, adalimumab human.
    assert "species=alpaca" in sequence_concepts_of(thera_labels, thera_store, "Caplacizumab|heavy")
    assert "species=mouse" in sequence_concepts_of(thera_labels, thera_store, "Abagovomab|heavy")
    assert "species=human" in sequence_concepts_of(thera_labels, thera_store, "Adalimumab|light")


@needs_anarci
def test_non_antibody_gets_no_labels_and_is_counted(thera_labels: ConceptLabels, thera_obs: pd.DataFrame) -> None:
    rows = np.flatnonzero(thera_obs["sequence_id"].to_numpy() == "lysozyme")
    assert thera_labels.tokens[rows].nnz == 0
    assert thera_labels.token_concepts.attrs["anarci_unnumbered"] == 1
    assert thera_labels.token_concepts.attrs["anarci_unnumbered_ids"] == ["lysozyme"]
    assert thera_labels.token_concepts.attrs["anarci_numbered"] == 11
    assert set(thera_labels.token_concepts["source"]) == {"anarci"}


@needs_anarci
def test_imgt_position_concepts_merge_insertions(thera_labels: ConceptLabels, thera_obs: pd.DataFrame) -> None:
    # Caplacizumab's 21-residue CDR-H3 needs insertions at IMGT 111/112: those residues form one span per position.
    sel = residues_with(thera_labels, thera_obs, "imgt=111")
    capla = sel.loc[sel["sequence_id"] == "Caplacizumab|heavy"]
    assert len(capla) > 1 and capla["instance"].nunique() == 1
    assert capla["position"].diff().dropna().eq(1).all()
    assert len(text_of(thera_labels, thera_obs, "region=CDR3", "Caplacizumab|heavy")) == 21


@needs_anarci
def test_anarci_numbering_maps_back_to_input_positions(thera_records: list[SequenceRecord]) -> None:
    heavy = next(r.sequence for r in thera_records if r.id == "Trastuzumab|heavy")
    table = anarci_numbering({"plain": heavy, "tagged": "MGSSHHHHHH" + heavy + "GGGGS"})
    assert list(table.columns) == ["sequence_id", "domain", "position", "imgt_position", "insertion", "region",
                                   "chain_type", "residue"]
    plain = table[table["sequence_id"] == "plain"].reset_index(drop=True)
    tagged = table[table["sequence_id"] == "tagged"].reset_index(drop=True)
    assert plain["position"].tolist() == list(range(1, len(heavy) + 1))
    assert (tagged["position"] - 10).tolist() == plain["position"].tolist()
    assert tagged["imgt_position"].tolist() == plain["imgt_position"].tolist()
    cdr3 = plain[plain["region"] == "CDR3"]
    assert "".join(heavy[p - 1] for p in cdr3["position"]) == "SRWGGDGFYAMDY"
    assert cdr3["imgt_position"].between(105, 117).all() and set(plain["chain_type"]) == {"H"}


@needs_anarci
def test_anarci_numbers_both_domains_of_an_scfv(thera_records: list[SequenceRecord]) -> None:
    chains = {r.id: r.sequence for r in thera_records}
    heavy, light = chains["Trastuzumab|heavy"], chains["Trastuzumab|light"]
    scfv = heavy + "GGGGS" * 3 + light  # VH-(G4S)3-VL
    table = anarci_numbering({"scfv": scfv})
    spans = table.groupby(["domain", "chain_type"])["position"].agg(["min", "max"])
    assert spans.to_dict("index") == {(0, "H"): {"min": 1, "max": len(heavy)},
                                      (1, "K"): {"min": len(heavy) + 16, "max": len(scfv)}}
    cdr3 = table[table["region"] == "CDR3"].groupby("domain")["position"]
    assert [("".join(scfv[i - 1] for i in p)) for _, p in cdr3] == ["SRWGGDGFYAMDY", "QQHYTTPPT"]


@needs_anarci
def test_oas_cdr3_and_v_family_agree_with_the_oas_columns(tiny_esm2: Path, tmp_path: Path) -> None:
    """OAS's AIRR ``cdr3_aa`` is the IMGT CDR3 (105-117) and ``v_family`` its IgBLAST V family."""
    recs = read_table(bundled("oas_human_igg_memory_b_vh"), id_col="seq_id", seq_cols="sequence_alignment_aa",
                      meta_cols=["cdr3_aa", "v_family"])[:12]
    store = workbench.extract(str(tiny_esm2), recs, layers=[1], out=tmp_path / "oas", progress=False)
    labels = sequence_labels(store, sources=("anarci", "table"), table_columns=["v_family"])
    obs = store.obs(["sequence_id", "position", "residue"])
    assert {"v_family=IGHV1", "table:v_family=IGHV1"} <= set(labels.sequence_concepts["concept"])
    for rec in recs:
        assert text_of(labels, obs, "chain_region=H:CDR3", rec.id) == rec.meta["cdr3_aa"]
        concepts = sequence_concepts_of(labels, store, rec.id)
        assert f"v_family={rec.meta['v_family']}" in concepts and f"table:v_family={rec.meta['v_family']}" in concepts


# ----------------------------------------------------------------------------------------------- tables and user files


def test_table_labels_from_carried_columns(thera_store: ActivationStore) -> None:
    labels = table_labels(thera_store, THERA_META)
    assert set(labels.token_concepts["concept"]) == set() and labels.tokens.shape == (thera_store.n_tokens, 0)
    assert sequence_concepts_of(labels, thera_store, "Trastuzumab|heavy") >= {"CH1 Isotype=G1", "VD LC=Kappa"}
    assert "VD LC=Lambda" in sequence_concepts_of(labels, thera_store, "Avelumab|light")
    assert sequence_concepts_of(labels, thera_store, "lysozyme") == set()
    genetics = "Genetics (Bispecifics delimited with semicolon)"
    assert {f"{genetics}=Humanised", f"{genetics}=Murine"} <= set(labels.sequence_concepts["concept"])
    counts = dict(zip(labels.sequence_concepts["concept"], labels.sequence_concepts["n_sequences"]))
    assert counts["VD LC=Kappa"] == sum(1 for v in thera_store.sequences["VD LC"] if v == "Kappa")
    with pytest.raises(InputError, match="carries no column.*'Target'"):
        table_labels(thera_store, ["Target"])


def test_table_labels_split_multi_valued_cells(tiny_esm2: Path, tmp_path: Path) -> None:
    recs = read_table(bundled("therasabdab"), id_col="Therapeutic", seq_cols={"HC": "heavy"}, meta_cols=["VD LC"],
                      skip_missing=True)
    bispecific = next(r for r in recs if r.meta["VD LC"] == "Kappa;Lambda")
    store = workbench.extract(str(tiny_esm2), [bispecific], layers=[1], out=tmp_path / "s", progress=False)
    assert sequence_concepts_of(table_labels(store, ["VD LC"]), store, bispecific.id) == {"VD LC=Kappa", "VD LC=Lambda"}
    whole = table_labels(store, ["VD LC"], multi_sep=None)
    assert sequence_concepts_of(whole, store, bispecific.id) == {"VD LC=Kappa;Lambda"}


def test_user_labels_per_sequence_and_per_residue(
    thera_store: ActivationStore, thera_obs: pd.DataFrame, tmp_path: Path,
) -> None:
    per_seq = tmp_path / "assay.tsv"
    per_seq.write_text("sequence_id\tbinder\tlot\nTrastuzumab|heavy\tyes\t7\nAdalimumab|heavy\tno\t7\n")
    labels = user_labels(thera_store, per_seq)
    assert set(labels.sequence_concepts["concept"]) == {"binder=yes", "binder=no", "lot=7"}
    assert sequence_concepts_of(labels, thera_store, "Trastuzumab|heavy") == {"binder=yes", "lot=7"}
    assert set(labels.sequence_concepts["source"]) == {"user"}

    spans = tmp_path / "epitope.csv"
    spans.write_text("sequence_id,start,end,concept,comment\nTrastuzumab|heavy,1,3,paratope,x\n"
                     "Trastuzumab|heavy,5,5,paratope,\nAdalimumab|light,2,4,contact,\n")
    labels = user_labels(thera_store, spans)
    assert text_of(labels, thera_obs, "paratope", "Trastuzumab|heavy") == "EVQV"  # residues 1-3 and 5 of EVQLV
    sel = residues_with(labels, thera_obs, "paratope")
    assert sel["position"].tolist() == [1, 2, 3, 5] and sel["instance"].tolist() == [1, 1, 1, 2]
    assert labels.token_concepts.set_index("concept").loc["contact", "n_tokens"] == 3


def test_user_labels_reject_bad_files(thera_store: ActivationStore, tmp_path: Path) -> None:
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("sequence_id,label\nTrastuzumab|heavy,a\nNotAnAntibody,b\nAlsoMissing,c\n")
    with pytest.raises(InputError, match="2 sequence id.*'NotAnAntibody', 'AlsoMissing'"):
        user_labels(thera_store, unknown)
    outside = tmp_path / "outside.csv"
    outside.write_text("sequence_id,start,end,concept\nTrastuzumab|heavy,100,200,too_long\n")
    with pytest.raises(InputError, match="outside sequence 'Trastuzumab\\|heavy'"):
        user_labels(thera_store, outside)
    missing_id = tmp_path / "missing_id.csv"
    missing_id.write_text("sequence_id,start,end,concept\nNope,1,2,x\n")
    with pytest.raises(InputError, match="'Nope'"):
        user_labels(thera_store, missing_id)
    partial = tmp_path / "partial.csv"
    partial.write_text("sequence_id,start,concept\nTrastuzumab|heavy,1,x\n")
    with pytest.raises(InputError, match="missing: end"):
        user_labels(thera_store, partial)
    not_number = tmp_path / "bad.csv"
    not_number.write_text("sequence_id,start,end,concept\nTrastuzumab|heavy,one,2,x\n")
    with pytest.raises(InputError, match="not a residue number"):
        user_labels(thera_store, not_number)
    no_id = tmp_path / "noid.csv"
    no_id.write_text("name,label\nTrastuzumab|heavy,a\n")
    with pytest.raises(InputError, match="no 'sequence_id' column"):
        user_labels(thera_store, no_id)
    with pytest.raises(InputError, match="no such file"):
        user_labels(thera_store, tmp_path / "absent.csv")


def test_user_labels_never_merge_into_another_sources_group(thera_store: ActivationStore, tmp_path: Path) -> None:
    # the motif source labels every residue "aa=<residue>": a user column "aa" would join that group silently
    column = tmp_path / "aa.csv"
    column.write_text("sequence_id,aa,binder\nTrastuzumab|heavy,rich,yes\nAdalimumab|heavy,poor,no\n")
    for order in (("motif", "user"), ("user", "motif")):  # wherever the user source comes
        with pytest.raises(InputError, match=r"aa\.csv: user column 'aa' is also a concept group of the motif "
                                             r"source; rename it \(e\.g\. 'user_aa'\)") as err:
            sequence_labels(thera_store, sources=order, user=column)
        assert "\n" not in str(err.value)
    spans = tmp_path / "spans.csv"
    spans.write_text("sequence_id,start,end,concept\nTrastuzumab|heavy,1,3,aa=paratope\n")
    with pytest.raises(InputError, match="user span concept group 'aa' .* motif source.*'user_aa=paratope'"):
        sequence_labels(thera_store, sources=("motif",), user=spans)
    # other names pass, and alone (no other source) the same file is fine
    fine = tmp_path / "fine.csv"
    fine.write_text("sequence_id,user_aa,binder\nTrastuzumab|heavy,rich,yes\nAdalimumab|heavy,poor,no\n")
    labels = sequence_labels(thera_store, sources=("motif",), user=fine)
    assert {"user_aa=rich", "binder=yes"} <= set(labels.sequence_concepts["concept"])
    assert set(user_labels(thera_store, column).sequence_concepts["concept"]) >= {"aa=rich", "aa=poor"}


@needs_anarci
def test_user_columns_named_like_anarci_groups_are_refused(thera_store: ActivationStore, tmp_path: Path) -> None:
    for column in ("region", "v_family"):  # a residue group and a sequence group of ANARCI
        path = tmp_path / f"{column}.csv"
        path.write_text(f"sequence_id,{column}\nTrastuzumab|heavy,a\nAdalimumab|heavy,b\n")
        with pytest.raises(InputError, match=f"user column '{column}' is also a concept group of the anarci source"):
            sequence_labels(thera_store, sources=("anarci",), user=path)


# ----------------------------------------------------------------------------------------------- motifs


def test_motifs_on_a_hand_checkable_sequence(tiny_esm2: Path, tmp_path: Path) -> None:
    #            1234567890123456789
    sequence = "MNGSANPSCKNNTTCNXT"  # sequons: NGS at 2, NNT at 11, NTT at 12, NXT at 16; NPS at 6 is not one
    store = workbench.extract(str(tiny_esm2), [SequenceRecord("toy", sequence)], layers=[1], out=tmp_path / "m",
                              progress=False)
    labels = motif_labels(store)
    obs = store.obs(["sequence_id", "position", "residue"])
    sequon = residues_with(labels, obs, "motif=N-glycosylation sequon")
    # Overlapping sequons NNT/NTT share residues 12-13, which keep the first sequon's instance.
    assert dict(zip(sequon["position"], sequon["instance"])) == {2: 1, 3: 1, 4: 1, 11: 2, 12: 2, 13: 2, 14: 3,
                                                                 16: 4, 17: 4, 18: 4}
    assert labels.token_concepts.set_index("concept").loc["motif=N-glycosylation sequon", "n_instances"] == 4
    assert residues_with(labels, obs, "motif=Cys")["position"].tolist() == [9, 15]
    assert residues_with(labels, obs, "aa=N")["position"].tolist() == [2, 6, 11, 12, 16]
    assert residues_with(labels, obs, "aa=N")["instance"].tolist() == [1, 2, 3, 4, 5]
    assert labels.tokens[:, [_column(labels, f"aa={a}") for a in set(sequence) - {"X"}]].sum() == len(sequence) - 1
    assert not any(c == "aa=X" for c in labels.token_concepts["concept"])


@needs_shared
def test_uniprot_glycosylation_sites_start_sequons(
    uniprot_store: ActivationStore, uniprot_result: ConceptLabels,
) -> None:
    # P02763 (alpha-1-acid glycoprotein 1): CARBOHYD N-linked at 33, 56, 72, 93, 103 in the flat file.
    obs = uniprot_store.obs(["sequence_id", "position", "residue"])
    sites = residues_with(uniprot_result, obs, "uniprot:CARBOHYD")
    sites = sites.loc[sites["sequence_id"] == "P02763", "position"].tolist()
    assert sites == [33, 56, 72, 93, 103]
    sequon = residues_with(motif_labels(uniprot_store), obs, "motif=N-glycosylation sequon")
    starts = set(sequon.loc[sequon["sequence_id"] == "P02763"].groupby("instance")["position"].min())
    assert set(sites) <= starts


# ----------------------------------------------------------------------------------------------- UniProt


@needs_shared
def test_uniprot_feature_spans_match_the_flat_file(
    uniprot_store: ActivationStore, uniprot_result: ConceptLabels,
) -> None:
    obs = uniprot_store.obs(["sequence_id", "position", "residue"])
    labels = uniprot_result
    assert set(labels.token_concepts["source"]) == {"uniprot"}
    # FT   SIGNAL        1     18   /  FT   CHAIN        19    201       Alpha-1-acid glycoprotein 1.
    signal = residues_with(labels, obs, "uniprot:SIGNAL")
    assert signal.loc[signal["sequence_id"] == "P02763", "position"].tolist() == list(range(1, 19))
    # FT   DISULFID     23    165  /  FT   DISULFID     90    183: two cysteines each, one instance per bond.
    ss = residues_with(labels, obs, "uniprot:DISULFID")
    ss = ss.loc[ss["sequence_id"] == "P02763"]
    assert ss["position"].tolist() == [23, 90, 165, 183] and set(ss["residue"]) == {"C"}
    assert dict(zip(ss["position"], ss["instance"])) == {23: 1, 165: 1, 90: 2, 183: 2}
    # FT   HELIX        24     26  (first helix of P02763)
    helix = residues_with(labels, obs, "uniprot:HELIX")
    assert helix.loc[helix["sequence_id"] == "P02763", "position"].tolist()[:3] == [24, 25, 26]
    # note-level sub-concept: "N-linked (GlcNAc...)." occurs on >= 5 features of the store
    assert "uniprot:CARBOHYD:N-linked (GlcNAc...)" in set(labels.token_concepts["concept"])
    # P01023 (cut to 1022 residues): 13 bonds, two of them "Interchain" (one cysteine each: 278, 431), and
    # 921-1321 keeps only Cys 921; 1079-1127 and 1352-1467 lie past the cut.
    ss = residues_with(labels, obs, "uniprot:DISULFID")
    ss = ss.loc[ss["sequence_id"] == "P01023"]
    bonds = [(48, 86), (251, 299), (269, 287), (278,), (431,), (470, 563), (595, 771), (642, 689), (821, 849),
             (847, 883), (921,)]
    assert sorted(ss.groupby("instance")["position"].apply(tuple)) == sorted(bonds)
    assert set(ss["residue"]) == {"C"}
    # GO and Pfam cross-references are sequence concepts
    concepts = sequence_concepts_of(labels, uniprot_store, "P02763")
    assert "go=GO:0072562" in concepts and "go=GO:0006953" in concepts
    assert any(c.startswith("pfam=PF") for c in concepts)


@needs_shared
def test_uniprot_truncated_entry_is_clipped_and_counted(
    uniprot_store: ActivationStore, uniprot_result: ConceptLabels,
) -> None:
    attrs = uniprot_result.token_concepts.attrs
    length = int(uniprot_store.sequences.set_index("sequence_id").loc["P01023", "n_tokens"])
    assert length == 1022
    assert attrs["uniprot_dropped_truncated"] > 0 and attrs["uniprot_clipped"] > 0
    assert attrs["uniprot_entries_matched"] == 6 and attrs["uniprot_store_ids_not_in_file"] == 0
    # The CHAIN (24-1474) now ends at the store's last residue.
    obs = uniprot_store.obs(["sequence_id", "position", "residue"])
    chain = residues_with(uniprot_result, obs, "uniprot:CHAIN")
    chain = chain.loc[chain["sequence_id"] == "P01023", "position"]
    assert chain.min() == 24 and chain.max() == 1022


@needs_shared
def test_uniprot_flat_file_and_xml_give_the_same_labels(tiny_esm2: Path, tmp_path: Path) -> None:
    flat, xml = CASES / "Q13639.txt", CASES / "Q13639.xml"
    store = workbench.extract(str(tiny_esm2), read_uniprot(flat), layers=[1], out=tmp_path / "q", progress=False)
    a, b = uniprot_labels(store, flat, min_count=1), uniprot_labels(store, xml, min_count=1)
    assert a.token_concepts["concept"].tolist() == b.token_concepts["concept"].tolist()
    assert (a.tokens != b.tokens).nnz == 0 and (a.instances != b.instances).nnz == 0
    assert a.sequence_concepts["concept"].tolist() == b.sequence_concepts["concept"].tolist()
    names = set(a.token_concepts["concept"])
    assert {"uniprot:TRANSMEM", "uniprot:TOPO_DOM:Cytoplasmic", "uniprot:TOPO_DOM:Extracellular"} <= names
    assert not any(n.startswith("uniprot:TRANSMEM:") for n in names)  # bare numbers are not sub-concepts


@needs_shared
def test_uniprot_fuzzy_positions_are_skipped_and_counted(tiny_esm2: Path, tmp_path: Path) -> None:
    # O75027 carries "FT   TRANSIT       1      ?" and "FT   CHAIN         ?    752"-style unknown positions.
    entry = next(r for r in read_uniprot(SWISS_100) if r.id == "O75027")
    store = workbench.extract(str(tiny_esm2), [entry], layers=[1], out=tmp_path / "o", progress=False)
    labels = uniprot_labels(store, SWISS_100)
    assert labels.token_concepts.attrs["uniprot_skipped_fuzzy"] == 2
    assert "uniprot:TRANSIT" not in set(labels.token_concepts["concept"])


@needs_shared
def test_uniprot_unknown_feature_key_is_an_error(uniprot_store: ActivationStore, tmp_path: Path) -> None:
    text = SWISS_100.read_text()
    start = text.index("AC   P02763")
    start = text.rindex("ID   ", 0, start)
    entry = text[start : text.index("//\n", start) + 3]
    bad = tmp_path / "bad.dat"
    bad.write_text(entry.replace("FT   HELIX        24     26", "FT   BOGUS        24     26"))
    with pytest.raises(InputError, match="unknown UniProt feature key 'BOGUS'"):
        uniprot_labels(uniprot_store, bad)
    assert "METAL" in UNIPROT_FEATURE_KEYS and "NP_BIND" in UNIPROT_FEATURE_KEYS  # retired keys of real files
    # The single entry is fine as is; the other store sequences are counted as not in the file.
    good = tmp_path / "good.dat"
    good.write_text(entry)
    labels = uniprot_labels(uniprot_store, good)
    assert labels.token_concepts.attrs["uniprot_store_ids_not_in_file"] == 5
    with pytest.raises(InputError, match="no such file"):
        uniprot_labels(uniprot_store, tmp_path / "absent.dat")


@needs_shared
def test_uniprot_entry_with_another_sequence_is_an_error(tiny_esm2: Path, tmp_path: Path) -> None:
    entry = next(r for r in read_uniprot(SWISS_100) if r.id == "P07108")
    mutated = SequenceRecord(entry.id, "A" + entry.sequence[1:])
    store = workbench.extract(str(tiny_esm2), [mutated], layers=[1], out=tmp_path / "x", progress=False)
    with pytest.raises(InputError, match="P07108.*differs"):
        uniprot_labels(store, SWISS_100)


# ----------------------------------------------------------------------------------------------- all sources


@needs_anarci
def test_sequence_labels_combines_sources(thera_store: ActivationStore, thera_labels: ConceptLabels) -> None:
    labels = sequence_labels(thera_store, table_columns=["VD LC"])
    assert labels.tokens.shape[0] == thera_store.n_tokens
    assert set(labels.token_concepts["source"]) == {"anarci", "motif"}
    assert set(labels.sequence_concepts["source"]) == {"anarci", "table"}
    anarci_part = labels.token_concepts["source"].eq("anarci").to_numpy()
    assert (labels.tokens[:, anarci_part] != thera_labels.tokens).nnz == 0
    assert labels.token_concepts.attrs["anarci_unnumbered"] == 1
    with pytest.raises(InputError, match="unknown annotation source"):
        sequence_labels(thera_store, sources=("anarci", "pdb"))
    with pytest.raises(InputError, match="needs the UniProt file"):
        sequence_labels(thera_store, sources=("uniprot",))
    only_motif = sequence_labels(thera_store, sources=("motif",))
    assert set(only_motif.token_concepts["source"]) == {"motif"}
