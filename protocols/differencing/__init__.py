"""The differencing defence a node applies where DP is not required: it refuses to
release a cell whose row set differs from an earlier released cell's by 1..k-1 rows.

Why: two released counts (sums, ...) over row sets A and B reveal the aggregate of
A xor B. "count(diagnosis != X) - count(diagnosis != X and pid != 7)" is patient 7's
diagnosis. Suppressing cells below k does not stop it; comparing row sets does.

Design (two levels, both keyed with a per-dataset secret, ``DifferencingKey``):

1. ``rows``: each row id goes through a PRF; the output gives the row one of 256
   buckets and a 16-bit tag. A cell becomes at most 256 *items*, one per bucket it
   touches: (bucket, its rows there, the sum of their tags mod 2^16). A row added
   or removed changes its bucket's item only, whatever the row order or version.
   With the frame arranged by bucket, this is a packed popcount of the mask and
   one segmented sum of 16-bit tags (3 bytes read per row), instead of hashing and
   scattering every row into a table.
2. ``table``/``geometry``: each released cell is kept as an invertible Bloom lookup
   table of its items, sized to decode 2(k-1) items (two per differing bucket): 60
   table cells for k = 5, whatever the number of rows. ``record`` subtracts tables
   and peels; a decoded difference yields a lower bound on the rows apart (exact
   unless three or more differing rows share a bucket). Before that, two exact
   lower bounds skip most pairs: the row counts and 64 coarse group counts.

Decision for a new cell against each recorded one (and each earlier cell of the same
job): apart >= k -> allow; decoded with 1 <= apart < k -> refuse; identical ->
allow (and not stored twice); table does not decode -> the difference is large ->
allow.

Probabilities, per comparison, for an analyst who does not know the key:

- false allow (a difference of 1..k-1 rows let through): at most 2^-24 from peeling
  (``geometry`` computes the union bound over stopping sets and sizes the table
  for it), plus 2^-24 when every differing row is hidden in count-preserving
  changes inside buckets (a two-row swap shares a bucket with probability 2^-8 and
  then collides in the 16-bit tag sum with probability 2^-16), plus about 2^-55
  from the 64-bit checksums: a small difference is caught with probability at
  least 1 - 2^-23 per comparison;
- false refuse (a difference of >= k rows refused): only when at least three of the
  differing rows share one of 256 buckets with mixed signs, about C(d, 3) / 256^2
  (1.5e-4 for d = 5); never for identical sets.

Cost (``benchmarks/bench_differencing.py``, numbers in docs/policy.md): per
released cell 8 + 256 + 18 x table-cells bytes stored (1,344 B for k = 5) and 32
more in memory; per dataset 4 bytes per row for an index. Time per cell: one packed
pass over its mask and one over the tags when the frame is in bucket order (a
gather of the mask first otherwise), then row-count and group-count screens, so
only cells within k - 1 rows on every bound are decoded.
Records are bounded by a capacity and refuse new releases when full (never evict:
eviction re-opens differencing against the evicted cell).

Limits (what this does not do):

- Pairs only. Three or more cells combine into a small difference that no pair
  shows (A - B - C with B, C disjoint parts of A): a "tracker". No refusal rule
  that looks at the data stops every tracker; differential privacy does.
- Refusals are themselves data-dependent: whether a query is refused tells the
  analyst whether two row sets are within k rows (e.g. "identical" vs "one row
  apart" for a targeted row). Count refusals against a per-analyst quota, audit
  them, and refuse filters on identifiers (``secure_stats`` does) so the obvious
  form is refused on syntax before any data is read.
- Scope: a record is per dataset and per scope the node chooses (analyst and, when
  the analyst belongs to one, organisation). Analysts of different organisations
  who collude combine their answers; only a dataset-wide record (which lets one
  analyst's releases block another's queries) or DP stops that.
- The unit is a row: a person with several rows is k rows away only if the id
  column identifies persons (repeated ids are one identity).

What DP adds: a guarantee that composes over every query, trackers and collusion
included, at the price of noise and a budget; this record is the cheaper, exact-
answer defence for the common differencing attacks where the holder does not ask
for DP.
"""

from protocols.differencing.geometry import FALSE_ALLOW_LOG2, Geometry, geometry_for
from protocols.differencing.record import ReleaseRecord, admit, screen
from protocols.differencing.rows import CellSketch, DifferencingKey, RowIndex

__all__ = [
    "FALSE_ALLOW_LOG2",
    "CellSketch",
    "DifferencingKey",
    "Geometry",
    "ReleaseRecord",
    "RowIndex",
    "admit",
    "geometry_for",
    "screen",
]
