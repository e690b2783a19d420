#!/usr/bin/env bash
# The desk's Check beside `validate`, on the same CSV, in interleaved rounds: what a person
# waits for between choosing a file and seeing what would be sent. The desk's figure is
# the whole upload (multipart over loopback) plus the look at every row and the ledger.
#
# Usage: benches/desk_check.sh [ROWS...]   (default 10000 100000; release build first)
set -euo pipefail
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
bin=target/release/invoice-dispatch
[[ -x $bin ]] || { echo "build first: cargo build --release" >&2; exit 1; }
work=$(mktemp -d)
desk_pid=''
trap '[[ -z $desk_pid ]] || kill "$desk_pid" 2>/dev/null; rm -rf -- "$work"' EXIT
"$bin" desk --no-open --listen 127.0.0.1:0 --ledger "$work/ledger.sqlite3" >"$work/out" 2>"$work/err" &
desk_pid=$!
for _ in $(seq 100); do grep -q '^desk: ' "$work/out" && break; sleep 0.1; done
url=$(sed -n 's/^desk: //p' "$work/out")
base=${url%%/?token=*} token=${url##*token=}
port=${base##*:}
cookie="invoice_dispatch_desk_$port=$token"
invoices() {
    python3 - "$1" <<'PY'
import sys
print("department_uuid,invoice_guid,send_as_text,send_as_email,amount")
for i in range(int(sys.argv[1])):
    print(f"3f2b9c1e-7a4d-4e8b-9f61-2c5d8a0e4b17,INV-{i:07},yes,no,{i % 997}.25")
PY
}
# A ledger that knows 10,000 of the invoices (a rehearsal, as the desk's Rehearse is), so
# the Check looks each row up in earnest.
invoices 10000 >"$work/earlier.csv"
"$bin" send "$work/earlier.csv" --simulate --ledger "$work/ledger.sqlite3" --rate 0 \
    --out "$work/earlier.results.csv" --no-report --quiet --no-progress 2>/dev/null || true
for rows in "${@:-10000 100000}"; do
    for rows_one in $rows; do
        file="$work/in-$rows_one.csv"
        invoices "$rows_one" >"$file"
        for round in 1 2 3; do
            t0=$(date +%s.%N)
            "$bin" validate "$file" >/dev/null 2>&1
            t1=$(date +%s.%N)
            code=$(curl -s -o /dev/null -w '%{http_code}' -b "$cookie" -H "Origin: $base" \
                -F "file=@$file" -F target=rehearse "$base/upload?csrf=$token")
            t2=$(date +%s.%N)
            [[ $code == 303 ]] || { echo "upload answered $code" >&2; exit 1; }
            printf '%7d rows, round %d: validate %.2f s, desk upload+check %.2f s\n' \
                "$rows_one" "$round" "$(awk "BEGIN {print $t1 - $t0}")" "$(awk "BEGIN {print $t2 - $t1}")"
        done
    done
done
rss=$(awk '/VmHWM/ {print $2}' "/proc/$desk_pid/status")
echo "desk peak RSS after all rounds: $((rss / 1024)) MiB"
