"""Per-shard distributions for the run report: document lengths, windows per document, labels.

Computed in `pipeline.sinks.finalize_shard` from the shard's good rows and stored in its marker, so a
summary that combines markers of several runs (resume) merges them by adding: the histogram buckets
have fixed edges, the same for every shard and every run.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import columns as C


# Upper edges (inclusive) of the token-length buckets: <=16, 17-32, ..., 4097-8192, then 8193+.
TOKEN_EDGES = tuple(2 ** k for k in range(4, 14))
# Upper edges of the windows-per-document buckets: 1, 2, 3, 4, 5-8, 9-16, then 17+.
WINDOW_EDGES = (1, 2, 3, 4, 8, 16)

STATS_KEYS = ("document_tokens_histogram", "windows_histogram", "label_counts")


def _bucket_names(edges: tuple[int, ...], first: str) -> list[str]:
    names = [first.format(edges[0])]
    for lo, hi in zip(edges, edges[1:]):
        names.append(str(hi) if hi == lo + 1 else f"{lo + 1}-{hi}")
    names.append(f"{edges[-1] + 1}+")
    return names


TOKEN_BUCKETS = _bucket_names(TOKEN_EDGES, "<={}")  # "<=16", "17-32", ..., "8193+"
WINDOW_BUCKETS = _bucket_names(WINDOW_EDGES, "{}")  # "1", "2", "3", "4", "5-8", "9-16", "17+"


def _histogram(values: np.ndarray, edges: tuple[int, ...], names: list[str]) -> dict[str, int]:
    """Counts per bucket, every bucket present (zeros included), in bucket order."""
    idx = np.searchsorted(np.asarray(edges), values, side="left")  # value <= edges[i] -> bucket i
    counts = np.bincount(idx, minlength=len(names))
    return {name: int(n) for name, n in zip(names, counts)}


def empty_stats() -> dict:
    return {
        "document_tokens_histogram": dict.fromkeys(TOKEN_BUCKETS, 0),
        "windows_histogram": dict.fromkeys(WINDOW_BUCKETS, 0),
        "label_counts": {},
    }


def shard_stats(good: pa.Table) -> dict:
    """From a shard's good rows (output columns plus `_documents`, `_n_windows`, `_n_tokens`):
    documents per token-length bucket, documents per window-count bucket, and rows per label
    (`label` column) or entities per type (`entities[].entity_group`); labels empty for other heads."""
    if good.num_rows == 0:
        return empty_stats()
    first = pc.equal(good.column(C.DOCUMENTS), 1)
    tokens = pc.filter(good.column(C.N_TOKENS), first).to_numpy()
    windows = pc.filter(good.column(C.N_WINDOWS), first).to_numpy()
    return {
        "document_tokens_histogram": _histogram(tokens, TOKEN_EDGES, TOKEN_BUCKETS),
        "windows_histogram": _histogram(windows, WINDOW_EDGES, WINDOW_BUCKETS),
        "label_counts": _label_counts(good),
    }


def _label_counts(good: pa.Table) -> dict[str, int]:
    names = good.schema.names
    if "label" in names and pa.types.is_string(good.schema.field("label").type):
        labels = good.column("label")
    elif "entities" in names:
        entities = pc.list_flatten(good.column("entities"))
        if entities.type.num_fields == 0 or entities.type.get_field_index("entity_group") < 0:
            return {}
        labels = pc.struct_field(entities, "entity_group")
    else:
        return {}
    counts = pc.value_counts(pc.drop_null(labels))
    pairs = zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist())  # one per label
    return dict(sorted(pairs, key=lambda p: (-p[1], p[0])))


def merge_stats(markers: list) -> dict:
    """The stats of several shard markers (pipeline.markers.Marker) added up; a marker without them
    (written before they existed) counts as empty."""
    tokens = Counter(dict.fromkeys(TOKEN_BUCKETS, 0))
    windows = Counter(dict.fromkeys(WINDOW_BUCKETS, 0))
    labels: Counter = Counter()
    for m in markers:
        tokens.update(m.document_tokens_histogram)
        windows.update(m.windows_histogram)
        labels.update(m.label_counts)
    return {
        "document_tokens_histogram": dict(tokens),
        "windows_histogram": dict(windows),
        "label_counts": dict(sorted(labels.items(), key=lambda p: (-p[1], p[0]))),
    }
