# Sourced by e2e parts and benches: bounded waits.

# wait_until SECONDS WHAT COMMAND...: runs COMMAND every half second until it succeeds; after
# SECONDS, says what it waited for and fails.
wait_until() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" > /dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "timed out after ${limit}s waiting for: $what" >&2
      return 1
    fi
    sleep 0.5
  done
}
