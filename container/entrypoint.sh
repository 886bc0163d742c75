#!/bin/sh
# Thin wrapper: every decision (environment -> config, secrets, the command to
# exec) is made by backupd/ops/entrypoint/, which the test suite runs
# without Docker. `docker run IMAGE backupd prune --dry-run` (any other
# command) runs that command instead.
set -e
case "${1:-run}" in
    run|plan|healthcheck) exec "${BACKUPD_PYTHON:-python3}" -m backupd.ops.entrypoint "$@" ;;
    *) exec "$@" ;;
esac
