#!/usr/bin/env bash
# `scripts/bench sandboxes [--runtime docker|podman] [--runs N] [--out DIR]`:
# sandbox create-to-Ready through the gateway against a bare `RUNTIME run -d` of the same
# image, interleaved in one invocation so both see the same machine state.
#
#   ours:     `openshell sandbox create` until it returns (the gateway created the container,
#             the supervisor inside dialled back over QUIC with its minted credential, and
#             the sandbox is Ready), then `sandbox delete`.
#   baseline: `RUNTIME run -d IMAGE sleep 600` until it returns (container started), then rm.
#
# Writes DIR/sandboxes-RUNTIME.md (default DIR: bench-results) and prints it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

runtime=docker
runs=10
out="$root/bench-results"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runtime) runtime=$2; shift ;;
        --runs) runs=$2; shift ;;
        --out) out="$(realpath -m "$2")"; shift ;;
        *) echo "error: unknown argument '$1' (see scripts/bench --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$runtime" in docker|podman) ;; *) echo "error: --runtime must be docker or podman" >&2; exit 2 ;; esac

target_dir="${CARGO_TARGET_DIR:-$root/target}"
cargo build --release -q -p openshell-gateway -p openshell-cli -p openshell-supervisor
bin="$target_dir/release"
image=openshell-bench/sandbox:latest
CARGO_TARGET_DIR="$target_dir" scripts/build-sandbox-image --runtime "$runtime" --tag "$image" >&2

work=$(mktemp -d)
gw_pid=
podman_pid=
cleanup() {
    [[ -n $gw_pid ]] && kill "$gw_pid" 2>/dev/null && wait "$gw_pid" 2>/dev/null
    "$runtime" ps -aq --filter label=openshell.gateway=bench-sandboxes | xargs -r "$runtime" rm -f >/dev/null 2>&1 || true
    [[ -n $podman_pid ]] && kill "$podman_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

export HOME="$work/home" XDG_CONFIG_HOME="$work/xdg" XDG_STATE_HOME="$work/state" NO_COLOR=1
mkdir -p "$HOME"
openshell() { "$bin/openshell" "$@"; }
openshell pki init >/dev/null 2>&1
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
extra=()
if [[ $runtime == podman ]]; then
    printf '[containers]\ndefault_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]\n' >"$work/containers.conf"
    CONTAINERS_CONF="$work/containers.conf" podman system service --time=0 "unix://$work/podman.sock" >"$work/podman.log" 2>&1 &
    podman_pid=$!
    for _ in $(seq 100); do [[ -S $work/podman.sock ]] && break; sleep 0.1; done
    extra=(--podman-socket "$work/podman.sock")
    export CONTAINERS_CONF="$work/containers.conf"
fi
"$bin/openshell-gateway" --listen "0.0.0.0:$port" --state-dir "$work/gw" \
    --pki-dir "$XDG_STATE_HOME/openshell/gateway/pki" --drivers "$runtime" \
    --sandbox-image "$image" --gateway-id bench-sandboxes "${extra[@]}" >"$work/gateway.log" 2>&1 &
gw_pid=$!
openshell pki issue bench --gateway local >/dev/null 2>&1
openshell gateway add "https://127.0.0.1:$port" --name local >/dev/null 2>&1

now_ms() { date +%s%3N; }
ours=() bare=()
for i in $(seq "$runs"); do
    t0=$(now_ms)
    openshell sandbox create --name "bench-$i" -o json >/dev/null 2>"$work/create.err" ||
        { cat "$work/create.err" "$work/gateway.log" >&2; exit 1; }
    ours+=($(( $(now_ms) - t0 )))
    openshell sandbox delete "bench-$i" >/dev/null 2>&1

    t0=$(now_ms)
    cid=$("$runtime" run -d --label openshell.gateway=bench-sandboxes "$image" sleep 600)
    bare+=($(( $(now_ms) - t0 )))
    "$runtime" kill "$cid" >/dev/null 2>&1; "$runtime" rm -f "$cid" >/dev/null
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
mo=$(median "${ours[@]}")
mb=$(median "${bare[@]}")
ratio=$(awk -v a="$mo" -v b="$mb" 'BEGIN {printf "%.2f", a/b}')
mkdir -p "$out"
report="$out/sandboxes-$runtime.md"
{
    echo "# Sandbox create-to-Ready vs bare \`$runtime run -d\` ($(date -u +%Y-%m-%d), $runs runs each, interleaved)"
    echo
    echo "| | median ms | all runs (ms) |"
    echo "|---|---|---|"
    echo "| \`openshell sandbox create\` (to Ready) | $mo | ${ours[*]} |"
    echo "| \`$runtime run -d\` (baseline) | $mb | ${bare[*]} |"
    echo
    echo "Ratio (median ours / median baseline): **$ratio**"
} >"$report"
cat "$report"
