#!/usr/bin/env python3
"""Could a user's counters be served by a view over `events` instead of the
counter tables the applier keeps? Builds a database of EVENTS events (default
10 M) with the generator's skew (users 1..10 000 picked as 1 + u²·N, products
likewise), then times, for 200 random users and the 5 heaviest, the two
queries a reader needs — per category and per product — through the
(user_id, event_time) index, and prints the percentiles.

    DATABASE_URL=postgres://... python3 bench/counters.py [EVENTS]

The goal was 5 ms per user at 10 M events: docs/architecture.md says why the
tables stay. Needs psql. Drops its database at the end.
"""
import os
import random
import statistics
import subprocess
import sys
import uuid

EVENTS = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
ADMIN = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
DB = "bench_counters_" + uuid.uuid4().hex[:8]
URL = ADMIN.rsplit("/", 1)[0] + "/" + DB


def psql(url, sql, stdin=None):
    out = subprocess.run(["psql", url, "-qAtX", "-v", "ON_ERROR_STOP=1"] + ([] if stdin else ["-c", sql]),
                         input=stdin, capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr)
    return out.stdout


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


def main():
    psql(ADMIN, f"CREATE DATABASE {DB}")
    try:
        psql(URL, f"""
CREATE TABLE events (
    event_id BIGSERIAL PRIMARY KEY, user_id INTEGER NOT NULL, user_name TEXT NOT NULL, user_email TEXT NOT NULL,
    event_type TEXT NOT NULL, product_id INTEGER NOT NULL, product_name TEXT NOT NULL, product_category TEXT NOT NULL,
    product_price NUMERIC(10,2) NOT NULL, event_time TIMESTAMPTZ NOT NULL,
    src_mtime BIGINT NOT NULL DEFAULT 0, src_file INTEGER NOT NULL DEFAULT 0, src_line INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT events_user_id_event_time_key UNIQUE (user_id, event_time));
INSERT INTO events (user_id, user_name, user_email, event_type, product_id, product_name, product_category,
                    product_price, event_time)
SELECT 1 + floor(u * u * 10000)::int, 'Some Person', 'some.person@example.com',
       CASE WHEN random() < 0.05 THEN 'purchase' ELSE 'view' END, p, 'Classic Mug ' || p, 'Category ' || (p % 10),
       12.99, timestamptz '2026-01-01' + i * interval '1 millisecond' + u * interval '1 microsecond'
FROM (SELECT i, random() AS u, 1 + floor(random() * random() * 300)::int AS p FROM generate_series(1, {EVENTS}) i) s
ON CONFLICT DO NOTHING;
CREATE INDEX events_event_time_idx ON events (event_time);
VACUUM ANALYZE events;""")
        sizes = dict(tuple(map(int, line.split("|"))) for line in
                     psql(URL, "SELECT user_id, count(*) FROM events GROUP BY 1").split())
        users = sorted(sizes, key=sizes.get)
        random.seed(1)
        sample = random.sample(users, 200) + users[-5:]
        script = ["\\timing on", "SET jit = off;"]
        for u in sample:
            for key in ("product_category", "product_id"):
                script.append(f"SELECT {key}, count(*) FILTER (WHERE event_type = 'view'), "
                              f"count(*) FILTER (WHERE event_type = 'purchase') FROM events WHERE user_id = {u} GROUP BY 1;")
        for _ in range(2):  # a warm-up run, then the measured one
            out = psql(URL, None, stdin="\n".join(script))
        times = [float(line.split()[1]) for line in out.splitlines() if line.startswith("Time:")]
        by_category, by_product = times[0::2], times[1::2]
        print(f"{EVENTS} events, {len(sizes)} users; events per sampled user: median "
              f"{statistics.median(sizes[u] for u in sample[:200])}, heaviest {max(sizes.values())}")
        for name, v in (("per category", by_category), ("per product", by_product)):
            print(f"{name}: p50 {pct(v[:200], 0.5):.2f} ms, p99 {pct(v[:200], 0.99):.2f} ms; "
                  f"the 5 heaviest users {', '.join(f'{x:.0f}' for x in v[200:])} ms")
    finally:
        psql(ADMIN, f"DROP DATABASE {DB} WITH (FORCE)")


if __name__ == "__main__":
    main()
