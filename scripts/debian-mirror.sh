# Sourced by get-opa.sh and get-kube.sh: the Debian mirror this machine's own apt uses, and private
# apt roots on it (nothing is installed on the machine).
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

# A private apt root for one suite of $MIRROR (signed by $KEYRING), its index
# read: `apt-get -c DIR/apt.conf` then sees only that suite. apt-get -c reads
# this file after the system configuration, so it overrides every Dir:: setting
# while keeping the machine's Acquire:: settings (proxies, Check-Valid-Until
# policy of the mirror). Callers define `die`.
make_apt_root() { # $1 = dir, $2 = suite, $3 = "src" to add the source index
    local r=$1 suite=$2
    mkdir -p "$r"/{state/lists/partial,cache/archives/partial,etc/sources.list.d,etc/preferences.d,etc/trusted.gpg.d,dpkg,log}
    : >"$r/dpkg/status"
    printf 'deb [signed-by=%s] %s %s main\n' "$KEYRING" "$MIRROR" "$suite" >"$r/etc/sources.list"
    if [ "${3:-}" = src ]; then
        printf 'deb-src [signed-by=%s] %s %s main\n' "$KEYRING" "$MIRROR" "$suite" >>"$r/etc/sources.list"
    fi
    cat >"$r/apt.conf" <<EOF
Dir::State "$r/state";
Dir::State::lists "$r/state/lists";
Dir::State::status "$r/dpkg/status";
Dir::Cache "$r/cache";
Dir::Cache::archives "$r/cache/archives";
Dir::Etc::sourcelist "$r/etc/sources.list";
Dir::Etc::sourceparts "$r/etc/sources.list.d";
Dir::Etc::preferences "$r/etc/preferences";
Dir::Etc::preferencesparts "$r/etc/preferences.d";
Dir::Etc::trusted "$r/etc/trusted.gpg";
Dir::Etc::trustedparts "$r/etc/trusted.gpg.d";
Dir::Log "$r/log";
APT::Sandbox::User "$(id -un)";
APT::Install-Recommends "false";
APT::Install-Suggests "false";
APT::Get::AllowUnauthenticated "false";
Acquire::Languages "none";
Acquire::Retries "3";
EOF
    apt-get -c "$r/apt.conf" -qq update >&2 ||
        die "apt-get update of $suite from $MIRROR failed"
}
