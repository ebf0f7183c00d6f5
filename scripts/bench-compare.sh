#!/usr/bin/env bash
# bench-compare.sh — the performance table: runs the same `tether bench`
# scenarios against Tether, Debian's Mosquitto, a bare mochi-mqtt broker
# (scripts/mochi-bare) and, when it is installed, nats-server's MQTT
# listener, all on loopback, interleaved, and prints Markdown.
#
# Usage: scripts/bench-compare.sh            (from anywhere in the repository)
# Environment (defaults in brackets):
#   DURATION [5s]   publishing time of each run
#   ROUNDS   [1]    how many times the whole interleaved set is repeated
#   PUBS     [10]   publishers for fanin and pairs
#   SIZE     [64]   payload bytes
#   RATE     [0]    messages/s per publisher; 0 = as fast as 64 unacknowledged
#                   publishes per publisher allow (a saturation test)
#   CONNS    [2000] idle connections of the conns scenario
#   BASE_PORT [21883] first port tried for the brokers' listeners
#   OUT      []     also write the raw JSON result lines to this file
#   TETHER_BIN []   use this tether binary instead of building ./cmd/tether
#   ONLY     []     comma-separated scenarios to run, e.g. fanin-q1,conns
#   KEEP     []     keep the temporary directory (broker logs, results)
#   TETHER_QUEUE    []     Tether's mqtt.client_queue_size (default: its own, 256)
#   TETHER_INFLIGHT []     Tether's mqtt.max_inflight (default: its own, 1024)
#   MOSQ_QUEUE      [8192] Mosquitto's max_queued_messages
#   NATS_SERVER [nats-server on PATH] the nats-server binary; the broker is
#                   skipped when there is none. Install it with
#                   GOBIN=$HOME/bin go install github.com/nats-io/nats-server/v2@v2.15.2
#   FIXED_RATE [5000] total messages/s of the fixed-rate scenario pairs-q1-fixed
#                   (split over PUBS publishers; its p50/p99 are the figures
#                   to compare, not its rates); 0 leaves it out
#
# Tether runs as `tether serve --allow-anonymous` with its defaults
# otherwise (auth hooks, ACL, presence, telemetry history, SQLite session
# store all on). Mosquitto runs with persistence off. mochi-bare keeps
# mochi's defaults: 8192 queued writes and 8192 QoS 1/2 messages in flight
# per client. nats-server runs with JetStream (its MQTT sessions and QoS 1
# need it) in a temporary store directory and its MQTT defaults
# (max_ack_pending 1024 per subscription).
#
# The per-client bounds decide QoS 1 loss at saturation: none of the three
# slows a publisher down for a slow subscriber, so in fanin (10 publishers,
# one subscriber) messages beyond a subscriber's send queue or in-flight
# store are dropped after the publisher had its PUBACK. Tether's defaults
# (256 and 1024) are sized for many idle devices, not for one subscriber
# taking 30,000 messages/s; TETHER_QUEUE=8192 TETHER_INFLIGHT=8192 gives it
# mochi-bare's bounds, for a like-for-like run. The header states the
# bounds used.
#
# Needs: go, mosquitto (apt-get install mosquitto), awk, ss or bash's
# /dev/tcp.
set -euo pipefail

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-1}
PUBS=${PUBS:-10}
SIZE=${SIZE:-64}
RATE=${RATE:-0}
CONNS=${CONNS:-2000}
BASE_PORT=${BASE_PORT:-21883}
OUT=${OUT:-}
TETHER_BIN=${TETHER_BIN:-}
TETHER_QUEUE=${TETHER_QUEUE:-}
TETHER_INFLIGHT=${TETHER_INFLIGHT:-}
MOSQ_QUEUE=${MOSQ_QUEUE:-8192}
FIXED_RATE=${FIXED_RATE:-5000}
NATS_SERVER=${NATS_SERVER:-$(command -v nats-server || true)}

cd "$(dirname "$0")/.."
MOSQUITTO=$(command -v mosquitto || true)
[ -z "$MOSQUITTO" ] && [ -x /usr/sbin/mosquitto ] && MOSQUITTO=/usr/sbin/mosquitto
if [ -z "$MOSQUITTO" ]; then
	echo "bench-compare: mosquitto not found; install it with: sudo apt-get install mosquitto" >&2
	exit 1
fi

TMP=$(mktemp -d)
PIDS=()
cleanup() {
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	if [ -n "${KEEP:-}" ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "bench-compare: $*" >&2; }

# port_busy PORT: something accepts connections on 127.0.0.1:PORT.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# next_port VAR: sets VAR to the next port from BASE_PORT on that nothing
# listens on (not in a $(...) subshell, which would lose NEXT).
NEXT=$BASE_PORT
next_port() {
	while port_busy "$NEXT"; do NEXT=$((NEXT + 1)); done
	printf -v "$1" '%s' "$NEXT"
	NEXT=$((NEXT + 1))
}

# wait_port PORT NAME PID: wait (at most 30 s) until PORT accepts connections.
wait_port() {
	for _ in $(seq 300); do
		port_busy "$1" && return 0
		kill -0 "$3" 2>/dev/null || { log "$2 exited; its log:"; cat "$TMP/$2.log" >&2; exit 1; }
		sleep 0.1
	done
	log "$2 did not listen on port $1 within 30 s; its log:"
	cat "$TMP/$2.log" >&2
	exit 1
}

log "building tether and mochi-bare"
if [ -n "$TETHER_BIN" ]; then
	cp "$TETHER_BIN" "$TMP/tether"
else
	go build -o "$TMP/tether" ./cmd/tether
fi
go build -o "$TMP/mochi-bare" ./scripts/mochi-bare

next_port T_MQTT
next_port T_HTTP
next_port M_MQTT
next_port B_MQTT
next_port N_MQTT
next_port N_CLIENT

mkdir -p "$TMP/data"
TETHER_ENV=()
[ -n "$TETHER_QUEUE" ] && TETHER_ENV+=("TETHER_MQTT_CLIENT_QUEUE_SIZE=$TETHER_QUEUE")
[ -n "$TETHER_INFLIGHT" ] && TETHER_ENV+=("TETHER_MQTT_MAX_INFLIGHT=$TETHER_INFLIGHT")
# The bounds Tether runs with: the override, else configs/tether.yaml's.
yaml_default() { awk -v k="$1:" '$1 == k { print $2; exit }' configs/tether.yaml; }
T_QUEUE=${TETHER_QUEUE:-$(yaml_default client_queue_size)}
T_INFLIGHT=${TETHER_INFLIGHT:-$(yaml_default max_inflight)}
env "${TETHER_ENV[@]}" TETHER_ADMIN_PASSWORD="$(head -c 18 /dev/urandom | base64)" \
	"$TMP/tether" serve --allow-anonymous --data-dir "$TMP/data" --log-level warn \
	--mqtt-addr "127.0.0.1:$T_MQTT" --http-addr "127.0.0.1:$T_HTTP" \
	--tls-addr off --https-addr off >"$TMP/tether.log" 2>&1 &
T_PID=$!
PIDS+=("$T_PID")

cat >"$TMP/mosquitto.conf" <<CONF
listener $M_MQTT 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages $MOSQ_QUEUE
log_dest stderr
log_type error
CONF
"$MOSQUITTO" -c "$TMP/mosquitto.conf" >"$TMP/mosquitto.log" 2>&1 &
M_PID=$!
PIDS+=("$M_PID")

"$TMP/mochi-bare" --addr "127.0.0.1:$B_MQTT" >"$TMP/mochi-bare.log" 2>&1 &
B_PID=$!
PIDS+=("$B_PID")

if [ -n "$NATS_SERVER" ]; then
	mkdir -p "$TMP/nats-js"
	cat >"$TMP/nats.conf" <<CONF
server_name: bench
listen: 127.0.0.1:$N_CLIENT
jetstream { store_dir: "$TMP/nats-js" }
mqtt { listen: 127.0.0.1:$N_MQTT }
CONF
	"$NATS_SERVER" -c "$TMP/nats.conf" >"$TMP/nats-server.log" 2>&1 &
	N_PID=$!
	PIDS+=("$N_PID")
else
	log "nats-server not found (NATS_SERVER): measuring without it"
fi

wait_port "$T_MQTT" tether "$T_PID"
wait_port "$T_HTTP" tether "$T_PID"
wait_port "$M_MQTT" mosquitto "$M_PID"
wait_port "$B_MQTT" mochi-bare "$B_PID"
[ -n "$NATS_SERVER" ] && wait_port "$N_MQTT" nats-server "$N_PID"

# broker label → URL and pid
declare -A URL=(
	[tether]="tcp://127.0.0.1:$T_MQTT"
	[tether-ws]="ws://127.0.0.1:$T_HTTP/mqtt"
	[mosquitto]="tcp://127.0.0.1:$M_MQTT"
	[mochi-bare]="tcp://127.0.0.1:$B_MQTT"
)
declare -A PID=([tether]=$T_PID [tether-ws]=$T_PID [mosquitto]=$M_PID [mochi-bare]=$B_PID)
if [ -n "$NATS_SERVER" ]; then
	URL[nats]="tcp://127.0.0.1:$N_MQTT"
	PID[nats]=$N_PID
fi

# scenario label → bench flags
# conns first, while the brokers are fresh, so its memory figures are not
# the leftovers of the traffic runs.
SCENARIOS=(
	"conns|--scenario conns --conns $CONNS"
	"fanin-q0|--scenario fanin --qos 0 --pubs $PUBS"
	"fanin-q1|--scenario fanin --qos 1 --pubs $PUBS"
	"pairs-q0|--scenario pairs --qos 0 --pubs $PUBS"
	"pairs-q1|--scenario pairs --qos 1 --pubs $PUBS"
	"fanout-q0|--scenario fanout --qos 0 --subs $PUBS"
	"fanout-q1|--scenario fanout --qos 1 --subs $PUBS"
)
# The fixed rate: FIXED_RATE messages/s in all, QoS 1 pairs, every broker
# far from saturation, so p50/p99 are latency, not queueing.
if [ "$FIXED_RATE" != 0 ]; then
	SCENARIOS+=("pairs-q1-fixed|--scenario pairs --qos 1 --pubs $PUBS --rate $(awk -v r="$FIXED_RATE" -v p="$PUBS" 'BEGIN { print r / p }')")
fi
TRAFFIC_BROKERS=(tether tether-ws mosquitto mochi-bare)
CONNS_BROKERS=(tether mosquitto mochi-bare)
if [ -n "$NATS_SERVER" ]; then
	TRAFFIC_BROKERS+=(nats)
	CONNS_BROKERS+=(nats)
fi

RESULTS="$TMP/results.txt"
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
	for entry in "${SCENARIOS[@]}"; do
		label=${entry%%|*}
		flags=${entry#*|}
		case ",${ONLY:-$label}," in *",$label,"*) ;; *) continue ;; esac
		brokers=("${TRAFFIC_BROKERS[@]}")
		[ "$label" = conns ] && brokers=("${CONNS_BROKERS[@]}")
		for b in "${brokers[@]}"; do
			log "round $round: $label against $b"
			# shellcheck disable=SC2086 # flags are words on purpose
			# the scenario's flags last: a scenario's own --rate wins over RATE
			line=$("$TMP/tether" bench --broker "${URL[$b]}" --size "$SIZE" --rate "$RATE" \
				--duration "$DURATION" --pid "${PID[$b]}" --progress -1s $flags 2>"$TMP/bench.err" | tail -n 1) || {
				log "bench failed:"
				cat "$TMP/bench.err" >&2
				line='{"error":true}'
			}
			echo "$round $label $b $line" >>"$RESULTS"
			[ -n "$OUT" ] && echo "$line" >>"$OUT"
			sleep 1 # let the broker settle
		done
	done
done

CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo
echo "Measured $(date -u +%Y-%m-%d) on $(uname -sm), $(nproc) CPUs ($CPU), $(go version | cut -d' ' -f3);"
NATS_VERSION=
[ -n "$NATS_SERVER" ] && NATS_VERSION="; nats-server $("$NATS_SERVER" --version | sed 's/^nats-server: //') (JetStream on)"
echo "$("$MOSQUITTO" -h 2>/dev/null | head -n 1 | sed 's/ is an MQTT.*//'); mochi-mqtt v2.7.9 bare$NATS_VERSION; each run $DURATION,"
echo "$PUBS publishers/subscribers, $SIZE-byte payloads, rate ${RATE}/s per publisher (0: saturating, 64 in flight), $ROUNDS round(s);"
echo "pairs-q1-fixed: ${FIXED_RATE} msg/s in all over $PUBS pairs."
echo "Per-client bounds: tether client_queue_size $T_QUEUE, max_inflight $T_INFLIGHT; mosquitto max_queued_messages $MOSQ_QUEUE;"
echo "mochi-bare 8192 and 8192 (mochi's defaults). Broker CPU µs/msg: the broker's user+system CPU time while"
echo "publishing and draining, per message received; on a busy machine it varies far less than the rates."
echo

awk '
function get(line, key,    m) {
	if (match(line, "\"" key "\":[^,}]*")) {
		m = substr(line, RSTART + length(key) + 3, RLENGTH - length(key) - 3)
		gsub(/"/, "", m)
		return m
	}
	return "-"
}
function mb(kb) { return kb == "-" ? "-" : sprintf("%.0f", kb / 1024) }
{
	round = $1; label = $2; broker = $3
	line = $0; sub(/^[^ ]+ [^ ]+ [^ ]+ /, "", line)
	if (line ~ /"error":true/) { failed[NR] = 1 }
	rows[NR] = round "|" label "|" broker "|" line
}
END {
	print "| scenario | broker | sent/s | received/s | loss | p50 ms | p99 ms | max ms | broker CPU µs/msg | broker RSS MB |"
	print "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
	for (i = 1; i <= NR; i++) {
		split(rows[i], f, "|")
		if (f[2] == "conns") continue
		l = f[4]
		if (i in failed) { printf "| %s | %s | failed | | | | | | | |\n", f[2], f[3]; continue }
		printf "| %s | %s | %.0f | %.0f | %.4f | %s | %s | %s | %s | %s |\n", f[2], f[3], get(l, "sent_per_s"), get(l, "received_per_s"), get(l, "loss"), get(l, "p50"), get(l, "p99"), get(l, "max"), get(l, "broker_cpu_us_per_msg"), mb(get(l, "broker_rss_kb"))
	}
	print ""
	print "| conns | broker | connected | connects/s | broker RSS MB | KB per connection |"
	print "| --- | --- | ---: | ---: | ---: | ---: |"
	for (i = 1; i <= NR; i++) {
		split(rows[i], f, "|")
		if (f[2] != "conns") continue
		l = f[4]
		if (i in failed) { printf "| conns | %s | failed | | | |\n", f[3]; continue }
		printf "| conns | %s | %d | %.0f | %s | %s |\n", f[3], get(l, "conns") - get(l, "connect_errors"), get(l, "connect_per_s"), mb(get(l, "broker_rss_kb")), get(l, "broker_kb_per_conn") == "-" ? 0 : get(l, "broker_kb_per_conn")
	}
}' "$RESULTS"
