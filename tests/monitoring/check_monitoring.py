#!/usr/bin/python3
"""Checks deploy/monitoring/ (alert rules, PrometheusRule, Grafana dashboards) and docs/runbooks.md.

    check_monitoring.py                   # checks 1-4 and the checker's self-tests
    check_monitoring.py --scrape FILE     # also check 5 against a real /metrics scrape of an agent
    check_monitoring.py --update          # regenerate deploy/monitoring/prometheusrule.yaml

1. `promtool check rules` on deploy/monitoring/rules/meshtls-alerts.yaml, and every alert has a
   severity (info|warning|critical), summary, description and a runbook_url whose anchor is a
   heading of docs/runbooks.md.
2. `promtool test rules` on tests/monitoring/alerts_test.yaml, and every alert has at least one
   test case where it fires and one where it stays silent.
3. Every PromQL expression of every dashboard (panel targets, templating queries), with Grafana's
   variables replaced by valid values, written as recording rules and parsed by
   `promtool check rules`; plus the dashboards' structure (datasource variable, unique ids,
   units, grid) and their listing in deploy/monitoring/kustomization.yaml.
4. deploy/monitoring/prometheusrule.yaml is exactly what --update generates from the rules file.
5. (--scrape FILE) every metric name used by the rules and dashboards is a family (# TYPE) or a
   sample of the scrape, except the allow-list NOT_FROM_THE_AGENT below. A name missing from the
   scrape but documented in docs/metrics.md is only noted (prometheus-cpp leaves out families
   with no series yet, e.g. a labelled counter nothing has incremented), unless --strict-scrape.

Self-tests (skipped with --skip-self-test) run the checks on broken copies in a temporary
directory (a misspelt metric, an expression that does not parse, an undefined dashboard
variable, a drifted PrometheusRule, a missing runbook anchor, an untested alert) and fail
unless each is reported, so the checker provably can fail.

Standard library only (/usr/bin/python3); needs promtool (Debian package prometheus). YAML is
read with the small block-style subset reader below, which rejects what it does not handle.
Exit status 0 when everything passes, 1 with one line per problem otherwise, 2 on bad usage.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

RULES = 'deploy/monitoring/rules/meshtls-alerts.yaml'
PROMETHEUS_RULE = 'deploy/monitoring/prometheusrule.yaml'
KUSTOMIZATION = 'deploy/monitoring/kustomization.yaml'
DASHBOARDS = 'deploy/monitoring/dashboards'
ALERT_TESTS = 'tests/monitoring/alerts_test.yaml'
RUNBOOKS = 'docs/runbooks.md'
METRICS_DOC = 'docs/metrics.md'
RUNBOOK_BASE = 'https://github.com/meshtls/meshtls/blob/main/docs/runbooks.md#'
SEVERITIES = ('info', 'warning', 'critical')
PROMTOOL = os.environ.get('PROMTOOL', 'promtool')
STRICT_SCRAPE = False

# Metrics used by the rules and dashboards that the agent does not export, so a scrape of the
# agent cannot contain them (check 5 skips them). Each entry names where it comes from. An entry
# that nothing uses any more is reported, so the list stays exact.
NOT_FROM_THE_AGENT = {
    'up': 'Prometheus itself: one series per scrape target (job="meshtls-agent")',
    'container_cpu_usage_seconds_total': 'kubelet/cAdvisor: the container "agent" of the DaemonSet',
    'container_memory_working_set_bytes': 'kubelet/cAdvisor: the container "agent" of the DaemonSet',
    'kube_pod_container_resource_limits': 'kube-state-metrics: the memory limit of the container "agent"',
    'kube_pod_container_status_restarts_total': 'kube-state-metrics: restarts of the container "agent"',
    'kube_daemonset_status_desired_number_scheduled': 'kube-state-metrics: nodes that should run an agent',
    'kube_daemonset_status_current_number_scheduled': 'kube-state-metrics: nodes that run an agent pod',
}

PROMETHEUS_RULE_HEADER = """\
# GENERATED from deploy/monitoring/rules/meshtls-alerts.yaml by
# `tests/monitoring/check_monitoring.py --update`: do not edit, edit the rules file and regenerate
# (check_monitoring.py fails when the two differ).
# The meshtls alerts for the Prometheus Operator. Its Prometheus picks PrometheusRules by label
# (spec.ruleSelector; kube-prometheus-stack wants e.g. release: <its release name>): add that label
# in your own kustomization (docs/deploy.md, "Monitoring").
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: meshtls-alerts
  namespace: meshtls-system
  labels:
    app.kubernetes.io/name: meshtls-agent
spec:
"""

# Grafana's built-in variables, replaced by values that make valid PromQL.
GRAFANA_BUILTINS = {
    '__rate_interval': '5m', '__interval': '1m', '__interval_ms': '60000', '__range': '1h',
    '__range_s': '3600', '__range_ms': '3600000', '__auto': '1m', '__dashboard': 'meshtls',
}

# Grafana unit ids the dashboards may use (a misspelt unit silently shows raw numbers).
GRAFANA_UNITS = {
    'none', 'short', 'percent', 'percentunit', 's', 'ms', 'us', 'ns', 'dtdurations', 'dtdurationms',
    'bytes', 'decbytes', 'bits', 'Bps', 'binBps', 'bps', 'reqps', 'ops', 'cps', 'wps', 'rps',
    'dateTimeAsIso', 'dateTimeAsSystem', 'dateTimeFromNow', 'bool', 'bool_yes_no', 'locale',
}
PANEL_TYPES = {'timeseries', 'stat', 'gauge', 'bargauge', 'table', 'heatmap', 'piechart', 'text', 'row',
               'state-timeline', 'status-history'}


# ---- a block-style YAML subset reader ---------------------------------------------------------

class YamlError(Exception):
    pass


def _yaml_plain(text, where):
    if text in ('[]', '{}'):
        return [] if text == '[]' else {}
    if text[:1] in '[{&*!|>%@`,?' or text.startswith('- '):
        raise YamlError(f'{where}: "{text}": flow collections, anchors, tags and the like are not supported')
    return text


def _yaml_quoted(text, where):
    """A quoted scalar at the start of text; returns (value, rest)."""
    q = text[0]
    if q == "'":
        m = re.match(r"'((?:[^']|'')*)'", text)
        if not m:
            raise YamlError(f'{where}: unterminated single-quoted string')
        return m.group(1).replace("''", "'"), text[m.end():]
    m = re.match(r'"((?:[^"\\]|\\.)*)"', text)
    if not m:
        raise YamlError(f'{where}: unterminated double-quoted string')
    try:
        return json.loads('"' + m.group(1).replace('\\/', '/') + '"'), text[m.end():]
    except ValueError as e:
        raise YamlError(f'{where}: unsupported escape in double-quoted string ({e})') from None


def _yaml_scalar(text, where):
    """A scalar that ends its line: quoted or plain, with an optional trailing comment."""
    if text[:1] in ('"', "'"):
        value, rest = _yaml_quoted(text, where)
        rest = rest.strip()
        if rest and not rest.startswith('#'):
            raise YamlError(f'{where}: text after a quoted string: {rest!r}')
        return value
    text = re.sub(r'\s+#.*$', '', text).strip()
    return _yaml_plain(text, where)


_KEY = re.compile(r'''(?:"((?:[^"\\]|\\.)*)"|'((?:[^']|'')*)'|([^\s'"#\-?:,\[\]{}][^#:]*?|-[^\s#:][^#:]*?))\s*:(?:\s+|$)''')


class _YamlReader:
    def __init__(self, text, name):
        self.lines = text.split('\n')
        self.name = name
        self.i = 0

    def where(self, i=None):
        return f'{self.name}:{(self.i if i is None else i) + 1}'

    def _significant(self):
        """Index and indent of the next line that is neither blank nor a comment (or None)."""
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if '\t' in line[:len(line) - len(line.lstrip())]:
                raise YamlError(f'{self.where()}: tab in indentation')
            stripped = line.strip()
            if stripped and not stripped.startswith('#'):
                return len(line) - len(line.lstrip(' '))
            self.i += 1
        return None

    def document(self):
        indent = self._significant()
        if indent is not None and self.lines[self.i].strip() == '---':
            self.i += 1
            indent = self._significant()
        if indent is None:
            return None
        node = self.node(indent)
        if self._significant() is not None:
            raise YamlError(f'{self.where()}: unexpected content (bad indentation or a second document)')
        return node

    def node(self, indent):
        content = self.lines[self.i].strip()
        if content == '-' or content.startswith('- '):
            return self.sequence(indent)
        if _KEY.match(content):
            return self.mapping(indent)
        if content[:1] in ('"', "'") or not re.search(r':(\s|$)', content):
            self.i += 1
            value = _yaml_scalar(content, self.where(self.i - 1))
            nxt = self._significant()
            if nxt is not None and nxt > indent:
                raise YamlError(f'{self.where()}: multi-line plain scalars are not supported')
            return value
        raise YamlError(f'{self.where()}: cannot read {content!r}')

    def sequence(self, indent):
        items = []
        while True:
            cur = self._significant()
            if cur is None or cur < indent:
                return items
            line = self.lines[self.i]
            content = line.strip()
            if cur > indent or not (content == '-' or content.startswith('- ')):
                if cur == indent:
                    return items
                raise YamlError(f'{self.where()}: bad indentation in a sequence')
            rest = content[1:]
            if not rest.strip():
                self.i += 1
                child = self._significant()
                items.append(self.node(child) if child is not None and child > indent else None)
                continue
            col = cur + 1 + (len(rest) - len(rest.lstrip(' ')))
            # Re-read the item's content as if it started its own line at column col.
            self.lines[self.i] = ' ' * col + rest.lstrip(' ')
            items.append(self.node(col))

    def mapping(self, indent):
        out = {}
        while True:
            cur = self._significant()
            if cur is None or cur < indent:
                return out
            content = self.lines[self.i].strip()
            if cur > indent:
                raise YamlError(f'{self.where()}: bad indentation in a mapping')
            if content == '-' or content.startswith('- '):
                return out
            m = _KEY.match(content)
            if not m:
                raise YamlError(f'{self.where()}: expected "key: value", got {content!r}')
            if m.group(1) is not None:
                key = json.loads('"' + m.group(1) + '"')
            elif m.group(2) is not None:
                key = m.group(2).replace("''", "'")
            else:
                key = m.group(3).strip()
            if key in out:
                raise YamlError(f'{self.where()}: duplicate key {key!r}')
            rest = content[m.end():].strip()
            line_no = self.i
            self.i += 1
            if rest == '' or rest.startswith('#'):
                child = self._significant()
                if child is None or child < indent:
                    out[key] = None
                elif child > indent:
                    out[key] = self.node(child)
                else:
                    c = self.lines[self.i].strip()
                    out[key] = self.sequence(indent) if (c == '-' or c.startswith('- ')) else None
            elif rest[0] in '|>':
                out[key] = self.block_scalar(rest, indent, line_no)
            else:
                out[key] = _yaml_scalar(rest, self.where(line_no))
                nxt = self._significant()
                if nxt is not None and nxt > indent:
                    raise YamlError(f'{self.where()}: multi-line plain scalars are not supported')

    def block_scalar(self, header, parent_indent, line_no):
        m = re.match(r'([|>])([-+]?)\s*(#.*)?$', header)
        if not m:
            raise YamlError(f'{self.where(line_no)}: unsupported block scalar header {header!r}')
        style, chomp = m.group(1), m.group(2)
        raw = []
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.strip() and len(line) - len(line.lstrip(' ')) <= parent_indent:
                break
            raw.append(line)
            self.i += 1
        body = [l for l in raw if l.strip()]
        if not body:
            return ''
        ind = min(len(l) - len(l.lstrip(' ')) for l in body)
        first = len(body[0]) - len(body[0].lstrip(' '))
        if first != ind:
            raise YamlError(f'{self.where(line_no)}: block scalar whose first line is more indented than the rest')
        lines = [l[ind:] if l.strip() else '' for l in raw]
        while lines and lines[-1] == '':
            lines.pop()
        trailing = len(raw) - len(lines)
        if style == '|':
            text = '\n'.join(lines)
        else:
            if any(l.startswith((' ', '\t')) for l in lines):
                raise YamlError(f'{self.where(line_no)}: folded scalar with more-indented lines is not supported')
            text, pending = '', 0
            for l in lines:
                if l == '':
                    pending += 1
                    continue
                if text:
                    text += '\n' * pending if pending else ' '
                text += l
                pending = 0
        if chomp == '-':
            return text
        if chomp == '+':
            return text + '\n' * (1 + trailing)
        return text + '\n'


def yaml_load(text, name):
    return _YamlReader(text, name).document()


# ---- PromQL ---------------------------------------------------------------------------------------

PROMQL_WORDS = {
    # keywords and binary operators
    'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or', 'unless',
    'offset', 'atan2', 'inf', 'nan', 'start', 'end',
    # aggregation operators (may be followed by "by (...)" rather than a parenthesis)
    'sum', 'min', 'max', 'avg', 'group', 'stddev', 'stdvar', 'count', 'count_values', 'bottomk',
    'topk', 'quantile', 'limitk', 'limit_ratio',
}


def promql_metric_names(expr):
    """Metric names an expression selects: identifiers that are not functions, aggregations,
    keywords, label names (inside {} or in by/without/on/ignoring/group_x lists) or numbers."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r'#[^\n]*', '', s)
    s = re.sub(r'\{[^{}]*\}', '{}', s)
    s = re.sub(r'\[[^\[\]]*\]', '[]', s)
    s = re.sub(r'\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)', r' \1 ', s)
    names = set()
    token = re.compile(r'(?P<num>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:[a-zA-Z]+\d*)*)'
                       r'|(?P<id>[a-zA-Z_:][a-zA-Z0-9_:]*)')
    for m in token.finditer(s):
        ident = m.group('id')
        if not ident or ident.lower() in PROMQL_WORDS:
            continue
        if s[m.end():].lstrip().startswith('('):
            continue  # a function call
        names.add(ident)
    return names


GRAFANA_VAR = re.compile(r'\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]')


def grafana_substitute(expr, variables):
    """Replace Grafana variables; returns (expr, [undefined names])."""
    undefined = []

    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        if name in variables:
            return variables[name]
        if name.isdigit():
            return m.group(0)  # $1 in label_replace: not a Grafana variable
        undefined.append(name)
        return m.group(0)

    return GRAFANA_VAR.sub(repl, expr), undefined


def grafana_query_to_promql(query):
    """A templating query as PromQL, or None when it selects no series (label_names() etc.)."""
    q = query.strip()
    m = re.fullmatch(r'label_values\((.*),\s*(\w+)\s*\)', q, re.S)
    if m:
        return m.group(1).strip()
    if re.fullmatch(r'label_values\(\s*\w+\s*\)', q) or re.fullmatch(r'(label_names|metrics)\(.*\)', q, re.S):
        return None
    m = re.fullmatch(r'query_result\((.*)\)', q, re.S)
    return m.group(1).strip() if m else q


def github_anchor(heading):
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r'`([^`]*)`', r'\1', heading.strip()).lower()
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def runbook_anchors(markdown):
    anchors, seen = set(), {}
    in_code = False
    for line in markdown.split('\n'):
        if line.startswith('```'):
            in_code = not in_code
            continue
        m = None if in_code else re.match(r'#{1,6}\s+(.*?)\s*#*\s*$', line)
        if m:
            a = github_anchor(m.group(1))
            n = seen.get(a, 0)
            seen[a] = n + 1
            anchors.add(a if n == 0 else f'{a}-{n}')
    return anchors


def hard_wired_datasources(node):
    """Datasource references anywhere in a dashboard other than the ${datasource} variable."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == 'datasource' and v is not None and v != {'type': 'prometheus', 'uid': '${datasource}'} \
                    and not (isinstance(v, dict) and v.get('type') in ('datasource', 'grafana')):
                found.append(json.dumps(v))
            elif k != 'templating':
                found += hard_wired_datasources(v)
    elif isinstance(node, list):
        for v in node:
            found += hard_wired_datasources(v)
    return found


def generate_prometheus_rule(rules_text):
    """The PrometheusRule: a fixed header, then the rules file from "groups:" on, indented under
    spec (comments kept). Indenting a block-style YAML document uniformly keeps its meaning."""
    lines = rules_text.split('\n')
    start = next((i for i, l in enumerate(lines) if l.startswith('groups:')), None)
    if start is None:
        raise YamlError(f'{RULES}: no top-level "groups:" line')
    body = ['  ' + l if l.strip() else '' for l in lines[start:]]
    while body and body[-1] == '':
        body.pop()
    return PROMETHEUS_RULE_HEADER + '\n'.join(body) + '\n'


def parse_scrape(text):
    """Families (# TYPE name type) and sample names of a Prometheus text exposition."""
    families, samples = {}, set()
    for line in text.split('\n'):
        line = line.strip()
        if line.startswith('# TYPE '):
            parts = line.split()
            if len(parts) >= 4:
                families[parts[2]] = parts[3]
        elif line and not line.startswith('#'):
            m = re.match(r'[a-zA-Z_:][a-zA-Z0-9_:]*', line)
            if m:
                samples.add(m.group(0))
    return families, samples


def documented_family(name, documented):
    """Whether name, or the histogram it is a series of, is documented."""
    return name in documented or re.sub(r'_(bucket|sum|count)$', '', name) in documented


def in_scrape(name, families, samples):
    if name in families or name in samples:
        return True
    for suffix, kinds in (('_bucket', ('histogram',)), ('_sum', ('histogram', 'summary')),
                          ('_count', ('histogram', 'summary'))):
        if name.endswith(suffix) and families.get(name[:-len(suffix)]) in kinds:
            return True
    return False


# ---- the checks ------------------------------------------------------------------------------------

class Checker:
    def __init__(self, root, verbose=True):
        self.root = root
        self.promtool = PROMTOOL
        self.verbose = verbose
        self.problems = []
        self.yaml_cache = {}
        self.strict_scrape = STRICT_SCRAPE

    def path(self, rel):
        return os.path.join(self.root, rel)

    def read(self, rel):
        with open(self.path(rel), encoding='utf-8') as f:
            return f.read()

    def problem(self, text):
        self.problems.append(re.sub(r'\n\s*\n', '\n', text))

    def say(self, text):
        if self.verbose:
            print(text)

    def step(self, since, ok_text, step):
        """Prints ok_text when no problem was found since problem number since."""
        n = len(self.problems) - since
        self.say(ok_text if n == 0 else f'FAIL {step}: {n} problem(s), listed at the end')

    def run_promtool(self, *args):
        try:
            p = subprocess.run([self.promtool, *args], cwd=self.root, capture_output=True, text=True, timeout=120)
        except FileNotFoundError:
            raise SystemExit(f'check_monitoring: {self.promtool} not found: install the Debian package '
                             'prometheus (make deps)') from None
        return p.returncode, (p.stdout + p.stderr).strip()

    # -- loading

    def load_yaml(self, rel):
        if rel not in self.yaml_cache:
            try:
                self.yaml_cache[rel] = yaml_load(self.read(rel), rel)
            except (OSError, YamlError) as e:
                self.problem(f'{rel}: cannot read: {e}')
                self.yaml_cache[rel] = None
        return self.yaml_cache[rel]

    def alert_rules(self, doc=None, rel=RULES):
        doc = self.load_yaml(rel) if doc is None else doc
        rules = []
        if not isinstance(doc, dict) or not isinstance(doc.get('groups'), list):
            self.problem(f'{rel}: no "groups:" list')
            return rules
        for g in doc['groups']:
            for r in (g or {}).get('rules') or []:
                rules.append(r)
        return rules

    def dashboards(self):
        out = []
        d = self.path(DASHBOARDS)
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            if not name.endswith('.json'):
                continue
            rel = f'{DASHBOARDS}/{name}'
            try:
                out.append((rel, json.loads(self.read(rel))))
            except ValueError as e:
                self.problem(f'{rel}: not valid JSON: {e}')
        if not out:
            self.problem(f'{DASHBOARDS}: no dashboards (*.json)')
        return out

    # -- 1. the rules file

    def check_rules(self):
        since = len(self.problems)
        code, out = self.run_promtool('check', 'rules', RULES)
        if code != 0:
            self.problem(f'{RULES}: promtool check rules failed:\n    ' + out.replace('\n', '\n    '))
            self.step(since, '', '1. rules')
            return
        rules = self.alert_rules()
        m = re.search(r'SUCCESS: (\d+) rules found', out)
        if not m or int(m.group(1)) != len(rules):
            self.problem(f'{RULES}: promtool found {m.group(1) if m else "?"} rules, this checker read {len(rules)} '
                         '(the YAML subset reader and promtool disagree)')
        try:
            runbooks = self.read(RUNBOOKS)
        except OSError as e:
            self.problem(f'{RUNBOOKS}: {e}')
            runbooks = ''
        anchors = runbook_anchors(runbooks)
        self.check_links(RUNBOOKS, runbooks)
        names = set()
        for r in rules:
            name = r.get('alert')
            if not name:
                continue  # recording rule
            where = f'{RULES}: alert {name}'
            if name in names:
                self.problem(f'{where}: defined twice')
            names.add(name)
            sev = (r.get('labels') or {}).get('severity')
            if sev not in SEVERITIES:
                self.problem(f'{where}: severity label is {sev!r}, want one of {"|".join(SEVERITIES)}')
            ann = r.get('annotations') or {}
            for key in ('summary', 'description', 'runbook_url'):
                if not str(ann.get(key) or '').strip():
                    self.problem(f'{where}: no {key} annotation')
            url = str(ann.get('runbook_url') or '')
            if url and not url.startswith(RUNBOOK_BASE):
                self.problem(f'{where}: runbook_url {url} does not start with {RUNBOOK_BASE}')
            elif url and url[len(RUNBOOK_BASE):] not in anchors:
                self.problem(f'{where}: runbook_url anchor #{url[len(RUNBOOK_BASE):]} is not a heading of {RUNBOOKS}')
        self.step(since, f'ok   1. {RULES}: promtool check rules, {len(names)} alerts with severity, summary, '
                         f'description and a runbook anchor in {RUNBOOKS}', '1. rules')

    def check_links(self, rel, markdown):
        """Relative links of a Markdown file: the file exists and the anchor is one of its headings."""
        text = re.sub(r'```.*?```', '', markdown, flags=re.S)
        for target in sorted(set(re.findall(r'\]\(([^)\s]+)\)', text))):
            if re.match(r'[a-z]+:', target):
                continue
            file, _, anchor = target.partition('#')
            path = os.path.normpath(os.path.join(os.path.dirname(rel), file)) if file else rel
            if not os.path.exists(self.path(path)):
                self.problem(f'{rel}: link ({target}): {path} does not exist')
                continue
            if anchor and path.endswith('.md'):
                if anchor not in runbook_anchors(self.read(path)):
                    self.problem(f'{rel}: link ({target}): no heading with anchor #{anchor} in {path}')

    # -- 2. the unit tests

    def check_alert_tests(self, run_promtool=True):
        since = len(self.problems)
        if run_promtool:
            code, out = self.run_promtool('test', 'rules', ALERT_TESTS)
            if code != 0:
                self.problem(f'{ALERT_TESTS}: promtool test rules failed:\n    ' + out.replace('\n', '\n    '))
        doc = self.load_yaml(ALERT_TESTS)
        if not isinstance(doc, dict):
            return
        fires, silent = set(), set()
        for t in doc.get('tests') or []:
            for a in (t or {}).get('alert_rule_test') or []:
                (fires if a.get('exp_alerts') else silent).add(a.get('alertname'))
        alerts = [r['alert'] for r in self.alert_rules() if r.get('alert')]
        for name in alerts:
            if name not in fires:
                self.problem(f'{ALERT_TESTS}: no test case where {name} fires (exp_alerts not empty)')
            if name not in silent:
                self.problem(f'{ALERT_TESTS}: no test case where {name} stays silent (exp_alerts: [])')
        for name in sorted((fires | silent) - set(alerts)):
            self.problem(f'{ALERT_TESTS}: tests alert {name}, which {RULES} does not define')
        if run_promtool:
            self.step(since, f'ok   2. {ALERT_TESTS}: promtool test rules; each of the {len(alerts)} alerts fires in '
                             'at least one case and stays silent in another', '2. alert tests')

    # -- 3. the dashboards

    def dashboard_expressions(self, rel, dash):
        """[(where, promql)] of one dashboard, variables substituted; reports structural problems."""
        exprs = []
        variables = {}
        templ = (dash.get('templating') or {}).get('list') or []
        ds = [v for v in templ if v.get('type') == 'datasource']
        if not any(v.get('name') == 'datasource' and v.get('query') == 'prometheus' for v in ds):
            self.problem(f'{rel}: no templating variable "datasource" of type datasource (query prometheus)')
        for v in templ:
            name, kind = v.get('name'), v.get('type')
            if kind == 'datasource':
                variables[name] = 'prometheus'
            elif kind == 'interval':
                variables[name] = str(v.get('query') or '5m').split(',')[0].strip()
            elif kind in ('custom', 'constant', 'textbox'):
                opts = [o.get('value') for o in v.get('options') or [] if o.get('value') not in (None, '$__all')]
                variables[name] = opts[0] if opts else str(v.get('query') or '.*').split(',')[0].strip()
            else:
                variables[name] = '.*'
        for v in templ:
            if v.get('type') != 'query':
                continue
            if v.get('datasource') != {'type': 'prometheus', 'uid': '${datasource}'}:
                self.problem(f'{rel}: variable {v.get("name")}: datasource must be {{"type": "prometheus", "uid": "${{datasource}}"}}')
            q = v.get('query')
            q = q.get('query') if isinstance(q, dict) else q
            promql = grafana_query_to_promql(str(q or ''))
            if promql:
                exprs.append((f'{rel}: variable {v.get("name")}', promql))

        panels, stack = [], list(dash.get('panels') or [])
        while stack:
            p = stack.pop(0)
            panels.append(p)
            stack[0:0] = p.get('panels') or []
        ids = set()
        for p in panels:
            pid, title, kind = p.get('id'), p.get('title'), p.get('type')
            where = f'{rel}: panel {pid} "{title}"'
            if not isinstance(pid, int) or pid in ids:
                self.problem(f'{where}: id must be a unique integer')
            ids.add(pid)
            if kind not in PANEL_TYPES:
                self.problem(f'{where}: unknown panel type {kind!r}')
            g = p.get('gridPos') or {}
            if not all(isinstance(g.get(k), int) for k in 'hwxy') or g.get('x', 0) + g.get('w', 0) > 24:
                self.problem(f'{where}: gridPos must have integer h, w, x, y with x + w <= 24')
            if kind == 'row':
                continue
            if not title:
                self.problem(f'{rel}: panel {pid}: no title')
            unit = ((p.get('fieldConfig') or {}).get('defaults') or {}).get('unit')
            if unit is not None and unit not in GRAFANA_UNITS:
                self.problem(f'{where}: unit {unit!r} is not a Grafana unit id this checker knows')
            if kind == 'text':
                continue
            if p.get('datasource') != {'type': 'prometheus', 'uid': '${datasource}'}:
                self.problem(f'{where}: datasource must be {{"type": "prometheus", "uid": "${{datasource}}"}}')
            targets = p.get('targets') or []
            if not targets:
                self.problem(f'{where}: no targets')
            refs = set()
            for t in targets:
                ref = t.get('refId')
                if not ref or ref in refs:
                    self.problem(f'{where}: target refIds must be unique and set')
                refs.add(ref)
                if t.get('datasource') not in (None, p.get('datasource')):
                    self.problem(f'{where}: target {ref}: datasource differs from the panel\'s')
                if not str(t.get('expr') or '').strip():
                    self.problem(f'{where}: target {ref}: no expr')
                    continue
                exprs.append((f'{where} target {ref}', t['expr']))
        out = []
        for where, e in exprs:
            s, undefined = grafana_substitute(e, variables)
            for name in undefined:
                self.problem(f'{where}: undefined variable ${name} in {e!r}')
            out.append((where, s))
        return out

    def check_dashboards(self):
        since = len(self.problems)
        all_exprs = []
        uids = {}
        dashboards = self.dashboards()
        for rel, dash in dashboards:
            for key in ('title', 'uid'):
                if not dash.get(key):
                    self.problem(f'{rel}: no {key}')
            uid = dash.get('uid') or ''
            if len(uid) > 40:
                self.problem(f'{rel}: uid {uid!r} is longer than 40 characters')
            if uid in uids:
                self.problem(f'{rel}: uid {uid!r} is also the uid of {uids[uid]}')
            uids[uid] = rel
            sv = dash.get('schemaVersion')
            if not isinstance(sv, int) or not 36 <= sv <= 41:
                self.problem(f'{rel}: schemaVersion {sv!r}, want 36..41 (Grafana 9.x-11.x)')
            if '__inputs' in dash:
                self.problem(f'{rel}: __inputs (an export for sharing): export without "share externally"')
            for ds in hard_wired_datasources(dash):
                self.problem(f'{rel}: hard-wired datasource {ds} (use the ${{datasource}} variable)')
            if 'meshtls' not in (dash.get('tags') or []):
                self.problem(f'{rel}: tags must include "meshtls"')
            all_exprs += self.dashboard_expressions(rel, dash)
        kust = ''
        try:
            kust = self.read(KUSTOMIZATION)
        except OSError as e:
            self.problem(f'{KUSTOMIZATION}: {e}')
        for rel, _ in dashboards:
            if not re.search(r'^\s*-\s*' + re.escape(rel[len('deploy/monitoring/'):]) + r'\s*$', kust, re.M):
                self.problem(f'{KUSTOMIZATION}: {rel} is not in a configMapGenerator (Grafana would not get it)')
        for where, expr, err in self.parse_with_promtool(all_exprs) if all_exprs else []:
            self.problem(f'{where}: does not parse: {err}\n    {expr}')
        self.step(since, f'ok   3. {DASHBOARDS}: {len(all_exprs)} PromQL expressions of {len(uids)} dashboards parse '
                         '(promtool); structure and kustomization listing checked', '3. dashboards')
        return all_exprs

    def parse_with_promtool(self, exprs):
        """[(where, expr, error)] for the expressions promtool cannot parse."""
        def rules_file(items):
            lines = ['groups:', '  - name: dashboard-expressions', '    rules:']
            for n, (_, e) in enumerate(items):
                lines += [f'      - record: dashboard_expression:{n}', f'        expr: {json.dumps(e)}']
            return '\n'.join(lines) + '\n'

        with tempfile.TemporaryDirectory() as tmp:
            f = os.path.join(tmp, 'dashboard-expressions.yaml')
            with open(f, 'w') as fh:
                fh.write(rules_file(exprs))
            code, out = self.run_promtool('check', 'rules', f)
            if code == 0:
                return []
            bad = []
            for where, e in exprs:  # find the culprits one by one
                with open(f, 'w') as fh:
                    fh.write(rules_file([(where, e)]))
                c, o = self.run_promtool('check', 'rules', f)
                if c != 0:
                    m = re.search(r'could not parse expression: (.*)', o)
                    bad.append((where, e, m.group(1).strip() if m else o.replace(f, 'expr')))
            return bad or [('dashboards', '(all)', out)]

    # -- 4. the PrometheusRule

    def check_prometheus_rule(self):
        since = len(self.problems)
        try:
            want = generate_prometheus_rule(self.read(RULES))
            have = self.read(PROMETHEUS_RULE)
        except (OSError, YamlError) as e:
            self.problem(f'{PROMETHEUS_RULE}: {e}')
            return
        if have != want:
            hl, wl = have.split('\n'), want.split('\n')
            n = next((i for i in range(max(len(hl), len(wl))) if i >= len(hl) or i >= len(wl) or hl[i] != wl[i]), 0)
            self.problem(f'{PROMETHEUS_RULE} differs from what {RULES} generates (first at line {n + 1}: '
                         f'{hl[n] if n < len(hl) else "<end>"!r} vs {wl[n] if n < len(wl) else "<end>"!r}); '
                         'run tests/monitoring/check_monitoring.py --update')
        else:
            # The generation is textual; make sure it also means the same.
            pr = self.load_yaml(PROMETHEUS_RULE)
            plain = self.load_yaml(RULES)
            if not (isinstance(pr, dict) and pr.get('kind') == 'PrometheusRule' and
                    pr.get('apiVersion') == 'monitoring.coreos.com/v1'):
                self.problem(f'{PROMETHEUS_RULE}: not a monitoring.coreos.com/v1 PrometheusRule')
            elif (pr.get('spec') or {}).get('groups') != (plain or {}).get('groups'):
                self.problem(f'{PROMETHEUS_RULE}: spec.groups is not the groups of {RULES}')
        self.step(since, f'ok   4. {PROMETHEUS_RULE} is generated from {RULES} (no drift)', '4. PrometheusRule')

    # -- 5. metric names against a scrape

    def used_metrics(self, dashboard_exprs):
        used = {}
        for r in self.alert_rules():
            for n in promql_metric_names(str(r.get('expr') or '')):
                used.setdefault(n, []).append(f'{RULES}: {r.get("alert") or r.get("record")}')
        for where, e in dashboard_exprs:
            for n in promql_metric_names(e):
                used.setdefault(n, []).append(where)
        return used

    def check_scrape(self, scrape_file, dashboard_exprs):
        since = len(self.problems)
        try:
            with open(scrape_file, encoding='utf-8') as f:
                families, samples = parse_scrape(f.read())
        except OSError as e:
            self.problem(f'--scrape {scrape_file}: {e}')
            return
        if not families:
            self.problem(f'--scrape {scrape_file}: no "# TYPE" lines: not a Prometheus text exposition')
            return
        used = self.used_metrics(dashboard_exprs)
        documented = self.documented_metrics()
        absent = []
        for name in sorted(used):
            if name in NOT_FROM_THE_AGENT or in_scrape(name, families, samples):
                continue
            if documented_family(name, documented) and not self.strict_scrape:
                absent.append(name)
                continue
            users = sorted(set(used[name]))
            more = f' and {len(users) - 3} more' if len(users) > 3 else ''
            self.problem(f'metric {name} is not in the scrape {scrape_file} (used by {"; ".join(users[:3])}{more})'
                         + (' (documented in docs/metrics.md, but --strict-scrape)' if documented_family(name, documented) else ''))
        for name in sorted(set(NOT_FROM_THE_AGENT) - set(used)):
            self.problem(f'NOT_FROM_THE_AGENT lists {name}, which no rule or dashboard uses any more: remove it')
        unused = sorted(f for f in families if not any(in_scrape(u, {f: families[f]}, set()) for u in used))
        self.step(since, f'ok   5. {len(used)} metric names used by the rules and dashboards: '
                         f'{len(set(used) - set(NOT_FROM_THE_AGENT) - set(absent))} in {scrape_file}, '
                         f'{len(absent)} documented without series there, '
                         f'{len(set(used) & set(NOT_FROM_THE_AGENT))} from elsewhere (allow-list)', '5. scrape')
        if absent:
            self.say(f'     (not in this scrape, but documented in {METRICS_DOC}: {", ".join(absent)}; prometheus-cpp '
                     'leaves out families that have no series yet, e.g. a labelled counter nothing has incremented; '
                     '--strict-scrape makes these failures)')
        if unused:
            self.say(f'     (exported but used by no rule or dashboard: {", ".join(unused)})')

    def documented_metrics(self):
        """Metric names docs/metrics.md documents (backquoted meshtls_*/istio_* names)."""
        try:
            return set(re.findall(r'`((?:meshtls|istio)_[a-z0-9_]+)`', self.read(METRICS_DOC)))
        except OSError as e:
            self.problem(f'{METRICS_DOC}: {e}')
            return set()


def run_checks(root, scrape=None, verbose=True, only=None):
    c = Checker(root, verbose=verbose)
    steps = only or ('rules', 'tests', 'dashboards', 'prometheusrule', 'scrape')
    exprs = []
    if 'rules' in steps:
        c.check_rules()
    if 'tests' in steps:
        c.check_alert_tests()
    if 'dashboards' in steps or ('scrape' in steps and scrape):
        n = len(c.problems)
        exprs = c.check_dashboards()
        if 'dashboards' not in steps:
            del c.problems[n:]
    if 'prometheusrule' in steps:
        c.check_prometheus_rule()
    if 'scrape' in steps and scrape:
        c.check_scrape(scrape, exprs)
    return c


# ---- self-tests: the checks must fail on broken copies ------------------------------------------

def synthetic_scrape(root):
    """A scrape that has exactly the agent metrics the shipped rules and dashboards use."""
    c = Checker(root, verbose=False)
    used = c.used_metrics(c.check_dashboards())
    lines = []
    for name in sorted(set(used) - set(NOT_FROM_THE_AGENT)):
        base = re.sub(r'_(bucket|sum|count)$', '', name)
        if base != name and any(u in used for u in (base + '_bucket',)):
            lines += [f'# TYPE {base} histogram', f'{base}_bucket{{le="+Inf"}} 1', f'{base}_sum 0.5', f'{base}_count 1']
        elif name.endswith('_total'):
            lines += [f'# TYPE {name} counter', f'{name} 1']
        else:
            lines += [f'# TYPE {name} gauge', f'{name} 1']
    return '\n'.join(dict.fromkeys(lines)) + '\n'


def self_test():
    cases = [
        # (name, file, old, new, steps, expected message)
        ('misspelt metric in an alert', RULES, 'meshtls_ktls_unavailable == 1', 'meshtls_ktls_unavailble == 1',
         ('scrape',), 'metric meshtls_ktls_unavailble is not in the scrape'),
        ('misspelt metric in a dashboard', f'{DASHBOARDS}/meshtls-certificates.json',
         'meshtls_certificate_expiration_timestamp_seconds', 'meshtls_certificate_expiry_timestamp_seconds',
         ('scrape',), 'metric meshtls_certificate_expiry_timestamp_seconds is not in the scrape'),
        ('alert expression that does not parse', RULES, 'meshtls_ready == 0', 'meshtls_ready == == 0',
         ('rules',), 'promtool check rules failed'),
        ('dashboard expression that does not parse', f'{DASHBOARDS}/meshtls-mtls-health.json',
         'sum by (reason) (rate(meshtls_handshakes_total{', 'sum by (reason) (rate(meshtls_handshakes_total{{',
         ('dashboards',), 'does not parse'),
        ('undefined dashboard variable', f'{DASHBOARDS}/meshtls-agent.json', '$__rate_interval', '$rate_window',
         ('dashboards',), 'undefined variable $rate_window'),
        ('PrometheusRule drifted from the rules file', PROMETHEUS_RULE, '> 0.001', '> 0.01',
         ('prometheusrule',), 'differs from what'),
        ('runbook anchor missing', RUNBOOKS, '### MeshtlsAgentDown', '### MeshtlsAgentIsDown',
         ('rules',), 'anchor #meshtlsagentdown is not a heading'),
        ('alert without severity', RULES, 'severity: info', 'severity: page',
         ('rules',), "severity label is 'page'"),
        ('broken link in the runbooks', RUNBOOKS, '(#ca-rotation)', '(#ca-rotations)',
         ('rules',), 'link (#ca-rotations): no heading with anchor #ca-rotations'),
        ('alert without tests', RULES, '  - name: meshtls.security\n    rules:\n',
         '  - name: meshtls.security\n    rules:\n      - alert: MeshtlsUntested\n        expr: vector(1)\n',
         ('tests-static',), 'no test case where MeshtlsUntested fires'),
    ]
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for rel in ('deploy/monitoring', 'tests/monitoring'):
            shutil.copytree(os.path.join(REPO, rel), os.path.join(tmp, 'orig', rel))
        shutil.copytree(os.path.join(REPO, 'docs'), os.path.join(tmp, 'orig', 'docs'))
        scrape = os.path.join(tmp, 'scrape.prom')
        with open(scrape, 'w') as f:
            f.write(synthetic_scrape(os.path.join(tmp, 'orig')))
        # The unmodified copy passes, so what the cases below report comes from their mutation.
        base = run_checks(os.path.join(tmp, 'orig'), scrape=scrape, verbose=False,
                          only=('rules', 'dashboards', 'prometheusrule', 'scrape'))
        if base.problems:
            print('self-test: the unmodified copy does not pass:\n  ' + '\n  '.join(base.problems))
            return 1
        # A documented family without series (absent from the scrape) is a note, or with
        # --strict-scrape a failure; an undocumented one is always a failure.
        with open(scrape) as f:
            lines = [l for l in f.read().split('\n') if not l.split(' ')[-2:-1] == ['meshtls_ready'] and
                     not l.startswith('meshtls_ready ')]
        partial = os.path.join(tmp, 'partial.prom')
        with open(partial, 'w') as f:
            f.write('\n'.join(lines))
        for strict, want in ((False, None), (True, 'metric meshtls_ready is not in the scrape')):
            c = Checker(os.path.join(tmp, 'orig'), verbose=False)
            c.strict_scrape = strict
            c.check_scrape(partial, c.check_dashboards())
            ok = (not c.problems) if want is None else any(want in p for p in c.problems)
            print(f'{"ok  " if ok else "FAIL"} self-test "documented metric without series, strict={strict}": '
                  f'{"reported" if c.problems else "not reported"}' + ('' if ok else f' ({c.problems})'))
            failed += 0 if ok else 1
        for n, (name, rel, old, new, steps, want) in enumerate(cases):
            root = os.path.join(tmp, f'case{n}')
            shutil.copytree(os.path.join(tmp, 'orig'), root)
            p = os.path.join(root, rel)
            with open(p, encoding='utf-8') as f:
                text = f.read()
            if old not in text:
                print(f'self-test "{name}": {old!r} is not in {rel} any more (update the case)')
                failed += 1
                continue
            with open(p, 'w', encoding='utf-8') as f:
                f.write(text.replace(old, new, 1))
            if steps == ('tests-static',):
                c = Checker(root, verbose=False)
                c.check_alert_tests(run_promtool=False)
            else:
                c = run_checks(root, scrape=scrape, verbose=False, only=steps)
            hit = [p for p in c.problems if want in p]
            if hit:
                print(f'ok   self-test "{name}": reported ({hit[0].splitlines()[0][:150]})')
            else:
                print(f'FAIL self-test "{name}": the checker did not report {want!r}; it said: {c.problems or "nothing"}')
                failed += 1
            shutil.rmtree(root)
    return failed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--scrape', metavar='FILE', help='a /metrics scrape of a running agent: also check 5')
    ap.add_argument('--update', action='store_true', help=f'regenerate {PROMETHEUS_RULE} from {RULES}')
    ap.add_argument('--strict-scrape', action='store_true',
                    help='with --scrape: also fail on metrics documented in docs/metrics.md but absent from the scrape')
    ap.add_argument('--skip-self-test', action='store_true', help='do not run the self-tests')
    ap.add_argument('--promtool', default=os.environ.get('PROMTOOL', 'promtool'), help='promtool binary')
    args = ap.parse_args()

    if args.update:
        with open(os.path.join(REPO, RULES), encoding='utf-8') as f:
            text = generate_prometheus_rule(f.read())
        with open(os.path.join(REPO, PROMETHEUS_RULE), 'w', encoding='utf-8') as f:
            f.write(text)
        print(f'wrote {PROMETHEUS_RULE}')

    global PROMTOOL, STRICT_SCRAPE
    PROMTOOL = args.promtool
    STRICT_SCRAPE = args.strict_scrape
    c = run_checks(REPO, scrape=args.scrape)
    failed_self = 0 if args.skip_self_test else self_test()
    if c.problems:
        print(f'\ncheck_monitoring: {len(c.problems)} problem(s):', file=sys.stderr)
        for p in c.problems:
            print(f'  FAIL {p}', file=sys.stderr)
    if failed_self:
        print(f'check_monitoring: {failed_self} self-test(s) failed: the checker may not catch what it should',
              file=sys.stderr)
    if c.problems or failed_self:
        return 1
    print('check_monitoring: passed')
    return 0


if __name__ == '__main__':
    sys.exit(main())
