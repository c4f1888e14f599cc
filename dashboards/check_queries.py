#!/usr/bin/env python3
"""Checks the PromQL of the forkwatch dashboard (and alert rules).

Python 3 standard library only.

    check_queries.py --list
        Print every PromQL expression of dashboards/forkwatch.json, one per
        line, with the Grafana variables replaced by concrete values (panel
        targets, annotation queries, and the series selectors inside the
        template variables' label_values()).

    check_queries.py --prometheus http://127.0.0.1:9090
        Run each expression through /api/v1/query and report the ones that
        fail or return no data (no series, or only NaN values, e.g.
        histogram_quantile() over a histogram without observations in the
        range). The alert rules' expressions are run too, but only errors
        count for them (an alert expression is empty when nothing fires).
        Exit status 1 if any dashboard expression errors or is empty
        (annotation queries may be empty), 0 otherwise. --parse-only: only
        errors count (for a Prometheus without forkwatch data).

    check_queries.py --metrics scrape.txt
        Check a saved /metrics scrape of an agent
        (curl -s http://127.0.0.1:9867/metrics > scrape.txt):
        - every metric name used by the dashboard and by alerts.yml is
          exported by the agent;
        - every exact label value they match on (reaper="parent",
          kind="across_exec", ...) occurs in the scrape;
        - every forkwatch_* family of the scrape is used by the dashboard,
          or listed in DELIBERATELY_OFF_DASHBOARD below with a reason.
        Exit status 1 on any violation.

    check_queries.py --lint
        Offline checks against docs/metrics.md: every panel has a
        description and uses the $datasource variable; panels do not
        overlap; every forkwatch_* selector filters on job="$job" and
        instance=~"$instance" (and server=~"$server" when the metric has a
        server label); every metric, label and label value used by the
        dashboard and alerts.yml is one that docs/metrics.md lists; every
        metric of docs/metrics.md is on the dashboard (or in
        DELIBERATELY_OFF_DASHBOARD). Exit status 1 on any violation.

Variables: --var NAME=VALUE overrides a substitution (e.g. --var server=echo
or --var __rate_interval=5m). Defaults: see DEFAULT_VARS.
"""

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DASHBOARD = os.path.join(HERE, "forkwatch.json")
DEFAULT_ALERTS = os.path.join(HERE, "prometheus", "alerts.yml")
DEFAULT_METRICS_DOC = os.path.join(HERE, os.pardir, "docs", "metrics.md")

# Values substituted for Grafana's variables. Regex variables (instance,
# server) get ".*", which is also what their "All" option sends.
DEFAULT_VARS = {
    "datasource": "prometheus",
    "job": "forkwatch",
    "instance": ".*",
    "server": ".*",
    "__rate_interval": "1m",
    "__interval": "30s",
    "__interval_ms": "30000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

# forkwatch_* families that the dashboard deliberately does not show, with
# the reason. Every other family the agent exports must be on the dashboard.
DELIBERATELY_OFF_DASHBOARD = {
    # "forkwatch_example_total": "why it is not on the dashboard",
}

# Series Prometheus makes up itself: never in an agent's scrape.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
             "scrape_samples_post_metric_relabeling", "scrape_series_added", "ALERTS", "ALERTS_FOR_STATE"}

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
            "offset", "atan2", "inf", "nan", "start", "end"}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
# Aggregation operators can be followed by "by (...)" rather than "(".
AGGREGATORS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
               "topk", "quantile", "limitk", "limit_ratio"}

VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::[A-Za-z]+)?\}|\$([A-Za-z_][A-Za-z0-9_]*)|\[\[([A-Za-z_][A-Za-z0-9_]*)\]\]")


class Expr:
    def __init__(self, origin, where, expr, may_be_empty=False, errors_only=False):
        self.origin = origin          # "panel", "annotation", "variable", "alert"
        self.where = where            # human-readable location
        self.raw = expr
        self.may_be_empty = may_be_empty
        self.errors_only = errors_only
        self.expr = None              # substituted


def substitute(expr, variables):
    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in variables:
            raise KeyError(f"unknown variable ${name} in: {expr}")
        return variables[name]
    return VAR_RE.sub(repl, expr)


# ---------------------------------------------------------------- extraction

def dashboard_exprs(path):
    with open(path, encoding="utf-8") as f:
        dash = json.load(f)
    out = []

    def walk_panels(panels):
        for p in panels:
            title = p.get("title", f"panel {p.get('id')}")
            for t in p.get("targets", []) or []:
                if isinstance(t, dict) and t.get("expr"):
                    out.append(Expr("panel", f"{title} [{t.get('refId', '?')}]", t["expr"]))
            walk_panels(p.get("panels", []) or [])

    walk_panels(dash.get("panels", []))
    for a in dash.get("annotations", {}).get("list", []):
        if a.get("expr"):
            out.append(Expr("annotation", f"annotation {a.get('name')}", a["expr"], may_be_empty=True))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query", "")
        m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", q or "")
        if m:
            out.append(Expr("variable", f"variable ${v['name']}", m.group(1)))
        elif q and not q.strip().startswith("label_values("):
            raise SystemExit(f"variable ${v['name']}: cannot check query {q!r}")
    return out


def alert_exprs(path):
    """expr: values of a rules file, without a YAML library: handles plain,
    quoted and block-scalar (| and >) values."""
    out = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    name = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^\s*-?\s*(alert|record):\s*(\S.*?)\s*$", line)
        if m:
            name = m.group(2).strip("'\"")
        m = re.match(r"^(\s*)-?\s*expr:\s*(.*?)\s*$", line)
        if m:
            indent, value = len(m.group(1)), m.group(2)
            if value[:1] in ("|", ">"):
                folded = value[0] == ">"
                block = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    block.append(lines[i].strip())
                    i += 1
                expr = (" " if folded else "\n").join(b for b in block if b)
                out.append(Expr("alert", f"alert {name}", expr, may_be_empty=True, errors_only=True))
                continue
            if value[:1] in ("'", '"'):
                q = value[0]
                value = value[1:-1]
                value = value.replace("''", "'") if q == "'" else bytes(value, "utf-8").decode("unicode_escape")
            out.append(Expr("alert", f"alert {name}", value, may_be_empty=True, errors_only=True))
        i += 1
    return out


# ---------------------------------------------------------------- a small PromQL scanner

TOKEN_RE = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>(?:0x[0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)(?:[smhdwy]|ms)*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<var>\$\{[^}]+\}|\$[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){}\[\],@:])
""", re.X)


def tokens(expr):
    pos = 0
    out = []
    while pos < len(expr):
        m = TOKEN_RE.match(expr, pos)
        if not m:
            raise ValueError(f"cannot scan {expr[pos:pos + 20]!r} in: {expr}")
        pos = m.end()
        kind = m.lastgroup
        if kind in ("ws", "comment"):
            continue
        out.append((kind, m.group()))
    return out


def unquote(s):
    if s[0] == "`":
        return s[1:-1]
    return bytes(s[1:-1], "utf-8").decode("unicode_escape")


def references(expr):
    """(metric names, [(metric, label, op, value)]) used by one expression."""
    toks = tokens(expr)
    names, matchers = set(), []
    i, n = 0, len(toks)
    while i < n:
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < n else None
        if kind == "ident":
            low = text.lower()
            if low in LABEL_LIST_KEYWORDS and nxt == "(":
                j = i + 2
                while j < n and toks[j][1] != ")":
                    j += 1
                i = j + 1
                continue
            if nxt == "(" or low in KEYWORDS or low in AGGREGATORS:
                i += 1
                continue
            names.add(text)
            if nxt == "{":
                i = parse_matchers(toks, i + 1, text, matchers, names)
                continue
            i += 1
            continue
        if text == "{":
            i = parse_matchers(toks, i, None, matchers, names)
            continue
        if text == "[":
            while i < n and toks[i][1] != "]":
                i += 1
        i += 1
    return names, matchers


def parse_matchers(toks, i, metric, matchers, names):
    """toks[i] is '{'; returns the index after the matching '}'."""
    i += 1
    found = []
    while i < len(toks) and toks[i][1] != "}":
        if toks[i][0] == "ident" and i + 2 < len(toks) and toks[i + 1][1] in ("=", "!=", "=~", "!~") \
                and toks[i + 2][0] == "string":
            found.append((toks[i][1], toks[i + 1][1], unquote(toks[i + 2][1])))
            i += 3
            continue
        i += 1
    for label, op, value in found:
        if label == "__name__" and op == "=":
            metric = value
            names.add(value)
    for label, op, value in found:
        if label != "__name__":
            matchers.append((metric, label, op, value))
    return i + 1


# ---------------------------------------------------------------- scrape parsing

SAMPLE_RE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?\s+(\S+)(\s+\S+)?$")
LABEL_RE = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def parse_scrape(path):
    types, samples = {}, []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip() or line.startswith("# EOF"):
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 4 and parts[1] == "TYPE":
                    types[parts[2]] = parts[3].strip()
                continue
            m = SAMPLE_RE.match(line)
            if not m:
                raise SystemExit(f"{path}: cannot parse sample line: {line}")
            labels = {}
            if m.group(2):
                body = m.group(2)[1:-1]
                for lm in LABEL_RE.finditer(body):
                    labels[lm.group(1)] = bytes(lm.group(2), "utf-8").decode("unicode_escape")
            samples.append((m.group(1), labels))
    return types, samples


SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created", "_info", "_gcount", "_gsum")


def family_of(name, types):
    if name in types:
        return name
    for suf in SUFFIXES:
        if name.endswith(suf) and name[: -len(suf)] in types:
            return name[: -len(suf)]
    return name


# ---------------------------------------------------------------- modes

def do_list(exprs):
    for e in exprs:
        print(e.expr)
    return 0


def query(url, expr):
    data = urllib.parse.urlencode({"query": expr}).encode()
    req = urllib.request.Request(url.rstrip("/") + "/api/v1/query", data=data,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        try:
            body = json.load(e)
        except ValueError:
            return None, f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        raise SystemExit(f"cannot reach {url}: {e}")
    if body.get("status") != "success":
        return None, body.get("error", "unknown error")
    data = body["data"]
    if data["resultType"] in ("scalar", "string"):
        return 1, None
    # A series whose value is NaN is no data: histogram_quantile() over a
    # histogram without observations in the range returns one per group,
    # and Grafana draws nothing for it.
    return sum(1 for r in data["result"] if r.get("value", [None, ""])[1] != "NaN"), None


def do_prometheus(url, exprs, parse_only):
    bad = 0
    for e in exprs:
        n, err = query(url, e.expr)
        if err:
            bad += 1
            print(f"ERROR  {e.where}: {err}\n       {e.expr}")
        elif n == 0:
            fatal = not (parse_only or e.may_be_empty or e.errors_only)
            bad += fatal
            if e.origin != "alert":
                print(f"{'EMPTY ' if fatal else 'empty '} {e.where}\n       {e.expr}")
        else:
            print(f"ok     {e.where}: {n} series")
    print(f"{len(exprs)} expressions, {bad} problem(s)")
    return 1 if bad else 0


def do_metrics(path, dash_exprs, alert_exprs_):
    types, samples = parse_scrape(path)
    sample_names = {n for n, _ in samples}
    families = {family_of(n, types) for n in sample_names} | set(types)
    by_name = {}
    for n, labels in samples:
        by_name.setdefault(n, []).append(labels)
    problems = []

    dash_refs = set()
    for group, exprs in (("dashboard", dash_exprs), ("alerts.yml", alert_exprs_)):
        for e in exprs:
            names, matchers = references(e.expr)
            if group == "dashboard":
                dash_refs |= {family_of(n, types) for n in names}
            for n in sorted(names):
                if n in SYNTHETIC:
                    continue
                if n not in sample_names and n not in types:
                    problems.append(f"{group}: {e.where}: {n} is not in the scrape")
            for metric, label, op, value in matchers:
                if op != "=" or metric is None or metric in SYNTHETIC or "$" in value or metric not in by_name:
                    continue
                if label in ("job", "instance"):
                    continue   # target labels: added by Prometheus, not in the scrape
                if not any(l.get(label) == value for l in by_name[metric]):
                    seen = sorted({l.get(label) for l in by_name[metric] if label in l})
                    problems.append(f"{group}: {e.where}: no {metric} series with {label}=\"{value}\" "
                                    f"(the scrape has {label} in {seen})")

    for fam in sorted(f for f in families if f.startswith("forkwatch_")):
        if fam in dash_refs:
            continue
        if fam in DELIBERATELY_OFF_DASHBOARD:
            print(f"note   {fam} is off the dashboard: {DELIBERATELY_OFF_DASHBOARD[fam]}")
            continue
        problems.append(f"scrape: {fam} is exported but not on the dashboard (add a panel or list it in "
                        f"DELIBERATELY_OFF_DASHBOARD with a reason)")
    for fam in sorted(DELIBERATELY_OFF_DASHBOARD):
        if fam not in families:
            problems.append(f"DELIBERATELY_OFF_DASHBOARD lists {fam}, which the scrape does not have")

    for p in problems:
        print("FAIL   " + p)
    fw = sorted(f for f in families if f.startswith("forkwatch_"))
    print(f"{len(fw)} forkwatch families in the scrape, {len(dash_exprs)} dashboard and "
          f"{len(alert_exprs_)} alert expressions, {len(problems)} problem(s)")
    return 1 if problems else 0


# ---------------------------------------------------------------- lint (offline, against docs/metrics.md)

# Labels every scraped series has (added by Prometheus), plus histogram's le.
TARGET_LABELS = {"job", "instance"}


def metrics_doc(path):
    """{metric: {label: set(values) or None}} from the table of docs/metrics.md."""
    out = {}
    label_re = re.compile(r"`([a-z_]+)`(?:\s*=\s*((?:`[^`]+`(?:\\\|)?)+))?(\s*\(as above\))?")
    prev = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            cols = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())]
            # | `name` | type | labels | meaning |  -> ['', name, type, labels, meaning, '']
            if len(cols) < 5 or not re.fullmatch(r"`forkwatch_[a-z0-9_]+`", cols[1]):
                continue
            name, typ, labels_txt = cols[1].strip("`"), cols[2], cols[3]
            labels = {}
            for lm in label_re.finditer(labels_txt):
                label, values, as_above = lm.group(1), lm.group(2), lm.group(3)
                if values:
                    labels[label] = set(re.findall(r"`([^`]+)`", values))
                elif as_above:
                    labels[label] = prev.get(label)
                else:
                    labels[label] = None
            prev = labels   # "(as above)" refers to the row just above
            out[name] = {"type": typ, "labels": labels}
    if not out:
        raise SystemExit(f"{path}: no metric table found")
    return out


def doc_metric(name, doc):
    """The docs/metrics.md entry a series name belongs to (histogram suffixes)."""
    if name in doc:
        return name, doc[name]
    for suf in ("_bucket", "_sum", "_count"):
        base = name[: -len(suf)]
        if name.endswith(suf) and base in doc and doc[base]["type"] == "histogram":
            return base, doc[base]
    return None, None


def selectors(expr):
    """(metric, {label: (op, value)}) for every metric selector of expr."""
    toks = tokens(expr)
    out = []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else None
        if kind == "ident" and text.lower() in LABEL_LIST_KEYWORDS and nxt == "(":
            while i < len(toks) and toks[i][1] != ")":
                i += 1
        elif kind == "ident" and nxt != "(" and text.lower() not in KEYWORDS | AGGREGATORS:
            found = {}
            if nxt == "{":
                j = i + 2
                while j < len(toks) and toks[j][1] != "}":
                    if toks[j][0] == "ident" and j + 2 < len(toks) and toks[j + 2][0] == "string":
                        found[toks[j][1]] = (toks[j + 1][1], unquote(toks[j + 2][1]))
                        j += 3
                        continue
                    j += 1
                i = j
            out.append((text, found))
        i += 1
    return out


def grouping_labels(expr):
    """Label names used in by/without/on/ignoring/group_* lists."""
    toks = tokens(expr)
    out = set()
    for i, (kind, text) in enumerate(toks):
        if kind == "ident" and text.lower() in LABEL_LIST_KEYWORDS and i + 1 < len(toks) and toks[i + 1][1] == "(":
            j = i + 2
            while j < len(toks) and toks[j][1] != ")":
                if toks[j][0] == "ident":
                    out.add(toks[j][1])
                j += 1
    return out


def do_lint(dash_path, dash_exprs, alert_exprs_, doc_path):
    doc = metrics_doc(doc_path)
    problems = []
    with open(dash_path, encoding="utf-8") as f:
        dash = json.load(f)

    # Panels: description, datasource, layout.
    cells = {}
    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []) or [])
    for p in panels(dash.get("panels", [])):
        title = p.get("title", f"panel {p.get('id')}")
        gp = p.get("gridPos", {})
        for x in range(gp.get("x", 0), gp.get("x", 0) + gp.get("w", 0)):
            for y in range(gp.get("y", 0), gp.get("y", 0) + gp.get("h", 0)):
                if (x, y) in cells:
                    problems.append(f"panel {title!r} overlaps {cells[(x, y)]!r}")
                    break
                cells[(x, y)] = title
            else:
                continue
            break
        if p.get("type") == "row":
            continue
        if not (p.get("description") or "").strip():
            problems.append(f"panel {title!r} has no description")
        if (p.get("datasource") or {}).get("uid") != "${datasource}":
            problems.append(f"panel {title!r} does not use the $datasource variable")
        for t in p.get("targets", []):
            if (t.get("datasource") or {}).get("uid") != "${datasource}":
                problems.append(f"panel {title!r} target {t.get('refId')} does not use $datasource")

    # Expressions: names, filters, labels and values against docs/metrics.md.
    used = set()
    for group, exprs in (("dashboard", dash_exprs), ("alerts.yml", alert_exprs_)):
        for e in exprs:
            for name, matchers in selectors(e.raw):
                base, entry = doc_metric(name, doc)
                if name.startswith("forkwatch_") and entry is None:
                    problems.append(f"{group}: {e.where}: {name} is not in docs/metrics.md")
                    continue
                if entry is None:
                    continue
                if group == "dashboard":
                    used.add(base)
                    need = {"job": ("=", "$job"), "instance": ("=~", "$instance")}
                    if "server" in entry["labels"]:
                        need["server"] = ("=~", "$server")
                    for label, want in need.items():
                        if e.origin == "variable" and label not in matchers:
                            continue   # variables filter on the variables before them only
                        if matchers.get(label) != want:
                            problems.append(f"{group}: {e.where}: {name} lacks {label}{want[0]}\"{want[1]}\"")
                allowed = set(entry["labels"]) | TARGET_LABELS | ({"le"} if name.endswith("_bucket") else set())
                for label, (op, value) in matchers.items():
                    if label not in allowed:
                        problems.append(f"{group}: {e.where}: {name} has no label {label} in docs/metrics.md")
                    elif op == "=" and "$" not in value and entry["labels"].get(label) is not None \
                            and value not in entry["labels"][label]:
                        problems.append(f"{group}: {e.where}: {label}=\"{value}\" is not a documented value "
                                        f"of {name} ({sorted(entry['labels'][label])})")
            names = [n for n, _ in selectors(e.raw)]
            known = set(TARGET_LABELS) | {"le"}
            for n in names:
                _, entry = doc_metric(n, doc)
                if entry:
                    known |= set(entry["labels"])
            if any(n.startswith("forkwatch_") for n in names):
                for label in grouping_labels(e.raw) - known:
                    problems.append(f"{group}: {e.where}: groups by {label}, which none of its metrics has")

    for name in sorted(doc):
        if name not in used and name not in DELIBERATELY_OFF_DASHBOARD:
            problems.append(f"docs/metrics.md: {name} is not on the dashboard (add a panel or list it in "
                            f"DELIBERATELY_OFF_DASHBOARD with a reason)")
    for p in problems:
        print("FAIL   " + p)
    print(f"{len(doc)} metrics in docs/metrics.md, {len(dash_exprs)} dashboard and {len(alert_exprs_)} alert "
          f"expressions, {len(problems)} problem(s)")
    return 1 if problems else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--list", action="store_true", help="print the dashboard's expressions, one per line")
    mode.add_argument("--prometheus", metavar="URL", help="run every expression through URL/api/v1/query")
    mode.add_argument("--metrics", metavar="FILE", help="check names against a saved /metrics scrape")
    mode.add_argument("--lint", action="store_true", help="offline checks against docs/metrics.md")
    ap.add_argument("--parse-only", action="store_true", help="with --prometheus: only errors count")
    ap.add_argument("--dashboard", default=DEFAULT_DASHBOARD)
    ap.add_argument("--alerts", default=DEFAULT_ALERTS)
    ap.add_argument("--metrics-doc", default=DEFAULT_METRICS_DOC, help="docs/metrics.md, for --lint")
    ap.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                    help="override a variable substitution (repeatable)")
    args = ap.parse_args()

    variables = dict(DEFAULT_VARS)
    for kv in args.var:
        k, sep, v = kv.partition("=")
        if not sep:
            ap.error(f"--var {kv}: expected NAME=VALUE")
        variables[k] = v

    dash = dashboard_exprs(args.dashboard)
    alerts = alert_exprs(args.alerts) if (args.prometheus or args.metrics or args.lint) else []
    for e in dash + alerts:
        e.expr = substitute(e.raw, variables)

    if args.list:
        return do_list(dash)
    if args.lint:
        return do_lint(args.dashboard, dash, alerts, args.metrics_doc)
    if args.prometheus:
        return do_prometheus(args.prometheus, dash + alerts, args.parse_only)
    return do_metrics(args.metrics, dash, alerts)


if __name__ == "__main__":
    sys.exit(main())
