# Sourced by the scale benchmarks. Expects $weir (the binary) and $data (a scratch
# directory).
#
# start_weir [VAR=value...]: starts `weir serve` on $data/weir with the native door on a free
#   port, the Kafka and HTTP doors off and the given settings; sets pid, addr and listened
#   (seconds until it listened).
# stop_weir: stops it (SIGTERM) and waits for it.
# now, rss_kib PID, fds PID: small measurements.
now() { date +%s.%N; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }
start_weir() {
    local t0 out=$data/out
    rm -f "$out"
    t0=$(now)
    env WEIR_DATA_DIR="$data/weir" WEIR_NATIVE__LISTEN=127.0.0.1:0 WEIR_KAFKA__ENABLED=false \
        WEIR_HTTP__ENABLED=false WEIR_LOG__LEVEL=warn "$@" "$weir" serve > "$out" 2>&1 &
    pid=$!
    for _ in $(seq 6000); do grep -q "native=" "$out" 2> /dev/null && break; sleep 0.01; done
    addr=$(grep -o "native=[0-9.:]*" "$out" | cut -d= -f2)
    [[ -n $addr ]] || { echo "the server did not start:" >&2; cat "$out" >&2; exit 1; }
    listened=$(python3 -c "print(round($(now) - $t0, 3))")
}
stop_weir() {
    if [[ -n ${pid:-} ]]; then
        kill "$pid" 2> /dev/null || true
        wait "$pid" 2> /dev/null || true
        pid=
    fi
}
