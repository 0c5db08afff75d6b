"""The documentation builds, and every snippet a reader would paste works as written.

Conventions (also in ``docs/contributing.md``), applied to README.md and every
``docs/*.md``, so a new page is covered without touching this file:

* ```` ```yaml ```` is a complete tsagent config and must pass ``tsagent
  check-config``. ``${VAR}`` references get dummy values (the page must say to
  set them). A ```` ```yaml title="NAME" ```` block is another file, written
  under NAME beside the page's configs (so ``rule_files`` globs find it) and
  checked by kind: ``groups:`` at the top makes a rule file (checked through a
  config loading it), a name with ``mapping`` a CSV mapping, ``prometheus.yml``
  goes through ``promtool check config`` when installed, a name ending in
  ``tsagent.yaml`` is a config.
* ```` ```sh ````: lines starting with ``curl`` run, in order, against a daemon
  started for the page on the default address (127.0.0.1:9201) with the
  default config, in a private network namespace (root needed; skipped with the
  reason otherwise), with ``--fail-with-body`` added, so an HTTP error fails.
  Lines running ``tsagent`` (bare, ``sudo``, ``.venv/bin/``, ``/usr/local/bin/``)
  go through tsagent's own argument parser: every command and flag must exist.
  Other lines (pip, systemctl, docker) are covered by the deployment tests.
* ```` ```python ```` must compile (top-level ``await`` allowed), ```` ```toml ````
  and ```` ```json ```` must parse, ```` ```text ```` is output and not checked
  (```` ```output ```` too: tests/test_docs_protocols.py compares it with what the
  ``<!-- run -->`` block before it printed; such run blocks are run there, whole).
* Any other language, or a block that cannot work as pasted, needs the line
  ``<!-- snippet: not-checked REASON -->`` right before it.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, tsagent_cmd
from tests.deploy_helpers import NotifySocket, ServiceProcess, open_tree, private_net_unavailable

PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
MARKER = re.compile(r"<!-- snippet: not-checked (\S.*?) -->")
# Blocks that tests/test_docs_protocols.py runs whole, as a script, and compares with the
# ```output block after them.
RUN_MARKER = re.compile(r"<!-- (?:run|config)(?::\s*\w+)? -->()")
TSAGENT_PREFIXES = ("tsagent", ".venv/bin/tsagent", "/usr/local/bin/tsagent")
NO_NETNS = private_net_unavailable()


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    title: str | None
    text: str
    skip_reason: str | None

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(```+)(.*)$", lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.groups()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        lang = info.strip().split(" ", 1)[0]
        title = re.search(r'title="([^"]+)"', info)
        previous = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
        marker = MARKER.search(previous) or RUN_MARKER.search(previous)
        body = "\n".join(ln.removeprefix(indent) for ln in lines[i + 1 : end])
        out.append(
            Block(
                page,
                i + 1,
                lang,
                title.group(1) if title else None,
                body + "\n",
                (marker.group(1) or "run whole by tests/test_docs_protocols.py")
                if marker
                else None,
            )
        )
        i = end + 1
    return out


ALL = [b for page in PAGES for b in blocks(page)]
CHECKED = {"yaml", "sh", "python", "toml", "json", "text", "output"}


def _ids(items: list[Any]) -> list[str]:
    return [p.relative_to(ROOT).as_posix() for p in items]


def test_every_block_has_a_known_language_or_says_why_not() -> None:
    bad = [
        f"{b.where()}: ```{b.lang or '(no language)'}"
        for b in ALL
        if b.lang not in CHECKED and b.skip_reason is None
    ]
    assert not bad, "tag these blocks (yaml, sh, python, toml, json, text) or mark them:\n" + (
        "\n".join(bad)
    )


def test_readme_is_short() -> None:
    size = len((ROOT / "README.md").read_bytes())
    assert size < 15_000, f"README.md is {size} bytes; move detail into docs/"


# --- YAML ------------------------------------------------------------------------------


def _env_for(text: str, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text):
        dummy = "https://example.com/dummy" if "URL" in name else f"dummy-{name.lower()}"
        env.setdefault(name, dummy)
    return env


def _check_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tsagent_cmd(), "check-config", str(path)],
        env=_env_for(path.read_text(), env),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=path.parent,
    )


def _yamls(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.lang == "yaml" and b.skip_reason is None]


YAML_PAGES = [p for p in PAGES if _yamls(p)]


@pytest.mark.parametrize("page", YAML_PAGES, ids=_ids(YAML_PAGES))
def test_yaml_snippets(page: Path, tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    yamls = _yamls(page)
    failures: list[str] = []
    files = [b for b in yamls if b.title]
    for b in files:  # other files first: configs may name them (rule_files, mappings)
        target = tmp_path / b.title  # type: ignore[operator]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(b.text)
    for n, b in enumerate(yamls):
        try:
            data = yaml.safe_load(b.text)
        except yaml.YAMLError as exc:
            failures.append(f"{b.where()}: not YAML: {exc}")
            continue
        problem = _check_yaml(b, data, tmp_path, n, subprocess_env)
        if problem:
            failures.append(f"{b.where()}: {problem}")
    assert not failures, "\n".join(failures)


def _check_yaml(b: Block, data: Any, tmp_path: Path, n: int, env: dict[str, str]) -> str | None:
    title = b.title
    if title is None or title.endswith("tsagent.yaml"):
        path = tmp_path / (title or f"config-{n}.yaml")
        path.write_text(b.text)
        done = _check_config(path, env)
        return None if done.returncode == 0 else done.stderr.strip()
    path = tmp_path / title
    if isinstance(data, dict) and "groups" in data:
        config = tmp_path / f"rules-check-{n}.yaml"
        config.write_text(yaml.safe_dump({"alerting": {"rule_files": [str(path)]}}))
        done = _check_config(config, env)
        return None if done.returncode == 0 else done.stderr.strip()
    if "mapping" in title:
        from agent.dataio.importer import MappingError, load_mapping

        try:
            load_mapping(path)
        except (MappingError, ValueError) as exc:
            return f"CSV mapping: {exc}"
        return None
    if Path(title).name == "prometheus.yml":
        promtool = shutil.which("promtool")
        if promtool is None:
            return None  # parsed as YAML above; promtool (Debian prometheus) checks more
        done = subprocess.run(
            [promtool, "check", "config", str(path)], capture_output=True, text=True
        )
        return None if done.returncode == 0 else done.stdout + done.stderr
    return f'unknown kind of file title="{title}": see the conventions in tests/test_docs.py'


# --- shell: tsagent command lines ------------------------------------------------------


def _commands(block: Block) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", block.text)
    return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.startswith("#")]


def _tsagent_argv(line: str) -> list[str] | None:
    words = shlex.split(line, comments=True)
    if words and words[0] == "sudo":
        words = words[1:]
    if words and words[0] in TSAGENT_PREFIXES:
        return words[1:]
    return None


def test_tsagent_command_lines_parse() -> None:
    from agent.cli import build_parser

    failures = []
    for b in ALL:
        if b.lang != "sh" or b.skip_reason:
            continue
        for line in _commands(b):
            for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", line):
                argv = _tsagent_argv(part) if part else None
                if argv is None:
                    continue
                try:
                    build_parser().parse_args(argv)
                except SystemExit as exc:
                    if exc.code not in (0, None):
                        failures.append(f"{b.where()}: {part}")
    assert not failures, "commands tsagent would refuse:\n" + "\n".join(failures)


# --- shell: curl against a daemon on the default port ----------------------------------


def _curls(page: Path) -> list[tuple[Block, str]]:
    return [
        (b, line)
        for b in blocks(page)
        if b.lang == "sh" and b.skip_reason is None
        for line in _commands(b)
        if line.startswith("curl ")
    ]


CURL_PAGES = [p for p in PAGES if _curls(p)]


@pytest.mark.skipif(NO_NETNS is not None, reason=str(NO_NETNS))
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("page", CURL_PAGES, ids=_ids(CURL_PAGES))
def test_curl_snippets_against_a_daemon_on_the_default_port(
    page: Path, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="tsagent-docs-"))
    open_tree(work)
    notify = NotifySocket(work / "notify")
    env = {k: v for k, v in subprocess_env.items() if k != "NOTIFY_SOCKET"}
    service = ServiceProcess(
        [*tsagent_cmd(), "run", "--data-dir", str(work / "data")],
        {**env, "NOTIFY_SOCKET": str(notify.path), "PYTHONPATH": str(ROOT)},
        work / "daemon.log",
    )
    failures = []
    try:
        notify.wait_for("READY=1", service)
        for b in blocks(page):  # files the curls may upload (mappings, CSV)
            if b.title:
                (work / b.title).parent.mkdir(parents=True, exist_ok=True)
                (work / b.title).write_text(b.text)
        for b, line in _curls(page):
            cmd = "set -o pipefail; " + line.replace("curl ", "curl --fail-with-body -sS ", 1)
            done = subprocess.run(
                ["nsenter", f"--net=/proc/{service.proc.pid}/ns/net", "--", "bash", "-c", cmd],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if done.returncode != 0:
                failures.append(f"{b.where()}: {line}\n  -> {done.stdout}{done.stderr}")
    finally:
        service.stop()
        notify.close()
        shutil.rmtree(work, ignore_errors=True)
    assert not failures, "\n".join(failures)


# --- other languages -------------------------------------------------------------------


def test_python_toml_json_snippets_parse() -> None:
    failures = []
    for b in ALL:
        if b.skip_reason:
            continue
        try:
            if b.lang == "python":
                compile(b.text, b.where(), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            elif b.lang == "toml":
                tomllib.loads(b.text)
            elif b.lang == "json":
                json.loads(b.text)
        except (SyntaxError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            failures.append(f"{b.where()}: {exc}")
    assert not failures, "\n".join(failures)


# --- generated pages and the site ------------------------------------------------------


def test_configuration_reference_is_current() -> None:
    from agent.cli import config_reference

    committed = ROOT / "docs" / "configuration-reference.md"
    assert committed.read_text() == config_reference(), (
        "docs/configuration-reference.md is stale: run"
        " `tsagent example-config --markdown > docs/configuration-reference.md`"
    )


def test_docs_build_strict(tmp_path: Path) -> None:
    """``mkdocs build --strict``: broken links, unknown anchors and pages missing from nav fail."""
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (it is in the [test] extra)")
    pytest.importorskip("material", reason="mkdocs-material is not installed ([test] extra)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [
            str(Path(os.sys.executable).parent / "mkdocs"),
            "build",
            "--strict",
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "deployment" / "index.html").exists()


def test_readme_links_point_at_files_that_exist() -> None:
    """The README is not part of the MkDocs site, so its links get their own check."""
    text = (ROOT / "README.md").read_text()
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        if not (ROOT / target.split("#")[0]).exists():
            missing.append(target)
    assert not missing, missing
