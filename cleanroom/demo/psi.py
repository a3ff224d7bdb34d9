"""The demo's PSI, verification and anonymous-lookup step: a bank and a telecom
(synthetic customers drawn from a seeded generator, nothing downloaded) in an
in-process federation — real parties, keys, sealed envelopes and stores, joined by
memory links — each answer shown beside the plaintext computation it replaces."""

from __future__ import annotations

import io
import time
import unicodedata
from collections.abc import Mapping

import numpy as np
import pandas as pd
import yaml
from rich.console import Console
from rich.table import Table

from cleanroom.jobtypes.psi import store
from cleanroom.local import default_policy
from cleanroom.testing import InProcessFederation

_FIRST = ["Ada", "Grace", "Alan", "Hedy", "Ken", "Émile", "Margaret", "Linus", "Radia"]
_LAST = ["Lovelace", "Hopper", "Turing", "Lamarr", "Thompson", "Zola", "Hamilton"]
_CITIES = ["London", "Paris", "Berlin", "Madrid", "Rome", "Vienna", "Lisbon"]


def people(n: int = 600, seed: int = 2026) -> pd.DataFrame:
    """``n`` synthetic people with a unique id, e-mail, name, phone and city."""
    rng = np.random.default_rng(seed)
    first = rng.choice(_FIRST, n)
    last = rng.choice(_LAST, n)
    return pd.DataFrame(
        {
            "id": [f"ID{i:06d}" for i in range(n)],
            "email": [
                f"{f}.{x}{i}@mail.example".lower()
                for i, (f, x) in enumerate(zip(first, last, strict=True))
            ],
            "name": [f"{f} {x}" for f, x in zip(first, last, strict=True)],
            "phone": [f"+44 7{int(v):09d}" for v in rng.integers(0, 10**9, n)],
            "city": rng.choice(_CITIES, n),
        }
    )


def holders() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The bank's customers (e-mails typed with stray case and spaces) and the
    telecom's subscribers; they share 200 people."""
    everyone = people()
    bank = everyone.iloc[:350][["id", "email"]].copy()
    bank["email"] = [
        f"  {e.upper()} " if i % 5 == 0 else e for i, e in enumerate(bank["email"])
    ]
    bank["balance"] = np.arange(len(bank)) * 10
    telecom = everyone.iloc[150:].reset_index(drop=True)
    return bank.reset_index(drop=True), telecom


def _norm(value: str) -> str:
    return unicodedata.normalize(
        "NFC", unicodedata.normalize("NFC", value).strip().casefold()
    )


def _spec(job_type: str, nodes: list[str], params: Mapping[str, object]) -> str:
    return yaml.safe_dump(
        {
            "type": job_type,
            "inputs": [{"node": n, "dataset": n} for n in nodes],
            "params": dict(params),
            "purpose": "customer onboarding",
        }
    )


def run(console: Console) -> bool:
    """Run PSI, verify and pir_lookup; True if every answer equals the plaintext."""
    console.rule("psi, verify, pir_lookup — a bank and a telecom")
    bank, telecom = holders()
    policy = default_policy("analyst")
    policy["default"]["min_group_size"] = 1  # type: ignore[index]
    started = time.monotonic()
    rows: list[tuple[str, str, str, bool]] = []
    with InProcessFederation(
        {"bank": bank, "telecom": telecom},
        policy=policy,
        id_column="id",
        jobtypes={"verify": {"modes": ["per_field", "all_fields"], "max_batch": 1000}},
    ) as fed:
        # 1. PSI: which bank customers are telecom subscribers, kept at the bank.
        view = fed.run(
            _spec(
                "psi",
                ["bank", "telecom"],
                {"columns": ["email"], "output": "intersection", "receivers": ["bank"]},
            ),
            timeout=300,
        )
        if view.job.state.value != "succeeded":
            console.print(f"[red]psi {view.job.state.value}:[/] {view.job.reason}")
            return False
        kept = store.load(fed.agents["bank"].db, view.job.job_id, "bank").rows
        plain_shared = {_norm(e) for e in bank.email} & {
            _norm(e) for e in telecom.email
        }
        plain_rows = tuple(
            i for i, e in enumerate(bank.email) if _norm(e) in plain_shared
        )
        released = fed.client.result(view.job.job_id)["result"]["cardinality"]
        rows.append(
            (
                "psi: shared customers (count to analyst)",
                str(released),
                str(len(plain_shared)),
                released == len(plain_shared),
            )
        )
        rows.append(
            (
                "psi: bank rows kept at the bank",
                f"{len(kept)} rows",
                f"{len(plain_rows)} rows",
                kept == plain_rows,
            )
        )
        # 2. verify: the bank checks claimed name + phone against the telecom.
        claims = telecom.iloc[:6][["id", "name", "phone"]].copy()
        claims.loc[1, "phone"] = "+44 7000000000"  # a wrong phone
        claims.loc[2, "name"] = claims.loc[2, "name"].upper()  # case differs: matches
        claims.loc[3, "id"] = "ID999999"  # nobody
        csv = io.StringIO()
        claims.to_csv(csv, index=False)
        view = fed.run(
            _spec(
                "verify",
                ["telecom"],
                {"key": "id", "records": len(claims), "fields": ["name", "phone"]},
            ),
            local_inputs={"claims": csv.getvalue().encode()},
            timeout=300,
        )
        if view.job.state.value != "succeeded":
            console.print(f"[red]verify {view.job.state.value}:[/] {view.job.reason}")
            return False
        answers = fed.client.result(view.job.job_id)["result"]["records"]
        truth = telecom.set_index("id")
        for claim, answer in zip(claims.itertuples(), answers, strict=True):
            want = {
                f: claim.id in truth.index
                and _norm(str(truth.loc[claim.id, f])) == _norm(getattr(claim, f))
                for f in ("name", "phone")
            }
            show = ", ".join(
                f"{f}={'yes' if v else 'no'}" for f, v in answer["fields"].items()
            )
            plain = ", ".join(f"{f}={'yes' if v else 'no'}" for f, v in want.items())
            rows.append((f"verify {claim.id}", show, plain, answer["fields"] == want))
        # 3. pir_lookup: the city of two subscribers, the holder learning neither key.
        keys = [str(telecom.id[10]), "ID424242"]
        view = fed.run(
            _spec(
                "pir_lookup",
                ["telecom"],
                {"key": "id", "lookups": 2, "fields": ["city"]},
            ),
            local_inputs={"keys": "\n".join(keys).encode()},
            timeout=300,
        )
        if view.job.state.value != "succeeded":
            console.print(
                f"[red]pir_lookup {view.job.state.value}:[/] {view.job.reason}"
            )
            return False
        for entry in fed.client.result(view.job.job_id)["result"]["lookups"]:
            record = (
                {"city": str(truth.loc[entry["key"], "city"])}
                if entry["key"] in truth.index
                else None
            )
            rows.append(
                (
                    f"pir_lookup {entry['key']}",
                    str(entry["record"]),
                    str(record),
                    entry["record"] == record,
                )
            )
    table = Table("value", "federated (released)", "plaintext reference", "match")
    for what, got, reference, ok in rows:
        table.add_row(what, got, reference, "[green]yes[/]" if ok else "[red]NO[/]")
    console.print(table)
    console.print(
        f"[dim]bank {len(bank)} customers, telecom {len(telecom)} subscribers; "
        f"three jobs in {time.monotonic() - started:.1f}s; the telecom saw only "
        "blinded points, the coordinator only sealed envelopes[/]"
    )
    return all(ok for *_, ok in rows)
