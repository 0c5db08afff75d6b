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

from agent import (
    __version__,
    exposition,
    hookimpl,
)
from agent.alerting.notify import (
    Notifier,
    NotifyError,
    build_payload,
    redact_text,
    redact_url,
)
from agent.alerting.routing import check_alerting
from agent.analytics import (
    anomaly,
    forecast,
    promql,
)
from agent.clock import Clock, ManualClock, SystemClock
from agent.config import (
    Config,
    Field,
    Schema,
    check_duration,
    check_listen,
    check_non_negative,
    check_positive,
    parse_duration,
    parse_listen,
    validate,
)
from agent.context import (
    AgentContext,
    Exporter,
    Handler,
    Ingestor,
    QueryFunction,
    Route,
    RouteGroup,
)
from agent.dataio.export import (
    TIME_FORMATS,
    ExportError,
    export_csv,
    export_jsonl,
    import_spec,
    label_columns,
    parse_selector,
    select_series,
)
from agent.dataio.importer import (
    CsvMapping,
    ImportReport,
    MappingError,
    Problem,
    mapping_from_json,
    parse_csv_text,
    parse_rfc3339,
    resolve_chunked,
    store_parsed,
)
from agent.dataio.join import (
    FILLS,
    JOIN_TYPES,
    JoinError,
    join_series,
)
from agent.dataio.stream import (
    Lagged,
    SampleBatch,
    Selection,
    Subscription,
    live_query,
)
from agent.forward.export_log import (
    BatchExporter,
    ExportBatch,
    ExportOptions,
    ExportProgress,
    ExportStopped,
)
from agent.httpclient import authorization, client_ssl_context, tls_config_errors, tls_config_schema
from agent.lineproto import PRECISIONS, Batch, Parser
from agent.model import (
    METRIC_NAME,
    STALE_NAN,
    STALE_NAN_BITS,
    Labels,
    Matcher,
    MatchOp,
    format_labels,
    make_labels,
    metric_name,
    valid_label_name,
    valid_metric_name,
)
from agent.prompb import remote_pb2, types_pb2, write_v2_pb2
from agent.push_sink import ProtocolMetrics, SeriesSink, sink_fields
from agent.query import ast
from agent.query.blocks import RangeData
from agent.query.errors import (
    BadDataError,
    QueryError,
)
from agent.query.extensions import RangeFunction
from agent.query.numfmt import format_value, json_number, text_number
from agent.query.parser import parse
from agent.query.service import parse_duration_param
from agent.query.timezone import (
    DstRule,
    parse_time,
)
from agent.rejections import fold_append_result, rejection_message, rejection_positions
from agent.relabel import (
    ACTIONS,
    DEFAULT_REGEX,
    DEFAULT_REPLACEMENT,
    DEFAULT_SEPARATOR,
    RELABEL_SCHEMA,
    RelabelError,
    RelabelRule,
    compile_regex,
    compile_rule,
    process,
)
from agent.storage import (
    AppendResult,
    BackPressure,
    StorageError,
    Store,
    UnknownSeries,
)
from agent.storage.codec import (
    Codec,
    CorruptBlobError,
    RawCodec,
    as_bytes,
    check_arrays,
    check_count,
)
from agent.storage.options import Rejection, SeriesData
from agent.web.api.envelope import (
    bad_param,
    bool_param,
    duration_param,
    form,
    int_param,
    success,
    time_param,
)
from agent.web.api.errors import ApiError, api_errors, error_body, error_of, failure
from agent.web.ingest import (
    SMALL_BYTES,
    WEIGHT_CSV,
    WEIGHT_JSON,
    WEIGHT_TEXT,
    OnError,
    bad_request,
    busy,
    count,
    extra_labels_param,
    flag_param,
    on_error_param,
    report_response,
    unavailable,
)
from agent.wire import WireError, read_uvarint, uvarint

__all__ = [
    "ACTIONS",
    "DEFAULT_REGEX",
    "DEFAULT_REPLACEMENT",
    "DEFAULT_SEPARATOR",
    "FILLS",
    "JOIN_TYPES",
    "METRIC_NAME",
    "PRECISIONS",
    "RELABEL_SCHEMA",
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
    "Batch",
    "BatchExporter",
    "Clock",
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
    "ManualClock",
    "MappingError",
    "MatchOp",
    "Matcher",
    "Notifier",
    "NotifyError",
    "OnError",
    "Parser",
    "Problem",
    "ProtocolMetrics",
    "QueryError",
    "QueryFunction",
    "RangeData",
    "RangeFunction",
    "RawCodec",
    "Rejection",
    "RelabelError",
    "RelabelRule",
    "Route",
    "RouteGroup",
    "SampleBatch",
    "Schema",
    "Selection",
    "SeriesData",
    "SeriesSink",
    "StorageError",
    "Store",
    "Subscription",
    "SystemClock",
    "UnknownSeries",
    "WireError",
    "__version__",
    "anomaly",
    "api_errors",
    "as_bytes",
    "ast",
    "authorization",
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
    "client_ssl_context",
    "compile_regex",
    "compile_rule",
    "count",
    "duration_param",
    "error_body",
    "error_of",
    "export_csv",
    "export_jsonl",
    "exposition",
    "extra_labels_param",
    "failure",
    "flag_param",
    "fold_append_result",
    "forecast",
    "form",
    "format_labels",
    "format_value",
    "hookimpl",
    "import_spec",
    "int_param",
    "join_series",
    "json_number",
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
    "process",
    "promql",
    "read_uvarint",
    "redact_text",
    "redact_url",
    "rejection_message",
    "rejection_positions",
    "remote_pb2",
    "report_response",
    "resolve_chunked",
    "select_series",
    "sink_fields",
    "store_parsed",
    "success",
    "text_number",
    "time_param",
    "tls_config_errors",
    "tls_config_schema",
    "types_pb2",
    "unavailable",
    "uvarint",
    "valid_label_name",
    "valid_metric_name",
    "validate",
    "write_v2_pb2",
]
