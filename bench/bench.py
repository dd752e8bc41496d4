#!/usr/bin/env python3
"""The performance harness: run by scripts/bench.sh, which builds the release
binaries, finds PostgreSQL and installs matplotlib first.

It measures, on this machine and in one run:
  1. backlog ingest of data sets A (400 files x 1 500 rows) and B (10 files x
     200 000 rows), each without and with 2 % duplicates, by `streamer --once`
     from an empty table: rows/s, phases, peak RSS, CPU (streamer and
     PostgreSQL);
  2. the physical limit: `psql \\copy` of the duplicate-free files into an
     identical empty `events` table, and the streamer's ratio to it;
  3. latency from a file's rename (the generator's log) to its batch's commit
     (the streamer's progress log), idle and under 20 000 rows/s;
  4. scaling against batch size, file size and rows already in the table;
     start-up after 100 000 processed files (cargo bench --bench restart);
  5. `generator replay --speed max` (scripts/bench-replay.sh);
  6. scale-out: `--loaders` 1-3 and 1-3 streamers on one folder against one
     `psql \copy` session, and how long a killed streamer's roles take to
     be taken over;
  7. the peer: a PySpark Structured Streaming job (bench/spark_peer.py) on
     the same files and table, when SPARK_PYTHON names a Python with pyspark
     (scripts/bench.sh installs it; skipped with a message otherwise);
  8. Citus as the sink: the scale-out data set into a coordinator and two
     workers of its own on this machine, `psql \copy` and the streamer
     (skipped with a message when Citus is not installed);
and checks after every run with the analytics on that each derived table
equals its GROUP BY over `events`. It writes docs/performance_metrics.md, its raw figures
docs/performance_metrics.json and images/bench_*.png.

Everything is printed as it is measured; nothing is asserted. BENCH_QUICK=1
shrinks every size (a smoke run, as CI does, writing into BENCH_OUT).
"""

import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STREAMER = os.environ["STREAMER"]
GENERATOR = os.environ["GENERATOR"]
ADMIN_URL = os.environ["DATABASE_URL"]
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
RUNS = int(os.environ.get("BENCH_RUNS", "2" if QUICK else "3"))
OUT = Path(os.environ.get("BENCH_OUT", ROOT))
WORK = Path(os.environ.get("BENCH_WORK") or tempfile.mkdtemp(prefix="bench-"))
WORK.mkdir(parents=True, exist_ok=True)
COLUMNS = "user_id,user_name,user_email,event_type,product_id,product_name,product_category,product_price,event_time"

# Sizes: (files, rows per file). The quick variant keeps the shapes.
A = (40, 1_500) if QUICK else (400, 1_500)
B = (2, 20_000) if QUICK else (10, 200_000)
LATENCY_FILES = 20 if QUICK else 200
# Scale-out: files small enough that every loader has work at once.
SCALE_OUT = (12, 5_000) if QUICK else (60, 15_000)
SPARK_PYTHON = os.environ.get("SPARK_PYTHON", "")
JDBC_JAR = os.environ.get("JDBC_JAR", "/usr/share/java/postgresql.jar")
TABLE_SIZES = [0, 200_000] if QUICK else [0, 5_000_000, 10_000_000, 20_000_000]


def log(*args):
    print(*args, flush=True)


# --- PostgreSQL -------------------------------------------------------------


def with_database(url, name):
    base, _, query = url.partition("?")
    scheme, _, rest = base.partition("://")
    authority = rest.split("/", 1)[0]
    return f"{scheme}://{authority}/{name}" + (f"?{query}" if query else "")


def psql(url, sql, *extra):
    out = subprocess.run(
        ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql, *extra],
        capture_output=True, text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"psql -c {sql[:200]!r} failed: {out.stderr.strip()[-2000:]}")
    return out.stdout.strip()


def fresh_database(name, schema=False):
    psql(ADMIN_URL, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    psql(ADMIN_URL, f"CREATE DATABASE {name}")
    url = with_database(ADMIN_URL, name)
    if schema:
        subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(ROOT / "db/001_events.sql")],
                       check=True, capture_output=True)
    return url


def drop_database(name):
    psql(ADMIN_URL, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def postmaster_pid():
    try:
        data_dir = psql(ADMIN_URL, "SHOW data_directory")
        return int(Path(data_dir, "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, RuntimeError):
        return None


PG_PID = None
TICK = os.sysconf("SC_CLK_TCK")


def pg_cpu(pid=None):
    """CPU seconds of the whole PostgreSQL server so far (the benchmark's, or
    the one whose postmaster is `pid`): its live processes, plus the children
    the postmaster has reaped (ended backends). None when /proc of the server
    cannot be read."""
    pid = pid or PG_PID
    if pid is None:
        return None
    total = 0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            try:
                f = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(f[11]) + int(f[12])
            except OSError:
                pass
    except OSError:
        return None
    return total / TICK


def checkpoint_db():
    psql(ADMIN_URL, "CHECKPOINT")


# --- processes --------------------------------------------------------------


def measured(cmd, env=None):
    """Runs cmd to the end: wall seconds, CPU seconds, peak RSS (MB), and the
    server's CPU seconds meanwhile."""
    log_path = WORK / "measured.log"
    pg0 = pg_cpu()
    t0 = time.perf_counter()
    # stderr into a file, not a pipe nobody reads until the end (a full pipe would stall the program).
    with open(log_path, "wb") as stderr:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    time.sleep(0.3)  # let the postmaster reap the client's backend, so its CPU is counted
    pg1 = pg_cpu()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{cmd[0]} exited {code}:\n{log_path.read_text(errors='replace')[-3000:]}")
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "rss_mb": usage.ru_maxrss / 1024,
        "pg_cpu_s": None if pg0 is None or pg1 is None else pg1 - pg0,
    }


def env(**extra):
    e = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    e.update({"RUST_LOG": "warn", "LOG_FORMAT": "json"})
    e.update({k: str(v) for k, v in extra.items()})
    return e


def instant(text):
    """An RFC 3339 time as the logs write it (Z, up to nanoseconds)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def generate(folder, files, rows, duplicates, seed, start="2026-01-01T00:00:00Z"):
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [GENERATOR, "--data-dir", str(folder), "--files", str(files), "--rows", str(rows),
         "--duplicate-rate", str(duplicates), "--bad-row-rate", "0", "--seed", str(seed),
         "--start-time", start, "--interval", "0", "--jitter-ms", "86400000"],
        check=True, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return sorted(folder.glob("*.csv"))


# Each derived table and its definition over `events` (db/003, db/005).
DERIVED = [
    ("SELECT window_start, product_category, views, purchases, users, revenue FROM event_metrics_minute",
     "SELECT metrics_window(event_time), product_category, count(*) FILTER (WHERE event_type = 'view'), "
     "count(*) FILTER (WHERE event_type = 'purchase'), count(DISTINCT user_id), "
     "coalesce(sum(product_price) FILTER (WHERE event_type = 'purchase'), 0)::numeric FROM events GROUP BY 1, 2"),
    ("SELECT user_id, product_category, views, purchases FROM user_category_counts",
     "SELECT user_id, product_category, count(*) FILTER (WHERE event_type = 'view'), "
     "count(*) FILTER (WHERE event_type = 'purchase') FROM events GROUP BY 1, 2"),
    ("SELECT user_id, product_id, views, purchases FROM user_product_counts",
     "SELECT user_id, product_id, count(*) FILTER (WHERE event_type = 'view'), "
     "count(*) FILTER (WHERE event_type = 'purchase') FROM events GROUP BY 1, 2"),
]


def derived_exact(url):
    """Whether every derived table equals its GROUP BY over events."""
    for table, definition in DERIVED:
        differ = psql(url, f"SELECT count(*) FROM (({table} EXCEPT {definition}) UNION ALL "
                           f"({definition} EXCEPT {table})) d")
        if differ != "0":
            log(f"NOT EXACT: {table.split(' FROM ')[1]} differs from its GROUP BY in {differ} rows")
            return False
    return True


def published_at(generator_log):
    """When the generator published each file, from its JSON log."""
    published = {}
    for line in generator_log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        fields = entry.get("fields", entry)  # tracing's JSON: flattened or under "fields"
        if fields.get("message") == "file published":
            published[fields["file"]] = instant(entry["timestamp"])
    return published


def stream_once(data, url, *flags):
    cp = Path(tempfile.mkdtemp(dir=WORK, prefix="cp-"))
    started = time.time()
    # The generator publishes atomically (rename), so no settle time is needed.
    m = measured([STREAMER, "--once", "--file-settle", "0", "--data-dir", str(data), "--checkpoint-dir", str(cp),
                  "--database-url", url, *flags], env=env())
    progress = cp / "progress/progress.jsonl"
    batches = [json.loads(l) for l in progress.read_text().splitlines()] if progress.exists() else []
    for phase in ("read_ms", "dedup_ms", "load_ms", "commit_ms"):
        m[phase] = sum(b["phases"][phase] for b in batches)
    m["rows"] = sum(b["input_rows"] for b in batches)
    m["inserted"] = sum(b["inserted"] for b in batches)
    m["batches"] = len(batches)
    m["rows_per_s"] = m["rows"] / m["wall_s"]
    # When the batches' commits and the applier's folds landed, in seconds
    # from the process start (the same machine's clock): a profile of where
    # a run's wall time goes (the applier's folds after the last commit are
    # the part of the run the loaders no longer share).
    marks = psql(url, "SELECT extract(epoch FROM min(committed_at)), extract(epoch FROM max(committed_at)), "
                      "coalesce(extract(epoch FROM max(applied_at)), 0) FROM batches")
    first, last, applied = (float(v) if v else None for v in marks.split("|"))
    if first is not None and last is not None:
        m["first_commit_s"], m["last_commit_s"] = first - started, last - started
    if "false" not in flags:
        if applied:
            m["applied_s"] = applied - started
        # --once returns once the applier has caught up: the tables must be exact now.
        m["derived_exact"] = 1 if derived_exact(url) else 0
    shutil.rmtree(cp)
    return m


def stream_runs(data, database, *flags):
    """RUNS loads of `data` by `streamer --once`, each into a new database."""
    runs = []
    for _ in range(RUNS):
        url = fresh_database(database)
        runs.append(stream_once(data, url, *flags))
        drop_database(database)
    return summarize(runs)


def copy_limit(files, url, rollback=False):
    """`psql \\copy` of the files into events in one transaction; rolled back
    when asked (the same work, the table left as it was)."""
    script = WORK / "copy.sql"
    copies = "".join(f"\\copy events({COLUMNS}) FROM '{f}' WITH (FORMAT csv, HEADER true)\n" for f in files)
    script.write_text(f"BEGIN;\n{copies}ROLLBACK;\n" if rollback else copies)
    before = int(psql(url, "SELECT count(*) FROM events")) if not rollback else 0
    m = measured(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(script)]
                 + ([] if rollback else ["-1"]))
    if rollback:
        m["rows"] = sum(max(0, sum(1 for _ in open(f)) - 1) for f in files)
    else:
        m["rows"] = int(psql(url, "SELECT count(*) FROM events")) - before
    m["rows_per_s"] = m["rows"] / m["wall_s"]
    return m


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def percentile(values, p):
    """The p-th percentile of sorted values (nearest rank)."""
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def summarize(runs):
    keys = runs[0].keys()
    return {k: summary([r[k] for r in runs]) for k in keys if isinstance(runs[0][k], (int, float))}


# --- 1 and 2: backlog ingest against the COPY limit --------------------------


def backlog():
    results = {}
    for name, (files, rows) in (("A", A), ("B", B)):
        for dup in (0.0, 0.02):
            label = f"{name}{'' if dup == 0 else ' +2% dup'}"
            data = WORK / f"set-{name}-{dup}"
            paths = generate(data, files, rows, dup, seed=11 if name == "A" else 12)
            size_mb = sum(p.stat().st_size for p in paths) / 1e6
            streamer_runs, raw_runs, copy_runs = [], [], []
            for run in range(RUNS):
                db = f"bench_{name.lower()}_{int(dup * 100)}"
                url = fresh_database(db)
                checkpoint_db()
                streamer_runs.append(stream_once(data, url))
                drop_database(db)
                if dup == 0:
                    # Ingest alone: the analytics upkeep off.
                    url = fresh_database(db)
                    checkpoint_db()
                    raw_runs.append(stream_once(data, url, "--analytics", "false"))
                    drop_database(db)
                    url = fresh_database(db, schema=True)
                    checkpoint_db()
                    copy_runs.append(copy_limit(paths, url))
                    drop_database(db)
                s = streamer_runs[-1]
                c = copy_runs[-1] if copy_runs else None
                raw = raw_runs[-1] if raw_runs else None
                log(f"{label} run {run + 1}: streamer {s['rows_per_s']:,.0f} rows/s "
                    f"({s['wall_s']:.2f} s, RSS {s['rss_mb']:.0f} MB, CPU {s['cpu_s']:.2f} s, "
                    f"PostgreSQL CPU {s['pg_cpu_s'] or 0:.2f} s)"
                    + (f"; analytics off {raw['rows_per_s']:,.0f} rows/s (PostgreSQL CPU {raw['pg_cpu_s'] or 0:.2f} s)"
                       if raw else "")
                    + (f"; COPY {c['rows_per_s']:,.0f} rows/s ({c['wall_s']:.2f} s)" if c else ""))
            entry = {"files": files, "rows_per_file": rows, "duplicates": dup, "size_mb": size_mb,
                     "streamer": summarize(streamer_runs), "streamer_runs": streamer_runs}
            if copy_runs:
                entry["copy"] = summarize(copy_runs)
                entry["copy_runs"] = copy_runs
                entry["ratio"] = summary([s["rows_per_s"] / c["rows_per_s"] for s, c in zip(streamer_runs, copy_runs)])
                entry["ingest_only"] = summarize(raw_runs)
                entry["ingest_only_runs"] = raw_runs
                entry["ratio_ingest_only"] = summary(
                    [s["rows_per_s"] / c["rows_per_s"] for s, c in zip(raw_runs, copy_runs)])
                log(f"{label}: streamer/COPY = {entry['ratio']['median']:.2f} "
                    f"(range {entry['ratio']['min']:.2f}-{entry['ratio']['max']:.2f}); analytics off "
                    f"{entry['ratio_ingest_only']['median']:.2f}")
            results[label] = entry
            shutil.rmtree(data)
    return results


# --- 3: latency ---------------------------------------------------------------


def latency_run(label, files, rows, interval):
    db = "bench_latency"
    url = fresh_database(db)
    data, cp = WORK / "latency-data", WORK / "latency-cp"
    for d in (data, cp):
        shutil.rmtree(d, ignore_errors=True)
    data.mkdir()
    streamer_log = open(WORK / "latency-streamer.log", "w")
    started = time.perf_counter()
    streamer = subprocess.Popen(
        [STREAMER, "--data-dir", str(data), "--checkpoint-dir", str(cp), "--database-url", url],
        env=env(RUST_LOG="info"), stdout=subprocess.DEVNULL, stderr=streamer_log)
    # Ready: the checkpoint exists and the schema is in place.
    while not (cp / "metadata").exists() or psql(url, "SELECT to_regclass('load_history') IS NOT NULL") != "t":
        if streamer.poll() is not None:
            raise RuntimeError("the streamer stopped at start")
        time.sleep(0.02)
    ready_s = time.perf_counter() - started
    rss = []
    generator_log = WORK / "latency-generator.log"
    with open(generator_log, "w") as gen_stderr:
        gen = subprocess.Popen(
            [GENERATOR, "--data-dir", str(data), "--files", str(files), "--rows", str(rows),
             "--interval", str(interval), "--duplicate-rate", "0.02", "--seed", "13"],
            env=env(RUST_LOG="info"), stdout=subprocess.DEVNULL, stderr=gen_stderr)
        while gen.poll() is None:
            rss.append(vm_of(streamer, "VmRSS", streamer_log))
            time.sleep(0.1)
    published = published_at(generator_log)
    deadline = time.time() + 120
    while int(psql(url, "SELECT count(*) FROM load_history")) < len(published) and time.time() < deadline:
        rss.append(vm_of(streamer, "VmRSS", streamer_log))
        time.sleep(0.1)
    # The applier folds the last batches in.
    deadline = time.time() + 60
    while int(psql(url, "SELECT count(*) FROM batches WHERE applied_at IS NULL")) > 0 and time.time() < deadline:
        time.sleep(0.1)
    hwm = vm_of(streamer, "VmHWM", streamer_log)
    streamer.send_signal(signal.SIGTERM)
    streamer.wait(timeout=60)
    streamer_log.close()
    # Rows are queryable when the COMMIT returns (`committed_at`; a record
    # of an older streamer has only `timestamp`, after the commit marker).
    committed, batches = {}, {}
    for line in (cp / "progress/progress.jsonl").read_text().splitlines():
        b = json.loads(line)
        committed[b["batch_id"]] = instant(b.get("committed_at", b["timestamp"]))
        batches[b["batch_id"]] = b
    lag = sorted(float(x) for x in psql(
        url, "SELECT 1000 * extract(epoch FROM applied_at - committed_at) FROM batches WHERE applied_at IS NOT NULL"
    ).split())
    unapplied = int(psql(url, "SELECT count(*) FROM batches WHERE applied_at IS NULL"))
    exact = derived_exact(url) if unapplied == 0 else False
    rows_ = psql(url, "SELECT file_name, batch_id FROM load_history WHERE status = 'loaded'").splitlines()
    latencies = []
    # Where each file's latency went: before its batch began (the listing
    # after the rename, the registration, the loader's wake-up), the claim and
    # plan, what is left of reading and deduplicating the first chunk once the
    # plan is on disk (the read starts with the plan), the staging and merge,
    # the COMMIT; then the marker.
    parts = {"before the batch": [], "claim and plan": [], "read and dedup": [], "stage and merge": [], "commit": [],
             "then the marker": []}
    for r in rows_:
        name, batch = r.split("|")
        if name in published:
            total = (committed[int(batch)] - published[name]).total_seconds() * 1000
            latencies.append(total)
            b = batches[int(batch)]
            ph = b["phases"]
            # The record's total is the batch's time from its claim to its
            # COMMIT's return: claim and plan, the read and dedup of the first
            # chunk (what outlasts the plan), staging and merge, COMMIT.
            parts["before the batch"].append(total - ph["total_ms"])
            parts["claim and plan"].append(ph["discover_ms"])
            parts["read and dedup"].append(
                max(0.0, ph["total_ms"] - ph["discover_ms"] - ph["load_ms"] - ph["commit_ms"]))
            parts["stage and merge"].append(ph["load_ms"])
            parts["commit"].append(ph["commit_ms"])
            if "committed_at" in b:
                parts["then the marker"].append(
                    (instant(b["timestamp"]) - instant(b["committed_at"])).total_seconds() * 1000)
    if not latencies:
        raise RuntimeError(f"latency {label}: no published file was found committed; see {WORK}/latency-streamer.log")
    latencies.sort()
    q = lambda p: percentile(latencies, p)
    result = {"files": len(latencies), "published": len(published), "rows_per_file": rows, "interval_s": interval,
              "p50_ms": q(50), "p95_ms": q(95), "p99_ms": q(99), "max_ms": latencies[-1],
              "rss_max_mb": max(rss) / 1024, "hwm_mb": hwm / 1024, "ready_s": ready_s, "latencies_ms": latencies,
              "profile_p50_ms": {k_: sorted(v)[len(v) // 2] for k_, v in parts.items() if v}}
    if lag:
        ql = lambda p: percentile(lag, p)
        result.update({"applier_lag_p50_ms": ql(50), "applier_lag_p99_ms": ql(99), "applier_lag_max_ms": lag[-1],
                       "unapplied_at_end": unapplied, "derived_exact": exact})
        log(f"latency {label}: the derived tables followed each batch's commit by p50 {ql(50):.0f} ms, "
            f"p99 {ql(99):.0f} ms, max {lag[-1]:.0f} ms; exact at the end: {exact}")
    drop_database(db)
    log(f"latency {label}: median parts " + ", ".join(f"{k_} {v:.1f} ms" for k_, v in result["profile_p50_ms"].items()))
    log(f"latency {label}: {len(latencies)} files, p50 {result['p50_ms']:.1f} ms, p95 {result['p95_ms']:.1f} ms, "
        f"p99 {result['p99_ms']:.1f} ms, max {result['max_ms']:.1f} ms; RSS ≤ {result['rss_max_mb']:.0f} MB "
        f"(peak {result['hwm_mb']:.0f} MB); ready after {ready_s * 1000:.0f} ms")
    return result


def vm(pid, key):
    """A figure of /proc/<pid>/status in kB; 0 when the process has ended
    (or is a zombie, whose status has no memory lines)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def vm_of(streamer, key, log_file):
    """`vm` of a streamer that must still be running: if it has stopped, the
    run is void, and the error carries the end of its log."""
    if streamer.poll() is not None:
        log_file.flush()
        tail = Path(log_file.name).read_text(errors="replace").splitlines()[-30:]
        raise RuntimeError(f"the streamer stopped during the run (exit {streamer.returncode}); "
                           f"the end of {log_file.name}:\n" + "\n".join(tail))
    return vm(streamer.pid, key)


def copy_each(files, url):
    """The floor under a file's latency: each file copied by `psql \\copy` in
    its own transaction (autocommit), one after the other into the growing
    table, in one session; each COPY's time from `\\timing` (the client
    sends the file, the server writes the rows and commits)."""
    script = WORK / "copy-each.sql"
    script.write_text("\\timing on\n" + "".join(
        f"\\copy events({COLUMNS}) FROM '{f}' WITH (FORMAT csv, HEADER true)\n" for f in files))
    out = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(script)],
                         capture_output=True, text=True, check=True)
    times = sorted(float(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("Time: "))
    if len(times) != len(files):
        raise RuntimeError(f"psql \\copy one by one: {len(times)} times for {len(files)} files:\n{out.stdout[-2000:]}")
    return {"files": len(times), "p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99)}


def copy_floor(files, rows):
    """`copy_each` over files like the idle run's (same size and seed, no
    duplicates: a plain COPY cannot take a re-sent key) into a fresh table."""
    data = WORK / "latency-floor"
    shutil.rmtree(data, ignore_errors=True)
    paths = generate(data, files, rows, 0.0, seed=13)
    url = fresh_database("bench_latency_floor", schema=True)
    floor = copy_each(paths, url)
    drop_database("bench_latency_floor")
    shutil.rmtree(data)
    log(f"latency floor: one {rows:,}-row file by psql \\copy alone (autocommit), {floor['files']} files: "
        f"p50 {floor['p50_ms']:.1f} ms, p99 {floor['p99_ms']:.1f} ms")
    return floor


def latency():
    idle = latency_run("idle (a file every 0.5 s)", LATENCY_FILES, 1_500, 0.5)
    idle["copy_floor"] = copy_floor(LATENCY_FILES, 1_500)
    return {
        "idle": idle,
        # 1 500-row files at 20 000 rows/s: one every 75 ms.
        "sustained": latency_run("sustained (20 000 rows/s)", int(LATENCY_FILES * 1.5), 1_500, 0.075),
    }


# --- 4: scaling -------------------------------------------------------------


def scaling(backlog_results):
    out = {"batch_size": [], "file_size": []}
    # Data set A, measured above, is the point of 100 files per batch (the
    # default) and of 1 500-row files; the other points are measured here.
    a = backlog_results["A"]["streamer"]
    data = WORK / "scale-a"
    generate(data, *A, 0.0, seed=21)
    for per_batch in (1, 10, 100):
        if per_batch == 100:
            out["batch_size"].append({"files_per_batch": per_batch, **a})
            continue
        s = stream_runs(data, "bench_scale", "--max-files-per-batch", str(per_batch))
        out["batch_size"].append({"files_per_batch": per_batch, **s})
        log(f"scaling: {per_batch} files per batch: {s['rows_per_s']['median']:,.0f} rows/s")
    shutil.rmtree(data)

    total = A[0] * A[1]
    for rows in sorted({r for r in (1_500, 15_000, 150_000, total) if r <= total}):
        if rows == A[1]:
            out["file_size"].append({"rows_per_file": rows, "files": total // rows, **a})
            continue
        data = WORK / f"scale-f{rows}"
        generate(data, total // rows, rows, 0.0, seed=22)
        s = stream_runs(data, "bench_scale")
        out["file_size"].append({"rows_per_file": rows, "files": total // rows, **s})
        log(f"scaling: files of {rows:,} rows: {s['rows_per_s']['median']:,.0f} rows/s")
        shutil.rmtree(data)

    out["table_size"] = table_size()
    return out


def table_size():
    """Rows already in the table: filled by SQL (keys in 2020, far from the
    probes' 2026) with the indexes dropped and built again after (much
    faster than 20 M random index inserts), then probe batches of 100 files
    x 1 500 rows each."""
    out = []
    url = fresh_database("bench_table", schema=True)
    filled = 0
    for k, target in enumerate(TABLE_SIZES):
        if target > filled:
            t0 = time.perf_counter()
            psql(url, "ALTER TABLE events DROP CONSTRAINT events_pkey, DROP CONSTRAINT events_user_id_event_time_key; "
                      "DROP INDEX events_event_time_idx")
            psql(url, f"""
                INSERT INTO events (user_id, user_name, user_email, event_type, product_id, product_name,
                                    product_category, product_price, event_time)
                SELECT 1 + g % 10000, 'User ' || g % 10000, 'user' || g % 10000 || '@example.com',
                       CASE WHEN g % 20 = 0 THEN 'purchase' ELSE 'view' END, 1 + g % 300,
                       'Product ' || g % 300, 'category_' || g % 10, (g % 100000) / 100.0,
                       timestamptz '2020-01-01' + g * interval '1 millisecond'
                FROM generate_series({filled + 1}, {target}) g""")
            psql(url, "ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (event_id), "
                      "ADD CONSTRAINT events_user_id_event_time_key UNIQUE (user_id, event_time); "
                      "CREATE INDEX events_event_time_idx ON events (event_time)")
            psql(url, "VACUUM ANALYZE events")
            # Rows inserted by SQL are not the applier's to fold: ask it to
            # rebuild the derived tables from events, and let it do so
            # (untimed) before the probes.
            psql(url, "DO $$ BEGIN IF to_regclass('analytics_settings') IS NOT NULL THEN "
                      "UPDATE analytics_settings SET needs_rebuild = true; END IF; END $$")
            empty = WORK / "scale-empty"
            empty.mkdir(exist_ok=True)
            stream_once(empty, url)
            log(f"scaling: table filled to {target:,} rows in {time.perf_counter() - t0:.0f} s")
            filled = target
        runs = []
        for run in range(RUNS):
            data = WORK / "scale-probe"
            # Each probe a day of its own, so no probe repeats another's keys.
            day = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(days=k * RUNS + run)
            generate(data, 100, 1_500, 0.0, seed=100 + k * RUNS + run, start=day.strftime("%Y-%m-%dT%H:%M:%SZ"))
            checkpoint_db()
            runs.append(stream_once(data, url))
            shutil.rmtree(data)
        # The same work for PostgreSQL alone: `psql \\copy` of a batch of
        # other keys (a day of its own) into the same table, rolled back.
        copies = []
        for run in range(RUNS):
            data = WORK / "scale-copy"
            day = datetime(2027, 1, 1, tzinfo=timezone.utc) + timedelta(days=k * RUNS + run)
            paths = generate(data, 100, 1_500, 0.0, seed=500 + k * RUNS + run, start=day.strftime("%Y-%m-%dT%H:%M:%SZ"))
            checkpoint_db()
            copies.append(copy_limit(paths, url, rollback=True))
            shutil.rmtree(data)
        s = summarize(runs)
        out.append({"rows_in_table": target, **s, "copy": summarize(copies)})
        log(f"scaling: into a table of {target:,} rows: {s['rows_per_s']['median']:,.0f} rows/s, "
            f"psql \\copy {out[-1]['copy']['rows_per_s']['median']:,.0f} rows/s")
    drop_database("bench_table")
    return out


def restart():
    """Start-up after 100 000 processed files, from `cargo bench --bench
    restart` (a release build). The quick variant skips it: building the
    bench would cost CI minutes for a figure that is not quoted."""
    if QUICK:
        log("restart: skipped in the quick variant")
        return {}
    files = 100_000
    out = subprocess.run(["cargo", "bench", "--quiet", "-p", "streamer", "--bench", "restart"], cwd=ROOT,
                         env={**os.environ, "FILES": str(files)}, check=True, capture_output=True, text=True).stdout
    figures = {"files": files}
    for line in out.splitlines():
        if "(median of 5)" in line:
            key = line.split(" (median")[0]
            figures[key] = float(line.rsplit(":", 1)[1].split()[0])
    log(f"restart after {files:,} processed files: {figures}")
    return figures


def replay():
    """`generator replay --speed max` on a file in the public dataset's shape,
    through scripts/bench-replay.sh (which makes the file and prints a line
    per run)."""
    rows = 200_000 if QUICK else 5_000_000
    out = subprocess.run(["bash", str(ROOT / "scripts/bench-replay.sh")], cwd=ROOT, check=True, capture_output=True,
                         text=True, env={**os.environ, "REPLAY_ROWS": str(rows), "REPLAY_RUNS": str(RUNS)}).stdout
    runs = []
    for line in out.splitlines():
        if line.startswith("replay "):
            fields = dict(f.split("=", 1) for f in line.split()[2:] if "=" in f)
            runs.append({"events_per_s": float(fields["events/s"]), "events_per_cpu_s": float(fields["events/cpu-s"]),
                         "rss_mb": float(fields["peak_rss"]), "events": int(fields["events"]),
                         "wall_s": float(fields["wall"].rstrip("s"))})
    mb = next((int(l.split()[2]) for l in out.splitlines() if l.startswith("== replaying")), None)
    result = {"input_rows": rows, "input_mb": mb, **summarize(runs)}
    log(f"replay --speed max: {result['events_per_s']['median']:,.0f} events/s, peak RSS {result['rss_mb']['max']:.0f} MB")
    return result


# --- 6: scale-out -------------------------------------------------------------


def streamers_at_once(data, url, n):
    """n streamers (one loader each, checkpoints of their own) on one folder,
    started together with --once: rows/s from the first start to the last exit."""
    procs = []
    t0 = time.perf_counter()
    for i in range(n):
        cp = Path(tempfile.mkdtemp(dir=WORK, prefix=f"cp{i}-"))
        procs.append(subprocess.Popen(
            [STREAMER, "--once", "--file-settle", "0", "--data-dir", str(data), "--checkpoint-dir", str(cp),
             "--database-url", url, "--loaders", "1", "--analytics", "false", "--max-files-per-batch", "4",
             "--http-addr", "off"], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for p in procs:
        if p.wait() != 0:
            raise RuntimeError(f"a streamer of {n} exited {p.returncode}")
    wall = time.perf_counter() - t0
    rows = int(psql(url, "SELECT coalesce(sum(rows_read), 0) FROM load_history"))
    files = int(psql(url, "SELECT count(*) FROM load_history"))
    dup = int(psql(url, "SELECT count(*) - count(DISTINCT file_name) FROM load_history"))
    if dup:
        raise RuntimeError(f"{n} streamers loaded {dup} files twice")
    return {"wall_s": wall, "rows": rows, "files": files, "rows_per_s": rows / wall}


def takeover_once(run):
    """Two streamers on one folder; the one holding the roles is killed; how
    long until a file published just after is committed by the other."""
    db = "bench_takeover"
    url = fresh_database(db)
    data = WORK / f"takeover-{run}"
    data.mkdir()
    procs = []
    for i in range(2):
        cp = Path(tempfile.mkdtemp(dir=WORK, prefix=f"tcp{i}-"))
        procs.append(subprocess.Popen(
            [STREAMER, "--data-dir", str(data), "--checkpoint-dir", str(cp), "--database-url", url,
             "--http-addr", "off"], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if i == 0:
            # The first takes the registrar role before the second starts.
            while psql(url, "SELECT to_regclass('source_files') IS NOT NULL") != "t":
                time.sleep(0.05)
            time.sleep(1)
    generate(data, 1, 100, 0.0, seed=300 + run, start="2026-02-01T00:00:00Z")
    while int(psql(url, "SELECT count(*) FROM load_history")) < 1:
        time.sleep(0.05)
    procs[0].kill()
    procs[0].wait()
    killed = time.perf_counter()
    generate(data, 1, 100, 0.0, seed=400 + run, start="2026-02-02T00:00:00Z")
    deadline = killed + 120
    while int(psql(url, "SELECT count(*) FROM load_history")) < 2:
        if time.perf_counter() > deadline:
            raise RuntimeError("the file published after the kill was never committed")
        time.sleep(0.02)
    seconds = time.perf_counter() - killed
    procs[1].send_signal(signal.SIGTERM)
    procs[1].wait(timeout=60)
    drop_database(db)
    shutil.rmtree(data)
    return seconds


def scale_out():
    files, rows = SCALE_OUT
    data = WORK / "scale-out"
    paths = generate(data, files, rows, 0.0, seed=31)
    out = {"files": files, "rows_per_file": rows, "loaders": [], "streamers": []}
    copies = []
    for _ in range(RUNS):
        url = fresh_database("bench_scale_out", schema=True)
        checkpoint_db()
        copies.append(copy_limit(paths, url))
        drop_database("bench_scale_out")
    out["copy"] = summarize(copies)
    copy = out["copy"]["rows_per_s"]["median"]
    log(f"scale-out: one psql \\copy session {copy:,.0f} rows/s")
    for n in (1, 2, 3):
        s = stream_runs(data, "bench_scale_out", "--loaders", str(n), "--analytics", "false",
                        "--max-files-per-batch", "4")
        s["ratio_to_copy"] = s["rows_per_s"]["median"] / copy
        out["loaders"].append({"loaders": n, **s})
        log(f"scale-out: --loaders {n}: {s['rows_per_s']['median']:,.0f} rows/s = {s['ratio_to_copy']:.2f}x COPY")
    for n in (1, 2, 3):
        runs = []
        for _ in range(RUNS):
            url = fresh_database("bench_scale_out")
            checkpoint_db()
            runs.append(streamers_at_once(data, url, n))
            drop_database("bench_scale_out")
        s = summarize(runs)
        s["ratio_to_copy"] = s["rows_per_s"]["median"] / copy
        out["streamers"].append({"streamers": n, **s})
        log(f"scale-out: {n} streamers: {s['rows_per_s']['median']:,.0f} rows/s = {s['ratio_to_copy']:.2f}x COPY")
    shutil.rmtree(data)
    takeovers = [takeover_once(run) for run in range(RUNS)]
    out["takeover_s"] = summary(takeovers)
    log(f"scale-out: a killed streamer's roles taken over and a new file committed after "
        f"{out['takeover_s']['median']:.1f} s (max {out['takeover_s']['max']:.1f} s)")
    return out


# --- 7: the peer --------------------------------------------------------------


def tree_rss_kb(pid):
    """RSS of a process and all its descendants (the JVM is a child of PySpark's driver)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += vm(p, "VmRSS")
        try:
            for t in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (t / "children").read_text().split())
        except OSError:
            pass
    return total


def spark_run(data, url, mode, extra_wait=None):
    cp = Path(tempfile.mkdtemp(dir=WORK, prefix="spark-cp-"))
    log_path = WORK / "spark.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as err:
        proc = subprocess.Popen([SPARK_PYTHON, str(ROOT / "bench/spark_peer.py"), str(data), str(cp), url, JDBC_JAR, mode],
                                stdout=subprocess.PIPE, stderr=err, text=True)
    return proc, cp, t0, log_path


def spark_peer():
    if not SPARK_PYTHON or not Path(JDBC_JAR).exists():
        why = "SPARK_PYTHON is not set" if not SPARK_PYTHON else f"no JDBC driver at {JDBC_JAR}"
        log(f"spark peer: skipped ({why}; scripts/bench.sh installs pyspark, Java and libpostgresql-jdbc-java)")
        return {"skipped": why}
    out = {}
    data = WORK / "spark-a"
    paths = generate(data, *A, 0.0, seed=11)
    runs = []
    for _ in range(RUNS):
        url = fresh_database("bench_spark", schema=True)
        checkpoint_db()
        proc, cp, t0, log_path = spark_run(data, url, "once")
        peak = 0
        while proc.poll() is None:
            peak = max(peak, tree_rss_kb(proc.pid))
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"the Spark job exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        batches = [json.loads(l) for l in proc.stdout.read().splitlines() if l.startswith("{")]
        rows = int(psql(url, "SELECT count(*) FROM events"))
        runs.append({"wall_s": wall, "rows": rows, "rows_per_s": rows / wall, "rss_mb": peak / 1024,
                     "batches": len(batches)})
        log(f"spark peer, backlog A: {rows / wall:,.0f} rows/s ({wall:.1f} s with start-up, peak RSS {peak / 1024:.0f} MB)")
        shutil.rmtree(cp)
        drop_database("bench_spark")
    out["backlog_A"] = summarize(runs)
    shutil.rmtree(data)

    # Latency: the job running, a file every 0.5 s.
    url = fresh_database("bench_spark", schema=True)
    data = WORK / "spark-latency"
    data.mkdir()
    proc, cp, t0, log_path = spark_run(data, url, "stream")
    time.sleep(30)  # the JVM and the query up and polling
    generator_log = WORK / "spark-generator.log"
    files = 40 if not QUICK else 10
    peak = 0
    with open(generator_log, "w") as gen_stderr:
        gen = subprocess.Popen([GENERATOR, "--data-dir", str(data), "--files", str(files), "--rows", "1500",
                                "--interval", "0.5", "--duplicate-rate", "0.02", "--seed", "13"],
                               env=env(RUST_LOG="info"), stdout=subprocess.DEVNULL, stderr=gen_stderr)
        while gen.poll() is None:
            peak = max(peak, tree_rss_kb(proc.pid))
            time.sleep(0.2)
    deadline = time.time() + 120
    while int(psql(url, "SELECT count(*) FROM spark_loads")) < files and time.time() < deadline:
        peak = max(peak, tree_rss_kb(proc.pid))
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    published = published_at(generator_log)
    lat = []
    for row in psql(url, "SELECT file_name, to_char(committed_at AT TIME ZONE 'UTC', "
                         "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM spark_loads").splitlines():
        name, at = row.split("|")
        if name in published:
            lat.append((instant(at) - published[name]).total_seconds() * 1000)
    drop_database("bench_spark")
    shutil.rmtree(cp, ignore_errors=True)
    lat.sort()
    if lat:
        q = lambda p: percentile(lat, p)
        out["latency_idle"] = {"files": len(lat), "p50_ms": q(50), "p99_ms": q(99), "max_ms": lat[-1],
                               "rss_max_mb": peak / 1024}
        log(f"spark peer, idle latency: p50 {q(50):.0f} ms, p99 {q(99):.0f} ms over {len(lat)} files; "
            f"RSS up to {peak / 1024:.0f} MB")
    return out


# --- 8: Citus as the sink -----------------------------------------------------


PG_BIN = Path(os.environ.get("PG_BIN_DIR") or
              sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))[-1])
CITUS_CONF = ("shared_preload_libraries = 'citus'\nmax_prepared_transactions = 100\n"
              "citus.recover_2pc_interval = '1s'\n")


def as_pg(cmd):
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CitusCluster:
    """A coordinator and two workers of the run's own on loopback ports, with
    the server's default settings plus what Citus needs (2PC)."""

    def __init__(self):
        # Outside WORK (private to this user): the servers run as postgres when root.
        self.root = Path(tempfile.mkdtemp(prefix="bench-citus-"))
        os.chmod(self.root, 0o777)
        self.nodes = []
        for i in range(3):
            data, port = self.root / f"node{i}", free_port()
            init = subprocess.run(as_pg([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                         "-E", "UTF8", "--locale=C"]), capture_output=True, text=True)
            if init.returncode != 0:
                raise RuntimeError(f"initdb for the Citus cluster failed:\n{init.stderr[-2000:]}")
            with open(data / "postgresql.conf", "a") as conf:
                conf.write(CITUS_CONF)
            subprocess.run(as_pg([str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(self.root / f"node{i}.log"),
                                  "-o", f"-p {port} -k {self.root} -c listen_addresses=127.0.0.1", "start"]),
                           check=True, capture_output=True)
            self.nodes.append((data, port))

    def url(self, port, db):
        return f"postgres://postgres@127.0.0.1:{port}/{db}"

    def fresh_database(self, name, events_only=False):
        """A new database on every node with the extension, the workers
        added; with events_only, db/001's table distributed as the streamer's
        layout does (for the COPY limit). Returns the coordinator's URL."""
        for _, port in self.nodes:
            # Citus's maintenance daemon of a database just made can still be
            # connected to it (DROP … FORCE ends sessions, not that worker):
            # a few tries.
            for attempt in range(10):
                try:
                    psql(self.url(port, "postgres"), f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                    break
                except RuntimeError as e:
                    if attempt == 9:
                        raise
                    log(f"citus: {e}; trying again")
                    time.sleep(1)
            psql(self.url(port, "postgres"), f"CREATE DATABASE {name}")
            psql(self.url(port, name), "CREATE EXTENSION citus")
        coordinator = self.url(self.nodes[0][1], name)
        psql(coordinator, f"SELECT citus_set_coordinator_host('127.0.0.1', {self.nodes[0][1]})")
        for _, port in self.nodes[1:]:
            psql(coordinator, f"SELECT citus_add_node('127.0.0.1', {port})")
        if events_only:
            subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", coordinator,
                            "-f", str(ROOT / "db/001_events.sql")], check=True, capture_output=True)
            psql(coordinator, "ALTER TABLE events DROP CONSTRAINT events_pkey; "
                              "ALTER TABLE events ADD PRIMARY KEY (user_id, event_id); "
                              "SELECT create_distributed_table('events', 'user_id')")
        return coordinator

    def cpu(self):
        """CPU seconds of all three servers so far."""
        return sum(pg_cpu(int((data / "postmaster.pid").read_text().split()[0])) or 0.0 for data, _ in self.nodes)

    def stop(self):
        for data, _ in self.nodes:
            subprocess.run(as_pg([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]), capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def citus():
    """The scale-out data set into a Citus coordinator with two workers, all on
    this machine, and into the benchmark's single server, in the same runs:
    `psql \\copy` into the (distributed) table, the streamer with 1 and 2
    loaders (ingest alone) and with the analytics on."""
    if not (PG_BIN.parent / "lib/citus.so").exists():
        why = f"Citus is not installed for {PG_BIN} (../shared/tools/citus.sh builds it here)"
        log(f"citus: skipped ({why})")
        return {"skipped": why}
    files, rows = SCALE_OUT
    data = WORK / "citus"
    paths = generate(data, files, rows, 0.0, seed=31)
    cluster = CitusCluster()
    out = {"files": files, "rows_per_file": rows, "workers": 2}
    variants = (("loaders_1", ["--loaders", "1", "--analytics", "false"]),
                ("loaders_2", ["--loaders", "2", "--analytics", "false"]),
                ("analytics_on", []))
    try:
        out["version"] = psql(cluster.fresh_database("bench_citus"),
                              "SELECT extversion FROM pg_extension WHERE extname = 'citus'")
        runs = {where: {name: [] for name in ("copy", *dict(variants))} for where in ("citus", "single")}
        for run in range(RUNS):
            url = cluster.fresh_database("bench_citus", events_only=True)
            c0 = cluster.cpu()
            m = copy_limit(paths, url)
            m["servers_cpu_s"] = cluster.cpu() - c0
            runs["citus"]["copy"].append(m)
            url = fresh_database("bench_citus", schema=True)
            runs["single"]["copy"].append(copy_limit(paths, url))
            drop_database("bench_citus")
            for name, flags in variants:
                url = cluster.fresh_database("bench_citus")
                c0 = cluster.cpu()
                m = stream_once(data, url, "--max-files-per-batch", "4", *flags)
                m["servers_cpu_s"] = cluster.cpu() - c0
                runs["citus"][name].append(m)
                url = fresh_database("bench_citus")
                runs["single"][name].append(stream_once(data, url, "--max-files-per-batch", "4", *flags))
                drop_database("bench_citus")
            c, p = runs["citus"], runs["single"]
            log(f"citus run {run + 1}: " + ", ".join(
                f"{name} {c[name][-1]['rows_per_s']:,.0f} (single server {p[name][-1]['rows_per_s']:,.0f})"
                for name in c) + f" rows/s; derived exact on Citus: {c['analytics_on'][-1].get('derived_exact')}")
        for where, by_name in runs.items():
            out[where] = {name: summarize(r) for name, r in by_name.items()}
            out[f"{where}_runs"] = by_name
    finally:
        cluster.stop()
        shutil.rmtree(data, ignore_errors=True)
    return out


# --- the machine -------------------------------------------------------------


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    mem_kb = int(next(l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")))
    settings = psql(ADMIN_URL, "SELECT name || '=' || setting || coalesce(unit, '') FROM pg_settings WHERE name IN "
                    "('shared_buffers','synchronous_commit','fsync','wal_level','max_wal_size','checkpoint_timeout',"
                    "'work_mem','maintenance_work_mem','full_page_writes') ORDER BY name").splitlines()
    version = lambda cmd: subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem_kb / 1024 / 1024,
        "kernel": platform.release(), "postgres": psql(ADMIN_URL, "SELECT version()"), "pg_settings": settings,
        "rustc": version(["rustc", "--version"]), "streamer": version([STREAMER, "--version"]),
        "psql": version(["psql", "--version"]), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def main():
    global PG_PID
    PG_PID = postmaster_pid()
    if PG_PID is None:
        log("PostgreSQL's processes cannot be read here: its CPU time is not reported")
    started = time.perf_counter()
    raw = OUT / "docs/performance_metrics.json"
    # BENCH_AGAIN=scale_out,spark,...: measure those sections again (after a
    # fix that concerns them only) into the last run's figures; the page
    # says which sections were measured again, and when.
    again = [name for name in os.environ.get("BENCH_AGAIN", "").split(",") if name]
    if again:
        results = json.loads(raw.read_text())
        # (backlog again leaves the scaling section's default points, which
        # copy backlog A's figures, as they were.)
        sections = {"backlog": backlog, "latency": latency, "scale_out": scale_out, "spark": spark_peer,
                    "restart": restart, "replay": replay,
                    "citus": citus, "table_size": table_size}
        for name in again:
            if name not in sections:
                sys.exit(f"BENCH_AGAIN: {name} is not one of {', '.join(sections)}")
            log(f"measuring {name} again into {raw}")
            if name == "table_size":
                # A part of the scaling section: rows already in the table.
                results["scaling"]["table_size"] = table_size()
            else:
                results[name] = sections[name]()
            results.setdefault("measured_again", {})[name] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        results["duration_s"] += time.perf_counter() - started
    else:
        results = {"quick": QUICK, "runs": RUNS, "machine": machine()}
        log(f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores; work in {WORK}")
        results["backlog"] = backlog()
        results["latency"] = latency()
        results["scaling"] = scaling(results["backlog"])
        results["scale_out"] = scale_out()
        results["spark"] = spark_peer()
        results["restart"] = restart()
        results["replay"] = replay()
        results["citus"] = citus()
        results["duration_s"] = time.perf_counter() - started
    # The streamer's data set A figures beside which the PySpark peer was
    # measured (on the same host), kept with it: a later BENCH_AGAIN=backlog,
    # maybe on another host, does not change that comparison.
    sp = results.get("spark") or {}
    if "backlog_A" in sp and (not again or "spark" in again or "streamer_A" not in sp):
        sp["streamer_A"] = results["backlog"]["A"]["streamer"]
    # The raw figures beside the page, so that report.py can redraw it
    # (after an edit of bench/analysis.md) without measuring again.
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(results, indent=1, default=str) + "\n")
    sys.path.insert(0, str(Path(__file__).parent))
    import report
    report.write(results, OUT)
    log(f"done in {results['duration_s'] / 60:.1f} min; raw figures in {raw}")


if __name__ == "__main__":
    main()
