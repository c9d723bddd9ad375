#!/bin/sh
# Trains "forever", one round a second, until fedrun asks it to stop (SIGTERM); then it
# saves its state and exits 0 within the abort grace.
trap 'echo "$FEDRUN_SITE: stop requested after round $i, saving"; echo "$i" > "$FEDRUN_WORKSPACE/last_round"; exit 0' TERM
i=0
echo "$FEDRUN_SITE: training until aborted"
while true; do
    i=$((i + 1))
    echo "$FEDRUN_SITE: round $i"
    sleep 1 &
    wait $!
done
