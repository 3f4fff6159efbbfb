#!/bin/sh
# Leaves a setsid, double-forked daemon behind and records its PID (and start time) in $1, then
# either exits ("exit") or hangs ("hang").
pidfile=$1; mode=$2
setsid sh -c 'sleep 300 & echo $! > "$0.tmp"; mv "$0.tmp" "$0"' "$pidfile" &
while [ ! -s "$pidfile" ]; do sleep 0.01; done
[ "$mode" = hang ] && exec sleep 300
exit 0
