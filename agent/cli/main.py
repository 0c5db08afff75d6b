"""The ``tsagent`` command line."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence
from typing import Any

from agent import __version__
from agent.cli.audit import add_audit_parser
from agent.cli.export import add_export_parser
from agent.cli.generate import add_generate_parser
from agent.cli.importing import add_import_parser
from agent.config import ConfigError, check_duration, check_listen
from agent.plugins import PluginError, get_plugin_manager


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "listen", None):
        out["listen"] = args.listen
    if getattr(args, "data_dir", None):
        out["data_dir"] = args.data_dir
    if getattr(args, "retention", None) is not None:
        out["storage.retention"] = args.retention
    return out


def _listen_arg(value: str) -> str:
    problem = check_listen(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def _duration_arg(value: str) -> str:
    if check_duration(value):
        raise argparse.ArgumentTypeError(f"not a duration: {value!r} (e.g. 15d, 12h, 0)")
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        help="YAML configuration file (default: $CONFIGURATION_DIRECTORY/tsagent.yaml"
        " when that exists, as under systemd or in the container image; else built-in defaults)",
    )
    p.add_argument("--data-dir", help="directory of the SQLite database (overrides data_dir)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tsagent", description="A small Prometheus-compatible metrics agent."
    )
    parser.add_argument("--version", action="version", version=f"tsagent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon (the default command)")
    _add_common(run)
    run.add_argument("--listen", type=_listen_arg, help="HOST:PORT to serve on")
    run.add_argument(
        "--retention", type=_duration_arg, help="delete samples older than this; 0 keeps all"
    )

    ret = sub.add_parser("retention", help="delete samples past their retention, then exit")
    _add_common(ret)
    ret.add_argument(
        "--once",
        action="store_true",
        required=True,
        help="run one pass now (the daemon runs passes itself every storage.retention_interval)",
    )
    ret.add_argument(
        "--retention", type=_duration_arg, help="override storage.retention; 0 keeps all"
    )
    ret.add_argument(
        "--vacuum",
        action="store_true",
        help="also VACUUM the whole file (once, for databases created without auto_vacuum)",
    )
    ret.add_argument("--json", action="store_true", help="machine-readable output")

    rol = sub.add_parser("rollup", help="compute due rollups (and expire old ones), then exit")
    _add_common(rol)
    rol.add_argument(
        "--once",
        action="store_true",
        required=True,
        help="run one pass now (the daemon runs passes itself every storage.rollups.interval)",
    )
    rol.add_argument("--json", action="store_true", help="machine-readable output")

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file")

    pl = sub.add_parser("plugins", help="list the plugins that load, with versions")
    pl.add_argument("--json", action="store_true", help="machine-readable output")

    ex = sub.add_parser("example-config", help="print a config documenting every key and default")
    ex.add_argument(
        "--markdown",
        action="store_true",
        help="the configuration reference page (docs/configuration-reference.md) instead",
    )

    hp = sub.add_parser("hash-password", help="print a bcrypt hash for auth.*.basic_auth")
    hp.add_argument("--password-stdin", action="store_true", help="read the password from stdin")

    add_audit_parser(sub, _add_common)
    add_import_parser(sub, _add_common)
    add_export_parser(sub, _add_common)
    add_generate_parser(sub, _add_common)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from agent.daemon import run_daemon

    return run_daemon(args.config, _overrides(args))


def cmd_retention(args: argparse.Namespace) -> int:
    """One retention pass on the configured database, for cron jobs and maintenance.

    The store's lock makes this fail cleanly while a daemon owns the database
    (the daemon enforces retention itself); config and data dir resolve
    exactly as for ``tsagent run``.
    """
    import asyncio

    from agent.cli.setup import DaemonRunning, load_config, print_json
    from agent.storage import StorageError

    loaded = load_config(args.config, _overrides(args))
    if loaded is None:
        return 2
    try:
        report = asyncio.run(_retention_once(*loaded, vacuum=args.vacuum))
    except (DaemonRunning, StorageError, ValueError, OSError) as exc:
        print(f"retention failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print_json(report)
        return 0
    print(
        f"{report['db']}: deleted {report['samples']} samples of {report['series']} series"
        f" ({report['segments_deleted']} segments deleted, {report['segments_trimmed']} trimmed,"
        f" {report['head_samples']} from the head); freed {report['bytes_freed']} bytes"
    )
    for name, count in sorted(report["by_metric"].items()):
        print(f"  {name or '(no name)'}: {count}")
    if report["auto_vacuum"] != "incremental":
        print(
            "note: this database predates auto_vacuum=INCREMENTAL, so the file does not shrink;"
            " run once with --vacuum (daemon stopped) to convert it",
            file=sys.stderr,
        )
    return 0


async def _retention_once(config: Any, host: Any, *, vacuum: bool) -> dict[str, Any]:
    import sqlite3

    from agent.cli.setup import offline_store
    from agent.configured_store import DB_FILE

    async with offline_store(config, host) as store:
        res = await store.apply_retention()
        if vacuum:
            await store.vacuum()
    db_path = config.data_dir / DB_FILE
    conn = sqlite3.connect(db_path)
    try:
        av = int(conn.execute("PRAGMA auto_vacuum").fetchone()[0])
    finally:
        conn.close()
    return {
        "db": str(db_path),
        "now_ms": res.now_ms,
        "samples": res.samples,
        "series": res.series,
        "segments_deleted": res.segments_deleted,
        "segments_trimmed": res.segments_trimmed,
        "head_samples": res.head_samples,
        "versions_deleted": res.versions_deleted,
        "min_t": res.min_t,
        "max_t": res.max_t,
        "audit_ids": res.audit_ids,
        "by_metric": res.by_metric,
        "bytes_freed": res.bytes_freed or 0,
        "vacuumed": vacuum,
        "auto_vacuum": {0: "none", 1: "full", 2: "incremental"}.get(av, str(av)),
    }


def cmd_rollup(args: argparse.Namespace) -> int:
    """One rollup pass with the daemon stopped (the store lock refuses a running daemon's DB)."""
    import asyncio

    from agent.cli.setup import DaemonRunning, load_config, print_json
    from agent.storage import StorageError

    loaded = load_config(args.config, _overrides(args))
    if loaded is None:
        return 2
    try:
        report = asyncio.run(_rollup_once(*loaded))
    except DaemonRunning as exc:
        print(
            f"rollup failed: {exc}; the running daemon computes rollups itself"
            " every storage.rollups.interval",
            file=sys.stderr,
        )
        return 1
    except (StorageError, ValueError, OSError) as exc:
        print(f"rollup failed: {exc}", file=sys.stderr)
        return 1
    if report is None:
        print("rollups are disabled (storage.rollups.enabled: false)", file=sys.stderr)
        return 1
    if args.json:
        print_json(report)
        return 0
    print(
        f"{report['db']}: {report['blocks_rolled']} blocks rolled up,"
        f" {report['series_recomputed']} series recomputed, {report['buckets_written']} buckets"
        f" in {report['rows_written']} rows written, {report['rows_expired']} rows expired"
        f" ({report['seconds']} s)"
    )
    for res, done in sorted(report["done_to"].items(), key=lambda kv: int(kv[0])):
        print(f"  {_resolution(int(res))} rolled up to {_utc(done)}")
    return 0


def _resolution(ms: int) -> str:
    """``3600000`` -> ``1h``: rollup resolutions as the config spells them."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _utc(ms: int | None) -> str:
    """Epoch milliseconds as RFC 3339 UTC for people; ``--json`` keeps the raw number."""
    if ms is None:
        return "nothing yet"
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _rollup_once(config: Any, host: Any) -> dict[str, Any] | None:
    from agent.cli.setup import offline_store
    from agent.configured_store import DB_FILE

    async with offline_store(config, host, background_rollups=False) as store:
        if store.rollups is None:
            return None
        result = await store.rollups.run_once()
    return {"db": str(config.data_dir / DB_FILE), **result.to_json()}


def cmd_audit(args: argparse.Namespace) -> int:
    from agent.cli.audit import run_audit

    return run_audit(args, _overrides(args))


def cmd_import_csv(args: argparse.Namespace) -> int:
    from agent.cli.importing import run_import

    return run_import(args, _overrides(args))


def cmd_export_csv(args: argparse.Namespace) -> int:
    from agent.cli.export import run_export

    return run_export(args, _overrides(args))


def cmd_generate(args: argparse.Namespace) -> int:
    from agent.cli.generate import run_generate

    return run_generate(args, _overrides(args))


def cmd_check_config(args: argparse.Namespace) -> int:
    from agent.alerting.rules import load_configured_rules
    from agent.daemon import load
    from agent.query import extensions as query_extensions

    try:
        config, host = load(args.file)
        # Plugins' PromQL functions (e.g. zscore_over_time) must parse in rule files too.
        for functions in host.pm.hook.register_query_functions():
            query_extensions.register_all(functions or {})
        # Rule files too: a broken expression names its file, group and rule.
        groups = load_configured_rules(config)
    except (ConfigError, PluginError) as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.file}: configuration is valid")
    if groups:
        files = len({g.file for g in groups})
        rules = sum(len(g.rules) for g in groups)
        print(f"{files} rule file(s): {len(groups)} group(s), {rules} rule(s)")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    host = get_plugin_manager()
    rows: list[dict[str, Any]] = [
        {
            "name": p.name,
            "version": p.version,
            "distribution": p.distribution,
            "module": p.module,
            "builtin": p.builtin,
            "hooks": sorted(
                h.name for h in host.pm.get_hookcallers(host.pm.get_plugin(p.name)) or []
            ),
        }
        for p in host.loaded.values()
    ]
    if getattr(args, "json", False):
        from agent.cli.setup import print_json

        print_json(rows, sort_keys=False)
    else:
        for r in rows:
            kind = "built-in" if r["builtin"] else "third-party"
            print(f"{r['name']:<20} {r['version']:<10} {kind:<12} {', '.join(r['hooks'])}")
    for failure in host.failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if host.failures else 0


def cmd_example_config(args: argparse.Namespace) -> int:
    print(config_reference() if args.markdown else example_config(), end="")
    return 0


def _builtin_schema() -> Any:
    """Core keys plus the sections of built-in plugins (third-party ones vary by install)."""
    from agent.config import build_schema

    host = get_plugin_manager()
    schemas: dict[str, Any] = {}
    for name, info in host.loaded.items():
        if info.builtin:
            plugin = host.pm.get_plugin(name)
            contributed = getattr(plugin, "config_schema", None)
            schemas.update(contributed() if contributed else {})
    return build_schema(schemas)


def config_reference() -> str:
    from agent.config.reference import render_reference

    return render_reference(_builtin_schema())


def example_config() -> str:
    from agent.config import render_example

    header = (
        "# tsagent configuration: every key with its default (generated by\n"
        "# `tsagent example-config`). All keys are optional; ${ENV_VAR} and\n"
        "# ${ENV_VAR:-default} are expanded in values.\n"
    )
    return header + render_example(_builtin_schema())


def cmd_hash_password(args: argparse.Namespace) -> int:
    from agent.web.security import hash_password

    try:
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = getpass.getpass("password: ")
    except (EOFError, KeyboardInterrupt):
        # getpass on a closed or empty stdin (``</dev/null``) raises EOFError.
        print("no password given", file=sys.stderr)
        return 1
    if not password:
        print("empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


COMMANDS = {
    "run": cmd_run,
    "check-config": cmd_check_config,
    "plugins": cmd_plugins,
    "hash-password": cmd_hash_password,
    "retention": cmd_retention,
    "rollup": cmd_rollup,
    "audit": cmd_audit,
    "import-csv": cmd_import_csv,
    "export-csv": cmd_export_csv,
    "generate": cmd_generate,
    "example-config": cmd_example_config,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["run", *(argv or sys.argv[1:])])
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:
        # ``tsagent plugins --json | head``: the reader left; that is not an error
        # worth a traceback. Point stdout at /dev/null so the interpreter's final
        # flush does not raise again.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141  # 128 + SIGPIPE, as a shell reports a process killed by it
