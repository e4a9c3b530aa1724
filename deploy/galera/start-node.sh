#!/bin/sh
# Start a MariaDB Galera node the safe way; the same script for containers and for hosts.
#
#   GALERA_BOOTSTRAP=1  on exactly ONE node, and only for the very first start of the cluster:
#                       it starts a new cluster when its data directory is still empty.
#
# Every other start joins the running cluster. After a crash (SIGKILL, power loss) the node first
# recovers its last committed position (mariadbd --wsrep-recover, as the galera_recovery script of
# the Debian package does) and passes it on with --wsrep-start-position: the node then rejoins
# with an incremental state transfer (IST) of what it missed, instead of a full copy (SST).
# A node never bootstraps a second cluster on its own: restarting the whole cluster after all
# nodes stopped needs an operator's decision (see README, "Deploy").
#
# Run it as the database's user (mysql), as the image and Debian's systemd unit do: the crash
# recovery's log is written by mariadbd as that user.
#
# Arguments are passed to mariadbd (cluster address, node name...).
set -eu

DATADIR="${DATADIR:-/var/lib/mysql}"
MARIADBD="${MARIADBD:-mariadbd}"
# In the official image, the server is started through its entrypoint (it initializes an empty
# data directory and the root password first); on a host, directly.
if [ -z "${START:-}" ]; then
    if command -v docker-entrypoint.sh >/dev/null 2>&1; then
        START="docker-entrypoint.sh $MARIADBD"
    else
        START="$MARIADBD"
    fi
fi

if [ "${GALERA_BOOTSTRAP:-0}" = "1" ] && [ ! -f "$DATADIR/grastate.dat" ]; then
    echo "start-node: empty data directory and GALERA_BOOTSTRAP=1: starting a new cluster" >&2
    # shellcheck disable=SC2086  # START is a command and its first argument
    exec $START "$@" --wsrep-new-cluster
fi

if [ -f "$DATADIR/grastate.dat" ]; then
    log="$(mktemp)"
    # Prints "WSREP: Recovered position: <uuid>:<seqno>" when the last shutdown was not clean.
    if "$MARIADBD" "$@" --wsrep-recover --log-error="$log" >/dev/null 2>&1; then
        position="$(sed -n 's/.*WSREP: Recovered position: *//p' "$log" | tail -n 1)"
        rm -f "$log"
        if [ -n "$position" ]; then
            echo "start-node: recovered position $position" >&2
            # shellcheck disable=SC2086
            exec $START "$@" --wsrep-start-position="$position"
        fi
        echo "start-node: no position recovered (the log of --wsrep-recover says none): joining as is" >&2
    else
        echo "start-node: --wsrep-recover failed; joining with a state transfer" >&2
        rm -f "$log"
    fi
fi
# shellcheck disable=SC2086
exec $START "$@"
