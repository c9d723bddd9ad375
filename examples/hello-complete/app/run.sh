#!/bin/sh
# A federated "hello": the server waits a moment for its sites, each site does a few
# quick rounds of work. Everyone exits 0, so the job ends FINISHED:COMPLETED.
echo "hello from $FEDRUN_SITE, job $FEDRUN_JOB_ID"
if [ "$FEDRUN_SITE" = "server" ]; then
    sleep 2
    echo "server: all rounds done"
else
    i=1
    while [ "$i" -le "${HELLO_ROUNDS:-2}" ]; do
        echo "$FEDRUN_SITE: round $i"
        sleep 0.2
        i=$((i + 1))
    done
    echo "$FEDRUN_SITE: done"
fi
exit 0
