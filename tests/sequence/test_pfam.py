"""Pfam domain annotation with pyhmmer, checked on real Swiss-Prot entries against real Pfam HMMs.

The expectations come from the entries themselves: the sevenless receptor tyrosine kinase (UniProt P13368,
7LESS_DROME) has fibronectin type-III domains in its extracellular part and a protein kinase domain in its
cytoplasmic part (FT DOMAIN / TOPO_DOM lines, read here with Biopython); human beta globin (HBB_HUMAN) has
neither. The HMMs are Pfam's Pkinase (PF00069) and fn3 (PF00041), with their gathering thresholds (GA lines).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pyhmmer")

import workbench  # noqa: E402
from domains.sequence.annotations import SOURCES, sequence_labels  # noqa: E402
from domains.sequence.annotations.pfam import CONCEPT_GROUP, HIT_COLUMNS, pfam_hits, pfam_labels  # noqa: E402
from domains.sequence.readers import read_fasta, read_uniprot  # noqa: E402
from domains.sequence.records import SequenceRecord  # noqa: E402
from workbench.concepts import ConceptLabels  # noqa: E402
from workbench.errors import InputError  # noqa: E402
from workbench.store import ActivationStore  # noqa: E402

SHARED = Path(os.environ.get("WORKBENCH_SHARED_DATA", "/work/shared/data"))
PFAM = SHARED / "protein" / "pfam"
MINI = PFAM / "mini_pfam.hmm"
SEVENLESS = PFAM / "7LESS_DROME"
HBB = PFAM / "HBB_HUMAN"
needs_shared = pytest.mark.skipif(not (MINI.is_file() and SEVENLESS.is_file() and HBB.is_file()),
                                  reason=f"shared Pfam reference data not found at {PFAM}")
pytestmark = needs_shared

# The store's fragment of sevenless: residues 1751-2554 (fn3 domains 5-7 and the kinase domain; 804 residues fit
# the ESM-2 length limit of 1,022, the full 2,554 do not).
FRAGMENT_FIRST = 1751


def overlap(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]) + 1)


def uniprot_features(path: Path) -> dict[str, list[tuple[int, int]]]:
    """FT DOMAIN / TOPO_DOM spans (1-based inclusive) by note, read with Biopython (independent of the code)."""
    from Bio import SwissProt

    with path.open() as fh:
        entry = SwissProt.read(fh)
    out: dict[str, list[tuple[int, int]]] = {}
    for f in entry.features:
        if f.type in ("DOMAIN", "TOPO_DOM"):
            # old-style FT lines: Biopython keeps the text as "description"; current ones as "note"
            text = f.qualifiers.get("note") or f.qualifiers.get("description") or ""
            note = re.sub(r"\s*\{.*", "", str(text)).rstrip(".")
            note = re.sub(r"\s+\d+$", "", note)  # "Fibronectin type-III 3" -> "Fibronectin type-III"
            out.setdefault(f"{f.type}:{note}", []).append((int(f.location.start) + 1, int(f.location.end)))
    return out


def gathering(path: Path) -> dict[str, tuple[float, float]]:
    """GA (sequence, domain) bit-score thresholds per model NAME, read from the HMM text."""
    out: dict[str, tuple[float, float]] = {}
    name = None
    for line in path.read_text().splitlines():
        if line.startswith("NAME "):
            name = line.split()[1]
        elif line.startswith("GA ") and name:
            out[name] = (float(line.split()[1]), float(line.split()[2].rstrip(";")))
    return out


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sevenless() -> SequenceRecord:
    (rec,) = read_uniprot(SEVENLESS)
    assert rec.id == "P13368" and len(rec.sequence) == 2554
    return rec


@pytest.fixture(scope="module")
def hbb() -> SequenceRecord:
    (rec,) = read_fasta(HBB)
    assert rec.sequence.startswith("VHLTPEEK")
    return rec


@pytest.fixture(scope="module")
def features() -> dict[str, list[tuple[int, int]]]:
    return uniprot_features(SEVENLESS)


@pytest.fixture(scope="module")
def hits(sevenless: SequenceRecord, hbb: SequenceRecord) -> pd.DataFrame:
    return pfam_hits({"P13368": sevenless.sequence, "HBB_HUMAN": hbb.sequence}, MINI)


@pytest.fixture(scope="module")
def store(tiny_esm2: Path, sevenless: SequenceRecord, hbb: SequenceRecord,
          tmp_path_factory: pytest.TempPathFactory) -> ActivationStore:
    """Sevenless 1751-2554, the full sevenless truncated to the model's 1,022 residues, and beta globin."""
    records = [
        SequenceRecord("sev_frag", sevenless.sequence[FRAGMENT_FIRST - 1:]),
        SequenceRecord("P13368", sevenless.sequence),
        SequenceRecord("HBB_HUMAN", hbb.sequence),
    ]
    return workbench.extract(str(tiny_esm2), records, layers=[1], out=tmp_path_factory.mktemp("pfam") / "s",
                             truncate=True, progress=False)


@pytest.fixture(scope="module")
def labels(store: ActivationStore) -> ConceptLabels:
    return pfam_labels(store, MINI)


# ----------------------------------------------------------------------------------------------- hits


def test_sevenless_has_its_kinase_and_fn3_domains_where_uniprot_puts_them(
    hits: pd.DataFrame, sevenless: SequenceRecord, features: dict[str, list[tuple[int, int]]],
) -> None:
    assert tuple(hits.columns) == HIT_COLUMNS
    assert set(hits["sequence_id"]) == {"P13368"}  # beta globin: no kinase, no fn3
    sev = hits[hits["sequence_id"] == "P13368"]
    n = len(sevenless.sequence)
    # Coordinates: 1-based inclusive, alignment inside envelope inside the sequence, sorted by position.
    assert (sev["start"] >= 1).all() and (sev["end"] <= n).all()
    assert ((sev["start"] <= sev["ali_start"]) & (sev["ali_start"] <= sev["ali_end"])
            & (sev["ali_end"] <= sev["end"])).all()
    # start/end are the envelope: somewhere wider than the aligned part.
    assert ((sev["start"] < sev["ali_start"]) | (sev["end"] > sev["ali_end"])).any()
    assert sev["start"].is_monotonic_increasing
    assert ((sev["hmm_from"] >= 1) & (sev["hmm_from"] <= sev["hmm_to"]) & (sev["hmm_to"] <= sev["hmm_length"])).all()
    assert (sev["i_evalue"] <= 1e-3).all() and (sev["score"] > 0).all()

    kinase = sev[sev["hmm_name"] == "Pkinase"]
    assert len(kinase) == 1 and kinase["hmm_accession"].iloc[0].startswith("PF00069")
    (uni_kinase,) = features["DOMAIN:Protein kinase"]  # FT DOMAIN 2209 2485 Protein kinase
    k = (int(kinase["start"].iloc[0]), int(kinase["end"].iloc[0]))
    assert overlap(k, uni_kinase) >= 0.9 * (uni_kinase[1] - uni_kinase[0] + 1)
    assert kinase["i_evalue"].iloc[0] < 1e-30
    # The kinase is cytoplasmic, every fn3 extracellular (FT TOPO_DOM lines).
    (cyto,) = features["TOPO_DOM:Cytoplasmic"]
    (extra,) = features["TOPO_DOM:Extracellular"]
    assert cyto[0] <= k[0] and k[1] <= cyto[1]

    fn3 = sev[sev["hmm_name"] == "fn3"]
    assert len(fn3) >= 5 and fn3["hmm_accession"].str.startswith("PF00041").all()
    spans = list(zip(fn3["start"].astype(int), fn3["end"].astype(int)))
    assert all(extra[0] <= s and e <= extra[1] for s, e in spans)
    assert all(b[0] > a[1] for a, b in zip(spans, spans[1:]))  # repeats: consecutive, not overlapping
    uni_fn3 = features["DOMAIN:Fibronectin type-III"]
    assert len(uni_fn3) == 7
    # Every fn3 hit lies on one of UniProt's seven fn3 domains, and most of those are found.
    assert all(max(overlap(h, u) for u in uni_fn3) >= 0.5 * (h[1] - h[0] + 1) for h in spans)
    found = [u for u in uni_fn3 if any(overlap(h, u) > 0 for h in spans)]
    assert len(found) >= 5


def test_e_value_threshold_is_applied(sevenless: SequenceRecord, hits: pd.DataFrame) -> None:
    strict = pfam_hits({"P13368": sevenless.sequence}, MINI, e_value=1e-10)
    lax = pfam_hits({"P13368": sevenless.sequence}, MINI, e_value=1.0)
    assert (strict["i_evalue"] <= 1e-10).all()
    assert "Pkinase" in set(strict["hmm_name"])
    assert len(strict) < len(hits) < len(lax)

    def as_set(frame: pd.DataFrame) -> set[tuple[str, int, int]]:
        return set(map(tuple, frame[["hmm_name", "start", "end"]].to_numpy().tolist()))

    assert as_set(strict) <= as_set(hits) <= as_set(lax)
    assert (lax["i_evalue"] > 1e-3).any()


def test_gathering_cutoffs_use_the_models_ga_lines(sevenless: SequenceRecord, tmp_path: Path) -> None:
    ga = gathering(MINI)
    assert set(ga) == {"Pkinase", "fn3"}
    got = pfam_hits({"P13368": sevenless.sequence}, MINI, bit_cutoffs="gathering")
    assert {"Pkinase", "fn3"} <= set(got["hmm_name"])
    for name, group in got.groupby("hmm_name"):
        assert (group["score"] >= ga[name][1]).all()
    # A model without a GA line cannot be scanned with gathering cutoffs.
    no_ga = tmp_path / "no_ga.hmm"
    no_ga.write_text("".join(line for line in MINI.read_text().splitlines(keepends=True) if not line.startswith("GA ")))
    with pytest.raises(InputError, match="no_ga.hmm"):
        pfam_hits({"P13368": sevenless.sequence}, no_ga, bit_cutoffs="gathering")


def test_pressed_and_plain_files_give_the_same_hits(
    sevenless: SequenceRecord, hbb: SequenceRecord, hits: pd.DataFrame, tmp_path: Path,
) -> None:
    from pyhmmer import hmmer, plan7

    copy = tmp_path / "mini.hmm"
    shutil.copy(MINI, copy)
    with plan7.HMMFile(copy) as fh:
        hmmer.hmmpress(list(fh), copy)
    with plan7.HMMFile(copy) as fh:
        assert fh.is_pressed()
    pressed = pfam_hits({"P13368": sevenless.sequence, "HBB_HUMAN": hbb.sequence}, copy)
    pd.testing.assert_frame_equal(pressed, hits)


def test_order_follows_the_input_and_empty_sequences_get_no_hits(
    sevenless: SequenceRecord, hits: pd.DataFrame,
) -> None:
    seq = sevenless.sequence
    got = pfam_hits({"kin": seq[2100:2554], "empty": "", "fn": seq[1700:2110]}, MINI)
    assert list(dict.fromkeys(got["sequence_id"])) == ["kin", "fn"]
    assert set(got.loc[got["sequence_id"] == "kin", "hmm_name"]) == {"Pkinase"}
    assert set(got.loc[got["sequence_id"] == "fn", "hmm_name"]) == {"fn3"}
    full_kinase = hits[(hits["sequence_id"] == "P13368") & (hits["hmm_name"] == "Pkinase")].iloc[0]
    kin = got[got["sequence_id"] == "kin"].iloc[0]
    assert abs(int(kin["start"]) + 2100 - int(full_kinase["start"])) <= 3  # same domain, shifted coordinates
    none = pfam_hits({"HBB_HUMAN": "VHLTPEEKSAVTALWGKVNV"}, MINI)
    assert none.empty and tuple(none.columns) == HIT_COLUMNS


@pytest.mark.parametrize("kind", ["missing", "fasta", "empty", "truncated", "directory", "stockholm"])
def test_bad_hmm_file_is_an_input_error_naming_it(kind: str, tmp_path: Path) -> None:
    path = {
        "missing": tmp_path / "nope.hmm",
        "fasta": HBB,
        "empty": tmp_path / "empty.hmm",
        "truncated": tmp_path / "cut.hmm",
        "directory": tmp_path,
        "stockholm": PFAM / "fn3.sto",
    }[kind]
    if kind == "empty":
        path.write_text("")
    if kind == "truncated":
        path.write_text(MINI.read_text()[:3000])
    if kind == "stockholm" and not path.is_file():
        pytest.skip("no fn3.sto")
    with pytest.raises(InputError) as err:
        pfam_hits({"x": "MKTAYIAKQR"}, path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message


def test_bad_sequence_and_options_are_input_errors() -> None:
    with pytest.raises(InputError, match="'bad'"):
        pfam_hits({"ok": "MKTAYIAKQR", "bad": "MKT4YIAKQR"}, MINI)
    for options in ({"e_value": 0}, {"e_value": float("nan")}, {"cpus": -1}, {"bit_cutoffs": "ga"}):
        with pytest.raises(InputError):
            pfam_hits({"ok": "MKTAYIAKQR"}, MINI, **options)


# ----------------------------------------------------------------------------------------------- labels


def test_labels_mark_each_domain_hit_as_one_instance(
    store: ActivationStore, labels: ConceptLabels, sevenless: SequenceRecord,
    features: dict[str, list[tuple[int, int]]],
) -> None:
    obs = store.obs(["sequence_id", "position", "residue"])
    assert labels.n_tokens == len(obs)
    tc = labels.token_concepts.set_index("concept")
    assert set(tc.index) == {f"{CONCEPT_GROUP}=Pkinase", f"{CONCEPT_GROUP}=fn3"}
    assert set(tc["source"]) == {"pfam"}
    # What the store holds: the fragment, and the first 1,022 residues of the full entry.
    held = obs.groupby("sequence_id", sort=False)["residue"].agg("".join).to_dict()
    expected = pfam_hits(held, MINI)
    for concept, name in ((f"{CONCEPT_GROUP}=Pkinase", "Pkinase"), (f"{CONCEPT_GROUP}=fn3", "fn3")):
        j = labels.token_concepts["concept"].tolist().index(concept)
        rows = labels.tokens[:, j].nonzero()[0]
        inst = np.asarray(labels.instances[rows, j].todense()).ravel()
        want = expected[expected["hmm_name"] == name]
        assert tc.loc[concept, "n_instances"] == len(want) == len(np.unique(inst))
        assert tc.loc[concept, "n_tokens"] == int((want["end"] - want["start"] + 1).sum())
        assert tc.loc[concept, "n_sequences"] == want["sequence_id"].nunique()
        # Each instance is one contiguous envelope of one sequence.
        for k in np.unique(inst):
            sel = obs.iloc[np.sort(rows[inst == k])]
            assert sel["sequence_id"].nunique() == 1
            pos = sel["position"].to_numpy()
            assert (np.diff(pos) == 1).all()
            match = want[(want["sequence_id"] == sel["sequence_id"].iloc[0]) & (want["start"] == pos[0])]
            assert len(match) == 1 and int(match["end"].iloc[0]) == pos[-1]

    # The fragment's kinase span sits on UniProt's kinase domain (2209-2485), in fragment coordinates.
    j = labels.token_concepts["concept"].tolist().index(f"{CONCEPT_GROUP}=Pkinase")
    rows = labels.tokens[:, j].nonzero()[0]
    sel = obs.iloc[rows]
    assert set(sel["sequence_id"]) == {"sev_frag"}  # the truncated full entry stops before the kinase
    frag = sel["position"].to_numpy() + FRAGMENT_FIRST - 1
    (uni_kinase,) = features["DOMAIN:Protein kinase"]
    assert overlap((int(frag.min()), int(frag.max())), uni_kinase) >= 0.9 * (uni_kinase[1] - uni_kinase[0] + 1)
    assert "".join(sel["residue"]) == sevenless.sequence[int(frag.min()) - 1:int(frag.max())]
    # The truncated entry still shows its first two fn3 domains (UniProt 440-533 and 824-924).
    j = labels.token_concepts["concept"].tolist().index(f"{CONCEPT_GROUP}=fn3")
    sel = obs.iloc[labels.tokens[:, j].nonzero()[0]]
    pos = sel.loc[sel["sequence_id"] == "P13368", "position"].to_numpy()
    assert pos.max() <= 1022
    for u in features["DOMAIN:Fibronectin type-III"][:2]:
        assert ((pos >= u[0]) & (pos <= u[1])).sum() >= 0.5 * (u[1] - u[0] + 1)
    assert labels.token_concepts.attrs["pfam_domains"] == len(expected)


def test_sequence_concepts_name_the_models_hit(store: ActivationStore, labels: ConceptLabels) -> None:
    ids = store.sequences["sequence_id"].tolist()
    names = labels.sequence_concepts["concept"].tolist()
    assert set(names) == {f"{CONCEPT_GROUP}=Pkinase", f"{CONCEPT_GROUP}=fn3"}
    assert set(labels.sequence_concepts["source"]) == {"pfam"}

    def concepts_of(sid: str) -> set[str]:
        return {names[c] for c in labels.sequences[ids.index(sid)].nonzero()[1]}

    assert concepts_of("sev_frag") == {f"{CONCEPT_GROUP}=Pkinase", f"{CONCEPT_GROUP}=fn3"}
    assert concepts_of("P13368") == {f"{CONCEPT_GROUP}=fn3"}
    assert concepts_of("HBB_HUMAN") == set()
    assert labels.token_concepts.attrs["pfam_sequences_with_hits"] == 2


def test_sequence_labels_adds_the_pfam_source(store: ActivationStore, labels: ConceptLabels) -> None:
    assert "pfam" in SOURCES
    combined = sequence_labels(store, sources=("motif",), pfam_hmm=MINI)
    tc = combined.token_concepts
    assert {"motif", "pfam"} == set(tc["source"])
    pfam_part = tc[tc["source"] == "pfam"].reset_index(drop=True)
    pd.testing.assert_frame_equal(pfam_part, labels.token_concepts.reset_index(drop=True))
    j = tc["concept"].tolist().index(f"{CONCEPT_GROUP}=Pkinase")
    k = labels.token_concepts["concept"].tolist().index(f"{CONCEPT_GROUP}=Pkinase")
    assert (combined.tokens[:, j] != labels.tokens[:, k]).nnz == 0
    assert f"{CONCEPT_GROUP}=fn3" in combined.sequence_concepts["concept"].tolist()
    assert combined.token_concepts.attrs["pfam_domains"] == labels.token_concepts.attrs["pfam_domains"]
    with pytest.raises(InputError, match="pfam"):
        sequence_labels(store, sources=("pfam",))
