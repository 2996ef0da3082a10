#!/usr/bin/env bash
# netcheck's two-command set-up, as root on Debian 12 or Ubuntu 22.04/24.04:
#
#   sudo bash bootstrap.sh suites [pytest args]   install what the suites need, run suites/, print the HTML report's path
#   sudo bash bootstrap.sh tests  [pytest args]   install everything (the other tools too), run ruff, mypy and pytest tests suites
#   sudo bash bootstrap.sh --install-only         install what the suites need, run nothing (used by the Vagrantfile)
#
# --with-tools (with suites or --install-only) also installs the tools that the other-tool
# adapters drive (CNI plugins, netavark, Podman, Docker, a static busybox) and that the
# project's own tests use (Chromium, tshark, vagrant); tests always installs them.
#
# Installing is idempotent: apt is touched only when a package is missing, and pip only
# when pyproject.toml is newer than the stamp inside .venv. Downloads come from apt and
# pip alone. Services that packages would start (dockerd, podman's units) are held back
# during the install, so the host's own network namespace is left as it was.
set -uo pipefail

PROG="bootstrap.sh"
MIN_PY_MINOR=11 # Python 3.11: tomllib

usage() {
    cat <<EOF
usage: sudo bash $PROG MODE [--with-tools] [pytest args...]

modes:
  suites          install what the suites need, then run .venv/bin/pytest suites/ [args];
                  prints where the newest HTML report is; exits with pytest's code
  tests           install everything (the other tools included), then run ruff check .,
                  mypy and .venv/bin/pytest tests suites (the scale suite included) [args];
                  non-zero on any failure
  --install-only  install what the suites need and stop
  -h, --help      show this help

options:
  --list-packages print the system packages the mode needs, each present or missing, and
                  stop (installs nothing, needs no root)
  --with-tools    also install the tools for the other-tool adapters (containernetworking-plugins,
                  netavark, podman, runc, aardvark-dns, docker.io, busybox-static) and for the project's own
                  tests (chromium, tshark, vagrant, tcpdump, iputils-ping); implied by tests
EOF
}

say() { printf '[bootstrap] %s\n' "$*"; }
warn() { printf '[bootstrap] WARNING: %s\n' "$*" >&2; }
die() {
    printf '[bootstrap] ERROR: %s\n' "$*" >&2
    exit 1
}

MODE=""
WITH_TOOLS=0
LIST_ONLY=0
# The mode and --with-tools, in either order; everything after them goes to pytest.
while [ "$#" -gt 0 ]; do
    case "$1" in
        suites | tests | --install-only)
            if [ -n "$MODE" ]; then
                printf '%s: two modes given (%s and %s): choose one\n' "$PROG" "$MODE" "$1" >&2
                usage >&2
                exit 2
            fi
            MODE="$1"
            shift
            ;;
        --with-tools)
            WITH_TOOLS=1
            shift
            ;;
        --list-packages)
            LIST_ONLY=1
            shift
            ;;
        -h | --help | help)
            usage
            exit 0
            ;;
        *) break ;;
    esac
done
if [ -z "$MODE" ]; then
    if [ "$#" -gt 0 ]; then
        printf '%s: unknown mode %q\n' "$PROG" "$1" >&2
    fi
    usage >&2
    exit 2
fi
if [ "$MODE" = tests ]; then
    WITH_TOOLS=1
fi

# ---------------------------------------------------------------- system packages

# What the main job needs: pytest suites/ on the built-in topologies, and its HTML report
# (graphviz draws the diagram; gcc and the headers build python-iptables).
SUITE_PACKAGES=(
    python3 python3-venv python3-dev gcc iproute2 iptables nftables conntrack graphviz
    procps util-linux ca-certificates python3-nftables bpftrace
)
# With --with-tools, and for tests: the tools that the other-tool adapters drive (examples/*.toml),
# and what the project's own tests use (Chromium for the report's browser test, tshark to read
# the saved pcaps, vagrant to validate the Vagrantfile, openssh-server for the ssh node test (an sshd
# in a sandbox namespace; policy-rc.d keeps the package from starting the machine's own); tcpdump and ping for a person's look).
TOOL_PACKAGES=(
    containernetworking-plugins netavark podman runc aardvark-dns docker.io busybox-static
    chromium chromium-driver tshark vagrant tcpdump iputils-ping openssh-server
)
APT_UPDATED=0
POLICY_RC_D=/usr/sbin/policy-rc.d
POLICY_RC_D_OURS=0

cleanup() {
    if [ "$POLICY_RC_D_OURS" = 1 ]; then
        rm -f "$POLICY_RC_D"
        POLICY_RC_D_OURS=0
    fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

pkg_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# A tool counts as present when what its tests run is there (not a client's name), whoever
# packaged it: Docker's docker-ce brings dockerd and runc, and conflicts with docker.io and
# runc; a snap brings chromium. Any other package counts as present when dpkg has it.
pkg_present() {
    local p="$1"
    case "$p" in
        # the engine, not the client: a fresh machine has a Docker client in /usr/local/bin and no dockerd
        docker.io) command -v dockerd >/dev/null 2>&1 && command -v containerd >/dev/null 2>&1 ;;
        runc) command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] ;;
        podman) command -v podman >/dev/null 2>&1 ;;
        netavark) [ -x /usr/lib/podman/netavark ] || [ -x /usr/libexec/podman/netavark ] ;;
        aardvark-dns) [ -x /usr/lib/podman/aardvark-dns ] || [ -x /usr/libexec/podman/aardvark-dns ] ;;
        # the plugins the CNI adapter runs
        containernetworking-plugins) [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/portmap ] && [ -x /usr/lib/cni/host-local ] ;;
        vagrant) command -v vagrant >/dev/null 2>&1 ;;
        chromium)
            pkg_installed chromium || pkg_installed chromium-browser ||
                command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
            ;;
        *) pkg_installed "$p" ;;
    esac
}

# Is there a real .deb candidate for the package (not purely virtual, not a snap wrapper)?
pkg_available() {
    local info
    info="$(apt-cache show --no-all-versions "$1" 2>/dev/null)" || return 1
    grep -q '^Package:' <<<"$info" || return 1
    if grep -Eq '^(Pre-)?Depends:.*\bsnapd\b' <<<"$info"; then
        return 1
    fi
    return 0
}

# The packages this mode installs, one a line with "present" or "missing" (--list-packages).
mode_packages() {
    printf '%s\n' "${SUITE_PACKAGES[@]}"
    if [ "$WITH_TOOLS" = 1 ]; then printf '%s\n' "${TOOL_PACKAGES[@]}"; fi
}

list_packages() {
    local p
    while read -r p; do
        if pkg_present "$p"; then echo "$p present"; else echo "$p missing"; fi
    done < <(mode_packages)
}

apt_update_once() {
    [ "$APT_UPDATED" = 1 ] && return 0
    say "apt-get update"
    apt-get -o DPkg::Lock::Timeout=300 update -q || warn "apt-get update failed; trying the package lists already on this machine"
    APT_UPDATED=1
}

hold_services() {
    # Debian's policy-rc.d: exit 101 tells invoke-rc.d (and deb-systemd-invoke) not to
    # start services during this install. An existing policy file is left as it is.
    if [ ! -e "$POLICY_RC_D" ]; then
        printf '#!/bin/sh\n# written by netcheck bootstrap.sh while it installs packages; removed afterwards\nexit 101\n' >"$POLICY_RC_D"
        chmod 755 "$POLICY_RC_D"
        POLICY_RC_D_OURS=1
    fi
}

apt_install() {
    # Install the given packages; fall back to one at a time so that one broken package
    # does not stop the others. Returns non-zero if any failed.
    [ "$#" -gt 0 ] || return 0
    local rc=0 p
    hold_services
    echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections 2>/dev/null || true
    say "apt-get install -y --no-install-recommends $*"
    if ! apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "$@"; then
        warn "installing them together failed; installing one at a time"
        for p in "$@"; do
            if ! apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "$p"; then
                warn "could not install $p; going on without it"
                rc=1
            fi
        done
    fi
    cleanup
    return "$rc"
}

# Install whichever of the named packages are missing and exist in the configured
# repositories; warn about the ones that do not exist.
ensure_packages() {
    local missing=() p
    for p in "$@"; do
        pkg_present "$p" || missing+=("$p")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    say "missing packages: ${missing[*]}"
    apt_update_once
    local todo=()
    for p in "${missing[@]}"; do
        if pkg_available "$p"; then
            todo+=("$p")
        elif [ "$p" = chromium ] && pkg_available chromium-browser; then
            todo+=(chromium-browser)
        elif [ "$p" = chromium ]; then
            warn "no chromium .deb in this machine's repositories (on Ubuntu it is a snap); skipping it: report screenshots will be missing"
        else
            warn "package $p is not in this machine's repositories; skipping it: tests that need it will skip"
        fi
    done
    apt_install "${todo[@]}" || true
}

py_minor_ok() {
    # $1: an interpreter; true when it runs and is Python 3.MIN_PY_MINOR or newer.
    "$1" -c "import sys; sys.exit(0 if sys.version_info >= (3, $MIN_PY_MINOR) else 1)" >/dev/null 2>&1
}

find_python() {
    local c
    for c in "${NETCHECK_PYTHON:-}" /usr/bin/python3 /usr/bin/python3.13 /usr/bin/python3.12 /usr/bin/python3.11; do
        [ -n "$c" ] && [ -x "$c" ] && py_minor_ok "$c" && {
            echo "$c"
            return 0
        }
    done
    return 1
}

install_system() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: $PROG supports Debian 12 and Ubuntu 22.04/24.04"
    if [ "$WITH_TOOLS" = 1 ]; then
        say "checking system packages (the suites' and the other tools')"
    else
        say "checking system packages (the suites'; --with-tools adds: ${TOOL_PACKAGES[*]})"
    fi
    local wanted=()
    mapfile -t wanted < <(mode_packages)
    ensure_packages "${wanted[@]}"

    PYTHON="$(find_python)" || PYTHON=""
    if [ -z "$PYTHON" ]; then
        # Ubuntu 22.04: python3 is 3.10; 3.11 is a separate package.
        say "python3 is older than 3.$MIN_PY_MINOR; installing python3.11"
        ensure_packages python3.11 python3.11-venv python3.11-dev
        PYTHON="$(find_python)" || die "no Python >= 3.$MIN_PY_MINOR available (tried python3, python3.11); install one and set NETCHECK_PYTHON=/path/to/python3.x"
    fi
    case "$PYTHON" in
        /usr/bin/python3.[0-9]*)
            # a versioned interpreter: make sure its venv and headers are there too
            local v="${PYTHON##*/}"
            ensure_packages "$v-venv" "$v-dev"
            ;;
    esac
    say "system packages ready; Python: $PYTHON ($("$PYTHON" -c 'import platform; print(platform.python_version())'))"
}

# ---------------------------------------------------------------- virtualenv

install_venv() {
    if [ -e "$VENV" ] && ! { [ -x "$VENV/bin/python" ] && py_minor_ok "$VENV/bin/python"; }; then
        say "$VENV is broken or older than Python 3.$MIN_PY_MINOR; recreating it"
        rm -rf "$VENV"
    fi
    if [ ! -e "$VENV" ]; then
        say "creating $VENV with $PYTHON"
        if ! "$PYTHON" -m venv "$VENV"; then
            rm -rf "$VENV"
            die "'$PYTHON -m venv' failed (is the python3-venv package for this Python installed?)"
        fi
    fi
    # tests needs the dev tools (ruff, mypy, hypothesis, pytest-html); the suites need the package alone.
    local target="."
    if [ "$MODE" = tests ]; then target=".[dev]"; fi
    if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ ! -x "$VENV/bin/pytest" ] ||
        { [ "$target" = ".[dev]" ] && [ "$(cat "$STAMP")" != ".[dev]" ]; }; then
        # The distribution was called netcheck before it became pytest-netcheck: drop the old name.
        if "$VENV/bin/python" -m pip show -q netcheck >/dev/null 2>&1; then
            "$VENV/bin/python" -m pip uninstall -q -y netcheck || warn "could not uninstall the old netcheck distribution from $VENV"
        fi
        say "pip install -e '$target' into $VENV"
        "$VENV/bin/python" -m pip install -q -e "$target" || die "pip install -e '$target' failed"
        printf '%s\n' "$target" >"$STAMP"
    else
        say "$VENV is up to date with pyproject.toml (stamp $STAMP)"
    fi
    say "virtualenv ready: $VENV ($("$VENV/bin/python" -c 'import platform; print("Python", platform.python_version())'))"
}

install_all() {
    local t0=$SECONDS
    install_system
    install_venv
    say "install done in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------- modes

newest_report() {
    local f="" r
    for r in reports/netcheck-*.html; do
        [ -f "$r" ] || continue
        if [ -z "$f" ] || [ "$r" -nt "$f" ]; then f="$r"; fi
    done
    if [ -n "$f" ]; then
        say "HTML report: $ROOT/$f"
    else
        say "no HTML report found (no reports/netcheck-*.html was written)"
    fi
}

run_suites() {
    export PATH="$VENV/bin:$PATH"
    say "running: .venv/bin/pytest suites/ $*"
    "$VENV/bin/pytest" suites/ "$@"
    local rc=$?
    newest_report
    say "pytest exited with $rc"
    return "$rc"
}

run_tests() {
    export PATH="$VENV/bin:$PATH"
    local failed=()
    say "running: ruff check ."
    "$VENV/bin/ruff" check . || failed+=("ruff")
    say "running: mypy"
    "$VENV/bin/mypy" || failed+=("mypy")
    # Everything, the opt-in scale suite (100 containers, the full matrix) included, in
    # NETCHECK_TEST_WORKERS processes (pytest-xdist; default 2): most of the time is spent waiting
    # on labs and probes, and every lab is tagged, so two run side by side (about half the time).
    local workers="${NETCHECK_TEST_WORKERS:-2}"
    say "running: .venv/bin/pytest tests suites -m 'scale or not scale' -n $workers $*"
    "$VENV/bin/pytest" tests suites -m "scale or not scale" -n "$workers" "$@"
    local rc=$?
    case "$rc" in
        0) ;;
        5) failed+=("pytest (exit 5: no tests collected)") ;;
        *) failed+=("pytest (exit $rc)") ;;
    esac
    if [ "${#failed[@]}" -gt 0 ]; then
        say "FAILED: ${failed[*]}"
        return 1
    fi
    return 0
}

# ---------------------------------------------------------------- main

if [ "$LIST_ONLY" = 1 ]; then
    list_packages
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    printf '%s: netcheck builds network namespaces and installs system packages: run as root, e.g. sudo bash bootstrap.sh %s\n' \
        "$PROG" "$MODE" >&2
    exit 2
fi

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" || die "cannot cd to the script's directory"
ROOT="$PWD"
VENV="$ROOT/.venv"
STAMP="$VENV/.netcheck-bootstrap-stamp"
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

install_all
case "$MODE" in
    --install-only) exit 0 ;;
    suites)
        run_suites "$@"
        exit $?
        ;;
    tests)
        run_tests "$@"
        exit $?
        ;;
esac
