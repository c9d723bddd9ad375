#!/bin/sh
# The server app waits until its sites are done, or until fedrun stops it because a site
# failed (a stop fedrun asks for is not a failure of the server app). Each site app raises
# an "exception": exit code 101.
if [ "$FEDRUN_SITE" = "server" ]; then
    trap 'echo "server: stopped by fedrun"; exit 0' TERM
    echo "server: waiting for sites"
    sleep 30 &
    wait $!
    echo "server: no site reported"
    exit 0
fi
echo "$FEDRUN_SITE: loading data"
echo "Traceback (most recent call last):" >&2
echo "ValueError: $FEDRUN_SITE: the local data set is empty" >&2
exit 101
