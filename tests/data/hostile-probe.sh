#!/bin/sh
# A probe gone bad, for tests/test_integration.py: it stands in for /harness/probe in one guest and
# answers every case it is asked for with what issue 11 found breaking the harness, in this order.
# argv: run --memlock M --user U --timeout T CASE...
shift 7
C1=$1 C2=$2 C3=$3 C4=$4 C5=$5 C6=$6
printf '{"kind":"case","case":"%s","duration_ms":"5"}\n' "$C1"
printf '{"kind":"case","case":"%s","kernel_log":5}\n' "$C2"
printf '{"kind":"case","case":"%s","size":%s}\n' "$C3" "$(head -c 5000 /dev/zero | tr '\0' 9)"
printf '{"kind":"case","case":"%s","x":' "$C4"; head -c 200000 /dev/zero | tr '\0' '['; echo
printf '{"kind":"case","case":"%s","status":"weird\\ud800 \\u001b]0;owned\\u0007\\u001b[2J\\u001b[31m","result":"ok"}\n' "$C5"
head -c 65536 /dev/urandom | tr -d '\n'
echo
head -c 100000000 /dev/zero | tr '\0' A
echo
printf '{"kind":"case","case":"%s","status":"ok","res' "$C6"
