#!/usr/bin/env bash
# What the bench needs beyond the dev install: wrk (Debian) for plain request rates.
set -euo pipefail
if ! command -v wrk >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
