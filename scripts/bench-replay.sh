#!/usr/bin/env bash
# `generator replay --speed max` on a file in the public multi-category store
# dataset's format, made here with the dataset's shape and removed after:
# about 16 events per second of data; events come from 5 000 open sessions,
# a session ends after 4.6 events on average (42 M events and 9 M sessions
# in 2019-Oct.csv) and a new one starts for one of 3 M users; 30 % empty
# category codes; carts and removals. Prints events/s and peak RSS.
# "On one core", strictly: each run is pinned to one CPU (taskset), so its
# reading and writing threads share it; events/s is by the wall clock on
# that one CPU, events/cpu-s divides by the user + system time of both.
#   REPLAY_CPU=1 pins to another CPU; REPLAY_CPU=all does not pin.
#   REPLAY_ROWS=10000000 (default, about 1.3 GB); REPLAY_ROWS=42000000 is the
#   size of 2019-Oct.csv (about 5 GB).
#   REPLAY_INPUT=/path/2019-Oct.csv replays a real download instead.
#   GENERATOR=/path/to/generator uses that binary instead of building one
#   (scripts/bench.sh does, and puts the figures in docs/performance_metrics.md).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/tools.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ecommerce-pipeline/target}
REPLAY_ROWS=${REPLAY_ROWS:-10000000}

# GNU time for the peak RSS (`command -v time` would find the shell's keyword).
[ -x /usr/bin/time ] || apt_install time "GNU time (/usr/bin/time) not found"
pin=()
if [ "${REPLAY_CPU:-0}" != all ]; then
    command -v taskset >/dev/null || apt_install util-linux "taskset not found"
    pin=(taskset -c "${REPLAY_CPU:-0}")
fi
if [ -z "${GENERATOR:-}" ]; then
    cargo build --release --locked -p generator
    GENERATOR="$CARGO_TARGET_DIR/release/generator"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

input=${REPLAY_INPUT:-}
if [ -z "$input" ]; then
    input="$work/dataset.csv"
    echo "== making $REPLAY_ROWS dataset rows"
    awk -v rows="$REPLAY_ROWS" 'BEGIN {
        srand(1)
        split("electronics.smartphone,appliances.kitchen.washer,computers.notebook,furniture.living_room.sofa,apparel.shoes,electronics.audio.headphone,construction.tools.drill,kids.toys", codes, ",")
        split("samsung,apple,xiaomi,huawei,lenovo,bosch,sony,lg,acer,nike", brands, ",")
        print "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
        for (k = 0; k < 5000; k++) pool[k] = 500000000 + int(rand() * 3000000)
        for (i = 0; i < rows; i++) {
            k = int(rand() * 5000); if (rand() < 1 / 4.6) pool[k] = 500000000 + int(rand() * 3000000)
            s = int(i / 16); d = int(s / 86400) + 1; r = s % 86400
            t = sprintf("2019-10-%02d %02d:%02d:%02d UTC", d, int(r / 3600), int(r % 3600 / 60), r % 60)
            x = rand(); type = x < 0.90 ? "view" : x < 0.96 ? "cart" : x < 0.98 ? "remove_from_cart" : "purchase"
            code = rand() < 0.3 ? "" : codes[int(rand() * 8) + 1]
            brand = rand() < 0.15 ? "" : brands[int(rand() * 10) + 1]
            printf "%s,%s,%d,2053013555631882655,%s,%s,%.2f,%d,%08x-0000-4000-8000-%012x\n", t, type, 1000000 + int(rand() * 200000), code, brand, rand() * 1000, pool[k], i, i
        }
    }' >"$input"
fi
bytes=$(stat -c %s "$input")
echo "== replaying $((bytes / 1000000)) MB at --speed max, ${REPLAY_RUNS:-3} runs, on CPU ${REPLAY_CPU:-0}"
for run in $(seq "${REPLAY_RUNS:-3}"); do
    rm -rf "$work/out"
    # The input just made, or the last run's removed files, are not this
    # run's writeback.
    sync
    "${pin[@]}" /usr/bin/time -f "%M %e %U %S" -o "$work/time" \
        "$GENERATOR" replay --input "$input" --data-dir "$work/out" --speed max --log-format json \
        2>"$work/log" || { tail -5 "$work/log"; exit 1; }
    read -r rss wall user sys <"$work/time"
    summary=$(grep '"replay finished"' "$work/log")
    field() { printf '%s' "$summary" | sed -E "s/.*\"$1\":([0-9]+).*/\1/"; }
    awk -v run="$run" -v e="$(field events)" -v w="$wall" -v u="$user" -v s="$sys" -v rss="$rss" \
        -v bad="$(field malformed)" -v files="$(field files)" -v cart="$(field skipped_cart)" 'BEGIN {
        printf "replay %d events=%d files=%d skipped_cart=%d malformed=%d wall=%.1fs cpu=%.1fs events/s=%.0f events/cpu-s=%.0f peak_rss=%d MB\n",
            run, e, files, cart, bad, w, u + s, e / w, e / (u + s), rss / 1024
    }'
done
