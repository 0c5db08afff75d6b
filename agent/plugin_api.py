"""The one module plugins import: the surface tsagent promises plugin authors.

Everything a plugin needs is re-exported here from where it lives in the core
(the hook marker, the protocols of what hooks return, configuration schemas,
label rules, the store's errors and types, the HTTP envelope and ingest
helpers, notifier helpers, the export log's types, the query language's
entry points). A plugin that imports only this module keeps working while
the core's modules move; ``tests/test_architecture.py`` enforces that the
built-in plugins do, and that nothing in the core imports this module
(it sits at the top, importing from every layer below it).

Hooks wire things up once at startup; the core then calls the objects they
return directly, so nothing on the per-sample path goes through pluggy.
"""

from __future__ import annotations

from agent import __version__ as __version__
from agent import hookimpl as hookimpl
from agent.alerting.dispatch import (
    Notifier as Notifier,
)
from agent.alerting.dispatch import (
    NotifyError as NotifyError,
)
from agent.alerting.dispatch import (
    build_payload as build_payload,
)
from agent.alerting.dispatch import (
    redact_text as redact_text,
)
from agent.alerting.dispatch import (
    redact_url as redact_url,
)
from agent.alerting.routing import (
    check_alerting as check_alerting,
)
from agent.analytics import (
    anomaly as anomaly,
)
from agent.analytics import (
    forecast as forecast,
)
from agent.analytics import (
    promql as promql,
)
from agent.config import (
    Config as Config,
)
from agent.config import (
    Field as Field,
)
from agent.config import (
    Schema as Schema,
)
from agent.config import (
    check_duration as check_duration,
)
from agent.config import (
    check_listen as check_listen,
)
from agent.config import (
    check_non_negative as check_non_negative,
)
from agent.config import (
    check_positive as check_positive,
)
from agent.config import (
    parse_duration as parse_duration,
)
from agent.config import (
    parse_listen as parse_listen,
)
from agent.config import (
    validate as validate,
)
from agent.context import (
    AgentContext as AgentContext,
)
from agent.context import (
    Exporter as Exporter,
)
from agent.context import (
    Handler as Handler,
)
from agent.context import (
    Ingestor as Ingestor,
)
from agent.context import (
    QueryFunction as QueryFunction,
)
from agent.context import (
    Route as Route,
)
from agent.context import (
    RouteGroup as RouteGroup,
)
from agent.dataio.export import (
    TIME_FORMATS as TIME_FORMATS,
)
from agent.dataio.export import (
    ExportError as ExportError,
)
from agent.dataio.export import (
    export_csv as export_csv,
)
from agent.dataio.export import (
    export_jsonl as export_jsonl,
)
from agent.dataio.export import (
    format_value as format_value,
)
from agent.dataio.export import (
    import_spec as import_spec,
)
from agent.dataio.export import (
    label_columns as label_columns,
)
from agent.dataio.export import (
    parse_selector as parse_selector,
)
from agent.dataio.export import (
    select_series as select_series,
)
from agent.dataio.importer import (
    CsvMapping as CsvMapping,
)
from agent.dataio.importer import (
    ImportReport as ImportReport,
)
from agent.dataio.importer import (
    MappingError as MappingError,
)
from agent.dataio.importer import (
    Problem as Problem,
)
from agent.dataio.importer import (
    mapping_from_json as mapping_from_json,
)
from agent.dataio.importer import (
    parse_csv_text as parse_csv_text,
)
from agent.dataio.importer import (
    parse_rfc3339 as parse_rfc3339,
)
from agent.dataio.importer import (
    resolve_chunked as resolve_chunked,
)
from agent.dataio.importer import (
    store_parsed as store_parsed,
)
from agent.dataio.join import (
    FILLS as FILLS,
)
from agent.dataio.join import (
    JOIN_TYPES as JOIN_TYPES,
)
from agent.dataio.join import (
    JoinError as JoinError,
)
from agent.dataio.join import (
    join_series as join_series,
)
from agent.dataio.stream import (
    Lagged as Lagged,
)
from agent.dataio.stream import (
    SampleBatch as SampleBatch,
)
from agent.dataio.stream import (
    Selection as Selection,
)
from agent.dataio.stream import (
    Subscription as Subscription,
)
from agent.dataio.stream import (
    live_query as live_query,
)
from agent.forward.export_log import (
    BatchExporter as BatchExporter,
)
from agent.forward.export_log import (
    ExportBatch as ExportBatch,
)
from agent.forward.export_log import (
    ExportOptions as ExportOptions,
)
from agent.forward.export_log import (
    ExportProgress as ExportProgress,
)
from agent.forward.export_log import (
    ExportStopped as ExportStopped,
)
from agent.model import (
    METRIC_NAME as METRIC_NAME,
)
from agent.model import (
    STALE_NAN as STALE_NAN,
)
from agent.model import (
    STALE_NAN_BITS as STALE_NAN_BITS,
)
from agent.model import (
    Labels as Labels,
)
from agent.model import (
    Matcher as Matcher,
)
from agent.model import (
    MatchOp as MatchOp,
)
from agent.model import (
    format_labels as format_labels,
)
from agent.model import (
    make_labels as make_labels,
)
from agent.model import (
    metric_name as metric_name,
)
from agent.model import (
    valid_label_name as valid_label_name,
)
from agent.model import (
    valid_metric_name as valid_metric_name,
)
from agent.prompb import (
    remote_pb2 as remote_pb2,
)
from agent.prompb import (
    types_pb2 as types_pb2,
)
from agent.prompb import (
    write_v2_pb2 as write_v2_pb2,
)
from agent.query import (
    ast as ast,
)
from agent.query.blocks import RangeData as RangeData
from agent.query.errors import (
    BadDataError as BadDataError,
)
from agent.query.errors import (
    QueryError as QueryError,
)
from agent.query.extensions import RangeFunction as RangeFunction
from agent.query.parser import (
    parse as parse,
)
from agent.query.service import (
    parse_duration_param as parse_duration_param,
)
from agent.query.timezone import (
    DstRule as DstRule,
)
from agent.query.timezone import (
    parse_time as parse_time,
)
from agent.storage import (
    AppendResult as AppendResult,
)
from agent.storage import (
    BackPressure as BackPressure,
)
from agent.storage import (
    StorageError as StorageError,
)
from agent.storage import (
    Store as Store,
)
from agent.storage import (
    UnknownSeries as UnknownSeries,
)
from agent.storage.codec import (
    Codec as Codec,
)
from agent.storage.codec import (
    CorruptBlobError as CorruptBlobError,
)
from agent.storage.codec import (
    RawCodec as RawCodec,
)
from agent.storage.codec import (
    as_bytes as as_bytes,
)
from agent.storage.codec import (
    check_arrays as check_arrays,
)
from agent.storage.codec import (
    check_count as check_count,
)
from agent.storage.options import (
    SeriesData as SeriesData,
)
from agent.web.api.envelope import (
    ApiError as ApiError,
)
from agent.web.api.envelope import (
    bad_param as bad_param,
)
from agent.web.api.envelope import (
    bool_param as bool_param,
)
from agent.web.api.envelope import (
    duration_param as duration_param,
)
from agent.web.api.envelope import (
    failure as failure,
)
from agent.web.api.envelope import (
    form as form,
)
from agent.web.api.envelope import (
    int_param as int_param,
)
from agent.web.api.envelope import (
    success as success,
)
from agent.web.api.envelope import (
    time_param as time_param,
)
from agent.web.ingest import (
    SMALL_BYTES as SMALL_BYTES,
)
from agent.web.ingest import (
    WEIGHT_CSV as WEIGHT_CSV,
)
from agent.web.ingest import (
    WEIGHT_JSON as WEIGHT_JSON,
)
from agent.web.ingest import (
    WEIGHT_TEXT as WEIGHT_TEXT,
)
from agent.web.ingest import (
    OnError as OnError,
)
from agent.web.ingest import (
    bad_request as bad_request,
)
from agent.web.ingest import (
    busy as busy,
)
from agent.web.ingest import (
    count as count,
)
from agent.web.ingest import (
    extra_labels_param as extra_labels_param,
)
from agent.web.ingest import (
    flag_param as flag_param,
)
from agent.web.ingest import (
    on_error_param as on_error_param,
)
from agent.web.ingest import (
    report_response as report_response,
)
from agent.web.ingest import (
    unavailable as unavailable,
)
from agent.wire import (
    uvarint as uvarint,
)

__all__ = [
    "FILLS",
    "JOIN_TYPES",
    "METRIC_NAME",
    "SMALL_BYTES",
    "STALE_NAN",
    "STALE_NAN_BITS",
    "TIME_FORMATS",
    "WEIGHT_CSV",
    "WEIGHT_JSON",
    "WEIGHT_TEXT",
    "AgentContext",
    "ApiError",
    "AppendResult",
    "BackPressure",
    "BadDataError",
    "BatchExporter",
    "Codec",
    "Config",
    "CorruptBlobError",
    "CsvMapping",
    "DstRule",
    "ExportBatch",
    "ExportError",
    "ExportOptions",
    "ExportProgress",
    "ExportStopped",
    "Exporter",
    "Field",
    "Handler",
    "ImportReport",
    "Ingestor",
    "JoinError",
    "Labels",
    "Lagged",
    "MappingError",
    "MatchOp",
    "Matcher",
    "Notifier",
    "NotifyError",
    "OnError",
    "Problem",
    "QueryError",
    "QueryFunction",
    "RangeData",
    "RangeFunction",
    "RawCodec",
    "Route",
    "RouteGroup",
    "SampleBatch",
    "Schema",
    "Selection",
    "SeriesData",
    "StorageError",
    "Store",
    "Subscription",
    "UnknownSeries",
    "__version__",
    "anomaly",
    "as_bytes",
    "ast",
    "bad_param",
    "bad_request",
    "bool_param",
    "build_payload",
    "busy",
    "check_alerting",
    "check_arrays",
    "check_count",
    "check_duration",
    "check_listen",
    "check_non_negative",
    "check_positive",
    "count",
    "duration_param",
    "export_csv",
    "export_jsonl",
    "extra_labels_param",
    "failure",
    "flag_param",
    "forecast",
    "form",
    "format_labels",
    "format_value",
    "hookimpl",
    "import_spec",
    "int_param",
    "join_series",
    "label_columns",
    "live_query",
    "make_labels",
    "mapping_from_json",
    "metric_name",
    "on_error_param",
    "parse",
    "parse_csv_text",
    "parse_duration",
    "parse_duration_param",
    "parse_listen",
    "parse_rfc3339",
    "parse_selector",
    "parse_time",
    "promql",
    "redact_text",
    "redact_url",
    "remote_pb2",
    "report_response",
    "resolve_chunked",
    "select_series",
    "store_parsed",
    "success",
    "time_param",
    "types_pb2",
    "unavailable",
    "uvarint",
    "valid_label_name",
    "valid_metric_name",
    "validate",
    "write_v2_pb2",
]
