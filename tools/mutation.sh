#!/usr/bin/env bash
# Mutation testing: mutmut mutates the core modules (closing, listeners, events,
# heartbeat, tracker, names, conf; see [tool.mutmut] in pyproject.toml) and runs
# the fast suite (no e2e, soak or browser tests) against each mutant, only the
# tests that reach the mutated function. Not part of CI: a full run takes about
# an hour on a shared 2-core machine. Results and what survived: docs/mutation.md.
#
#   bash tools/mutation.sh                          # everything, from scratch
#   bash tools/mutation.sh "channels_presence.tracker*"   # some mutants only
#   KEEP=1 bash tools/mutation.sh                   # resume the last run (mutants/)
#
# mutmut copies the project into mutants/ and runs from there. presence.lua is
# not mutated: mutmut mutates Python only.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q -e ".[tests,mutation]" 2>&1 | grep -v "^WARNING: Location" || true

if [ -z "${KEEP:-}" ]; then
    rm -rf mutants
fi
# The suite starts its own throwaway Redis: never the machine's.
unset REDIS_URL
.venv/bin/mutmut run --max-children "${JOBS:-2}" "$@"
.venv/bin/mutmut results
