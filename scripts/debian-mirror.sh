# Sourced by get-opa.sh and get-kube.sh: the Debian mirror this machine's own apt uses.
# shellcheck shell=bash

# The Debian mirror the machine's own apt uses: the first enabled URI, in
# /etc/apt/sources.list{,.d/*.list} (one-line style) or sources.list.d/*.sources
# (deb822), whose path ends in /debian.
apt_source_uris() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        sed -e 's/#.*//' "$f" | awk '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if (i <= NF) print $i
            }'
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk '
            function flush() {
                if (is_deb && enabled && uris != "") print uris
                uris = ""; is_deb = 0; enabled = 1; field = ""
            }
            BEGIN { enabled = 1 }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]/ { if (field == "uris") uris = uris " " $0; next }
            {
                name = tolower($0); sub(/:.*/, "", name); field = name
                value = $0; sub(/^[^:]*:[ \t]*/, "", value)
                if (name == "types") is_deb = (value ~ /(^|[ \t])deb([ \t]|$)/)
                else if (name == "enabled") enabled = (tolower(value) !~ /^no/)
                else if (name == "uris") uris = value
            }
            END { flush() }' "$f" | tr ' \t' '\n\n' | sed '/^$/d'
    done
}

find_debian_mirror() {
    local u
    if [ -n "${1:-}" ]; then  # an override, e.g. $OPA_DEBIAN_MIRROR
        printf '%s\n' "${1%/}"
        return 0
    fi
    while read -r u; do
        u=${u%/}
        case $u in
            *://*/debian) printf '%s\n' "$u"; return 0 ;;
        esac
    done < <(apt_source_uris)
    return 1
}

