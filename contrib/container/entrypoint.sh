#!/bin/sh
# The container image's entrypoint (see the Dockerfile and docs/deployment.md).
#
#   (no arguments) or run [ARGS]  tsagent run, on $TSAGENT_LISTEN when set
#   -FLAGS...                     the same, with those flags (e.g. --retention 7d)
#   any other tsagent command     as is: check-config FILE, plugins, rollup --once ...
#
# Config: a file mounted at $CONFIGURATION_DIRECTORY/tsagent.yaml (the image sets
# /etc/tsagent), or the YAML in $TSAGENT_CONFIG_YAML, written to a file under
# $TMPDIR (default /tmp) and used in its place. Both at once is an error: which one
# wins would be a guess. Neither: the built-in defaults.
set -eu

mounted="${CONFIGURATION_DIRECTORY:-/etc/tsagent}/tsagent.yaml"
if [ -n "${TSAGENT_CONFIG_YAML:-}" ]; then
  if [ -f "$mounted" ]; then
    echo "tsagent-entrypoint: both TSAGENT_CONFIG_YAML and $mounted are set; use one" >&2
    exit 2
  fi
  dir=$(mktemp -d "${TMPDIR:-/tmp}/tsagent-config.XXXXXX")
  printf '%s\n' "$TSAGENT_CONFIG_YAML" >"$dir/tsagent.yaml"
  CONFIGURATION_DIRECTORY=$dir
  export CONFIGURATION_DIRECTORY
fi

if [ $# -eq 0 ]; then
  set -- run
fi
case $1 in
  -*) set -- run "$@" ;;
esac
if [ "$1" = run ] && [ -n "${TSAGENT_LISTEN:-}" ]; then
  shift
  set -- run --listen "$TSAGENT_LISTEN" "$@"
fi
exec tsagent "$@"
