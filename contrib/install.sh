#!/bin/sh
# Install tsagent for production: a venv with the runtime dependencies only (no
# test tools), the command linked where the systemd unit expects it, the unit
# itself and the configuration directory. No make, no compiler; run as root from
# a checkout or an unpacked sdist:
#
#     sudo contrib/install.sh
#     sudo systemctl enable --now tsagent
#     curl -s localhost:9201/-/ready
#
# Layout (each path has an option, for packagers and for the test that runs this):
#   /opt/tsagent/                      the venv (--prefix)
#   /usr/local/bin/tsagent             symlink to /opt/tsagent/bin/tsagent (--bin-dir)
#   /etc/systemd/system/tsagent.service  the unit, ExecStart pointing at the link (--unit-dir)
#   /etc/tsagent/                      optional tsagent.yaml (--config-dir); never overwritten
#   /var/lib/tsagent/                  the data, created by systemd (StateDirectory=tsagent)
#
# Options: --prefix DIR --bin-dir DIR --unit-dir DIR --config-dir DIR
#          --source PATH (a checkout, sdist or wheel; default: this checkout)
#          --python PYTHON (3.11 or newer; default python3) --no-systemd (no unit, no reload)
# Running it again upgrades in place; the database and the config are kept.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
prefix=/opt/tsagent
bin_dir=/usr/local/bin
unit_dir=/etc/systemd/system
config_dir=/etc/tsagent
source=$here
python=python3
systemd=yes

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) prefix=$2; shift 2 ;;
    --bin-dir) bin_dir=$2; shift 2 ;;
    --unit-dir) unit_dir=$2; shift 2 ;;
    --config-dir) config_dir=$2; shift 2 ;;
    --source) source=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --no-systemd) systemd=no; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage 2 >&2 ;;
  esac
done

case $prefix in
  /home/*|/root/*|/root)
    echo "install.sh: $prefix is under a home directory, which the unit hides (ProtectHome=yes)" >&2
    exit 2 ;;
esac

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "install.sh: $python is missing or older than 3.11" >&2
  exit 2
fi

echo "==> venv $prefix"
"$python" -m venv "$prefix"
echo "==> pip install $source (runtime dependencies only)"
"$prefix/bin/pip" install --quiet --disable-pip-version-check --upgrade "$source"

echo "==> link $bin_dir/tsagent"
mkdir -p "$bin_dir"
ln -sfn "$prefix/bin/tsagent" "$bin_dir/tsagent"

mkdir -p "$config_dir"
chmod 0755 "$config_dir"

if [ "$systemd" = yes ]; then
  echo "==> unit $unit_dir/tsagent.service"
  mkdir -p "$unit_dir"
  sed "s|^ExecStart=/usr/local/bin/tsagent |ExecStart=$bin_dir/tsagent |" \
    "$here/systemd/tsagent.service" >"$unit_dir/tsagent.service.tmp"
  chmod 0644 "$unit_dir/tsagent.service.tmp"
  mv "$unit_dir/tsagent.service.tmp" "$unit_dir/tsagent.service"
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl daemon-reload
  fi
fi

"$bin_dir/tsagent" --version
cat <<MSG
Installed. Next:
  systemctl enable --now tsagent          # start now and at boot
  curl -s localhost:9201/-/ready          # "ready" once it serves
  $bin_dir/tsagent example-config         # every key; put yours in $config_dir/tsagent.yaml
  $bin_dir/tsagent check-config $config_dir/tsagent.yaml && systemctl reload tsagent
MSG
