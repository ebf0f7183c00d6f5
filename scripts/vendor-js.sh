#!/bin/sh
# vendor-js.sh refreshes the browser libraries the dashboard embeds:
# MQTT.js (npm "mqtt", its browser bundle) and uPlot (npm "uplot"), each
# with its licence, under dashboard/web/vendor/. It needs node and npm;
# building and running Tether does not.
#
#   scripts/vendor-js.sh                 # latest releases
#   MQTT_VERSION=5.14.1 UPLOT_VERSION=1.6.32 scripts/vendor-js.sh
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/dashboard/web/vendor"
mqtt_version=${MQTT_VERSION:-latest}
uplot_version=${UPLOT_VERSION:-latest}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

cd "$tmp"
npm init -y >/dev/null
npm install --no-audit --no-fund --ignore-scripts --omit=dev \
	"mqtt@$mqtt_version" "uplot@$uplot_version" >/dev/null

mkdir -p "$dest"
cp node_modules/mqtt/dist/mqtt.min.js "$dest/mqtt.min.js"
cp node_modules/mqtt/LICENSE.md "$dest/mqtt.LICENSE.md"
cp node_modules/uplot/dist/uPlot.iife.min.js "$dest/uPlot.iife.min.js"
cp node_modules/uplot/dist/uPlot.min.css "$dest/uPlot.min.css"
cp node_modules/uplot/LICENSE "$dest/uPlot.LICENSE"

ver() { node -p "require('./node_modules/$1/package.json').version"; }
{
	echo "# Written by scripts/vendor-js.sh; do not edit."
	echo "mqtt $(ver mqtt) dist/mqtt.min.js LICENSE.md"
	echo "uplot $(ver uplot) dist/uPlot.iife.min.js dist/uPlot.min.css LICENSE"
} >"$dest/VERSIONS"
cat "$dest/VERSIONS"
