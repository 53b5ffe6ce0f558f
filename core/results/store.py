"""The results store of a sweep: one directory, a manifest and long-format Parquet tables.

Layout::

    DIR/manifest.json                 settings, model, corpus, package versions, shard list + status
    DIR/prompts/shard-00003.parquet   prompt, kind, n_tokens, text
    DIR/tokens/shard-00003.parquet    prompt, position, token_id, token
    DIR/norms/shard-00003.parquet     prompt, position, token, layer, site, norm, std
    DIR/truncate/...                  prompt, position, token, category, length, layer, cos, cos_raw
    DIR/scan/...                      prompt, n_tokens, k, K, start_layer, loss_clean, loss, delta_loss, kl, top1
                                      (+ only_layer: -1, or N on the rows of the layer x k matrix)
    DIR/attention/...                 prompt, n_queries, layer, head, mean_distance, mean_distance_no_bos, mass_*
    DIR/truncation_mu.npy             the corpus-wide mean residual [L+1, d_model] every shard centres with
    DIR/ablation_means.npy            the scan's corpus-wide means with --ablation mean [2L+1, d_model]
                                      (each corpus-wide array's file is named by its analysis's registry
                                      entry, ``corpus``: core/analyses)
    DIR/views.json                    the corpus views ``report`` shows, cached with a fingerprint of the
                                      table files they came from (``core/results/views.py``: load_views)

A *shard* is a fixed group of consecutive prompts (``shard_size``, recorded in the manifest).
Every table file of a shard is written to a temp name and renamed into place, and only then is
the shard marked done in the manifest (itself rewritten by temp file + rename, under a file lock
so that several ``--shard I/N`` workers can share one directory). A shard's file is therefore
either absent, complete and counted, or complete but not yet counted (a kill between the rename
and the manifest update): readers use only the files of shards the manifest marks done, so no
row is ever read twice or half, and ``--resume`` simply redoes shards that are not done.

Every table file's row count and sha256 are recorded with it, so a file changed or damaged
after the write (even one whose Parquet footer still reads) is named and never read. Temp files
carry their writer's host and pid (``.NAME.HOST-PID.XXXX.tmp``): a run that joins the directory
removes those of dead writers, and moves every file the manifest does not record (strays, damaged
files) into ``DIR/quarantine/<time>/``, so that any Parquet reader of ``DIR/<table>`` sees exactly
the recorded rows. Those moves, and the rename of a shard's files, happen under the lock.

A results directory may come from someone else: every path below it is opened, moved and removed
through ``core/results/confined.py`` (never through a link, only regular files), and every size it claims
(JSON, array headers, row counts, index values) is bounded before anything is allocated by it.

Nothing here imports torch: ``open_results`` must stay fast for ``horizon report`` and the app.

This module is the store's public face: callers import from here, and the store's parts live in
``store_layout`` (the names of the directory's files, tables and schemas), ``store_files`` (atomic
writes, the lock, bounded reads), ``store_manifest`` (reading and checking the manifest, its
read-modify-write), ``store_checks`` (damage checks of files and folders), ``store_read``
(``open_results``, ``Results``), ``store_tidy`` (tidying, quarantine) and ``store_merge`` (``merge``).
"""

from __future__ import annotations

from typing import Any

from horizon.core import analyses as registry
from horizon.core.results.store_checks import (
    MAX_ROWS_PER_BYTE,
    ROWS_SLACK,
    check_file,
    corpus_problems,
    corpus_shape,
    folder_entries,
    foreign_entries,
    foreign_problem,
    index_problem,
    leftover_temps,
    strays,
)
from horizon.core.results.store_files import (
    MAX_JSON_BYTES,
    TEMP_FILE,
    WriteError,
    array_sha256,
    atomic_write,
    commit,
    file_sha256,
    load_array,
    locked,
    read_json_file,
    stage,
    stage_table,
    temp_tag,
    write_array_atomic,
    write_json_atomic,
    write_table_atomic,
)
from horizon.core.results.store_layout import (
    BASE_SCHEMAS,
    BASE_TABLES,
    CLAIMS,
    FORMAT,
    FORMAT_VERSION,
    LEGACY_TABLES,
    LOCK,
    MANIFEST,
    QUARANTINE,
    SHARD_FILE,
    all_tables,
    analysis_tables,
    corpus_files,
    legacy_tables,
    now_iso,
    shard_name,
    shard_path,
    table_schema,
    top_names,
)
from horizon.core.results.store_manifest import (
    MODEL_LIMITS,
    read_manifest,
    settings_conflicts,
    settings_key,
    short_repr,
    structure_problem,
    update_manifest,
)
from horizon.core.results.store_merge import Merged, merge
from horizon.core.results.store_read import PromptLists, Results, open_results
from horizon.core.results.store_tidy import damaged_shards, process_alive, quarantine, refuse_foreign, tidy

# Every name callers use from the store, among them three private helpers core/sweep/sweep.py reads.
__all__ = [
    "BASE_SCHEMAS",
    "BASE_TABLES",
    "CLAIMS",
    "FORMAT",
    "FORMAT_VERSION",
    "LEGACY_TABLES",
    "LOCK",
    "MANIFEST",
    "MAX_JSON_BYTES",
    "MAX_ROWS_PER_BYTE",
    "MODEL_LIMITS",
    "QUARANTINE",
    "ROWS_SLACK",
    "SHARD_FILE",
    "TEMP_FILE",
    "Merged",
    "PromptLists",
    "Results",
    "WriteError",
    "all_tables",
    "analysis_tables",
    "array_sha256",
    "atomic_write",
    "check_file",
    "commit",
    "corpus_files",
    "corpus_problems",
    "corpus_shape",
    "damaged_shards",
    "file_sha256",
    "folder_entries",
    "foreign_entries",
    "foreign_problem",
    "index_problem",
    "leftover_temps",
    "legacy_tables",
    "load_array",
    "locked",
    "merge",
    "now_iso",
    "open_results",
    "process_alive",
    "quarantine",
    "read_json_file",
    "read_manifest",
    "refuse_foreign",
    "settings_conflicts",
    "settings_key",
    "shard_name",
    "shard_path",
    "short_repr",
    "stage",
    "stage_table",
    "strays",
    "structure_problem",
    "table_schema",
    "temp_tag",
    "tidy",
    "top_names",
    "update_manifest",
    "write_array_atomic",
    "write_json_atomic",
    "write_table_atomic",
]


# MU_FILE and ABLATION_MEANS_FILE, the names the corpus-wide arrays' files had before each analysis
# declared its own (core/analyses ``CorpusInput``): looked up in the registry on use.
_CORPUS_FILE_OF = {"MU_FILE": "truncate", "ABLATION_MEANS_FILE": "scan"}


def __getattr__(name: str) -> Any:
    # The registry can grow after import (a test registers an analysis), so these are computed on use.
    if name == "ANALYSIS_TABLES":
        return analysis_tables()
    if name == "ANALYSES":
        return registry.names()
    if name == "TABLES":
        return all_tables()
    if name == "CORPUS_FILES":
        return corpus_files()
    if name == "TOP_NAMES":
        return top_names()
    if name in _CORPUS_FILE_OF:
        # The two built-in files under their old constant names (sweep.py's ABLATION_MEANS_FILE, tests):
        # the file is the one the analysis's registry entry names.
        corpus = registry.REGISTRY[_CORPUS_FILE_OF[name]].corpus
        assert corpus is not None
        return corpus.file
    raise AttributeError(name)
