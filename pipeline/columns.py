"""Column names shared by the stages, and what each stage reads and adds of them (`StageColumns`).
Internal columns start with "_" and never reach the output."""

from __future__ import annotations

from dataclasses import dataclass

ID = "id"
TEXT = "text"
TEXT_PAIR = "text_pair"
QUESTION = "question"
CONTEXT = "context"

SHARD = "_shard"  # index of the input shard in the sorted shard list
ROW = "_row"  # row index inside its shard (stable ids, error locations)
ERROR = "_error"  # null for good rows; a reason a person understands otherwise
# Set by a grouped read (pipeline.job.ReadShards): every row of the shard is in this block, and it
# has this many; the writer then finalises the shard at once (pipeline.sinks.WriteParts).
SHARD_ROWS = "_shard_rows"

# Written by the tokenize stage: one entry per window of the document.
INPUT_IDS = "_input_ids"  # list<list<int32>>, special tokens included, never padded
TOKEN_TYPE_IDS = "_token_type_ids"  # list<list<int32>>; empty list when the model takes none
N_TOKENS = "_n_tokens"  # int64: real tokens the model reads for this document (all windows)
TRUNCATED = "_truncated"  # bool: the document lost tokens beyond the first window

# Written by the model stage: per window, one flat float32 list per head output (see Head.forward).
OUT_PREFIX = "_out_"
PADDED_SLOTS = "_padded_slots"  # int64: pad positions computed for this document's windows

# Written by the postprocess stage, on the first output row of each document (0 on the others).
DOCUMENTS = "_documents"  # int64: 1 on a document's first output row, for counting documents
N_WINDOWS = "_n_windows"  # int64: windows the document was cut into


def out(name: str) -> str:
    return OUT_PREFIX + name


@dataclass(frozen=True)
class StageColumns:
    """The internal columns a stage needs in its batches, and those its batches have after it;
    `replaces`: its output is a new table with `adds` (and the head's output columns) only. The head's
    own input and output columns (text, question, `_out_*`) are the head's business and not listed.
    pipeline.compose.check_chain checks a list of stages against these before any work."""

    reads: tuple[str, ...] = ()
    adds: tuple[str, ...] = ()
    replaces: bool = False

    def then(self, after: "StageColumns") -> "StageColumns":
        """This stage and then `after`, as one (the fused model stage)."""
        needed = tuple(c for c in after.reads if c not in self.adds and c not in self.reads)
        adds = after.adds if after.replaces else tuple(dict.fromkeys(self.adds + after.adds))
        return StageColumns(self.reads + needed, adds, self.replaces or after.replaces)


# What the reader (and apply's _Prepare) gives every row.
READ = StageColumns(adds=(ID, SHARD, ROW, ERROR))
