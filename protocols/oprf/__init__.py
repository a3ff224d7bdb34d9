"""OPRF-keyed tables for the verification product and anonymous lookup (PIR).

The OPRF is 2HashDH over ristretto255 (:mod:`protocols.oprf.core`, RFC 9497 mode
0x00, checked against its test vectors). Per dataset version the holder draws a
fresh key k and publishes a table (:mod:`protocols.oprf.table`): for PIR, each
permitted record encrypted under a key derived from F_k(id) and indexed by a tag
derived from it; for verification, tags of F_k(id, field, value) per configured
field and/or one all-fields tag F_k(id, every field) per record, as the policy
says. The buyer downloads the table once (:mod:`protocols.oprf.download`) and
caches it by version (:class:`~protocols.oprf.table.TableCache`). The header
carries the normalisation rule of the id and of every verify field, so the buyer
normalises its claims exactly as the holder normalised its rows. Each check or
lookup is then one blind evaluation by the holder (:mod:`protocols.oprf.parties`),
which meters one unit per evaluation and learns nothing of the key asked about,
nor whether it was present: absent keys cost the same and look the same.

What is public. The table's size: records, fields and the padded record size
(every ciphertext is the same length). The number of evaluations per job. The
holder learns the buyer's identity and batch size; the coordinator only sees
blinded elements. Version binding: queries and replies carry the table's content
hash and key id (and the config digest binds the whole header); the holder refuses
a query for another version and the buyer a reply for another; a table rebuilt
with a new key has a new key id, so every older cache is useless (the cache keeps
one version per dataset).

Assumptions. One-more-gap-DH in ristretto255 with SHA-512 as a random oracle
(Jarecki-Kiayias-Krawczyk): a buyer who obtained q evaluations can compute F_k on
at most q inputs. Semi-honest holder for correctness: a malicious holder can
evaluate with a wrong key so the buyer sees "absent"/"no match" (the verifiable
mode of RFC 9497, a DLEQ proof against the published key id, would catch that; it
is not implemented here). It still learns nothing of the queries.

Enumeration. Because the holder cannot see queries, what it can do against a
buyer enumerating keys is limited to: quotas and prices per evaluation (exact,
since every check is one unit); all-fields mode, where one evaluation confirms
only an entire claimed record, so guessing a field value requires knowing all the
others; key rotation per version, so outputs learned under one key are worthless
under the next; and batch-size caps per job. What it cannot do: see or refuse
particular keys, rate-limit per key, detect a dictionary sweep (e.g. all phone
numbers of a region), or stop a buyer from learning that a key it guessed is
present: membership is what the product sells. A small key space (10^8 phone
numbers) is thus only protected by the quota's price.
"""
