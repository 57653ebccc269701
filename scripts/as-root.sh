# Sourced by the scripts next to it, from the checkout's top (they cd there first),
# which need root (Debian packages, network namespaces, BPF): `as_root "$@"` returns
# as root, or runs the script again through sudo (keeping its arguments and KPBENCH_*
# settings), or says what to do.
as_root() {
    [ "$(id -u)" -eq 0 ] && return 0
    local me script keep=() v
    me="$(basename "$0")"
    script="$PWD/scripts/$me"
    if command -v sudo >/dev/null 2>&1; then
        echo "$me: needs root: running it again through sudo" >&2
        for v in $(compgen -e); do
            case "$v" in KPBENCH_*) keep+=("$v=${!v}") ;; esac
        done
        exec sudo -- env "${keep[@]}" bash "$script" "$@"
    fi
    echo "$me: needs root (it installs Debian packages and builds network namespaces)," \
         "and sudo is not installed: run it as root, e.g. su -c '$script${*:+ $*}'" >&2
    exit 2
}
