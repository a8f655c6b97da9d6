#!/usr/bin/env bash
# The cost of tracing, counted (README "Measured"): the tally server's instructions per call under
# callgrind, traces off / 1 % / 100 %. Needs valgrind and release builds of `tally` and `tally-otlp-sink`:
#   cargo build --release -p tally-gateway --bin tally -p tally-tests --bin tally-otlp-sink
#   target/release/tally-otlp-sink 127.0.0.1:4317 &
#   for m in off one all; do docs/measure_tracing_cost.sh $m; done
set -u
BIN=$(cd "$(dirname "$0")/.." && pwd)/target/release
mode=$1; small=${2:-1000}; large=${3:-4000}
dir=$(mktemp -d); port=$((40000 + RANDOM % 10000))
env_args=()
case $mode in
  off) ;;
  one) env_args=(OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01) ;;
  all) env_args=(OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=1.0) ;;
esac
env RUST_LOG=info "${env_args[@]}" valgrind --tool=callgrind --callgrind-out-file=/tmp/cg2.$mode.%p.out \
  $BIN/tally serve --listen 127.0.0.1:$port --data $dir --insecure-no-auth > /tmp/cg2.$mode.log 2>&1 &
pid=$!
for i in $(seq 1 240); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.5; done
bench() { $BIN/tally bench --server http://127.0.0.1:$port --wallets 500 --hot-wallets 10 --requests $1 --concurrency 8 --duration-secs 900 > /tmp/cg2.$mode.bench.$1 2>&1; }
ir() { grep -m1 "^summary:\|^totals:" "$(ls -t /tmp/cg2.$mode.$pid.out.* | head -1)" | awk '{print $2}'; }
bench 1000
sleep 1; callgrind_control --zero $pid > /dev/null; bench $small; sleep 2; callgrind_control --dump=small $pid > /dev/null; sleep 2; a=$(ir)
callgrind_control --zero $pid > /dev/null; bench $large; sleep 2; callgrind_control --dump=large $pid > /dev/null; sleep 2; b=$(ir)
kill -INT $pid; wait $pid 2>/dev/null
echo "$mode small=$small Ir=$a large=$large Ir=$b per_call=$(( (b - a) / (large - small) ))"
rm -rf $dir
