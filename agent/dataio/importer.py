"""Bulk import of CSV files: the entry points, over the csv_* modules of this package.

The pieces: :mod:`~agent.dataio.import_report` (problems and reports, shared by
every push endpoint), :mod:`~agent.dataio.csv_times`, :mod:`~agent.dataio.csv_mapping`,
:mod:`~agent.dataio.csv_parse` and :mod:`~agent.dataio.csv_store`.

Why this lives in the core and not in a plugin: the same import runs from the
Python API (:func:`import_csv`), from ``tsagent import-csv`` with the daemon
stopped, and behind ``POST /api/v1/import/csv`` in the daemon; all three must
parse, validate and report identically.

The pipeline, built for about a million rows per second of parsing:

1. the ``csv`` module reads records in chunks of :data:`CHUNK_ROWS`;
2. per chunk, columns are pulled out with list comprehensions and converted
   with numpy (one ``np.array(..., dtype=float64)`` per value column; only a
   chunk that fails falls back to per-cell parsing to find the bad cells);
   textual timestamps are parsed once per distinct string (a dict cache), which
   makes RFC 3339 and strftime columns cheap when many series share a time;
3. label cells become a tuple key, mapped to a dense index with a dict, so
   series are resolved once per distinct label set, not per row;
4. conflicting duplicates inside the file (same series and timestamp,
   different value) are found with one sort and reported by row;
5. everything valid goes to :meth:`agent.storage.Store.backfill` in one call:
   one transaction, durable, audited, any timestamp accepted.

Bad rows never stop the parse: each is reported with its row number (the
line number in the file, counting the header; they differ only after a
quoted field that spans lines) and the reason.  ``on_error="skip"`` imports
every valid row; ``"abort"`` imports nothing if anything was wrong, and does
not even create series.

Time zones: RFC 3339 and unix timestamps carry their own.  A strftime pattern
(or a VictoriaMetrics ``custom:`` Go layout) without ``%z`` is read as local
time in ``timestamp.timezone`` (default UTC) with :mod:`zoneinfo`, so DST is
applied per date.  A local time that does not exist (the hour skipped when
clocks move forward) is always rejected; one that exists twice (clocks move
back) is rejected unless ``timestamp.ambiguous`` is ``earlier`` (the first
occurrence, ``fold=0``) or ``later``.  Nothing is shifted silently.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.dataio.csv_mapping import CsvMapping, load_mapping, parse_extra_labels
from agent.dataio.csv_parse import ParsedCsv, parse_csv
from agent.dataio.csv_store import resolve_chunked, store_parsed
from agent.dataio.csv_times import TIME_FORMATS, go_layout_to_strptime, parse_rfc3339
from agent.dataio.import_report import ImportReport, MappingError, Problem
from agent.storage.backfill import OnError

if TYPE_CHECKING:
    from agent.storage import BackfillResult, Store

    BackfillFn = Callable[..., Awaitable[BackfillResult]]


__all__ = [
    "TIME_FORMATS",
    "CsvMapping",
    "ImportReport",
    "MappingError",
    "ParsedCsv",
    "Problem",
    "as_mapping",
    "go_layout_to_strptime",
    "import_csv",
    "load_mapping",
    "mapping_from_json",
    "parse_csv",
    "parse_csv_text",
    "parse_extra_labels",
    "parse_rfc3339",
    "resolve_chunked",
    "store_parsed",
]


async def import_csv(
    store: Store,
    file_path: str | Path,
    mapping_config: CsvMapping | Mapping[str, Any] | str | Path,
    *,
    on_error: OnError = "skip",
    source: str = "csv_import",
    client: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    encoding: str = "utf-8",
) -> ImportReport:
    """Import a CSV file into ``store`` (a backfill: any timestamp, one transaction).

    ``mapping_config`` is a :class:`CsvMapping`, the mapping as a dict (see
    :meth:`CsvMapping.from_dict`), a path to a YAML mapping file, or a
    VictoriaMetrics column spec string such as ``"1:time:unix_s,2:label:host,3:metric:cpu"``.
    Parsing runs in a worker thread so a daemon's event loop keeps serving;
    ``progress(bytes_read, rows_read)`` is called from that thread per chunk.
    """

    mapping = as_mapping(mapping_config)
    path = Path(file_path)

    def parse() -> ParsedCsv:
        with path.open("rb") as raw, io.TextIOWrapper(raw, encoding, newline="") as fh:
            tick = None
            if progress is not None:
                report_to = progress

                # The byte position of the buffer under the text layer: exact to a
                # few KiB, and free (no per-line wrapper).
                def tick(rows: int) -> None:
                    report_to(raw.tell(), rows)

            return parse_csv(fh, mapping, progress=tick)

    parsed = await asyncio.get_running_loop().run_in_executor(None, parse)
    return await store_parsed(store, parsed, on_error=on_error, source=source, client=client)


def as_mapping(mapping_config: CsvMapping | Mapping[str, Any] | str | Path) -> CsvMapping:
    """Accept every form :func:`import_csv` documents."""
    if isinstance(mapping_config, CsvMapping):
        return mapping_config
    if isinstance(mapping_config, Mapping):
        return CsvMapping.from_dict(mapping_config)
    text = str(mapping_config)
    if isinstance(mapping_config, str) and re.match(r"^\d+:(time|label|metric):", text):
        return CsvMapping.from_vm_format(text)
    return load_mapping(text)


def parse_csv_text(text: str, mapping: CsvMapping, *, now_ms: int | None = None) -> ParsedCsv:
    """:func:`parse_csv` over an in-memory body (the HTTP endpoint)."""
    return parse_csv(io.StringIO(text, newline=""), mapping, now_ms=now_ms)


def mapping_from_json(text: str) -> CsvMapping:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MappingError(f"mapping: not valid JSON: {exc}") from exc
    except RecursionError:
        raise MappingError("mapping: JSON nested too deeply") from None
    return CsvMapping.from_dict(data)
