#!/usr/bin/env python3
"""Turns a directory of herald-bench JSON results (scripts/bench.sh) into
BENCHMARKS.md and SVG charts. Standard library only.

Usage: bench-report.py DIR [--markdown BENCHMARKS.md] [--charts docs/bench]
                           [--seconds N] [--runs N] [--install-seconds N]

Result files are named SCENARIO-SERVER-CLIENTS-rRUN.json (see bench.sh); the
report takes medians over runs with min and max, and ratios per round (herald
and its peer measured back to back in the same round).
"""

import argparse
import glob
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
from datetime import datetime, timezone

STOP_P99_MS = 1000.0  # a step above this p99 is not counted as throughput
LIMIT_MS = 50.0
# p99s within 10 % count as equal: at 10,000 clients every server sits on the
# same fan-out floor (115-160 ms here, even the baseline), where the histogram's
# resolution is 4 ms and rounds differ by more than that.
EQUAL_P99 = 1.10
# herald's own share of the latency (consume → socket write), docs/architecture.md.
OWN_P99_TARGET_MS = 1.0
# A server keeps up with a latency run when it delivers at least this share of
# what was expected (and no connection failed, and its p99 is within the limit).
KEEP_UP_SHARE = 0.99
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# ----------------------------------------------------------------- loading

def load(directory):
    out = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        name = os.path.splitext(os.path.basename(path))[0]
        try:
            with open(path) as f:
                out[name] = json.load(f)
        except (OSError, ValueError) as e:
            print(f"bench-report: skipping {path}: {e}", file=sys.stderr)
    return out


def runs(results, prefix):
    """Results named PREFIX-rN, in round order."""
    pat = re.compile(re.escape(prefix) + r"-r(\d+)$")
    found = []
    for name, d in results.items():
        m = pat.match(name)
        if m:
            found.append((int(m.group(1)), d))
    return [d for _, d in sorted(found, key=lambda x: x[0])]


def by_round(results, prefix):
    pat = re.compile(re.escape(prefix) + r"-r(\d+)$")
    out = {}
    for name, d in results.items():
        m = pat.match(name)
        if m:
            out[int(m.group(1))] = d
    return out


# ----------------------------------------------------------------- numbers

def clean(values):
    return [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def med(values):
    v = clean(values)
    return statistics.median(v) if v else None


def human(v, digits=0):
    if v is None:
        return "–"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.2f} M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.0f} k"
    return f"{v:,.{digits}f}"


def num(v, digits=1):
    return "–" if v is None else f"{v:,.{digits}f}"


def ms(values, digits=1):
    v = mmm(values, num, digits=digits)
    return v if v == "–" else v + " ms"


def cpu(values):
    v = mmm(list(values), num, digits=0)
    return v if v == "–" else v + " %"


def mmm(values, f=human, **kw):
    """median (min–max) over runs, or the single value."""
    v = clean(values)
    if not v:
        return "–"
    if len(v) == 1:
        return f(v[0], **kw)
    return f"{f(statistics.median(v), **kw)} ({f(min(v), **kw)}–{f(max(v), **kw)})"


def steps(d):
    return d.get("steps") or []


def sustained(s):
    return s.get("sustained") and s.get("p99_ms", 1e9) <= STOP_P99_MS


def peak_step(d):
    """The step with the highest sustained deliveries/s (p99 ≤ the stop)."""
    best = None
    for s in steps(d):
        if sustained(s) and (best is None or s["deliveries_per_s"] > best["deliveries_per_s"]):
            best = s
    return best


def peak(d):
    """Highest sustained deliveries/s (p99 ≤ the stop) and its p99."""
    best = peak_step(d)
    return (best["deliveries_per_s"], best["p99_ms"]) if best else (None, None)


def best_step(d):
    """The step with the most deliveries/s, sustained or not: what a server
    that sustains nothing (Pushpin at 10,000 clients, some rounds) is compared on."""
    best = None
    for s in steps(d):
        if s.get("deliveries_per_s", 0) > 0 and (best is None or s["deliveries_per_s"] > best["deliveries_per_s"]):
            best = s
    return best


def first_step(d):
    return steps(d)[0] if steps(d) else None


def per_cpu_s(s):
    """Deliveries per second of server CPU time (server_cpu_pct: 100 = one core)."""
    if not s or not s.get("server_cpu_pct"):
        return None
    return s["deliveries_per_s"] / (s["server_cpu_pct"] / 100)


def share(d):
    """Share of the expected deliveries that arrived, in % (failed clients'
    records count as expected: they asked for them)."""
    return 100 * d["delivered"] / d["expected"] if d.get("expected") and d.get("delivered") is not None else None


def kib_per_client(d):
    """PSS growth from before the clients to after the run, per connected client."""
    if not d.get("connected") or d.get("server_pss_kib") is None or d.get("server_pss_idle_kib") is None:
        return None
    return (d["server_pss_kib"] - d["server_pss_idle_kib"]) / d["connected"]


def mib(kib):
    return None if kib is None else kib / 1024


def capacity(d, p99_limit):
    """Highest sustained deliveries/s with p99 ≤ p99_limit."""
    best = None
    for s in steps(d):
        if s.get("sustained") and s["p99_ms"] <= p99_limit:
            best = max(best or 0, s["deliveries_per_s"])
    return best


def at_offered(d, offered):
    for s in steps(d):
        if abs(s.get("offered_per_s", 0) - offered) <= 0.01 * offered:
            return s
    return None


def offered_levels(rs):
    """The offered deliveries/s of the steps of these runs, merged within 1 %."""
    levels = []
    for o in sorted(s["offered_per_s"] for d in rs for s in steps(d)):
        if not levels or o > levels[-1] * 1.01:
            levels.append(o)
    return levels


def median_curve(rs):
    """Per offered level: (median delivered/s, median p99) over the rounds that
    reached it, keeping levels sustained in most of those rounds."""
    out = []
    for o in offered_levels(rs):
        ss = [s for s in (at_offered(d, o) for d in rs) if s]
        if ss and sum(1 for s in ss if sustained(s)) * 2 > len(ss):
            out.append((med([s["deliveries_per_s"] for s in ss]), med([s["p99_ms"] for s in ss])))
    return out


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def pct(v, digits=1):
    """A share in %, truncated so that only everything reads 100 %."""
    if v is None:
        return "–"
    if v >= 100:
        return "100 %"
    if v < 1:
        return f"{v:.2g} %"
    return f"{math.floor(v * 10 ** digits) / 10 ** digits:.{digits}f} %"


# ------------------------------------------------------------------ charts

class Svg:
    def __init__(self, w, h):
        self.w, self.h, self.parts = w, h, []

    def add(self, s):
        self.parts.append(s)

    def text(self, x, y, s, size=12, anchor="middle", color="#222", weight="normal", rotate=None):
        tr = f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate else ""
        s = s.replace("&", "&amp;").replace("<", "&lt;")
        self.add(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
                 f'fill="{color}" font-weight="{weight}"{tr}>{s}</text>')

    def line(self, x1, y1, x2, y2, color="#ccc", width=1, dash=None):
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                 f'stroke="{color}" stroke-width="{width}"{d}/>')

    def render(self):
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.w}" height="{self.h}" '
                f'viewBox="0 0 {self.w} {self.h}" font-family="sans-serif">\n'
                f'<rect width="{self.w}" height="{self.h}" fill="white"/>\n'
                + "\n".join(self.parts) + "\n</svg>\n")


def fmt_count(v):
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def fmt_ms(v):
    return f"{v / 1000:g} s" if v >= 1000 else f"{v:g} ms"


class Panel:
    """A log-log plot area."""

    def __init__(self, svg, x, y, w, h, xr, yr, title, xlabel, ylabel, xfmt, yfmt, xticks=None):
        self.svg, self.x, self.y, self.w, self.h = svg, x, y, w, h
        self.lx = (math.log10(xr[0]), math.log10(xr[1]))
        self.ly = (math.log10(yr[0]), math.log10(yr[1]))
        svg.text(x + w / 2, y - 12, title, size=14, weight="bold")
        svg.add(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="none" stroke="#888"/>')
        ticks = xticks or [10 ** e for e in range(math.ceil(self.lx[0]), math.floor(self.lx[1]) + 1)]
        for t in ticks:
            px = self.px(t)
            svg.line(px, y, px, y + h, "#eee")
            svg.text(px, y + h + 16, xfmt(t), size=11)
        for e in range(math.ceil(self.ly[0]), math.floor(self.ly[1]) + 1):
            py = self.py(10 ** e)
            svg.line(x, py, x + w, py, "#eee")
            svg.text(x - 6, py + 4, yfmt(10 ** e), size=11, anchor="end")
        svg.text(x + w / 2, y + h + 36, xlabel, size=12)
        svg.text(x - 58, y + h / 2, ylabel, size=12, rotate=-90)

    def px(self, v):
        return self.x + (math.log10(v) - self.lx[0]) / (self.lx[1] - self.lx[0]) * self.w

    def py(self, v):
        return self.y + self.h - (math.log10(v) - self.ly[0]) / (self.ly[1] - self.ly[0]) * self.h

    def series(self, points, color, label=None, dash=None, marker=True):
        pts = [(self.px(a), self.py(b)) for a, b in points if a and b]
        if len(pts) > 1:
            d = f' stroke-dasharray="{dash}"' if dash else ""
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            self.svg.add(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{d}/>')
        if marker:
            for x, y in pts:
                self.svg.add(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}"/>')

    def hline(self, v, label):
        py = self.py(v)
        self.svg.line(self.x, py, self.x + self.w, py, "#c00", 1, "5,4")
        self.svg.text(self.x + self.w - 4, py - 4, label, size=10, anchor="end", color="#c00")


COLORS = {"herald": "#1f77b4", "nchan": "#ff7f0e", "baseline": "#7f7f7f", "pushpin": "#2ca02c",
          "kafka-sse": "#9467bd"}
LABELS = {"kafka-sse": "KafkaSSE", "pushpin": "Pushpin"}


def legend(svg, x, y, items):
    for i, (label, color) in enumerate(items):
        yy = y + i * 18
        svg.line(x, yy, x + 24, yy, color, 3)
        svg.text(x + 30, yy + 4, label, size=12, anchor="start")


def chart_clients(results, path):
    """Peak sustained deliveries/s and p99 at 100k deliveries/s against clients."""
    counts = sorted({int(m.group(1)) for n in results
                     for m in [re.match(r"broadcast-(?:herald|nchan|pushpin|baseline)-(\d+)-r\d+$", n)] if m})
    if not counts:
        return False
    svg = Svg(960, 420)
    lo, hi = min(counts) / 1.5, max(counts) * 1.5
    tput = Panel(svg, 90, 50, 360, 280, (lo, hi), (1e4, 1e7),
                 "Broadcast: highest sustained deliveries/s", "clients on one key",
                 "deliveries/s (p99 ≤ 1 s)", fmt_count, fmt_count, counts)
    lat = Panel(svg, 570, 50, 360, 280, (lo, hi), (1, 5000),
                "p99 produce→client at 100k deliveries/s", "clients on one key",
                "p99", fmt_count, fmt_ms, counts)
    lat.hline(LIMIT_MS, "target: 50 ms")
    items = []
    for server in ("herald", "nchan", "pushpin", "baseline"):
        tp, t50, lp = [], [], []
        for c in counts:
            rs = runs(results, f"broadcast-{server}-{c}")
            if not rs:
                continue
            tp.append((c, med([peak(d)[0] for d in rs])))
            t50.append((c, med([capacity(d, LIMIT_MS) for d in rs])))
            lp.append((c, med([(at_offered(d, 100000) or {}).get("p99_ms") for d in rs])))
        if tp:
            tput.series(tp, COLORS[server])
            tput.series(t50, COLORS[server], dash="6,4")
            lat.series(lp, COLORS[server])
            items.append((server, COLORS[server]))
    for i, item in enumerate(items):
        legend(svg, 100 + 120 * i, 385, [item])
    svg.add('<line x1="100" y1="403" x2="124" y2="403" stroke="#555" stroke-width="2" stroke-dasharray="6,4"/>')
    svg.text(130, 407, "dashed: highest with p99 ≤ 50 ms", size=11, anchor="start", color="#555")
    svg.text(570, 392, "medians where several runs exist (10,000 clients),",
             size=11, anchor="start", color="#555")
    svg.text(570, 407, "single runs elsewhere", size=11, anchor="start", color="#555")
    with open(path, "w") as f:
        f.write(svg.render())
    return True


def chart_ladder(results, clients, path):
    """p99 against delivered/s at each step, 10,000 clients."""
    svg = Svg(640, 420)
    panel = Panel(svg, 90, 50, 500, 290, (1e4, 1e7), (1, 5000),
                  f"Broadcast, {clients:,} clients: p99 against throughput",
                  "delivered per second (median of rounds per rate)", "p99 produce→client",
                  fmt_count, fmt_ms)
    panel.hline(LIMIT_MS, "target: 50 ms")
    items = []
    for server in ("herald", "nchan", "pushpin", "baseline"):
        rs = runs(results, f"broadcast-{server}-{clients}")
        if not rs:
            continue
        offered = offered_levels(rs)
        pts = []
        for o in offered:
            ss = [at_offered(d, o) for d in rs]
            # A round that delivered nothing in a step has no latency to show.
            ss = [s for s in ss if s and s["deliveries_per_s"] > 0]
            if med([s["deliveries_per_s"] for s in ss]):
                pts.append((med([s["deliveries_per_s"] for s in ss]), med([s["p99_ms"] for s in ss])))
        panel.series(pts, COLORS[server])
        items.append((server, COLORS[server]))
    # Four names do not fit 150 px apart in 640.
    gap = 150 if len(items) <= 3 else 125
    for i, item in enumerate(items):
        legend(svg, 100 + gap * i, 392, [item])
    with open(path, "w") as f:
        f.write(svg.render())
    return True


def kafkasse_counts(results):
    return sorted({int(mm.group(1)) for n in results
                   for mm in [re.match(r"kafkasse-(?:kafka-sse|herald)-(\d+)-r\d+$", n)] if mm})


def chart_kafkasse(results, path):
    """Share of the expected deliveries that arrived, and p99, against clients
    on one topic (KafkaSSE against herald)."""
    counts = kafkasse_counts(results)
    if not counts:
        return False
    data = {}
    for server in ("herald", "kafka-sse"):
        sh_pts, p_pts = [], []
        for c in counts:
            rs = runs(results, f"kafkasse-{server}-{c}")
            if not rs:
                continue
            sh_pts.append((c, med([share(d) for d in rs])))
            p_pts.append((c, med([(first_step(d) or {}).get("p99_ms") for d in rs])))
        if sh_pts:
            data[server] = (sh_pts, p_pts)
    shares = [v for sp, _ in data.values() for _, v in sp if v]
    p99s = [v for _, pp in data.values() for _, v in pp if v]
    if not shares:
        return False
    # The panels reach down to the smallest share and up to the largest p99
    # measured, in whole powers of ten (a decade more when a point would sit
    # on the edge); 100 % sits inside the top edge.
    s_lo = min(10.0, 10 ** math.floor(math.log10(min(shares))))
    if min(shares) < 2 * s_lo:
        s_lo /= 10
    p_hi = 5000.0 if not p99s or max(p99s) <= 4000 else 10 ** math.ceil(math.log10(max(p99s) * 1.25))
    rate = med([(first_step(d) or {}).get("rate") for n, d in results.items() if n.startswith("kafkasse-")])
    svg = Svg(960, 420)
    lo, hi = min(counts) / 1.5, max(counts) * 1.5
    got = Panel(svg, 90, 50, 360, 280, (lo, hi), (s_lo, 150),
                "One topic" + (f", {rate:g} records/s" if rate else "") + ": deliveries that arrived",
                "clients on one topic",
                "share of expected deliveries", fmt_count, lambda v: f"{v:g} %", counts)
    lat = Panel(svg, 570, 50, 360, 280, (lo, hi), (1, p_hi),
                "p99 produce→client", "clients on one topic",
                "p99", fmt_count, fmt_ms, counts)
    lat.hline(LIMIT_MS, "target: 50 ms")
    items = []
    for server, (sp, pp) in data.items():
        got.series(sp, COLORS[server])
        lat.series(pp, COLORS[server])
        items.append((LABELS.get(server, server), COLORS[server]))
    for i, item in enumerate(items):
        legend(svg, 100 + 120 * i, 385, [item])
    svg.text(570, 392, "medians where several runs exist (1,000 clients),",
             size=11, anchor="start", color="#555")
    svg.text(570, 407, "single runs elsewhere", size=11, anchor="start", color="#555")
    with open(path, "w") as f:
        f.write(svg.render())
    return True


# ---------------------------------------------------------------- markdown

def kafka_sse_version():
    """The installed package's own version (bench/kafka-sse's npm ci)."""
    try:
        with open(os.path.join(ROOT, "bench", "kafka-sse", "node_modules", "kafka-sse", "package.json")) as f:
            return str(json.load(f).get("version", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def tansu_version():
    # `cargo install` puts it in ~/.cargo/bin, which need not be on PATH.
    for exe in ("tansu", os.path.expanduser("~/.cargo/bin/tansu")):
        v = sh(exe, "--version")
        if v:
            return v.split()[-1]
    return ""


def machine():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "nproc": sh("nproc"),
        "cpu": cpu,
        "free": sh("free", "-h"),
        "uname": sh("uname", "-srvmo") or platform.platform(),
        "nofile": f"{soft} (hard {hard})",
        "commit": sh("git", "rev-parse", "--short", "HEAD"),
        "dirty": bool(sh("git", "status", "--porcelain", "--untracked-files=no")),
        "rustc": sh("rustc", "-V"),
        "nginx": sh("dpkg-query", "-W", "-f=${Version}", "nginx"),
        "nchan": sh("dpkg-query", "-W", "-f=${Version}", "libnginx-mod-nchan"),
        "pushpin": sh("dpkg-query", "-W", "-f=${Version}", "pushpin"),
        "node": sh("node", "--version"),
        "kafka_sse": kafka_sse_version(),
        "tansu": tansu_version(),
    }


def verdict(ok, miss):
    return "met" if ok else f"**missed**: {miss}"


def report(results, directory, seconds, nruns, charts_dir, md_path, install_seconds=0):
    m = machine()
    lines = []
    w = lines.append
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    w("# Benchmarks")
    w("")
    w(f"Written by `make bench` ([scripts/bench.sh](scripts/bench.sh), report by "
      f"[scripts/bench-report.py](scripts/bench-report.py)) on {now}: {nruns} rounds of every "
      f"scenario in {seconds // 60} min {seconds % 60} s (measuring only). Do not edit by hand; run `make bench` again.")
    w("")
    w("## Machine")
    w("")
    w(f"- {m['nproc']} cores ({m['cpu'] or 'unknown CPU'}), `uname`: {m['uname']}")
    w(f"- open files per process: {m['nofile']}")
    w(f"- herald {m['commit']}{' with uncommitted changes' if m['dirty'] else ''}, {m['rustc']}, release build")
    w(f"- nginx {m['nginx']}, libnginx-mod-nchan {m['nchan']} (Debian), configuration [bench/nchan.conf](bench/nchan.conf)")
    # The peers' lines only where they ran or are installed, so an older
    # results directory does not list tools it never used.
    has = lambda prefix: any(n.startswith(prefix) for n in results)
    if m["pushpin"] or has("broadcast-pushpin-") or has("light-pushpin-"):
        w(f"- Pushpin {m['pushpin'] or 'unknown'} (Debian), configuration [bench/pushpin.conf](bench/pushpin.conf)")
    if m["kafka_sse"] or has("kafkasse-kafka-sse-"):
        w(f"- KafkaSSE {m['kafka_sse'] or 'unknown'} ([bench/kafka-sse](bench/kafka-sse)) on node {m['node'] or 'unknown'}")
    if m["tansu"] or has("floor-tansu-"):
        w(f"- Tansu {m['tansu'] or 'unknown'}")
    if install_seconds > 0:
        w(f"- Installing the build and bench dependencies took {install_seconds} s in this run. "
          "On a fresh machine the peers add: Pushpin from Debian (4 s here with the archive reachable), KafkaSSE's `npm ci` "
          "(about 90 s: node-rdkafka compiles its bundled librdkafka), and Tansu's `cargo install` "
          "(about 10 minutes, shared with `make test`).")
    else:
        w("- On a fresh machine the peers add: Pushpin from Debian (4 s here with the archive reachable), KafkaSSE's `npm ci` "
          "(about 90 s: node-rdkafka compiles its bundled librdkafka), and Tansu's `cargo install` "
          "(about 10 minutes, shared with `make test`).")
    w("")
    w("```")
    w(m["free"])
    w("```")
    w("")
    others = [s.get("other_cpu_pct") for d in results.values() for s in steps(d)]
    busy = [d for d in results.values() if (d.get("machine_before") or {}).get("busy_pct", 0) >= 30]
    w("The load generator runs on the same two cores as the server, and the machine may be shared "
      "with other work: figures are medians of the rounds with (min–max). While records flowed, the "
      f"rest of the machine used a median {num(med(others), 0)} % of a core (at most {num(max(clean(others) or [0]), 0)} %); "
      f"{len(busy)} of {len(results)} runs started on a busy machine (≥ 30 % of a core after waiting up to 5 s).")
    w("")

    # ---------------------------------------------------------- headline
    idle1 = {s: runs(results, f"idle-{s}-19000") for s in ("herald", "nchan", "baseline")}
    multi = runs(results, "idle-herald-multi")
    b10 = {s: runs(results, f"broadcast-{s}-10000") for s in ("herald", "nchan", "baseline")}
    light = {s: runs(results, f"light-{s}-1000") for s in ("herald", "nchan")}
    keyed = runs(results, "keyed-herald-15000")
    keyed_noid = runs(results, "keyed-noidleid-herald-15000")
    res = runs(results, "resume-herald-10000")
    resk = runs(results, "resume-kafka-herald-10000")

    # per-round ratios
    rounds_h = by_round(results, "broadcast-herald-10000")
    rounds_n = by_round(results, "broadcast-nchan-10000")
    rounds_b = by_round(results, "broadcast-baseline-10000")
    eq_ratios, eq_detail = [], []
    for r in sorted(set(rounds_h) & set(rounds_n)):
        n_dps, n_p99 = peak(rounds_n[r])
        if n_dps is None:
            continue
        h_at = capacity(rounds_h[r], n_p99 * EQUAL_P99)
        eq_ratios.append(ratio(h_at, n_dps))
        eq_detail.append((r, h_at, n_dps, n_p99))
    curve = {srv: median_curve(b10[srv]) for srv in b10}
    curve_eq = curve_base = None
    if curve["nchan"] and curve["herald"]:
        n_top, n_p = max(curve["nchan"])
        h_at = max([d for d, p in curve["herald"] if p <= n_p * EQUAL_P99] or [None], key=lambda v: v or 0)
        curve_eq = (ratio(h_at, n_top), h_at, n_top, n_p)
    if curve["baseline"] and curve["herald"]:
        curve_base = ratio(max(curve["herald"])[0], max(curve["baseline"])[0])
    base_ratios = []
    for r in sorted(set(rounds_h) & set(rounds_b)):
        base_ratios.append(ratio(peak(rounds_h[r])[0], peak(rounds_b[r])[0]))
    mem_ratios = []
    ih, inn = by_round(results, "idle-herald-19000"), by_round(results, "idle-nchan-19000")
    for r in sorted(set(ih) & set(inn)):
        mem_ratios.append(ratio(ih[r].get("kib_per_connection"), inn[r].get("kib_per_connection")))
    light_ratio = []
    lh, ln = by_round(results, "light-herald-1000"), by_round(results, "light-nchan-1000")
    for r in sorted(set(lh) & set(ln)):
        light_ratio.append(ratio(steps(lh[r])[0]["p99_ms"] if steps(lh[r]) else None,
                                 steps(ln[r])[0]["p99_ms"] if steps(ln[r]) else None))

    def fx(v, digits=2):
        return "–" if v is None else f"{v:.{digits}f}×"

    # Pushpin, the nchan method: its highest sustained step against herald's
    # highest sustained one with a p99 no worse. A round where Pushpin
    # sustained nothing compares on its best step instead; herald's side stays
    # under the stop (1 s) even when that step's p99 is above it.
    rounds_p = by_round(results, "broadcast-pushpin-10000")
    pp_ratios, pp_detail = [], []
    for r in sorted(set(rounds_h) & set(rounds_p)):
        p_dps, p_p99 = peak(rounds_p[r])
        fell_back = p_dps is None
        if fell_back:
            best = best_step(rounds_p[r])
            if best is None:
                continue
            p_dps, p_p99 = best["deliveries_per_s"], best["p99_ms"]
        h_at = capacity(rounds_h[r], min(p_p99 * EQUAL_P99, STOP_P99_MS))
        pp_ratios.append(ratio(h_at, p_dps))
        pp_detail.append((r, h_at, p_dps, p_p99, fell_back))

    def light_ratios(a, b):
        la, lb = by_round(results, f"light-{a}-1000"), by_round(results, f"light-{b}-1000")
        return [ratio((first_step(la[r]) or {}).get("p99_ms"), (first_step(lb[r]) or {}).get("p99_ms"))
                for r in sorted(set(la) & set(lb))]

    # KafkaSSE at 1,000 clients on one topic (every round), per round where both ran.
    ks_h, ks_k = by_round(results, "kafkasse-herald-1000"), by_round(results, "kafkasse-kafka-sse-1000")
    ks_common = sorted(set(ks_h) & set(ks_k))
    ks_p99 = [ratio((first_step(ks_k[r]) or {}).get("p99_ms"), (first_step(ks_h[r]) or {}).get("p99_ms"))
              for r in ks_common]
    ks_mem = [ratio(kib_per_client(ks_k[r]), kib_per_client(ks_h[r])) for r in ks_common]

    # Deliveries per CPU-second at the step each comparison uses, per round.
    def eff_ratios(other, fallback=False):
        ro = by_round(results, f"broadcast-{other}-10000")
        out = []
        for r in sorted(set(rounds_h) & set(ro)):
            so = peak_step(ro[r]) or (best_step(ro[r]) if fallback else None)
            out.append(ratio(per_cpu_s(peak_step(rounds_h[r])), per_cpu_s(so)))
        return out
    eff_pp_fell = [r for r, d in sorted(rounds_p.items()) if peak_step(d) is None and best_step(d)]
    eff_ks = [ratio(per_cpu_s(first_step(ks_h[r])), per_cpu_s(first_step(ks_k[r]))) for r in ks_common]

    # The publish endpoint: one run, medians of its own rounds per concurrency.
    pub = runs(results, "publish-herald")
    pub_rows = {row.get("concurrency"): row for row in (pub[0].get("summary") or [])} if pub else {}
    pub_rows = {c: row for c, row in pub_rows.items() if c is not None}
    c_hi = max(pub_rows) if pub_rows else None
    c_lo = min(pub_rows) if pub_rows else None

    def pub_get(c, path, key):
        return ((pub_rows.get(c) or {}).get(path) or {}).get(key)

    # The latency floor runs: herald's own share on each broker.
    floors = [("embedded Kafka", runs(results, "floor-herald")),
              ("Tansu", runs(results, "floor-tansu-herald")),
              ("Tansu, presence off", runs(results, "floor-tansu-nopresence-herald"))]

    def own_p99(rs):
        return [r.get("own_p99_ms_at_most") for d in rs[:1] for r in d.get("rounds", [])]

    w("## Headline")
    w("")
    w("| ratio | median (min–max) over rounds |")
    w("|---|---|")
    w(f"| herald / nchan deliveries/s at equal or better p99 (broadcast, 10,000 clients), per round | "
      f"{mmm(eq_ratios, fx)} |")
    if curve_eq:
        w(f"| the same on the median curves (medians of each rate over the rounds) | {fx(curve_eq[0])}: "
          f"herald {human(curve_eq[1])}/s, nchan {human(curve_eq[2])}/s at p99 {num(curve_eq[3])} ms |")
    w(f"| herald / speed-of-light baseline, highest sustained deliveries/s (broadcast, 10,000 clients), per round | "
      f"{mmm(base_ratios, fx)} |")
    if curve_base:
        w(f"| the same on the median curves | {fx(curve_base)} |")
    w(f"| herald / nchan memory per idle connection (19,000 connections) | {mmm(mem_ratios, fx)} |")
    w(f"| herald / nchan p99 at light load (1,000 clients, 1,000 records/s; above 1 means herald is slower) | {mmm(light_ratio, fx)} |")
    largest = max([d.get("open", 0) for d in multi + idle1["herald"]] or [0])
    w(f"| largest number of connections held at once (herald, several nodes) | {largest:,} |")
    pp_cell = mmm(pp_ratios, fx)
    fell = [x for x in pp_detail if x[4]]
    if fell:
        pp_cell += " (" + "; ".join(
            (f"round {r}: " if len(pp_detail) > 1 else "")
            + f"Pushpin sustained no step; against its best: {human(p)}/s at p99 {num(q)} ms"
            for r, _, p, q, _ in fell) + ")"
    w(f"| herald / Pushpin deliveries/s at equal or better p99 (broadcast, 10,000 clients), per round | {pp_cell} |")
    w(f"| herald / Pushpin p99 at light load (1,000 clients, 1,000 records/s; above 1 means herald is slower) | "
      f"{mmm(light_ratios('herald', 'pushpin'), fx)} |")
    ks_share = ", ".join(f"{name} {mmm([share(d) for d in rs.values()], pct)}"
                         for name, rs in (("herald", ks_h), ("KafkaSSE", ks_k))
                         if clean([share(d) for d in rs.values()])) or "–"
    w(f"| herald, KafkaSSE: share of the expected deliveries that arrived (1,000 clients on one topic, "
      f"100 records/s) | {ks_share} |")
    w(f"| KafkaSSE / herald p99, the same runs (above 1 means KafkaSSE is slower) | {mmm(ks_p99, fx)} |")
    w(f"| KafkaSSE / herald memory per connected client, the same runs (PSS growth ÷ connected clients) | "
      f"{mmm(ks_mem, fx)} |")
    w(f"| herald / nchan deliveries per CPU-second (broadcast, 10,000 clients, each at its highest "
      f"sustained step), per round | {mmm(eff_ratios('nchan'), fx)} |")
    w(f"| herald / Pushpin deliveries per CPU-second, the same"
      + (" (Pushpin at its highest delivered step in rounds where it sustained none: "
         + ", ".join(str(r) for r in eff_pp_fell) + ")" if eff_pp_fell else "")
      + f" | {mmm(eff_ratios('pushpin', fallback=True), fx)} |")
    w(f"| herald / baseline deliveries per CPU-second, the same | {mmm(eff_ratios('baseline'), fx)} |")
    w(f"| herald / KafkaSSE deliveries per CPU-second (1,000 clients on one topic, 100 records/s, the "
      f"measured step, sustained or not), per round | {mmm(eff_ks, fx)} |")
    hi_label = f"{c_hi} in flight" if c_hi is not None else "the most in flight"
    lo_label = f"{c_lo} in flight" if c_lo is not None else "the fewest in flight"
    h_ps, d_ps = pub_get(c_hi, "http", "per_s"), pub_get(c_hi, "direct", "per_s")
    h_50, d_50 = pub_get(c_lo, "http", "p50_ms"), pub_get(c_lo, "direct", "p50_ms")
    w(f"| herald's publish endpoint / a direct producer, records/s at {hi_label} | "
      + (f"{fx(ratio(h_ps, d_ps))}: {human(h_ps)}/s against {human(d_ps)}/s" if h_ps and d_ps else "–") + " |")
    w(f"| herald's publish endpoint / a direct producer, p50 POST → ack at {lo_label} (above 1 means "
      f"the endpoint is slower) | "
      + (f"{fx(ratio(h_50, d_50))}: {num(h_50, 2)} ms against {num(d_50, 2)} ms" if h_50 and d_50 else "–") + " |")
    owns = []
    for label, rs in floors:
        v = own_p99(rs)
        if clean(v):
            ok = med(v) <= OWN_P99_TARGET_MS
            owns.append(f"{label} ≤ {mmm(v, num, digits=2)} ms ({'met' if ok else '**missed**'})")
    w(f"| herald's own latency p99, consume → socket write (bucket upper bound), light load; target ≤ "
      f"{num(OWN_P99_TARGET_MS, 0)} ms | {'; '.join(owns) or '–'} |")
    w("")
    w("\"At equal or better p99\": in each round, nchan's highest sustained rate and its p99, "
      "against herald's highest sustained rate whose p99 is no worse (within 10 %: at 10,000 clients "
      "every server, even the baseline, sits on a fan-out floor of about 115–160 ms, where rounds "
      "differ by more than that). \"Sustained\": at least 90 % of the offered deliveries arrived "
      "during the step and no stream was cut.")
    w("")
    w("Deliveries per CPU-second: a step's deliveries/s divided by the server's CPU in it (100 % = one "
      "core); the figures behind them are under [Efficiency](#efficiency-deliveries-per-cpu-second).")
    w("")

    # ---------------------------------------------------------- targets
    w("## herald against its targets")
    w("")
    w("| what | target | measured (median, min–max) | verdict |")
    w("|---|---|---|---|")
    open1 = [d.get("open") for d in idle1["herald"]]
    ok = bool(open1) and min(clean(open1) or [0]) >= 19000
    w(f"| idle connections, one node | 19,000 | {mmm(open1)} open | "
      f"{verdict(ok, 'some runs held fewer')} |")
    opens = [d.get("open") or 0 for d in multi]
    ok = bool(opens) and min(opens) >= 100000
    desc = ", ".join(f"{d.get('open', 0):,} over {d.get('nodes')} nodes" for d in multi) or "–"
    w(f"| idle connections, several nodes | ≥ 100,000 (stretch 250,000) | {desc} | "
      f"{verdict(ok, 'fewer than 100,000')}"
      + ("; stretch met too" if opens and max(opens) >= 250000 else "; stretch not reached") + " |")
    kib = med([d.get("kib_per_connection") for d in idle1["herald"]])
    ok = kib is not None and kib <= 4
    w(f"| memory per idle connection | ≤ 4 KiB | {mmm([d.get('kib_per_connection') for d in idle1['herald']], num, digits=1)} KiB | "
      f"{verdict(ok, f'{kib - 4:.1f} KiB over ({kib / 4:.1f}× the target)' if kib else 'not measured')} |")
    cap50 = [capacity(d, LIMIT_MS) for d in b10["herald"]]
    at1m = [at_offered(d, 1_000_000) for d in b10["herald"]]
    p99_1m = med([s["p99_ms"] for s in at1m if s])
    dps_1m = med([s["deliveries_per_s"] for s in at1m if s])
    ok = bool(clean(cap50)) and med(cap50) >= 1e6
    miss = (f"no rate had p99 ≤ 50 ms; at 1,000,000 offered it delivered {human(dps_1m)}/s with p99 "
            f"{num(p99_1m)} ms ({p99_1m / LIMIT_MS:.1f}× the limit)" if p99_1m else "see the broadcast table")
    if clean(cap50):
        miss = f"{human(med(cap50))}/s at p99 ≤ 50 ms; " + miss
    w(f"| broadcast, 10,000 clients, 100-byte records | ≥ 1,000,000 deliveries/s at p99 ≤ 50 ms | "
      f"{mmm([peak(d)[0] for d in b10['herald']])} deliveries/s sustained (p99 "
      f"{mmm([peak(d)[1] for d in b10['herald']], num)} ms) | {verdict(ok, miss)} |")
    if keyed:
        match = all(d.get("needed_partitions") == d.get("assigned_partitions") for d in keyed)
        kp99 = [steps(d)[0]["p99_ms"] for d in keyed if steps(d)]
        need = len(keyed[0].get("needed_partitions") or [])
        parts = keyed[0].get("partitions", 64)
        ok = match and (med(kp99) or 1e9) <= LIMIT_MS
        w(f"| keyed: 15,000 clients on 15,000 keys (target: 50,000; one process holds 19,000) "
          f"over {parts} partitions | only the needed partitions; p99 ≤ 50 ms | "
          f"{'assigned = needed' if match else 'assigned ≠ needed'} ({need} of {parts}) in every run; "
          f"p99 {mmm(kp99, num)} ms | "
          f"{verdict(ok, ('partitions differ; ' if not match else '') + (f'p99 {med(kp99) - LIMIT_MS:.0f} ms over' if (med(kp99) or 0) > LIMIT_MS else ''))} |")
    if light["herald"]:
        p50 = [steps(d)[0]["p50_ms"] for d in light["herald"] if steps(d)]
        p99 = [steps(d)[0]["p99_ms"] for d in light["herald"] if steps(d)]
        misses = []
        if (med(p50) or 0) > 5:
            misses.append(f"p50 {med(p50) - 5:.1f} ms over")
        if (med(p99) or 0) > 15:
            misses.append(f"p99 {med(p99) - 15:.1f} ms over")
        w(f"| light load: 1,000 clients, 1,000 records/s | p50 ≤ 5 ms, p99 ≤ 15 ms | "
          f"p50 {mmm(p50, num, digits=2)} ms, p99 {mmm(p99, num, digits=2)} ms | "
          f"{verdict(not misses, ', '.join(misses))} |")
    if res:
        live = [d.get("all_live_ms") for d in res]
        livek = [d.get("all_live_ms") for d in resk]
        readers = max([d.get("catchup_readers_max", 0) for d in res + resk] or [0])
        ok_b = (med(live) or 1e9) <= 5000 and all(d.get("ok") for d in res)
        extra = ""
        if resk:
            k = med(livek) or 0
            extra = (f"; the forced-Kafka variant (not the default configuration) took {k:,.0f} ms"
                     + (f", {k - 5000:,.0f} ms over" if k > 5000 else ""))
        w(f"| mass resume: 10,000 clients 5 s behind | all caught up ≤ 5 s; ≤ 1 extra Kafka consumer "
          f"per partition | all live after {mmm(live, num, digits=0)} ms from the replay buffer"
          + (f"; {mmm(livek, num, digits=0)} ms when it must read Kafka (16-record buffer)" if resk else "")
          + f"; at most {readers:.0f} catch-up consumers busy (fixed pool, 64 partitions) | "
          f"{verdict(ok_b, f'{(med(live) or 0) - 5000:.0f} ms over')}{extra} |")
    # Against the push proxies at every client count both ran: the nchan
    # method (Pushpin falling back to its best step when it sustained none).
    def eq_at(h, o, fallback):
        o_dps, o_p99 = peak(o)
        if o_dps is None and fallback:
            b = best_step(o)
            if b is not None:
                o_dps, o_p99 = b["deliveries_per_s"], b["p99_ms"]
        if o_dps is None:
            return None
        return ratio(capacity(h, min(o_p99 * EQUAL_P99, STOP_P99_MS)), o_dps)

    proxy_cells, proxy_all, proxy_none = [], [], 0
    for peer in ("nchan", "pushpin"):
        parts = []
        for c in (1000, 3000, 10000):
            hr, orr = by_round(results, f"broadcast-herald-{c}"), by_round(results, f"broadcast-{peer}-{c}")
            common = sorted(set(hr) & set(orr))
            if not common:
                continue
            rs = [eq_at(hr[r], orr[r], peer == "pushpin") for r in common]
            if clean(rs):
                parts.append(f"{c:,} clients {mmm(rs, fx)}")
                proxy_all.extend(clean(rs))
            # herald had no step as fast as the peer's p99 (Kafka's floor is
            # in herald's path, not in a push proxy's): say so, with the
            # highest sustained rates side by side.
            missing = len(rs) - len(clean(rs))
            if missing:
                proxy_none += missing
                tops = [ratio(peak(hr[r])[0], peak(orr[r])[0] or (best_step(orr[r]) or {}).get("deliveries_per_s"))
                        for r in common]
                o_p99 = med([peak(orr[r])[1] for r in common])
                h_low = med([min((x["p99_ms"] for x in steps(hr[r])), default=None) for r in common])
                parts.append(f"{c:,} clients: no herald step with p99 ≤ {peer}'s {num(o_p99)} ms "
                             f"(herald's lowest {num(h_low)} ms) in {missing} of {len(rs)} rounds; "
                             f"highest sustained {mmm(tops, fx)}")
        if parts:
            proxy_cells.append(f"{peer}: " + ", ".join(parts))
    if proxy_cells:
        below = [v for v in proxy_all if v < 3]
        why = []
        if below:
            why.append(f"{len(below)} of {len(proxy_all)} comparisons below 3× (lowest {min(below):.2f}×)")
        if proxy_none:
            why.append(f"{proxy_none} without a herald step at the peer's p99")
        w(f"| against push proxies (nchan, Pushpin), same fan-out, 1,000 to 10,000 clients | ≥ 3× their "
          f"deliveries/s at equal or better p99 | {'; '.join(proxy_cells)} | "
          f"{verdict(not why, '; '.join(why))} |")
    ks_dps = [ratio((first_step(ks_h[r]) or {}).get("deliveries_per_s"),
                    (first_step(ks_k[r]) or {}).get("deliveries_per_s")) for r in ks_common]
    ks_hp99 = [(first_step(ks_h[r]) or {}).get("p99_ms") for r in ks_common]
    if clean(ks_dps):
        ok = med(ks_dps) >= 100 and (med(ks_hp99) or 1e9) <= LIMIT_MS
        w(f"| against KafkaSSE on the same Kafka, 1,000 clients on one topic | ≥ 100× its deliveries/s, "
          f"herald's p99 ≤ 50 ms | {mmm(ks_dps, fx)} its deliveries/s; herald's p99 {mmm(ks_hp99, num)} ms | "
          f"{verdict(ok, 'below 100× or p99 over 50 ms')} |")
    for label, rs in floors:
        if not rs:
            continue
        own = own_p99(rs)
        within = [ratio(r.get("herald_p50_ms"), r.get("floor_p50_ms")) for d in rs[:1] for r in d.get("rounds", [])]
        misses = []
        if (med(own) or 0) > 1:
            misses.append(f"own p99 ≤ {num(med(own))} ms ({num(med(own) - 1)} ms over at most)")
        if (med(within) or 0) > 1.5:
            misses.append(f"produce→client p50 {med(within):.2f}× the bare consumer's")
        w(f"| herald's own latency, light load, {label} | own p99 ≤ 1 ms; produce→client within 1.5× a "
          f"bare librdkafka consumer | own p99 ≤ {mmm(own, num)} ms (bucket bound); produce→client p50 "
          f"{mmm(within, fx)} the bare consumer's | {verdict(not misses, '; '.join(misses))} |")
    tr = runs(results, "tables-herald")
    if tr:
        marks = [d.get("snapshots", {}).get("all_marks_s") for d in tr]
        fails = sum(d.get("snapshots", {}).get("failures", 0) for d in tr)
        cut = [d.get("conflation", {}).get("slow_disconnects") for d in tr]
        each = med([d.get("conflation", {}).get("slow_clients_each") for d in tr]) or 0
        w(f"| tables: 1,000 clients each taking a 10,000-key snapshot at once; conflation under a hot "
          f"topic | every mark reached; conflating slow clients kept | every mark after "
          f"{mmm(marks, num, digits=2)} s, {fails} failed; of the slow clients only the "
          f"{num(each, 0)} without `conflate=true` cut off ({mmm(cut, num, digits=0)}) | "
          f"{verdict(fails == 0 and (med(cut) or 0) <= each, f'{fails} snapshots failed, {med(cut)} cut off')} |")
    w("")

    # ---------------------------------------------------------- broadcast
    w("## Broadcast: 10,000 clients on one key, 100-byte records")
    w("")
    if os.path.exists(os.path.join(charts_dir, "clients.svg")):
        rel = os.path.relpath(os.path.join(charts_dir, "clients.svg"), os.path.dirname(md_path) or ".")
        w(f"![throughput and p99 against client count]({rel})")
        w("")
    if os.path.exists(os.path.join(charts_dir, "ladder.svg")):
        rel = os.path.relpath(os.path.join(charts_dir, "ladder.svg"), os.path.dirname(md_path) or ".")
        w(f"![p99 against throughput, 10,000 clients]({rel})")
        w("")
    w("Rates rise until a step is not sustained or its p99 passes 1 s. Per step, medians over the "
      "rounds that reached it; server CPU is the server's processes (herald includes its embedded "
      "Kafka, nchan its two nginx workers), load-generator CPU is the client workers and the producer, "
      "other CPU is the rest of the machine (other work, and kernel time no process was charged for); "
      "200 % = both cores.")
    w("")
    for server in ("herald", "nchan", "baseline"):
        rs = b10[server]
        if not rs:
            continue
        w(f"**{server}**: highest sustained {mmm([peak(d)[0] for d in rs])} deliveries/s, p99 there "
          f"{mmm([peak(d)[1] for d in rs], num)} ms; at p99 ≤ 50 ms: {mmm([capacity(d, LIMIT_MS) for d in rs])}")
        w("")
        w("| offered/s | delivered/s | p50 ms | p99 ms | max ms | server CPU | load-gen CPU | other CPU | rounds (sustained) |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for o in offered_levels(rs):
            ss = [s for s in (at_offered(d, o) for d in rs) if s]
            got = [s for s in ss if s["deliveries_per_s"] > 0]
            w(f"| {human(o)} | {mmm([s['deliveries_per_s'] for s in ss])} | "
              f"{mmm([s['p50_ms'] for s in got], num)} | {mmm([s['p99_ms'] for s in got], num)} | "
              f"{num(med([s['max_ms'] for s in got]))} | {num(med([s['server_cpu_pct'] for s in ss]), 0)} % | "
              f"{num(med([s['loadgen_cpu_pct'] for s in ss]), 0)} % | "
              f"{num(med([s.get('other_cpu_pct') for s in ss]), 0)} % | "
              f"{len(ss)} ({sum(1 for s in ss if s.get('sustained'))}) |")
        w("")
    for server in ("herald", "nchan", "baseline"):
        stops = []
        for i, d in enumerate(b10[server], 1):
            last = steps(d)[-1] if steps(d) else None
            if last and not sustained(last):
                got = (f"{human(last['deliveries_per_s'])} delivered, p99 {num(last['p99_ms'])} ms"
                       if last["deliveries_per_s"] > 0 else "nothing delivered during the step")
                stops.append(f"round {i} at {human(last['offered_per_s'])} offered ({got})")
        if stops:
            w(f"{server}'s rates stopped rising: " + "; ".join(stops) + ".")
            w("")
    if eq_detail:
        w("Per round, equal-p99 comparison: " + "; ".join(
            f"round {r}: nchan {human(n)}/s at p99 {num(p)} ms, herald {human(h)}/s at p99 ≤ {num(p * EQUAL_P99)} ms"
            for r, h, n, p in eq_detail) + ".")
        w("")
    bl = b10["baseline"]
    if bl:
        lowest = med([min((s["p99_ms"] for s in steps(d)), default=None) for d in bl])
        w(f"Even the speed-of-light writer (herald-baseline: one pre-encoded frame per record through "
          f"a tokio broadcast channel, no Kafka, no ids) has a p99 of {num(lowest)} ms at best "
          f"(median over rounds of its lowest step p99) with 10,000 clients on this machine: one record means 10,000 socket writes "
          f"and 10,000 client wake-ups on two shared cores, so the last client of a burst waits for "
          f"all the others. A 50 ms p99 at this fan-out is beyond this machine with the load "
          f"generator on it, whatever the server.")
        w("")

    # client sweep table
    counts = sorted({int(mm.group(1)) for n in results
                     for mm in [re.match(r"broadcast-(?:herald|nchan|pushpin)-(\d+)-r\d+$", n)] if mm})
    if len(counts) > 1:
        w("### Against client count")
        w("")
        w("| clients | server | highest sustained deliveries/s | p99 there | p99 at 100k deliveries/s | at p99 ≤ 50 ms | runs |")
        w("|---:|---|---:|---:|---:|---:|---:|")
        for c in counts:
            for server in ("herald", "nchan", "pushpin", "baseline"):
                rs = runs(results, f"broadcast-{server}-{c}")
                if not rs:
                    continue
                w(f"| {c:,} | {server} | {mmm([peak(d)[0] for d in rs])} | {ms([peak(d)[1] for d in rs])} | "
                  f"{ms([(at_offered(d, 100000) or {}).get('p99_ms') for d in rs])} | "
                  f"{mmm([capacity(d, LIMIT_MS) for d in rs])} | {len(rs)} |")
        w("")

    # ---------------------------------------------------------- idle
    w("## Idle connections")
    w("")
    w("Memory is the growth of the server's proportional set size (PSS, /proc/PID/smaps_rollup; "
      "for nginx the master and both workers) between a few warm-up streams and all of them, "
      "divided by the streams added; kernel socket buffers are not included.")
    w("")
    w("| server | nodes | connections open | KiB per connection | server CPU while idle | opened per second | load-gen KiB per connection |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    groups = {}
    for d in multi:
        groups.setdefault(d.get("nodes"), []).append(d)
    for label, rs in [("herald", idle1["herald"]), ("nchan", idle1["nchan"]), ("baseline", idle1["baseline"])] + [
            ("herald", g) for _, g in sorted(groups.items())]:
        if not rs:
            continue
        w(f"| {label} | {rs[0].get('nodes', 1)} | {mmm([d.get('open') for d in rs])} | "
          f"{mmm([d.get('kib_per_connection') for d in rs], num, digits=2)} | "
          f"{mmm([d.get('server_cpu_pct_idle') for d in rs], num, digits=0)} % | "
          f"{mmm([d.get('connections_per_s') for d in rs])} | "
          f"{mmm([d.get('loadgen_kib_per_connection') for d in rs], num, digits=2)} |")
    w("")
    w("herald's idle CPU comes from its timers: heartbeats every 15 s and, on keyed streams, an "
      "id-only event every 5 s (`--idle-id-interval`).")
    w("")

    # ---------------------------------------------------------- light / keyed / resume
    w("## Light load and keyed")
    w("")
    w("Light load: 1,000 clients, each on its own key; 1,000 records/s round-robin over the keys "
      "(one record per client per second). Keyed: 15,000 clients on 15,000 keys chosen to fall in half "
      "of the topic's 64 partitions, 5,000 records/s over them; the node's `/v1/stats` must show "
      "exactly those partitions assigned.")
    w("")
    w("| scenario | server | delivered/s | p50 ms | p99 ms | max ms | server CPU | lost | order errors | partitions needed / assigned |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for label, rs in [("light", light["herald"]), ("light", light["nchan"]), ("keyed", keyed),
                      (f"keyed, `--idle-id-interval=1h` ({len(keyed_noid)} run)", keyed_noid)]:
        if not rs:
            continue
        ss = [steps(d)[0] for d in rs if steps(d)]
        parts = "–"
        if rs[0].get("needed_partitions") is not None:
            parts = "; ".join(f"{len(d.get('needed_partitions') or [])} / {len(d.get('assigned_partitions') or [])}"
                              + ("" if d.get("needed_partitions") == d.get("assigned_partitions") else " (differ)")
                              for d in rs)
        w(f"| {label} | {rs[0]['server']} | {mmm([s['deliveries_per_s'] for s in ss])} | "
          f"{mmm([s['p50_ms'] for s in ss], num, digits=2)} | {mmm([s['p99_ms'] for s in ss], num, digits=2)} | "
          f"{num(med([s['max_ms'] for s in ss]))} | {num(med([s['server_cpu_pct'] for s in ss]), 0)} % | "
          f"{sum(d.get('lost', 0) for d in rs)} | {sum(d.get('gaps', 0) + d.get('dups', 0) + d.get('reorders', 0) for d in rs)} | {parts} |")
    w("")
    if keyed and keyed_noid:
        a = med([steps(d)[0]["p99_ms"] for d in keyed if steps(d)])
        b = med([steps(d)[0]["p99_ms"] for d in keyed_noid if steps(d)])
        w(f"The keyed p99 is set by herald's id-only events: every `--idle-id-interval` (5 s) each "
          f"keyed stream gets one, 15,000 writes in a burst. Without them (second keyed row) the p99 "
          f"is {num(b)} ms instead of {num(a)} ms.")
        w("")
    w("## Mass resume")
    w("")
    w("10,000 clients over 1,000 keys take a cursor, all disconnect, stay away 5 s while 2,000 "
      "records/s flow, then reconnect at once with `lastEventId`. \"Live\": the client received a "
      "record produced after the reconnect began; every client checks that its key's sequence "
      "continues without a gap or repeat across the reconnect.")
    w("")
    w("| variant | live | all live after | p50 | p99 | replayed | order errors | Kafka catch-up reads | busy catch-up consumers (max) |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, rs in [("replay buffer (default 4,096 records/partition)", res),
                      (f"through Kafka (16-record buffer; {len(resk)} run)", resk)]:
        if not rs:
            continue
        w(f"| {label} | {mmm([d.get('live') for d in rs])} | {mmm([d.get('all_live_ms') for d in rs], num, digits=0)} ms | "
          f"{mmm([d.get('p50_live_ms') for d in rs], num, digits=0)} ms | {mmm([d.get('p99_live_ms') for d in rs], num, digits=0)} ms | "
          f"{mmm([d.get('replayed') for d in rs])} | "
          f"{sum(d.get('gaps', 0) + d.get('dups', 0) + d.get('reorders', 0) + d.get('tail_missing', 0) for d in rs)} | "
          f"{mmm([d.get('catchup_kafka_reads') for d in rs])} | {mmm([d.get('catchup_readers_max') for d in rs], num, digits=0)} |")
    w("")

    # ---------------------------------------------------------- Pushpin
    pp10 = runs(results, "broadcast-pushpin-10000")
    light_p = runs(results, "light-pushpin-1000")
    if pp10 or light_p:
        w("## Pushpin")
        w("")
        w("Pushpin (the Debian package, [bench/pushpin.conf](bench/pushpin.conf)) in front of "
          "herald-bench's GRIP origin, which answers each subscription with `Grip-Hold: stream` and is "
          "then out of the path; the load generator publishes every record to Pushpin's "
          "`POST /publish/`, one item per request. Its server CPU is Pushpin's runner and the "
          "services it starts (condure, zurl, pushpin-proxy, pushpin-handler).")
        w("")
    if pp10:
        never = not any(s["p99_ms"] <= LIMIT_MS for d in pp10 for s in steps(d) if s["deliveries_per_s"] > 0)
        w("Broadcast, 10,000 clients on one channel, 100-byte records. "
          + (f"Pushpin's p99 is above {num(LIMIT_MS, 0)} ms at every rate here, so its " if never else "Its ")
          + "rates start lower than the others' and every rate is run whatever "
          "happened at the one before. Per rate, medians over the rounds; \"cut\": streams the server "
          "closed during the step.")
        w("")
        w(f"**Pushpin**: highest sustained {mmm([peak(d)[0] for d in pp10])} deliveries/s, p99 there "
          f"{mmm([peak(d)[1] for d in pp10], num)} ms; at p99 ≤ 50 ms: {mmm([capacity(d, LIMIT_MS) for d in pp10])}")
        w("")
        w("| offered/s | delivered/s | p50 ms | p99 ms | server CPU | streams cut | records in the step | rounds (sustained) |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|")
        above = False
        for o in offered_levels(pp10):
            ss = [s for s in (at_offered(d, o) for d in pp10) if s]
            got = [s for s in ss if s["deliveries_per_s"] > 0]
            above = above or (med([s["deliveries_per_s"] for s in ss]) or 0) > 1.05 * o
            w(f"| {human(o)} | {mmm([s['deliveries_per_s'] for s in ss])} | "
              f"{mmm([s['p50_ms'] for s in got], num)} | {mmm([s['p99_ms'] for s in got], num)} | "
              f"{num(med([s['server_cpu_pct'] for s in ss]), 0)} % | "
              f"{mmm([s.get('closed') for s in ss], num, digits=0)} | "
              f"{mmm([s.get('produced') for s in ss], num, digits=0)} | "
              f"{len(ss)} ({sum(1 for s in ss if s.get('sustained'))}) |")
        w("")
        if above:
            w("At the lowest rates a step holds only a few records (a record reaches all 10,000 clients), "
              "so one record more or less in the step moves delivered/s above or below offered.")
            w("")
        cut = sum(d.get("closed", 0) or 0 for d in pp10)
        in_steps = sum(s.get("closed", 0) or 0 for d in pp10 for s in steps(d))
        lost = sum(d.get("lost", 0) or 0 for d in pp10)
        if cut:
            # The run's count covers its whole length, the steps' only the measured seconds.
            w(f"Over {len(pp10)} round{'s' if len(pp10) > 1 else ''} Pushpin cut {cut:,} streams "
              f"({lost:,} deliveries lost with them), {in_steps:,} of them during a measured step; a step "
              f"where it cut any is not sustained.")
            w("")
        if pp_detail:
            w("Per round, equal-p99 comparison: " + "; ".join(
                f"round {r}: Pushpin {human(p)}/s at p99 {num(q)} ms"
                + (" (its best step; it sustained none)" if fb else "")
                + f", herald {human(h)}/s at p99 ≤ {num(min(q * EQUAL_P99, STOP_P99_MS))} ms"
                for r, h, p, q, fb in pp_detail) + ".")
            w("")
    if light_p:
        w("Light load, the same as herald's and nchan's above: 1,000 clients, each on its own key "
          "(channel), 1,000 records/s round-robin over them.")
        w("")
        w("| server | delivered/s | p50 ms | p99 ms | max ms | server CPU | PSS after | lost |")
        w("|---|---|---:|---:|---:|---:|---:|---:|")
        for server in ("herald", "nchan", "pushpin"):
            rs = runs(results, f"light-{server}-1000")
            ss = [x for x in (first_step(d) for d in rs) if x]
            if not ss:
                continue
            w(f"| {server} | {mmm([x['deliveries_per_s'] for x in ss])} | "
              f"{mmm([x['p50_ms'] for x in ss], num, digits=2)} | {mmm([x['p99_ms'] for x in ss], num, digits=2)} | "
              f"{num(med([x.get('max_ms') for x in ss]))} | {num(med([x['server_cpu_pct'] for x in ss]), 0)} % | "
              f"{num(mib(med([d.get('server_pss_kib') for d in rs])), 0)} MiB | {sum(d.get('lost', 0) for d in rs)} |")
        w("")
        lr_p, lr_n = light_ratios("herald", "pushpin"), light_ratios("herald", "nchan")
        if clean(lr_p):
            w(f"herald's p99 / Pushpin's: {mmm(lr_p, fx)} per round"
              + (f"; herald's / nchan's: {mmm(lr_n, fx)}" if clean(lr_n) else "") + " (above 1: herald is slower).")
            w("")

    # ---------------------------------------------------------- KafkaSSE
    kcounts = kafkasse_counts(results)
    if kcounts:
        w("## KafkaSSE")
        w("")
        if os.path.exists(os.path.join(charts_dir, "kafkasse.svg")):
            rel = os.path.relpath(os.path.join(charts_dir, "kafkasse.svg"), os.path.dirname(md_path) or ".")
            w(f"![deliveries that arrived and p99 against clients, KafkaSSE and herald]({rel})")
            w("")
        all_k = [d for n, d in results.items() if n.startswith("kafkasse-")]
        k_rate = med([(first_step(d) or {}).get("rate") for d in all_k])
        k_size = med([d.get("size") for d in all_k])
        k_secs = med([(first_step(d) or {}).get("seconds") for d in all_k])
        w(f"Wikimedia's KafkaSSE ([bench/kafka-sse](bench/kafka-sse)), which gives every client its own "
          f"librdkafka consumer, against herald: C clients on one whole topic, "
          f"{num(k_rate, 0)} records/s of " + (f"{k_size:.0f}-byte " if k_size else "")
          + "JSON values (KafkaSSE's format)" + (f" for {num(k_secs, 0)} s" if k_secs else "")
          + " (`herald-bench latency`). KafkaSSE reads the embedded Kafka "
          f"of a herald node started beside it; that node is not counted as KafkaSSE's server CPU (it is "
          f"in other CPU), while herald's server CPU includes its own embedded Kafka. \"Delivered\": "
          f"of the records every client asked for, including clients whose connection failed; the "
          f"rates and latencies are of the measured step. PSS: the server's before the clients "
          f"connected and after the run; per client, the growth divided by the connected clients.")
        w("")
        w("| clients | server | runs | connected / failed | delivered | delivered/s in the step (offered) | p50 ms | p99 ms | server CPU | other CPU | PSS before → after | KiB per connected client |")
        w("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        verdicts = {}
        for c in kcounts:
            for server in ("kafka-sse", "herald"):
                rs = runs(results, f"kafkasse-{server}-{c}")
                if not rs:
                    continue
                ss = [x for x in (first_step(d) for d in rs) if x]
                got = [x for x in ss if x["deliveries_per_s"] > 0]
                w(f"| {c:,} | {LABELS.get(server, server)} | {len(rs)} | {mmm([d.get('connected') for d in rs])} / "
                  f"{mmm([d.get('failed') for d in rs])} | {mmm([share(d) for d in rs], pct)} | "
                  f"{mmm([x['deliveries_per_s'] for x in ss])} ({human(med([x.get('offered_per_s') for x in ss]))}) | "
                  f"{mmm([x['p50_ms'] for x in got], num)} | {mmm([x['p99_ms'] for x in got], num)} | "
                  f"{cpu([med([x.get('server_cpu_pct') for x in ss])])} | "
                  f"{cpu([med([x.get('other_cpu_pct') for x in ss])])} | "
                  f"{num(mib(med([d.get('server_pss_idle_kib') for d in rs])), 0)} → "
                  f"{num(mib(med([d.get('server_pss_kib') for d in rs])), 0)} MiB | "
                  f"{mmm([kib_per_client(d) for d in rs], num, digits=0)} |")
                # Keeping up: medians over the runs at this count.
                why = []
                failed = med([d.get("failed") for d in rs]) or 0
                if failed > 0:
                    why.append(f"{failed:,.0f} of {c:,} connections failed")
                sh_ = med([share(d) for d in rs])
                if sh_ is not None and sh_ < 100 * KEEP_UP_SHARE:
                    why.append(f"{pct(sh_)} of the deliveries arrived")
                p99 = med([x["p99_ms"] for x in got])
                limit = med([d.get("p99_limit_ms") for d in rs]) or LIMIT_MS
                if p99 is None or p99 > limit:
                    why.append(f"p99 {num(p99)} ms, over {num(limit, 0)} ms" if p99 is not None
                               else "nothing arrived during the step")
                verdicts.setdefault(server, []).append((c, why))
        w("")
        for server in ("kafka-sse", "herald"):
            vs = verdicts.get(server)
            if not vs:
                continue
            name = LABELS.get(server, server)
            bad = [(c, why) for c, why in vs if why]
            span = f"{vs[0][0]:,}" + (f" to {vs[-1][0]:,}" if len(vs) > 1 else "")
            if not bad:
                w(f"{name} kept up at every client count measured ({span} clients).")
            elif bad[0][0] == vs[0][0]:
                w(f"{name} did not keep up even at {bad[0][0]:,} clients, the fewest measured: "
                  + "; ".join(bad[0][1]) + ".")
            else:
                w(f"{name} stops keeping up at {bad[0][0]:,} clients: " + "; ".join(bad[0][1]) + ".")
            w("")
        w(f"Keeping up: no connection failed, at least {KEEP_UP_SHARE * 100:.0f} % of the deliveries "
          f"arrived and the p99 stayed within the limit (medians where several runs exist).")
        w("")
        reasons = sorted({r for n, d in results.items() if n.startswith("kafkasse-kafka-sse-")
                          for p in d.get("problems", [])
                          for r in re.findall(r'"([^"]+)"', p) if "connections failed" in p})
        if reasons:
            w("KafkaSSE's failed connections: " + "; ".join(f"\"{r}\"" for r in reasons) + ".")
            w("")

    # KafkaSSE and herald at once, on the very same records.
    side_counts = sorted({int(mm.group(1)) for n in results
                          for mm in [re.match(r"side-kafkasse-(\d+)-r\d+$", n)] if mm})
    if side_counts:
        w("### Both at once, on the same records")
        w("")
        w("`herald-bench side-by-side`: C clients open the topic on KafkaSSE and C on a herald node "
          "of their own; both read the embedded Kafka of a third process (a herald node with no "
          "clients), one producer writes each record once (100 records/s, JSON) and both fleets are "
          "measured over the same 4 s. The servers and the Kafka share the machine while they work, "
          "so each one's figures carry the others' load. Kafka CPU: that third process, serving "
          "herald's one consumer and KafkaSSE's one per client.")
        w("")
        w("| clients | server | runs | connected / failed | delivered | delivered/s in the step | p50 ms | p99 ms | server CPU | Kafka CPU |")
        w("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|")
        for c in side_counts:
            rs = runs(results, f"side-kafkasse-{c}")
            for key, label in (("kafka_sse", "KafkaSSE"), ("herald", "herald")):
                sd = [d.get(key) or {} for d in rs]
                shares = [100.0 * x["delivered"] / x["expected"] for x in sd if x.get("expected")]
                w(f"| {c:,} | {label} | {len(rs)} | {mmm([x.get('connected') for x in sd])} / "
                  f"{mmm([x.get('failed') for x in sd])} | {mmm(shares, pct)} | "
                  f"{mmm([x.get('deliveries_per_s') for x in sd])} | {mmm([x.get('p50_ms') for x in sd], num)} | "
                  f"{mmm([x.get('p99_ms') for x in sd], num)} | {mmm([x.get('server_cpu_pct') for x in sd], num, digits=0)} % | "
                  f"{mmm([d.get('kafka_cpu_pct') for d in rs], num, digits=0)} % |")
        w("")

    # ---------------------------------------------------------- efficiency
    eff_rows = []
    for server in ("herald", "nchan", "pushpin", "baseline"):
        rs = runs(results, f"broadcast-{server}-10000")
        # Pushpin may sustain nothing at 10,000 clients: its best step then.
        ss = [peak_step(d) or (best_step(d) if server == "pushpin" else None) for d in rs]
        ss = [x for x in ss if x]
        if ss:
            eff_rows.append(("broadcast, 10,000 clients, highest sustained step", server, ss))
    for server in ("kafka-sse", "herald"):
        ss = [x for x in (first_step(d) for d in runs(results, f"kafkasse-{server}-1000")) if x]
        if ss:
            eff_rows.append(("1,000 clients on one topic, 100 records/s", LABELS.get(server, server), ss))
    if eff_rows:
        w("## Efficiency: deliveries per CPU-second")
        w("")
        shown = {server for _, server, _ in eff_rows}
        bcast = any(label.startswith("broadcast") for label, _, _ in eff_rows)
        http_pub = " and ".join(f"{x}'s" for x in ("nchan", "Pushpin") if x.lower() in shown)
        parts = []
        if bcast:
            parts.append("for the broadcast each server's highest sustained step"
                         + (" (Pushpin's highest delivered step in rounds where it sustained none)"
                            if eff_pp_fell else ""))
        if "KafkaSSE" in shown:
            parts.append("for KafkaSSE and herald at 1,000 clients the measured step, sustained or not")
        w("Deliveries per second of server CPU time (deliveries/s ÷ server CPU, 100 % = one core), at "
          "the step each comparison in the headline uses: " + "; ".join(parts) + ". Server CPU includes "
          "what the publish path costs the server: herald's embedded Kafka"
          + (f", {http_pub} HTTP publishes" if http_pub else "")
          + ("; not the Kafka KafkaSSE reads (see [KafkaSSE](#kafkasse))" if "KafkaSSE" in shown else "")
          + ". Medians over rounds (min–max).")
        w("")
        w("| workload | server | rounds | deliveries/s | server CPU | deliveries per CPU-second |")
        w("|---|---|---:|---:|---:|---:|")
        for label, server, ss in eff_rows:
            w(f"| {label} | {server} | {len(ss)} | {mmm([x['deliveries_per_s'] for x in ss])} | "
              f"{cpu(x.get('server_cpu_pct') for x in ss)} | {mmm([per_cpu_s(x) for x in ss])} |")
        w("")

    # ---------------------------------------------------------- formats
    dec = runs(results, "decode")
    fmt_json = runs(results, "broadcast-json-herald-10000")
    fmt_avro = runs(results, "broadcast-avro-herald-10000")
    if dec or fmt_json or fmt_avro:
        w("## Record formats")
        w("")
        if dec:
            size = dec[0].get("size")
            wire = dec[0].get("wire_bytes", {})
            w(f"Decoding on one core (`herald-bench decode`): {human(dec[0].get('records'))} distinct trade "
              f"records of {size} bytes as Avro ({wire.get('avro')} B on the wire, {wire.get('protobuf')} B as "
              f"Protobuf, {wire.get('json')} B as JSON), decoded with herald's own decoders and framed; "
              f"the plain path frames a {size}-byte value as it is. Median of each run's rounds; "
              f"min–max over {len(dec)} runs.")
            w("")
            w("| path | ns per record | records/s per core | × plain |")
            w("|---|---:|---:|---:|")
            for k in ["plain", "avro", "protobuf", "json-schema"]:
                times = "1" if k == "plain" else mmm([d["times_plain"][k] for d in dec], num, digits=1)
                w(f"| {k} | {mmm([d['ns_per_record'][k] for d in dec], num, digits=0)} | "
                  f"{mmm([d['records_per_core_s'][k] for d in dec])} | {times} |")
            w("")
        if fmt_json and fmt_avro:
            def p99s(rs):
                return [steps(d)[0]["p99_ms"] for d in rs if steps(d)]
            pj, pa = med(p99s(fmt_json)), med(p99s(fmt_avro))
            w("Broadcast of a decoded topic: 10,000 clients on one key at 100,000 deliveries/s "
              "(10 records/s), the same trade record produced as Confluent-framed Avro (herald decodes "
              "it through a schema registry) or as the JSON text herald makes of it, so both topics "
              "deliver identical bytes; runs alternate.")
            w("")
            w("| topic | delivered/s | p50 ms | p99 ms | server CPU | lost |")
            w("|---|---:|---:|---:|---:|---:|")
            for label, rs in [("JSON", fmt_json), ("Avro, decoded", fmt_avro)]:
                ss = [steps(d)[0] for d in rs if steps(d)]
                w(f"| {label} | {mmm([x['deliveries_per_s'] for x in ss])} | {mmm([x['p50_ms'] for x in ss], num, digits=1)} | "
                  f"{mmm([x['p99_ms'] for x in ss], num, digits=1)} | {num(med([x['server_cpu_pct'] for x in ss]), 0)} % | "
                  f"{sum(d.get('lost', 0) for d in rs)} |")
            w("")
            if pj and pa:
                w(f"Avro p99 / JSON p99 (medians): **{pa / pj:.2f}×** (target: within 1.10×).")
                w("")

    # ---------------------------------------------------------- filters
    frows = []
    for label, prefix in [("10", "filters-10"), ("100", "filters-100"), ("1,000", "filters-1000"),
                          ("1,000 at 10,000 records/s", "filters-1000x10k"), ("10,000", "filters-10000")]:
        f_rs = runs(results, f"{prefix}-herald-10000")
        k_rs = runs(results, f"filters-keys-{prefix[len('filters-'):]}-herald-10000")
        if f_rs:
            frows.append((label, f_rs, k_rs))
    if frows:
        w("## Filters")
        w("")
        w("10,000 clients on one topic, each with a `where=` filter that takes one key's records "
          "(`key == \"kN\"`); F distinct filters shared evenly by the clients, 1,000 records/s round-robin "
          "over the F keys, so each record goes to 10,000 / F clients. Against the same clients on key "
          "selectors (`topic=T/kN`): the same deliveries without CEL. Each record is evaluated once "
          "per distinct filter, whatever the clients.")
        w("")
        w("| distinct filters | offered deliveries/s | filtered: delivered/s | p99 ms | server CPU | key selectors: delivered/s | p99 ms | server CPU |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        for label, f_rs, k_rs in frows:
            fs = [steps(d)[0] for d in f_rs if steps(d)]
            ks = [steps(d)[0] for d in k_rs if steps(d)]
            kcells = ("–", "–", "–") if not ks else (
                mmm([x['deliveries_per_s'] for x in ks]), mmm([x['p99_ms'] for x in ks], num, digits=1),
                f"{num(med([x['server_cpu_pct'] for x in ks]), 0)} %")
            w(f"| {label} | {human(med([x.get('offered_per_s') for x in fs]))} | {mmm([x['deliveries_per_s'] for x in fs])} | "
              f"{mmm([x['p99_ms'] for x in fs], num, digits=1)} | {num(med([x['server_cpu_pct'] for x in fs]), 0)} % | "
              f"{kcells[0]} | {kcells[1]} | {kcells[2]} |")
        w("")
        one_k = runs(results, "filters-1000c1k-herald-1000")
        ten_k = runs(results, "filters-1000-herald-10000")
        if one_k and ten_k:
            a = [steps(d)[0] for d in one_k if steps(d)]
            b = [steps(d)[0] for d in ten_k if steps(d)]
            w(f"The same 1,000 filters at 1,000 records/s for 1,000 clients (one each) instead of 10,000: "
              f"server CPU {num(med([x['server_cpu_pct'] for x in a]), 0)} % against "
              f"{num(med([x['server_cpu_pct'] for x in b]), 0)} %, p99 {num(med([x['p99_ms'] for x in a]))} ms "
              f"against {num(med([x['p99_ms'] for x in b]))} ms: ten times the connections (and deliveries) "
              f"on the same distinct filters.")
            w("")

    # ---------------------------------------------------------- tables
    t_rs = runs(results, "tables-herald")
    if t_rs:
        b = [d.get("build", {}) for d in t_rs]
        sn = [d.get("snapshots", {}) for d in t_rs]
        c = [d.get("conflation", {}) for d in t_rs]
        w("## Table topics")
        w("")
        w(f"One node on its embedded Kafka, a table topic of 8 partitions "
          f"(`herald-bench tables --partitions 8`).")
        w("")
        w("| what | result |")
        w("|---|---|")
        w(f"| build a {human(med([x.get('keys') for x in b]))}-key table (100-byte values) from Kafka | "
          f"{mmm([x.get('built_ms') for x in b], num, digits=0)} ms (the slowest partition's build); the first "
          f"snapshot stream's mark after {mmm([x.get('first_snapshot_s') for x in b], num, digits=2)} s |")
        w(f"| memory per key held | {mmm([x.get('rss_growth_bytes_per_key') for x in b], num, digits=0)} B of RSS growth; "
          f"{mmm([x.get('accounted_bytes_per_key') for x in b], num, digits=0)} B accounted against `--table-max-bytes` |")
        w(f"| {human(med([x.get('clients') for x in sn]))} clients each taking a whole-topic snapshot of "
          f"{human(med([x.get('keys_each') for x in sn]))} keys at once | every mark after "
          f"{mmm([x.get('all_marks_s') for x in sn], num, digits=2)} s (p50 {mmm([x.get('p50_s') for x in sn], num, digits=2)} s per client), "
          f"{mmm([x.get('records_per_s') for x in sn])} snapshot records/s, "
          f"{int(sum(x.get('failures', 0) for x in sn))} failed |")
        # The second half of the run: the clients without conflation are cut
        # off by then, so what is queued is the conflating clients' own.
        half = [x.get("queued_bytes_samples", [])[len(x.get("queued_bytes_samples", [])) // 2:] for x in c]
        qmax = [max(h) if h else None for h in half]
        qmin = [min(h) if h else None for h in half]
        w(f"| {human(med([x.get('rate') for x in c]))} records/s over {human(med([x.get('keys') for x in c]))} keys "
          f"for {num(med([x.get('seconds') for x in c]), 0)} s; {num(med([x.get('slow_clients_each') for x in c]), 0)} "
          f"clients reading {human(med([x.get('slow_read_bytes_per_s') for x in c]))} B/s with `conflate=true`, "
          f"as many without | conflating: queued bytes of the node over the second half "
          f"{mmm(qmin)} to {mmm(qmax)} B for all of them (flat), none cut off; without: "
          f"{mmm([x.get('slow_disconnects') for x in c], num, digits=0)} cut off as too slow; "
          f"{mmm([x.get('conflated_records') for x in c])} records merged away |")
        w("")
        w("RSS includes the embedded Kafka, which keeps about 5 MiB of every partition it is sent, so "
          "under the hot topic the node's RSS grows until the mock's retention caps it; the queued "
          "bytes (`herald_queued_bytes`) are the clients' own.")
        w("")

    # ---------------------------------------------------------- publish
    if pub_rows:
        d = pub[0]
        nr = len({r.get("round") for r in d.get("rounds", [])})
        failed = sum(r.get("failed", 0) or 0 for r in d.get("rounds", []))
        broker = {"embedded": "the node's embedded Kafka", "tansu": "Tansu"}.get(d.get("broker"), d.get("broker"))
        w("## Publish endpoint")
        w("")
        w(f"herald's publish endpoint against a direct producer on the same topic of {broker} "
          f"(`herald-bench publish`, {d.get('size')}-byte values, {num(d.get('seconds'), 0)} s per path and "
          f"concurrency, the paths alternating, {nr} round{'s' if nr != 1 else ''}; medians of the rounds). "
          "HTTP: that many keep-alive connections each sending `POST /v1/topics/T?key=kN` one after another, "
          "timed from writing the request to reading its 200, which herald sends on Kafka's ack. Direct: "
          "one rdkafka producer in the load generator with the settings herald's publisher uses "
          "(murmur2, `acks=all`, `linger.ms=0`), that many sends in flight, timed from `send` to the "
          "delivery report. The difference is what the HTTP hop and herald's handling add.")
        w("")
        w("| in flight | direct: records/s | p50 ms | p99 ms | node CPU | herald HTTP: records/s | p50 ms | p99 ms | node CPU | HTTP / direct records/s |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in sorted(pub_rows):
            g = lambda path, key: pub_get(c, path, key)
            w(f"| {c} | {human(g('direct', 'per_s'))} | {num(g('direct', 'p50_ms'), 2)} | {num(g('direct', 'p99_ms'), 2)} | "
              f"{num(g('direct', 'server_cpu_pct'), 0)} % | "
              f"{human(g('http', 'per_s'))} | {num(g('http', 'p50_ms'), 2)} | {num(g('http', 'p99_ms'), 2)} | "
              f"{num(g('http', 'server_cpu_pct'), 0)} % | "
              f"{fx(ratio(g('http', 'per_s'), g('direct', 'per_s')))} |")
        w("")
        w("Node CPU: the herald node's process (100 % = one core); on the direct path that is only its "
          "embedded Kafka taking the records, on the HTTP path the whole endpoint as well. The load "
          "generator's 64 HTTP connections share the same two cores. A `perf` profile of the node at 64 "
          "in flight (see Profiles) puts most of its samples in the kernel's task switching and wake-ups: "
          "each publish passes from a tokio worker to librdkafka's broker thread, the broker, the "
          "delivery-report thread and back, and the endpoint's own code is about 1 %.")
        w("")
        if failed:
            w(f"{failed:,} publishes failed (over 10 s or an error) across the rounds.")
            w("")

    # ---------------------------------------------------------- floor
    fl = runs(results, "floor-herald")
    tansu_fl = [(label, rs[0]) for label, rs in floors[1:] if rs]
    if fl or tansu_fl:
        w("## Latency floor")
        w("")
    if fl:
        d = fl[0]
        rs = d.get("rounds", [])
        col = lambda k: [r.get(k) for r in rs]
        w(f"The light load ({human(d.get('clients'))} clients, one key each, {human(d.get('rate'))} records/s, "
          f"embedded Kafka) and, on the very same records, a bare librdkafka consumer in the load "
          f"generator with herald's fetch settings: the floor herald cannot beat "
          f"(`herald-bench floor --partitions 8`, {len(rs)} rounds).")
        w("")
        w("| | p50 | p99 |")
        w("|---|---:|---:|")
        w(f"| bare consumer, produce → `poll` | {mmm(col('floor_p50_ms'), num, digits=2)} ms | {mmm(col('floor_p99_ms'), num, digits=2)} ms |")
        w(f"| herald, produce → client | {mmm(col('herald_p50_ms'), num, digits=2)} ms | {mmm(col('herald_p99_ms'), num, digits=2)} ms |")
        w(f"| herald's own share, consume → socket write (`herald_own_latency_seconds`, bucket upper bounds) | "
          f"≤ {mmm(col('own_p50_ms_at_most'), num, digits=2)} ms | ≤ {mmm(col('own_p99_ms_at_most'), num, digits=2)} ms |")
        w("")
        w("The bare consumer shares the load generator's process and cores, so its p99 carries that "
          "process's scheduling too; its p50 is the floor to compare with."
          + ("" if tansu_fl else " Not yet measured on Tansu."))
        w("")
    if tansu_fl:
        w("The same on a Tansu broker (`--tansu`: herald-bench starts Tansu, at `nice 10` because in "
          "production a broker has machines of its own, and creates the topic)"
          + (", and again with presence off (`--presence-topic=`), whose 8 partitions are otherwise in "
             "every fetch of the node's consumer"
             if any(lb == "Tansu, presence off" for lb, _ in tansu_fl) else "")
          + ". Medians of each run's rounds (min–max).")
        w("")
        w("| broker | rounds | bare consumer p50 | p99 | herald produce → client p50 | p99 | herald's own p50 | own p99 |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        for label, rs in floors:
            if not rs:
                continue
            col = lambda k: [r.get(k) for r in rs[0].get("rounds", [])]
            w(f"| {label} | {len(rs[0].get('rounds', []))} | {ms(col('floor_p50_ms'), 2)} | {ms(col('floor_p99_ms'), 2)} | "
              f"{ms(col('herald_p50_ms'), 2)} | {ms(col('herald_p99_ms'), 2)} | "
              f"≤ {ms(col('own_p50_ms_at_most'), 2)} | ≤ {ms(col('own_p99_ms_at_most'), 2)} |")
        w("")
        # Where the node's time went, per thread pool, in the runs that
        # recorded it (older results have no node_threads_ms_per_s).
        threads = []
        for label, rs in floors:
            per = [r.get("node_threads_ms_per_s") for r in (rs[0].get("rounds", []) if rs else [])]
            per = [x for x in per if isinstance(x, dict)]
            if per:
                pools = {name for x in per for name in x}
                threads.append((label, {name: (med([(x.get(name) or {}).get("run") for x in per]),
                                               med([(x.get(name) or {}).get("wait") for x in per]))
                                        for name in pools}))
        # Busiest first by the first Tansu run, else the first that has them.
        lead = next((t for t in threads if t[0] == "Tansu"), threads[0] if threads else None)
        if lead:
            top = sorted(lead[1], key=lambda n: -((lead[1][n][0] or 0) + (lead[1][n][1] or 0)))[:8]
            w("The node's busiest thread pools (numbered threads of a pool together; names as the kernel "
              "keeps them, 15 characters), ms per second summed over the pool's threads, medians of the "
              "rounds. \"Run\" is time on a CPU; \"wait\" is time runnable but waiting for a CPU, "
              "which is latency the scheduler added.")
            w("")
            w("| thread pool | " + " | ".join(f"{lb}: run | wait" for lb, _ in threads) + " |")
            w("|---|" + "---:|---:|" * len(threads))
            for name in top:
                w(f"| `{name}` | " + " | ".join(
                    f"{num((t.get(name) or (None, None))[0])} | {num((t.get(name) or (None, None))[1])}"
                    for _, t in threads) + " |")
            w("")

    if tansu_fl:
        # What the Tansu runs show, from the tables above; the probes behind
        # the last sentences: bench/tansu-fetch-probe.py and runs by hand.
        t_on = dict(floors).get("Tansu") or []
        t_off = dict(floors).get("Tansu, presence off") or []
        def gap(rs):
            rr = rs[0].get("rounds", []) if rs else []
            return med([(r.get("herald_p50_ms") or 0) - (r.get("floor_p50_ms") or 0) for r in rr]) if rr else None
        g_on, g_off = gap(t_on), gap(t_off)
        if g_on is not None:
            w(f"Where the time goes on Tansu. herald's own share stays small at the median, but its p99 "
              f"(the 1–1.5 ms or 1.5–2 ms bucket) misses the 1 ms target by up to a millisecond. The thread "
              f"waits are about the same on both brokers, so the scheduler is not the difference (before "
              f"Tansu ran at `nice 10`, herald's tokio workers waited up to 0.6 s per second behind it). "
              f"What differs is how records arrive: Tansu's floor is about 18 ms against 2.7 ms here, and "
              f"records come to the node in larger batches whose socket writes queue behind each other on "
              f"the two workers. That is likely but was not measured directly.")
            w("")
            w(f"With presence on, herald's produce → client p50 is {num(g_on, 1)} ms behind the bare "
              f"consumer" + (f", against {num(g_off, 1)} ms with presence off" if g_off is not None else "")
              + ". With `--presence-partitions=1` the gap was 2.5 ms in a run by hand, so each presence "
              "partition in the node's fetch costs about 1.3 ms on Tansu. A plain librdkafka consumer "
              "with 8 idle, or slowly written, compacted partitions of another topic in its assignment "
              "paid nothing ([bench/tansu-fetch-probe.py](bench/tansu-fetch-probe.py)). The cause inside Tansu is not found; on Tansu, "
              "`--presence-partitions=1` is the workaround.")
            w("")

    # ---------------------------------------------------------- presence
    pc = runs(results, "presence-churn-herald")
    if pc:
        d = pc[0]
        alone = [r.get("p99_ms") for r in d.get("rounds", []) if not r.get("churning")]
        churn = [r.get("p99_ms") for r in d.get("rounds", []) if r.get("churning")]
        rate = [r.get("presence_records_per_s") for r in d.get("rounds", []) if r.get("churning")]
        churned = [r.get("churned_per_s") for r in d.get("rounds", []) if r.get("churning")]
        w("## Presence under churn")
        w("")
        w(f"The light load ({human(d.get('clients'))} clients, one key each, {human(d.get('rate'))} records/s) "
          f"alone, then beside {human(d.get('churn_streams'))} other streams on {d.get('churn_selectors')} selectors "
          f"replaced at {human(d.get('churn_rate'))} a second (`herald-bench presence-churn`), "
          f"{len(alone)} pairs alternating.")
        w("")
        w("| | p99 produce→client | presence records written |")
        w("|---|---:|---:|")
        w(f"| alone | {mmm(alone, num, digits=1)} ms | – |")
        w(f"| churning ({mmm(churned, num, digits=0)} streams replaced/s) | {mmm(churn, num, digits=1)} ms | "
          f"{mmm(rate, num, digits=1)} /s |")
        off = runs(results, "presence-churn-off-herald")
        if off:
            o = off[0]
            o_alone = [r.get("p99_ms") for r in o.get("rounds", []) if not r.get("churning")]
            o_churn = [r.get("p99_ms") for r in o.get("rounds", []) if r.get("churning")]
            w(f"| the same with presence off (`--presence-topic=`): alone | {mmm(o_alone, num, digits=1)} ms | – |")
            w(f"| the same with presence off: churning | {mmm(o_churn, num, digits=1)} ms | – |")
        w("")
        churn_ratio = d.get("p99_ratio")
        if off:
            cost = (med(churn) or 0) / max(med(o_churn) or 1e-9, 1e-9)
            w(f"What presence adds to the light load's p99 under this churn: **{num(cost, 2)}×** "
              f"(churning with presence against churning without it, medians; target ≤ 1.10×). "
              f"The churn itself, 500 connections opened and closed a second on two cores shared with "
              f"the load generator, costs {num(churn_ratio, 2)}× with presence and "
              f"{num(o.get('p99_ratio'), 2)}× without.")
        else:
            w(f"p99 churning / alone: {num(churn_ratio, 2)}× (medians).")
        w("")
        w("Presence writes at most one record per selector a second, and a heartbeat: the "
          "light load's own 1,000 streams, each on its own key, opening and closing at the start "
          "and end of every measurement, are most of the records above; the churn's ten selectors "
          "add at most ten a second.")
        w("")

    # ---------------------------------------------------------- problems
    problems = [(n, p) for n, d in sorted(results.items()) for p in d.get("problems", [])]
    w("## Correctness")
    w("")
    if problems:
        w("Runs that reported problems (lost, duplicated or reordered records, failed connections):")
        w("")
        for n, p in problems:
            w(f"- `{n}`: {p}")
    else:
        total = sum(d.get("delivered", 0) or 0 for d in results.values())
        w(f"Every run checked every stream's order and gaps and compared deliveries with what was "
          f"produced: no record lost, duplicated or reordered and no connection failed "
          f"({human(total)} deliveries checked).")
    w("")

    # ---------------------------------------------------------- profiles
    profiles = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench", "profiles.md")
    try:
        with open(profiles) as f:
            w("## Where the time and memory go")
            w("")
            w(f.read().rstrip("\n"))
            w("")
    except OSError:
        pass

    # ---------------------------------------------------------- method
    w("## How it was measured")
    w("")
    w("- `herald-bench` (bench/src/main.rs) starts the server under test itself, fresh for each "
      "run: `herald serve` with its embedded Kafka (librdkafka's mock cluster, in the herald process, so "
      "its CPU counts as herald's), nginx with [bench/nchan.conf](bench/nchan.conf) (2 workers, one per "
      "core), or `herald-baseline` (bench/src/bin/herald-baseline.rs).")
    w("- Clients are worker processes of herald-bench (at most 18,000 sockets each; a process may open "
      "20,000 files), spread over 127.x.y.z source addresses (2,000 each). They speak HTTP/1.0 and parse "
      "the event stream.")
    w("- Every record value carries its send time in µs, a stream number and a sequence number. herald's "
      "records are produced to Kafka (rdkafka, `linger.ms=0`, murmur2 partitioner); nchan's are POSTed to "
      "`/pub/CHANNEL` over pipelined keep-alive HTTP/1.1; the baseline generates its own. Latency is "
      "produce call → client read, so it includes Kafka for herald and the HTTP publish for nchan.")
    w("- CPU: utime+stime from /proc/PID/stat of the server's processes and of the load generator's "
      "(workers and producer). Memory: PSS.")
    w("")
    w("### Commands")
    w("")
    rel = os.path.relpath(directory)
    w("Exactly what ran, in this order (`herald-bench` is target/release/herald-bench; `$OUT` is "
      f"`{rel}`, where each run left its JSON, its output and its servers' logs). `make bench` runs "
      "them all and rewrites this file; `scripts/bench.sh --help` lists its options.")
    w("")
    w("```")
    try:
        with open(os.path.join(directory, "commands.txt")) as f:
            for line in f:
                w(line.rstrip().replace(os.path.abspath(directory), "$OUT"))
    except OSError:
        w("(commands.txt missing)")
    w("```")
    w("")
    w("Smoke version (a few hundred connections, seconds; exits non-zero on any problem): "
      "`make bench-smoke` or `herald-bench smoke`.")
    w("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("dir")
    ap.add_argument("--markdown", default="BENCHMARKS.md")
    ap.add_argument("--charts", default="docs/bench")
    ap.add_argument("--seconds", type=int, default=0)
    ap.add_argument("--runs", type=int, default=0)
    # How long scripts/install-deps.sh build bench took in this run (bench.sh).
    ap.add_argument("--install-seconds", type=int, default=0)
    a = ap.parse_args()
    results = load(a.dir)
    if not results:
        sys.exit(f"bench-report: no results in {a.dir}")
    os.makedirs(a.charts, exist_ok=True)
    chart_clients(results, os.path.join(a.charts, "clients.svg"))
    chart_ladder(results, 10000, os.path.join(a.charts, "ladder.svg"))
    chart_kafkasse(results, os.path.join(a.charts, "kafkasse.svg"))
    text = report(results, a.dir, a.seconds, a.runs, a.charts, a.markdown, a.install_seconds)
    with open(a.markdown, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
