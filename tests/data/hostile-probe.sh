#!/bin/sh
# A probe gone bad, for tests/test_integration.py: it stands in for /harness/probe in one guest and
# answers every case it is asked for with what issue 11 found breaking the harness, in this order.
# argv: run --memlock M --user U --timeout T CASE...
shift 7
c() { eval "echo \${$1}"; }  # the N-th case asked for
printf '{"kind":"case","case":"%s","duration_ms":"5"}\n' "$(c 1)"
printf '{"kind":"case","case":"%s","kernel_log":5}\n' "$(c 2)"
printf '{"kind":"case","case":"%s","size":%s}\n' "$(c 3)" "$(head -c 5000 /dev/zero | tr '\0' 9)"
printf '{"kind":"case","case":"%s","x":' "$(c 4)"; head -c 200000 /dev/zero | tr '\0' '['; echo
printf '{"kind":"case","case":"%s","status":"weird\\ud800 \033]0;owned\007\033[2J\033[31m","result":"ok"}\n' "$(c 5)"
head -c 65536 /dev/urandom | tr -d '\n'
echo
head -c 100000000 /dev/zero | tr '\0' A
echo
printf '{"kind":"case","case":"%s","status":"ok","res' "$(c 6)"
