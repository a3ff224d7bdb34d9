"""Two-party and ring ECDH-PSI: outputs equal the plaintext computation."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom.errors import ConfigError, DatasetError, ProtocolAbort
from protocols.psi import ColumnRule, ProcessRunner, PsiConfig, psi_party
from protocols.psi.group import split
from protocols.psi.normalize import normalize_keys
from protocols.psi.simulate import drive

RULE = ColumnRule("key")
keys_st = st.lists(
    st.text(min_size=1, max_size=6).filter(lambda s: RULE.apply(s)), max_size=25
)


def run(sets: dict[str, list[str]], output: str = "intersection", **kw: object) -> dict:
    config = PsiConfig.create(
        session_id="t",
        parties=sets,
        output=output,
        chunk_items=4,
        **kw,  # type: ignore[arg-type]
    )
    parties = {name: psi_party(config, name, rows) for name, rows in sets.items()}
    drive(parties)
    assert all(p.finished for p in parties.values())
    return {n: p.output() for n, p in parties.items() if p.is_receiver}


def plain(sets: dict[str, list[str]]) -> dict[str, set[int]]:
    """Per party: rows (first occurrence per normalised key) in the intersection."""
    norm = {n: normalize_keys(rows, (RULE,)) for n, rows in sets.items()}
    common = set.intersection(*(set(k.encoded) for k in norm.values()))
    return {
        n: {row for key, row in zip(k.encoded, k.rows, strict=True) if key in common}
        for n, k in norm.items()
    }


@settings(max_examples=25, deadline=None)
@given(a=keys_st, b=keys_st)
def test_two_party_intersection_equals_plaintext(a: list[str], b: list[str]) -> None:
    sets = {"alice": a, "bob": b}
    out, want = run(sets), plain(sets)
    for name in sets:
        assert set(out[name].rows) == want[name]
        assert out[name].cardinality == len(want[name])


@settings(max_examples=10, deadline=None)
@given(a=keys_st, b=keys_st, c=keys_st)
def test_ring_intersection_equals_plaintext(
    a: list[str], b: list[str], c: list[str]
) -> None:
    sets = {"p0": a, "p1": b, "p2": c}
    out, want = run(sets), plain(sets)
    for name in sets:
        assert set(out[name].rows) == want[name]


@pytest.mark.parametrize("n", [2, 3, 4])
def test_cardinality_only_reveals_count(n: int) -> None:
    sets = {f"p{i}": [f"k{j}" for j in range(i, 30 + i)] for i in range(n)}
    out = run(sets, "cardinality")
    for result in out.values():
        assert result.rows is None
        assert result.cardinality == 30 - (n - 1)


@pytest.mark.parametrize("n", [2, 3])
def test_aligned_rows_share_one_order(n: int) -> None:
    sets = {f"p{i}": [f"id{j}" for j in range(40) if j % (i + 2)] for i in range(n)}
    out = run(sets, "aligned")
    orders = [[sets[name][r] for r in out[name].rows] for name in sets]
    assert all(order == orders[0] for order in orders)
    assert set(orders[0]) == set.intersection(*(set(s) for s in sets.values()))


def test_only_named_receivers_get_output() -> None:
    sets = {"alice": ["a", "b"], "bob": ["b", "c"]}
    config = PsiConfig.create(
        session_id="t", parties=sets, output="intersection", receivers=["alice"]
    )
    parties = {n: psi_party(config, n, rows) for n, rows in sets.items()}
    transcript = drive(parties)
    assert parties["alice"].output().rows == (1,)
    with pytest.raises(Exception, match="no output"):
        parties["bob"].output()
    assert not any(
        to == "bob" and stage == "psi/reblind"
        for _, to, stage, _ in transcript.messages
    )


def test_duplicates_counted_for_owner_only() -> None:
    out = run({"alice": ["x", " X", "x", "y"], "bob": ["x", "z"]})
    assert out["alice"].duplicates == 2 and out["alice"].rows == (0,)
    assert out["bob"].duplicates == 0
    assert out["bob"].peer_sizes == {"alice": 2}


def test_empty_sets() -> None:
    out = run({"alice": [], "bob": ["x"]})
    assert out["alice"].rows == () and out["bob"].rows == ()


def test_case_and_unicode_forms_match() -> None:
    composed = unicodedata.normalize("NFC", "José")
    decomposed = unicodedata.normalize("NFD", "JOSÉ")
    assert composed != decomposed
    out = run({"alice": [composed, "STRASSE"], "bob": [decomposed, "straße"]})
    assert out["alice"].rows == (0, 1)


def test_normalisation_is_configurable_per_column() -> None:
    strict = (ColumnRule("id", casefold=False), ColumnRule("country"))
    sets = {"alice": [("Ab", "FR"), ("cd", "de")], "bob": [("ab", "fr"), ("cd", "DE")]}
    out = run(sets, columns=strict)
    assert out["alice"].rows == (1,)


def test_whitespace_only_keys_refused_or_dropped() -> None:
    with pytest.raises(DatasetError, match=r"row 1.*blank"):
        run({"alice": ["a", "  \t"], "bob": ["a"]})
    out = run(
        {"alice": ["a", " \u3000 "], "bob": ["a"]},
        columns=(ColumnRule("key", blank="drop"),),
    )
    assert out["alice"].dropped == 1 and out["alice"].rows == (0,)


def test_set_over_the_cap_refused_before_work() -> None:
    config = PsiConfig.create(
        session_id="t", parties=["a", "b"], output="intersection", max_items=3
    )
    with pytest.raises(ConfigError, match="max_items"):
        psi_party(config, "a", ["1", "2", "3", "4"])


@pytest.mark.parametrize("n", [2, 3])
def test_party_dropping_mid_protocol_aborts_naming_it(n: int) -> None:
    names = [f"p{i}" for i in range(n)]
    config = PsiConfig.create(
        session_id="t", parties=names, output="intersection", chunk_items=2
    )
    parties = {m: psi_party(config, m, [f"k{j}" for j in range(9)]) for m in names}
    with pytest.raises(ProtocolAbort, match=r"p1 dropped while p\d was in psi/"):
        drive(parties, drop={"p1": 2})


def test_finished_party_ignores_a_later_drop() -> None:
    config = PsiConfig.create(
        session_id="t", parties=["a", "b"], output="intersection", receivers=["a"]
    )
    parties = {n: psi_party(config, n, ["x"]) for n in ("a", "b")}
    drive(parties)
    assert parties["b"].dropped(frozenset({"a"})) == []


def test_process_pool_gives_the_same_result() -> None:
    sets = {
        "alice": [f"k{i}" for i in range(50)],
        "bob": [f"k{i}" for i in range(25, 90)],
    }
    config = PsiConfig.create(
        session_id="pool", parties=sets, output="aligned", chunk_items=16
    )
    runner = ProcessRunner(2)
    try:
        parties = {
            n: psi_party(config, n, rows, runner=runner) for n, rows in sets.items()
        }
        drive(parties)
    finally:
        runner.close()
    rows = {n: [sets[n][r] for r in p.output().rows or ()] for n, p in parties.items()}
    assert rows["alice"] == rows["bob"] and set(rows["alice"]) == {
        f"k{i}" for i in range(25, 50)
    }


def test_split_covers_the_range() -> None:
    assert split(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert split(0, 2) == [(0, 0)]
    assert split(1, 4) == [(0, 1)]
