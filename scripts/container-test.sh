#!/usr/bin/env bash
# Build the image from ./Dockerfile and run the container tests (tests/container) against it in
# real containers: podman, nginx on the host in front of two replicas, and compose.yaml (nginx,
# two replicas, Redis for their limits) brought up by podman-compose.
#
#   scripts/container-test.sh [PYTHON]
#
# PYTHON: the python of a venv with `pip install -e ".[dev]"` (default: python3); .ci/run
# passes its fresh dev venv. Run as root (as CI does): it installs the Debian packages it needs,
# and removes every container, network and image it made, also when it fails (a trap). It keeps
# only the stand-in base images' root filesystems (tarballs) in $CHAT_STREAM_PROXY_CI_CACHE
# (default /var/cache/chat-stream-proxy-ci), rebuilt when missing or older than a week.
#
# What differs from a Docker host is printed where it applies and listed again at the end:
#  - base images: docker.io/library/python:3.11-slim (and nginx and redis for compose.yaml) are
#    pulled when the registry can be reached; where not, stand-ins are built from Debian's own
#    packages with mmdebstrap (Debian's Python 3.11, nginx and redis-server) and the build uses
#    `podman build --from <stand-in>`: the Dockerfile itself is built unchanged;
#  - the build: --isolation chroot, --network host and this machine's CA bundle mounted into
#    the build steps (pip reaches the package index through a TLS-inspecting proxy here; the
#    bundle is not copied into the image); --format docker, which keeps the HEALTHCHECK;
#  - the runtime: where the runtime may not set the resource limits podman asks for (here
#    setrlimit of podman's defaults, e.g. 1048576 open files, is denied), runc is called
#    through a wrapper that drops process.rlimits from the OCI spec;
#  - healthchecks: podman runs them on `podman healthcheck run` (no systemd timers here).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-python3}
python=$(command -v "$python")

run_id="$(date +%Y%m%d%H%M%S)-$$"
label="chat-stream-proxy-ci=$run_id"
image="localhost/chat-stream-proxy:ci-$run_id"
project="csp-ci-$run_id" # the compose project of tests/container/test_compose.py
cache=${CHAT_STREAM_PROXY_CI_CACHE:-/var/cache/chat-stream-proxy-ci}
work=$(mktemp -d /tmp/container-test.XXXXXX)
differences=()
began=$(date +%s)

say() { printf '\n--> %s\n' "$*"; }
differs() {
  differences+=("$*")
  printf '    [differs from a Docker host] %s\n' "$*"
}
fail() {
  echo "container-test: FAILED: $*" >&2
  exit 1
}
seconds_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# --- packages -------------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || fail "run as root (rootful podman), as CI does"
install_packages() {
  echo "    apt-get install $*"
  if [ -z "${apt_updated:-}" ]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
    >"$work/apt.log" 2>&1 || {
    tail -20 "$work/apt.log"
    fail "apt-get install $*"
  }
}
say "packages"
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v newuidmap >/dev/null || missing+=(uidmap)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v curl >/dev/null || missing+=(curl)
[ ${#missing[@]} -eq 0 ] || install_packages "${missing[@]}"
# Compose services find each other by name: CNI needs the dnsname plugin, netavark aardvark-dns.
case "$(podman info --format '{{.Host.NetworkBackend}}')" in
  cni) [ -x /usr/lib/cni/dnsname ] || install_packages golang-github-containernetworking-plugin-dnsname ;;
  netavark) [ -x /usr/lib/podman/aardvark-dns ] || install_packages aardvark-dns ;;
esac
"$python" -c 'import pytest, requests, podman_compose, kubernetes_validate' 2>/dev/null \
  || fail "$python lacks the dev extra: pip install -e '.[dev]'"
echo "    $(podman --version), $(runc --version | head -1), $("$python" -m podman_compose --version 2>/dev/null | head -1)"

# --- cleanup: everything this run made --------------------------------------------------------
podman images --all --quiet --no-trunc | sort -u >"$work/images.before"
cleanup() {
  local status=$?
  set +e
  podman ps --all --quiet --filter "label=io.podman.compose.project=$project" \
    | xargs -r podman rm --force --time 0 >/dev/null 2>&1
  podman network rm --force "${project}_default" >/dev/null 2>&1
  podman ps --all --quiet --filter "label=$label" | xargs -r podman rm --force --time 0 >/dev/null 2>&1
  podman network ls --quiet --filter "label=$label" | xargs -r podman network rm --force >/dev/null 2>&1
  # Every image (tagged, or a build's intermediate layers) that was not there before this run.
  for _ in 1 2 3; do
    podman images --all --quiet --no-trunc | sort -u >"$work/images.after"
    comm -13 "$work/images.before" "$work/images.after" >"$work/images.new"
    [ -s "$work/images.new" ] || break
    xargs -r podman rmi --force <"$work/images.new" >/dev/null 2>&1
  done
  [ -s "$work/images.new" ] && echo "container-test: could not remove images: $(cat "$work/images.new")" >&2
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap "exit 130" INT TERM # the EXIT trap then cleans up

# --- base images: the official ones, or stand-ins from Debian's packages ----------------------
if ! mkdir -p "$cache" 2>/dev/null || [ ! -w "$cache" ]; then
  cache="$work/cache" # works from nothing, only slower
  mkdir -p "$cache"
fi

# shellcheck disable=SC2016 # mmdebstrap's hooks get the root filesystem's path as $1
python_standin() {
  mmdebstrap --quiet --format=tar --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates \
    --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
    bookworm "$1"
}

# shellcheck disable=SC2016
nginx_standin() {
  # As the official image: conf.d/*.conf included, no default site, logs on stdout/stderr.
  mmdebstrap --quiet --format=tar --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --include=nginx \
    --customize-hook='rm -f "$1"/etc/nginx/sites-enabled/default' \
    --customize-hook='ln -sf /dev/stdout "$1"/var/log/nginx/access.log' \
    --customize-hook='ln -sf /dev/stderr "$1"/var/log/nginx/error.log' \
    bookworm "$1"
}

# shellcheck disable=SC2016
redis_standin() {
  # As the official image: user redis with uid 999 (added before the package's postinst would
  # pick another), /data owned by it as the working directory.
  mmdebstrap --quiet --format=tar --variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --essential-hook='echo "redis:x:999:999::/var/lib/redis:/usr/sbin/nologin" >>"$1"/etc/passwd' \
    --essential-hook='echo "redis:x:999:" >>"$1"/etc/group' \
    --include=redis-server \
    --customize-hook='mkdir -m 0755 "$1"/data && chown 999:999 "$1"/data' \
    bookworm "$1"
}

# base_image OFFICIAL RECIPE CHANGE...: sets base_ref to the image to use for OFFICIAL: itself,
# or a stand-in imported from RECIPE's root filesystem with the Dockerfile CHANGEs.
base_image() {
  local official=$1 recipe=$2 key tar started change args=()
  shift 2
  if podman image exists "$official"; then
    base_ref=$official
    echo "    $official: present"
    return
  fi
  if timeout 120 podman pull --quiet "$official" >/dev/null 2>"$work/pull.log"; then
    base_ref=$official
    echo "    $official: pulled"
    return
  fi
  echo "    $official: cannot be pulled ($(tail -1 "$work/pull.log" | cut -c1-120))"
  key=$( (declare -f "$recipe" && printf '%s\n' "$@") | sha256sum | cut -c1-12)
  tar="$cache/$recipe-bookworm-$key.tar"
  if [ -z "$(find "$tar" -mtime -7 2>/dev/null)" ]; then
    command -v mmdebstrap >/dev/null || install_packages mmdebstrap
    started=$(date +%s.%N)
    "$recipe" "$tar.part" >"$work/$recipe.log" 2>&1 || {
      tail -20 "$work/$recipe.log"
      fail "mmdebstrap ($recipe)"
    }
    mv "$tar.part" "$tar"
    echo "    built $tar with mmdebstrap in $(seconds_since "$started") s"
  else
    echo "    $tar: cached"
  fi
  base_ref="localhost/chat-stream-proxy-ci/$recipe:$run_id"
  for change in "$@"; do args+=(--change "$change"); done
  podman import --quiet "${args[@]}" "$tar" "$base_ref" >/dev/null
  differs "$official: a stand-in, $base_ref, built from Debian bookworm's packages ($recipe)"
}

say "base images"
base_image docker.io/library/python:3.11-slim python_standin 'ENV LANG=C.UTF-8' \
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' 'CMD ["python3"]'
python_base=$base_ref
base_image docker.io/library/nginx:1.28 nginx_standin \
  'CMD ["nginx", "-g", "daemon off;"]' 'STOPSIGNAL SIGQUIT' 'EXPOSE 80'
nginx_image=$base_ref
# The official image starts as root and drops to redis, with protected mode compiled off.
base_image docker.io/library/redis:7 redis_standin 'USER redis' 'WORKDIR /data' 'EXPOSE 6379' \
  'CMD ["redis-server", "--protected-mode", "no"]'
redis_image=$base_ref

# --- the runtime ------------------------------------------------------------------------------
say "container runtime"
if podman run --rm --network none --label "$label" "$python_base" true 2>"$work/runtime.log"; then
  echo "    podman run works with $(podman info --format '{{.Host.OCIRuntime.Name}}')"
else
  # Seen here: "error setting rlimit type 7: operation not permitted" (runc), and crun
  # rejecting the machine's hybrid cgroups.
  echo "    podman run fails here with $(podman info --format '{{.Host.OCIRuntime.Name}}'):"
  grep -i error "$work/runtime.log" | head -3 | cut -c1-200 | sed 's/^/      /'
  wrapper="$work/runc-no-rlimits"
  cat >"$wrapper" <<EOF
#!/bin/sh
# runc, minus process.rlimits in the OCI spec: this machine denies setting podman's limits.
bundle="" process="" prev=""
for arg in "\$@"; do
  case "\$prev" in --bundle|-b) bundle=\$arg ;; --process|-p) process=\$arg ;; esac
  case "\$arg" in --bundle=*) bundle=\${arg#--bundle=} ;; --process=*) process=\${arg#--process=} ;; esac
  prev=\$arg
done
"$python" - \${bundle:+"\$bundle/config.json"} \${process:+"\$process"} <<'PY'
import json, sys
for path in sys.argv[1:]:
    try:
        with open(path) as f:
            spec = json.load(f)
    except FileNotFoundError:
        continue
    process = spec.get("process", {}) if "ociVersion" in spec else spec
    if process.pop("rlimits", None) is not None:
        with open(path, "w") as f:
            json.dump(spec, f)
PY
exec $(command -v runc) "\$@"
EOF
  chmod +x "$wrapper"
  printf '[engine]\nruntime = "runc-no-rlimits"\n[engine.runtimes]\nrunc-no-rlimits = ["%s"]\n' \
    "$wrapper" >"$work/containers.conf"
  export CONTAINERS_CONF="$work/containers.conf" # podman, podman-compose and the tests use it
  if ! podman run --rm --network none --label "$label" "$python_base" true 2>"$work/runtime.log"; then
    cat "$work/runtime.log"
    fail "podman run fails through the runtime wrapper too"
  fi
  differs "runtime: runc through a wrapper that drops process.rlimits (setting podman's default limits is denied here): containers inherit this machine's limits (open files: $(ulimit -n)), not podman's defaults"
fi
differs "healthchecks: no systemd timers here; the tests run the image's HEALTHCHECK with podman healthcheck run"

# --- build ------------------------------------------------------------------------------------
build_flags=(--format docker --isolation chroot --network host)
ca=/etc/ssl/certs/ca-certificates.crt
[ -r "$ca" ] && build_flags+=(--volume "$ca:$ca:ro")
from=()
[ "$python_base" = docker.io/library/python:3.11-slim ] || from=(--from "$python_base")
differs "build: podman build ${build_flags[*]} ${from[*]}"

say "build $image"
started=$(date +%s.%N)
podman build "${build_flags[@]}" "${from[@]}" --tag "$image" . >"$work/build.log" 2>&1 || {
  tail -40 "$work/build.log"
  fail "podman build"
}
build_seconds=$(seconds_since "$started")
grep -E '^STEP [0-9]+/[0-9]+: (FROM|RUN|COPY)' "$work/build.log" | cut -c1-110 | sed 's/^/    /'
echo "    built in $build_seconds s"

say "layer cache: a change in proxy/ rebuilds the code, not the dependencies"
context="$work/context"
mkdir "$context"
git ls-files -z --cached --others --exclude-standard \
  | tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$context"
echo "# a change" >>"$context/proxy/__init__.py"
started=$(date +%s.%N)
podman build "${build_flags[@]}" "${from[@]}" --tag "$image-cache-check" "$context" \
  >"$work/rebuild.log" 2>&1 || {
  tail -40 "$work/rebuild.log"
  fail "podman build (cache check)"
}
cached() { grep -A1 -F "$1" "$work/rebuild.log" | grep -q -e '--> Using cache'; }
cached 'pip install .' || fail "the dependencies' layer was rebuilt for a change in proxy/"
! cached 'pip install --no-deps .' || fail "the code's layer was not rebuilt for a change in proxy/"
echo "    dependencies' layer: from the cache; the code's layer: rebuilt; in $(seconds_since "$started") s"
podman rmi "$image-cache-check" >/dev/null

say "size and cold start"
size=$(podman image inspect --format '{{.Size}}' "$image")
base_size=$(podman image inspect --format '{{.Size}}' "$python_base")
echo "    image $((size / 1000000)) MB: base $((base_size / 1000000)) MB + dependencies and code $(((size - base_size) / 1000000)) MB"
free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
starts=()
for run in 1 2 3; do
  port=$(free_port)
  started=$(date +%s.%N)
  podman run --detach --name "csp-cold-start-$run_id-$run" --label "$label" \
    --publish "127.0.0.1:$port:8000" "$image" >/dev/null 2>"$work/run.log"
  for _ in $(seq 3000); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break
    sleep 0.01
  done
  curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" || fail "no /healthz after 30 s: $(podman logs "csp-cold-start-$run_id-$run" 2>&1 | tail -5)"
  starts+=("$(seconds_since "$started")")
  podman rm --force --time 0 "csp-cold-start-$run_id-$run" >/dev/null 2>&1 # (no systemd: noise)
done
echo "    cold start (podman run until /healthz answers): ${starts[*]} s"

say "config/kubernetes.yaml against the Kubernetes schemas, with no network"
if unshare --net true 2>/dev/null; then
  unshare --net "$python" -m kubernetes_validate --strict config/kubernetes.yaml
else
  "$python" -m kubernetes_validate --strict config/kubernetes.yaml
  echo "    (could not make a network namespace: ran with the network)"
fi

say "container tests (tests/container)"
export PROXY_CONTAINER_IMAGE="$image" PROXY_CONTAINER_LABEL="$label"
export PROXY_CONTAINER_NGINX_IMAGE="$nginx_image" PROXY_CONTAINER_REDIS_IMAGE="$redis_image"
export PROXY_CONTAINER_COMPOSE_PROJECT="$project"
started=$(date +%s.%N)
"$python" -m pytest tests/container -p no:cacheprovider -v -s --junitxml="$work/junit.xml"
tests_seconds=$(seconds_since "$started")
# Nothing may skip here: a skip would hide a container test that did not run.
"$python" - "$work/junit.xml" <<'PY'
import sys
import xml.etree.ElementTree as ET

suite = ET.parse(sys.argv[1]).getroot().find("testsuite")
counts = {key: int(suite.get(key, 0)) for key in ("tests", "skipped", "failures", "errors")}
assert counts["skipped"] == 0, f"container tests skipped: {counts}"
assert counts["tests"] >= 20, f"too few container tests ran: {counts}"
PY

say "summary"
echo "    image: $((size / 1000000)) MB; cold start: ${starts[*]} s; build: $build_seconds s; tests: $tests_seconds s; all: $(($(date +%s) - began)) s"
echo "    what differed from a Docker host in this run:"
for difference in "${differences[@]}"; do echo "      - $difference"; done
echo "container-test: OK"
