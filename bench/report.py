"""Writes docs/performance_metrics.md and images/bench_*.png from the figures
bench.py measured (docs/performance_metrics.json). Generated: never edit the outputs by
hand; run scripts/bench.sh again.

    python3 bench/report.py docs/performance_metrics.json [OUT_DIR]   # redraw from the saved figures
"""

import json
import sys
from pathlib import Path



def _plt():
    """matplotlib, imported only to draw (the README check needs none of it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    return plt


def k(x):
    return f"{x:,.0f}"


def spread(s, fmt=k, unit=""):
    if s is None:
        return "—"
    if s["n"] == 1:
        return f"{fmt(s['median'])}{unit}"
    return f"{fmt(s['median'])}{unit} ({fmt(s['min'])}–{fmt(s['max'])})"


def ms(x):
    return f"{x:,.1f}"


def sec(x):
    return f"{x:,.2f}"


def ratio(x):
    return f"{x:.2f}×"


def thousands(summaries):
    """Medians and their error bars (down to min, up to max), in thousands."""
    medians = [s["median"] / 1000 for s in summaries]
    bars = [[(s["median"] - s["min"]) / 1000 for s in summaries], [(s["max"] - s["median"]) / 1000 for s in summaries]]
    return medians, bars


def plot_throughput(results, path):
    plt = _plt()
    labels = list(results["backlog"])
    streamer = [results["backlog"][l]["streamer"]["rows_per_s"] for l in labels]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    x = range(len(labels))
    med, err = thousands(streamer)
    ax.bar([i - 0.2 for i in x], med, 0.4 if not any("ingest_only" in results["backlog"][l] for l in labels) else 0.2,
           yerr=err, capsize=3, label="streamer --once (analytics on)", color="#2f6f9f")
    raw = [results["backlog"][l].get("ingest_only", {}).get("rows_per_s") for l in labels]
    rx = [i + 0.2 for i, c in zip(x, raw) if c]
    if rx:
        rm, re_ = thousands([c for c in raw if c])
        ax.bar(rx, rm, 0.2, yerr=re_, capsize=3, label="streamer, analytics off", color="#7fb3d5")
    copy = [results["backlog"][l].get("copy", {}).get("rows_per_s") for l in labels]
    cx = [i + (0.4 if rx else 0.2) for i, c in zip(x, copy) if c]
    cm, ce = thousands([c for c in copy if c])
    ax.bar(cx, cm, 0.2 if rx else 0.4, yerr=ce, capsize=3, label="psql \\copy (the limit)", color="#9aa5ad")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("thousand rows per second")
    ax.set_title("Backlog ingest into the indexed events table (median, min–max)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(results, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for name, color in (("idle", "#2f6f9f"), ("sustained", "#c0392b")):
        r = results["latency"][name]
        lat = r["latencies_ms"]
        ys = [(i + 1) / len(lat) for i in range(len(lat))]
        label = f"{name}: a file every {r['interval_s'] * 1000:.0f} ms ({r['rows_per_file'] / r['interval_s']:,.0f} rows/s)"
        ax.step(lat, ys, where="post", label=label, color=color)
    ax.set_xlim(left=0)
    ax.set_xlabel("file renamed → rows committed (ms)")
    ax.set_ylabel("share of files")
    ax.set_title("End-to-end latency of 1 500-row files")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scaling(results, path):
    plt = _plt()
    import matplotlib.ticker
    s = results["scaling"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    panels = [
        (axes[0], s["batch_size"], "files_per_batch", "files per batch", True),
        (axes[1], s["file_size"], "rows_per_file", "rows per file", True),
        (axes[2], s["table_size"], "rows_in_table", "rows already in the table (millions)", False),
    ]
    for ax, points, key, xlabel, logx in panels:
        xs = [p[key] / (1e6 if key == "rows_in_table" else 1) for p in points]
        med, err = thousands([p["rows_per_s"] for p in points])
        ax.errorbar(xs, med, yerr=err, marker="o", capsize=3, color="#2f6f9f")
        if logx:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xticks(xs, [f"{x:,.0f}" for x in xs])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("thousand rows/s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.suptitle("Streamer throughput (median, min–max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results, out):
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "docs").mkdir(parents=True, exist_ok=True)
    plot_throughput(results, out / "images/bench_throughput.png")
    plot_latency(results, out / "images/bench_latency.png")
    plot_scaling(results, out / "images/bench_scaling.png")
    (out / "docs/performance_metrics.md").write_text(markdown(results))
    if not results["quick"] and (out / "README.md").exists():
        update_readme(out / "README.md", results)


def verdict(ok, missed="**missed**"):
    return "met" if ok else missed


def goals(r):
    """The goals of the hot-path and scale-out issues, each with the figure
    measured and whether it is met."""
    rows = []
    for label in ("A", "B"):
        e = r["backlog"].get(label)
        if not e or "ratio" not in e:
            continue
        x = e["ratio"]["median"]
        exact = e["streamer"].get("derived_exact")
        exact_text = "" if exact is None else (", derived tables exact at the end" if exact["min"] == 1
                                                 else ", **a derived table was not exact**")
        ok = x >= 0.8 and (exact is None or exact["min"] == 1)
        rows.append((f"backlog {label}, default settings (analytics on): streamer ÷ psql \\copy ≥ 0.8× (goal 1.0×), "
                     "every derived table exact when the run ends", f"{ratio(x)}{exact_text}",
                     ("met (≥ 1.0×)" if x >= 1.0 else "met (≥ 0.8×), short of 1.0×") if ok else "**missed**"))
        if "ratio_ingest_only" in e:
            x = e["ratio_ingest_only"]["median"]
            rows.append((f"backlog {label}, ingest alone (`ANALYTICS=false`) ≥ 1.0×", ratio(x), verdict(x >= 1.0)))
    lat = r["latency"]
    for name, key, limit in (("idle", "p50_ms", 25), ("idle", "p99_ms", 100), ("sustained", "p99_ms", 250)):
        x = lat[name][key]
        what = "idle latency, rename to queryable," if name == "idle" else "latency at 20 000 rows/s,"
        floor = lat[name].get("copy_floor")
        alone = f" (one file by `psql \\copy` alone: {ms(floor[key])} ms)" if floor else ""
        rows.append((f"{what} {key[:3]} ≤ {limit} ms", f"{ms(x)} ms{alone}", verdict(x <= limit)))
    sus = lat["sustained"]
    if "applier_lag_p99_ms" in sus:
        x = sus["applier_lag_p99_ms"]
        rows.append(("derived tables behind `events` at 20 000 rows/s, p99 ≤ 1 s, and exact",
                     f"{ms(x)} ms, {'exact' if sus.get('derived_exact') else '**not exact**'}",
                     verdict(x <= 1000 and sus.get("derived_exact"))))
    peaks = [e["streamer"]["rss_mb"]["max"] for e in r["backlog"].values()]
    rows.append(("backlog peak RSS at default settings ≤ 128 MB", f"{max(peaks):.0f} MB (largest run)",
                 verdict(max(peaks) <= 128)))
    ts = r["scaling"]["table_size"]
    if len(ts) > 1 and ts[0]["rows_in_table"] == 0:
        x = ts[-1]["rows_per_s"]["median"] / ts[0]["rows_per_s"]["median"]
        copy = (f" (`psql \\copy` alone: {ts[-1]['copy']['rows_per_s']['median'] / ts[0]['copy']['rows_per_s']['median']:.2f})"
                if ts[0].get("copy") and ts[-1].get("copy") else "")
        rows.append((f"rows/s into a table of {k(ts[-1]['rows_in_table'])} rows ÷ into an empty table ≥ 0.9",
                     f"{x:.2f}{copy}", verdict(x >= 0.9)))
    so = r.get("scale_out")
    if so:
        two = next((p for p in so["loaders"] if p["loaders"] == 2), None)
        if two:
            x = two["ratio_to_copy"]
            rows.append(("two loaders, ingest alone, ≥ 1.3× one `psql \\copy` session", ratio(x), verdict(x >= 1.3)))
        x = so["takeover_s"]["max"]
        rows.append(("a killed streamer's roles taken over (a new file committed) ≤ 10 s",
                     f"{so['takeover_s']['median']:.1f} s (max {x:.1f} s)", verdict(x <= 10)))
    rs = r["restart"]
    x = rs.get("restart to first claim")
    if x is not None:
        rows.append((f"start-up to the first batch ≤ 1 s after {k(rs['files'])} processed files", f"{x:.0f} ms",
                     verdict(x <= 1000)))
    rp = r.get("replay")
    if rp:
        x = rp["events_per_s"]["median"]
        rows.append(("replay --speed max ≥ 1 000 000 events/s on one core, RSS < 100 MB",
                     f"{k(x)} events/s ({k(rp['events_per_cpu_s']['median'])} per CPU second), "
                     f"{rp['rss_mb']['max']:.0f} MB",
                     "met" if x >= 1e6 and rp["rss_mb"]["max"] < 100 else f"**missed** by {100 * (1 - x / 1e6):.0f} %"
                     if x < 1e6 else "**missed** (memory)"))
    return rows


def headline(r):
    """The figures the README quotes, each from this run: README.md holds
    this block between its figures markers, and a test fails when they
    differ (bench/report.py --check-readme)."""
    a, b = r["backlog"]["A"], r["backlog"]["B"]
    lat = r["latency"]
    lines = [
        f"- **Throughput** (measured {(r.get('measured_again') or {}).get('backlog', r['machine']['date'])} on "
        f"{r['machine']['cores']} cores): with the default "
        f"settings, analytics on, {ratio(a['ratio']['median'])} and {ratio(b['ratio']['median'])} the speed of "
        f"`psql \\copy` into the same indexed table (1 500-row and 200 000-row files), "
        f"{ratio(a['ratio_ingest_only']['median'])} and {ratio(b['ratio_ingest_only']['median'])} with the analytics "
        "off.",
        f"- **Latency:** a file's rows are queryable {lat['idle']['p50_ms']:.0f} ms after its rename at the median "
        f"and {lat['idle']['p99_ms']:.0f} ms at p99 when idle; {lat['sustained']['p99_ms']:.0f} ms at p99 under "
        "20 000 rows/s.",
        f"- **Memory:** {max(e['hwm_mb'] for e in lat.values()):.0f} MB peak RSS while streaming, "
        f"{max(e['streamer']['rss_mb']['max'] for e in r['backlog'].values()):.0f} MB at most on a backlog.",
    ]
    so = r.get("scale_out")
    if so:
        two = next(p for p in so["loaders"] if p["loaders"] == 2)
        three = next(p for p in so["streamers"] if p["streamers"] == 3)
        lines.append(f"- **Scale-out:** two loaders {ratio(two['ratio_to_copy'])} one `psql \\copy` session, three "
                     f"streamers on one folder {ratio(three['ratio_to_copy'])}; a killed streamer's work is taken "
                     f"over in {so['takeover_s']['median']:.1f} s.")
    rs = r.get("restart") or {}
    if rs.get("restart to first claim") is not None:
        lines.append(f"- **Start-up:** {rs['restart to first claim']:.0f} ms to the first claim after "
                     f"{k(rs['files'])} processed files.")
    sp = r.get("spark") or {}
    if "backlog_A" in sp:
        beside = sp.get("streamer_A", a["streamer"])
        lines.append(f"- **Against PySpark Structured Streaming** on the same files and table: "
                     f"{k(sp['backlog_A']['rows_per_s']['median'])} rows/s and {sp['backlog_A']['rss_mb']['max']:.0f} MB "
                     f"against {k(beside['rows_per_s']['median'])} rows/s and "
                     f"{beside['rss_mb']['max']:.0f} MB on data set A.")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- figures:begin (bench/report.py writes this block) -->", "<!-- figures:end -->"


def readme_block(r):
    return f"{BEGIN}\n{headline(r)}{END}"


def check_readme(readme, r):
    text = Path(readme).read_text()
    if BEGIN not in text or END not in text:
        return f"{readme} has no figures block"
    found = text[text.index(BEGIN):text.index(END) + len(END)]
    want = readme_block(r)
    if found != want:
        return f"{readme}'s figures differ from docs/performance_metrics.json:\n--- README\n{found}\n--- the latest run\n{want}"
    return None


def update_readme(readme, r):
    text = Path(readme).read_text()
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + readme_block(r) + text[text.index(END) + len(END):]
        Path(readme).write_text(text)


def markdown(r):
    m = r["machine"]
    lines = [
        "# Performance metrics",
        "",
        "<!-- Generated by scripts/bench.sh (bench/bench.py, bench/report.py): do not edit; run it again. -->",
        "",
        f"Measured on {m['date']} by `scripts/bench.sh`"
        + (" in its **quick** variant (BENCH_QUICK=1: small sizes, not the figures to quote)" if r["quick"] else "")
        + f", {r['runs']} runs of each figure; a figure reads *median (min–max)*. "
        f"Measuring took {r['duration_s'] / 60:.1f} minutes in all (the sections measured again included)."
        + "".join(f" The {name.replace('_', '-')} section was measured again on {at} (`BENCH_AGAIN`) with the "
                  "code of that time (see the analysis at the end)." for name, at in (r.get("measured_again") or {}).items()),
        "",
        "## Goals",
        "",
        "| goal | measured (median) | |",
        "|---|---|---|",
        *[f"| {g} | {v} | {verdict} |" for g, v, verdict in goals(r)],
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; {m['memory_gb']:.0f} GiB of memory; Linux {m['kernel']}",
        f"- {m['postgres'].split(' on ')[0]} on the same machine, settings: `{'`, `'.join(m['pg_settings'])}`",
        f"- {m['streamer']} built by {m['rustc']} ({'the test build' if r['quick'] else 'release profile'}); {m['psql']}",
        "",
        "## Backlog ingest against the COPY limit",
        "",
        "Each data set is made by the generator (seeded; event times spread over a day so that the duplicate-free "
        "sets hold no repeated key) and loaded from an empty `events` table (the streamer creates its schema; "
        "time from process start to exit). The limit is `psql -1 -f` running one `\\copy … (FORMAT csv)` per file "
        "into an identical empty `events` table (same constraints and indexes) in one transaction; COPY cannot "
        "load repeated keys, so it runs on the duplicate-free sets only. A `CHECKPOINT` precedes every run.",
        "",
        "The streamer runs as shipped: the analytics on, its applier folding the committed batches into the windowed "
        "metrics and counters on two sessions of its own (its two lanes), and `--once` returning when they have caught up; on the "
        "duplicate-free sets it also runs with `ANALYTICS=false` (ingest alone, what COPY does).",
        "",
        "| data set | files × rows | MB | streamer rows/s | psql \\copy rows/s | streamer ÷ COPY | analytics off: rows/s | ÷ COPY | PostgreSQL CPU s, on / off | streamer peak RSS | streamer CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, e in r["backlog"].items():
        s = e["streamer"]
        raw = e.get("ingest_only")
        lines.append(
            f"| {label} | {e['files']} × {k(e['rows_per_file'])} | {e['size_mb']:.0f} | {spread(s['rows_per_s'])} | "
            f"{spread(e['copy']['rows_per_s']) if 'copy' in e else '—'} | "
            f"{spread(e['ratio'], ratio) if 'ratio' in e else '—'} | "
            f"{spread(raw['rows_per_s']) if raw else '—'} | "
            f"{spread(e['ratio_ingest_only'], ratio) if 'ratio_ingest_only' in e else '—'} | "
            f"{spread(s.get('pg_cpu_s'), sec)}{' / ' + spread(raw.get('pg_cpu_s'), sec) if raw else ''} | "
            f"{spread(s['rss_mb'], unit=' MB')} | {spread(s['cpu_s'], sec)} |")
    lines += [
        "",
        "Where the time goes, summed over the batches of a run (ms; read includes validation, dedup is Polars, "
        "load is the binary COPY straight into `events` (since 2026-12-06), or into the staging table and the "
        "upsert when a chunk meets a stored key, commit is the COMMIT; runs before "
        "2026-12-01 17:40 UTC also counted the claim, the plan and the read of the first chunk in load):",
        "",
        "| data set | batches | read | dedup | load | commit | total wall |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, e in r["backlog"].items():
        s = e["streamer"]
        lines.append(f"| {label} | {spread(s['batches'])} | {spread(s['read_ms'])} | {spread(s['dedup_ms'])} | "
                     f"{spread(s['load_ms'])} | {spread(s['commit_ms'])} | {spread(s['wall_s'], sec, ' s')} |")
    if any("last_commit_s" in e["streamer"] for e in r["backlog"].values()):
        lines += [
            "",
            "When the work lands, seconds from the process start (`batches.committed_at` and `applied_at`): the "
            "first and the last batch's COMMIT, and the instant the applier had folded the last batch into the "
            "derived tables (`--once` returns then). Between the last commit and that instant, only the applier "
            "works:",
            "",
            "| data set | first commit | last commit | derived tables caught up | analytics off: last commit |",
            "|---|---|---|---|---|",
        ]
        for label, e in r["backlog"].items():
            s, raw = e["streamer"], e.get("ingest_only") or {}
            if "last_commit_s" not in s:
                continue
            lines.append(f"| {label} | {spread(s['first_commit_s'], sec, ' s')} | {spread(s['last_commit_s'], sec, ' s')} | "
                         f"{spread(s.get('applied_s'), sec, ' s')} | "
                         f"{spread(raw['last_commit_s'], sec, ' s') if 'last_commit_s' in raw else '—'} |")
    lines += ["", "![throughput](../images/bench_throughput.png)", ""]

    lat = r["latency"]
    lines += [
        "## Latency",
        "",
        "The streamer runs idle (no `--once`); the generator publishes 1 500-row files (2 % duplicates) at a fixed "
        "interval. Latency is from the generator's `file published` log line (just after the rename) to the "
        "instant the COMMIT of the batch that loaded the file returned (`committed_at` in the streamer's progress "
        "record; the rows are queryable from then; runs before 2026-12-01 17:40 UTC measured to the record itself, "
        "written after the commit marker).",
        "",
        "| run | files | p50 | p95 | p99 | max | streamer RSS while running | peak RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in lat.items():
        rate = e["rows_per_file"] / e["interval_s"]
        lines.append(f"| {name}: a file every {e['interval_s'] * 1000:.0f} ms ({k(rate)} rows/s) | {e['files']} | "
                     f"{ms(e['p50_ms'])} ms | {ms(e['p95_ms'])} ms | {ms(e['p99_ms'])} ms | {ms(e['max_ms'])} ms | "
                     f"≤ {e['rss_max_mb']:.0f} MB | {e['hwm_mb']:.0f} MB |")
    floors = {name: e["copy_floor"] for name, e in lat.items() if "copy_floor" in e}
    for name, f in floors.items():
        lines += ["", f"The floor under the {name} run's latency, in the same run: {f['files']} files like its own (same "
                  "size and seed, no duplicates, since a plain COPY cannot take a re-sent key) copied by `psql \\copy` "
                  "into `events` as `db/001_events.sql` creates it (its indexes, not the source position the "
                  "streamer writes with each row), one at a time, each in its own transaction, one session, into a "
                  f"table growing as the stream's does: p50 {ms(f['p50_ms'])} ms, p99 {ms(f['p99_ms'])} ms a file (`\\timing`: the "
                  "client sends the file, the server writes the rows and commits). The streamer adds to it noticing "
                  "the file, the claim and plan, merging the re-sent rows and recording the batch."]
    if any("applier_lag_p99_ms" in e for e in lat.values()):
        lines += [
            "",
            "The derived tables (windowed metrics, counters) are folded by the applier off the commit path: how far "
            "each batch's contribution followed its commit (`batches.applied_at - committed_at`), and whether every "
            "derived table equalled its GROUP BY over `events` at the end:",
            "",
            "| run | p50 | p99 | max | exact at the end |",
            "|---|---|---|---|---|",
        ]
        for name, e in lat.items():
            if "applier_lag_p99_ms" in e:
                lines.append(f"| {name} | {ms(e['applier_lag_p50_ms'])} ms | {ms(e['applier_lag_p99_ms'])} ms | "
                             f"{ms(e['applier_lag_max_ms'])} ms | {'yes' if e['derived_exact'] else '**no**'} |")
    profiles = {name: e["profile_p50_ms"] for name, e in lat.items() if "profile_p50_ms" in e}
    if profiles:
        parts = list(next(iter(profiles.values())).keys())
        lines += [
            "",
            "Where a file's latency goes, median of each part over the run's files (the progress record's phases: "
            "*before the batch* is the rename to the claim — the registrar's listing, the registration and the "
            "loader's wake-up; *read and dedup* is what is left of the first chunk's read once the plan is on disk "
            "(the read starts with the plan; reading the rest overlaps staging, and the chunk's aggregation "
            "overlaps its own staging); "
            "*stage and merge* is the batch's load phase: since 2026-12-06 a COPY straight into `events`, the "
            "stage and the upsert only when a chunk meets a stored key; "
            "*then the marker* is after the rows are queryable and not in the latency):",
            "",
            "| part | " + " | ".join(profiles) + " |",
            "|---|" + "---|" * len(profiles),
        ]
        for part in parts:
            lines.append(f"| {part} | " + " | ".join(
                f"{ms(p[part])} ms" if part in p else "—" for p in profiles.values()) + " |")
    lines += [
        "",
        f"From start to watching (checkpoint open, schema in place) on a fresh database: "
        f"{lat['idle']['ready_s'] * 1000:.0f} ms.",
        "",
        "![latency](../images/bench_latency.png)",
        "",
        "## Scaling",
        "",
    ]
    sc = r["scaling"]
    lines += ["| files per batch (data set A) | rows/s |", "|---|---|"]
    lines += [f"| {p['files_per_batch']} | {spread(p['rows_per_s'])} |" for p in sc["batch_size"]]
    lines += ["", "| rows per file (same rows in all) | files | rows/s | peak RSS |", "|---|---|---|---|"]
    lines += [f"| {k(p['rows_per_file'])} | {p['files']} | {spread(p['rows_per_s'])} | {spread(p['rss_mb'], unit=' MB')} |"
              for p in sc["file_size"]]
    lines += ["", ("One batch of 100 files × 1 500 rows into a table already holding (filled by SQL, its indexes built again after the fill), "
              "analytics on; beside it, PostgreSQL alone: `psql \\copy` of 100 other files of the same shape into the same table, "
              "in one transaction rolled back (the same inserts into the heap and the three indexes, the table left as it was):"), "",
              "| rows in the table | rows/s | `psql \\copy` of the same shape (rolled back), rows/s |", "|---|---|---|"]
    lines += [f"| {k(p['rows_in_table'])} | {spread(p['rows_per_s'])} | "
              f"{spread(p['copy']['rows_per_s']) if p.get('copy') else 'not measured'} |" for p in sc["table_size"]]
    rs = r["restart"]
    lines += [
        "",
        "Start-up was not measured in the quick variant." if not rs else
        f"Start-up after {k(rs['files'])} processed files, all still in the data folder (`cargo bench --bench restart`, "
        f"median of 5): open the checkpoint {rs.get('open checkpoint', 0):.1f} ms, list the folder "
        f"{rs.get('list the folder', 0):.0f} ms, look the files up in the registry "
        f"{rs.get('look {} files up in the registry'.format(rs['files']), 0):.0f} ms, "
        f"restart to the first claim {rs.get('restart to first claim', 0):.0f} ms.",
        "",
        "![scaling](../images/bench_scaling.png)",
        "",
    ]
    so = r.get("scale_out")
    if so:
        lines += [
            "## Scale-out",
            "",
            f"{so['files']} files × {k(so['rows_per_file'])} rows, ingest alone (`ANALYTICS=false`), four files per "
            "batch, from an empty table, beside one `psql \\copy` session loading the same files "
            f"({spread(so['copy']['rows_per_s'])} rows/s). Loaders run inside one streamer; streamers are separate "
            "processes with one loader each and checkpoints of their own, on one folder, coordinated by the file "
            "registry.",
            "",
            "| | rows/s | ÷ one COPY session | peak RSS (one process) |",
            "|---|---|---|---|",
        ]
        lines += [f"| `--loaders {p['loaders']}` | {spread(p['rows_per_s'])} | {ratio(p['ratio_to_copy'])} | "
                  f"{spread(p['rss_mb'], unit=' MB')} |" for p in so["loaders"]]
        lines += [f"| {p['streamers']} streamer{'s' if p['streamers'] > 1 else ''} | {spread(p['rows_per_s'])} | "
                  f"{ratio(p['ratio_to_copy'])} | — |" for p in so["streamers"]]
        lines += [
            "",
            f"Takeover: two streamers on one folder, the one holding the registrar, disposer and applier roles killed "
            f"(SIGKILL), then a file published: committed by the other after {spread(so['takeover_s'], sec, ' s')} "
            "(its next listing, at most the rescan interval, 5 s, after the kill).",
            "",
        ]
    ci = r.get("citus")
    if ci:
        lines += ["## Citus as the sink", ""]
        if "skipped" in ci:
            lines += [f"Not measured in this run: {ci['skipped']}.", ""]
        else:
            measured = r.get("measured_again", {}).get("citus")
            lines += [
                f"The scale-out data set ({ci['files']} files × {k(ci['rows_per_file'])} rows, four files per batch) "
                f"into a Citus {ci['version']} coordinator with {ci['workers']} workers, all three servers on this "
                f"machine's {r['machine']['cores']} cores (loopback, default settings plus two-phase commit), "
                "`events` distributed by `user_id` by the streamer itself (the COPY into the same distributed "
                "table), and in the same runs into the benchmark's single server"
                + (f" (this section measured again {measured}, on the host of that day; compare within it)"
                   if measured else "")
                + ". *Servers' CPU* is the three Citus servers' together.",
                "",
                "| | Citus rows/s | servers' CPU | single server rows/s | Citus ÷ single |",
                "|---|---|---|---|---|",
            ]
            labels = {"copy": "`psql \\copy`, one session", "loaders_1": "streamer, `--loaders 1`, ingest alone",
                      "loaders_2": "streamer, `--loaders 2`, ingest alone",
                      "analytics_on": "streamer, analytics on (default loaders)"}
            for key, label in labels.items():
                c, p = ci["citus"][key], ci["single"][key]
                lines.append(f"| {label} | {spread(c['rows_per_s'])} | {spread(c['servers_cpu_s'], sec, ' s')} | "
                             f"{spread(p['rows_per_s'])} | {ratio(c['rows_per_s']['median'] / p['rows_per_s']['median'])} |")
            exact = ci["citus"]["analytics_on"].get("derived_exact")
            if exact is not None:
                lines += ["", "Every derived table equalled its GROUP BY over the distributed `events` after each run "
                          "with the analytics on." if exact["min"] == 1 else
                          "**A derived table differed from its GROUP BY after a run with the analytics on.**"]
            lines += [""]
    sp = r.get("spark")
    if sp:
        lines += ["## The peer: PySpark Structured Streaming", ""]
        if "skipped" in sp:
            lines += [f"Not measured in this run: {sp['skipped']}.", ""]
        else:
            a = sp.get("streamer_A", r["backlog"]["A"]["streamer"])
            lines += [
                "`bench/spark_peer.py`: `readStream.csv` with the contract's schema (`local[2]`, "
                "`maxFilesPerTrigger` 100), `dropDuplicates` on the key per micro-batch, and `foreachBatch` "
                "writing the batch by JDBC into a staging table and upserting it into the same indexed `events` "
                "table (PySpark 4.0.1, OpenJDK 17, PostgreSQL JDBC 42.5). Time includes the JVM's start.",
                "",
                "| | rows/s, data set A | peak RSS | idle latency p50 / p99 |",
                "|---|---|---|---|",
                f"| PySpark | {spread(sp['backlog_A']['rows_per_s'])} | {spread(sp['backlog_A']['rss_mb'], unit=' MB')} | "
                + (f"{ms(sp['latency_idle']['p50_ms'])} / {ms(sp['latency_idle']['p99_ms'])} ms |"
                   if "latency_idle" in sp else "— |"),
                f"| streamer | {spread(a['rows_per_s'])} | {spread(a['rss_mb'], unit=' MB')} | "
                f"{ms(lat['idle']['p50_ms'])} / {ms(lat['idle']['p99_ms'])} ms |",
                "",
            ]
            if "streamer_A" in sp:
                lines += ["The streamer's rows/s and RSS are its data set A run of the backlog section measured on "
                          "the same host as the peer (not a later `BENCH_AGAIN` of that section); its latency is the "
                          "latency section's above, which may come from a later run on another host.", ""]
    rp = r.get("replay")
    if rp:
        lines += [
            "## Replay",
            "",
            f"`generator replay --speed max` (`scripts/bench-replay.sh`) on a {rp['input_mb']} MB file of "
            f"{k(rp['input_rows'])} rows in the shape of the public multi-category store dataset (views, carts, "
            "removals and purchases; sessions; same-second events), publishing files into a folder:",
            "",
            "| events published per second | per CPU second | peak RSS |",
            "|---|---|---|",
            f"| {spread(rp['events_per_s'])} | {spread(rp['events_per_cpu_s'])} | {spread(rp['rss_mb'], unit=' MB')} |",
            "",
        ]
    notes = Path(__file__).with_name("analysis.md")
    if notes.exists() and not r["quick"]:
        lines += [notes.read_text().rstrip(), ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1] == "--check-readme":
        # python3 bench/report.py --check-readme README.md docs/performance_metrics.json
        problem = check_readme(sys.argv[2], json.loads(Path(sys.argv[3]).read_text()))
        if problem:
            print(problem, file=sys.stderr)
            sys.exit(1)
        print(f"{sys.argv[2]}: every figure is the latest run's")
        sys.exit(0)
    results = json.loads(Path(sys.argv[1]).read_text())
    write(results, Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parent.parent)
