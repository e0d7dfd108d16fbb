# Installs Debian packages the scripts need, once. Sourced by scripts/test and
# scripts/quickstart; `need_packages CMD:PACKAGE...` installs PACKAGE when CMD is missing.

need_packages() {
    local missing=()
    for pair in "$@"; do
        local cmd=${pair%%:*} pkg=${pair##*:}
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: missing packages: ${missing[*]}; install them (sudo apt-get install -y ${missing[*]}) or run as root" >&2
        return 1
    fi
    echo "==> installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # Packages such as nginx start a system service on install; the tests start their own
    # instances, so forbid service starts while installing (policy-rc.d exit 101).
    local policy=/usr/sbin/policy-rc.d created=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1
    fi
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ -n "$created" ] && rm -f "$policy"
    return 0
}

need_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "error: cargo not found: install Rust (https://rustup.rs) and retry" >&2
        return 1
    fi
}
