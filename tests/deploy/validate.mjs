// Validates the rendered deploy/ manifests (tests/deploy/validate.sh runs it; see README.md there).
//
//   node validate.mjs --modules DIR --repo ROOT --base BASE.yaml --overlay OVERLAY.yaml
//                     [--monitoring MONITORING.yaml]
//                     [--compare-base B2.yaml --compare-overlay O2.yaml [--compare-monitoring M2.yaml]]
//
// DIR holds node_modules (npm ci of package-lock.json, outside the source tree). Every object is
// checked against the Kubernetes OpenAPI schema (kubernetes-models), then the security-relevant
// fields are asserted. Exits 1 listing every failed check, 0 when all pass.
import { createRequire } from 'node:module';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || argv[i + 1] === undefined) throw new Error(`bad argument ${argv[i]}`);
    args[argv[i].slice(2)] = argv[i + 1];
  }
  for (const k of ['modules', 'repo', 'base', 'overlay']) {
    if (!args[k]) throw new Error(`--${k} is required`);
  }
  return args;
}

const args = parseArgs(process.argv.slice(2));
const require = createRequire(path.join(path.resolve(args.modules), 'package.json'));
const YAML = require('yaml');
const monitoringModels = {
  'v1/ConfigMap': require('kubernetes-models/v1').ConfigMap,
  'monitoring.coreos.com/v1/PrometheusRule':
    require('@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1').PrometheusRule,
  'monitoring.coreos.com/v1/PodMonitor': require('@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1').PodMonitor,
};
const models = {
  'v1/Namespace': require('kubernetes-models/v1').Namespace,
  'v1/ServiceAccount': require('kubernetes-models/v1').ServiceAccount,
  'v1/ConfigMap': require('kubernetes-models/v1').ConfigMap,
  'apps/v1/DaemonSet': require('kubernetes-models/apps/v1').DaemonSet,
  'rbac.authorization.k8s.io/v1/ClusterRole': require('kubernetes-models/rbac.authorization.k8s.io/v1').ClusterRole,
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding':
    require('kubernetes-models/rbac.authorization.k8s.io/v1').ClusterRoleBinding,
};

const NAMESPACE = 'meshtls-system';
const IMAGE = 'ghcr.io/meshtls/meshtls-agent:0.1.0';
const COMMAND = ['/usr/local/bin/meshtls-agent', '--config', '/etc/meshtls/config.yaml'];
// Keys the agent accepts beyond docs/config.md's table (being added with the Kubernetes work).
const NEW_CONFIG_KEYS = ['workloadSource', 'kubernetes.kubeconfig', 'kubernetes.meshLabel', 'caDir'];
// The only host paths the agent may mount (docs/deploy.md): anything else is a finding.
const ALLOWED_HOST_PATHS = ['/sys/fs/bpf', '/sys/fs/cgroup', '/run/meshtls', '/var/lib/meshtls', '/var/run/netns', '/run/netns'];

const failures = [];
let checks = 0;
function check(cond, what) {
  checks++;
  if (!cond) failures.push(what);
  return Boolean(cond);
}

// ---- loading ---------------------------------------------------------------------------------

function loadObjects(file, label) {
  const docs = YAML.parseAllDocuments(readFileSync(file, 'utf8'));
  const objects = [];
  for (const doc of docs) {
    if (doc.errors.length) {
      check(false, `${label}: YAML error: ${doc.errors[0].message}`);
      continue;
    }
    const obj = doc.toJS();
    if (obj === null || obj === undefined) continue;
    objects.push(obj);
  }
  check(objects.length > 0, `${label}: no objects rendered`);
  return objects;
}

function schemaCheck(objects, label, known = models) {
  for (const obj of objects) {
    const id = `${label}: ${obj?.kind ?? '?'} ${obj?.metadata?.name ?? '?'}`;
    const Model = known[`${obj?.apiVersion}/${obj?.kind}`];
    if (!check(Model, `${id}: unknown kind ${obj?.apiVersion}/${obj?.kind} (not one the agent's manifests should contain)`)) continue;
    try {
      new Model(obj).validate();
      check(true, '');
    } catch (e) {
      check(false, `${id}: schema: ${e.message}`);
    }
  }
}

const byKind = (objects, kind) => objects.filter((o) => o?.kind === kind);
function one(objects, kind, label) {
  const found = byKind(objects, kind);
  check(found.length === 1, `${label}: expected exactly one ${kind}, found ${found.length}`);
  return found[0];
}

// Go durations, as the agent parses them (docs/config.md): 20s, 500ms, 1h30m, 1.5h.
function durationSeconds(text) {
  const units = { ns: 1e-9, us: 1e-6, 'µs': 1e-6, ms: 1e-3, s: 1, m: 60, h: 3600 };
  const re = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)/gy;
  if (typeof text !== 'string' || text === '') return NaN;
  let total = 0;
  let pos = 0;
  for (let m; (m = re.exec(text)) !== null; pos = re.lastIndex) total += parseFloat(m[1]) * units[m[2]];
  return pos === text.length ? total : NaN;
}

function flatten(obj, prefix = '') {
  const out = {};
  for (const [k, v] of Object.entries(obj ?? {})) {
    const key = prefix + k;
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) Object.assign(out, flatten(v, `${key}.`));
    else out[key] = v;
  }
  return out;
}

function documentedConfigKeys(repo) {
  const md = readFileSync(path.join(repo, 'docs/config.md'), 'utf8');
  const keys = new Set(NEW_CONFIG_KEYS);
  for (const m of md.matchAll(/^\| `([A-Za-z.]+)` \|/gm)) keys.add(m[1]);
  return keys;
}

const under = (p, dir) => p === dir || p.startsWith(dir.endsWith('/') ? dir : `${dir}/`);

// ---- the checks --------------------------------------------------------------------------------

function checkConfig(config, label, repo) {
  const known = documentedConfigKeys(repo);
  check(known.size > 20, `docs/config.md: could not read its key table (found ${known.size} keys)`);
  const flat = flatten(config);
  for (const key of Object.keys(flat)) {
    check(known.has(key), `${label}: config.yaml key '${key}' is neither in docs/config.md nor one of ${NEW_CONFIG_KEYS.join(', ')}`);
  }
  const want = {
    workloadSource: 'kubernetes',
    'kubernetes.kubeconfig': '',
    'kubernetes.meshLabel': 'meshtls.io/mode',
    metricsAddress: '0.0.0.0',
    cgroupRoot: '/sys/fs/cgroup',
    bpfPinDir: '/sys/fs/bpf/meshtls',
    statusSocket: '/run/meshtls/status.sock',
    stateDir: '/var/lib/meshtls',
    policyDir: '/etc/meshtls/policies',
    trustDomain: 'cluster.local',
    rootNamespace: 'istio-system',
  };
  for (const [k, v] of Object.entries(want)) {
    check(flat[k] === v, `${label}: config.yaml ${k} is ${JSON.stringify(flat[k])}, want ${JSON.stringify(v)}`);
  }
  for (const [k, v] of Object.entries(flat)) {
    if (/(Dir|Root|Socket)$/.test(k) || (k === 'kubernetes.kubeconfig' && v !== '')) {
      check(typeof v === 'string' && v.startsWith('/'), `${label}: config.yaml ${k} must be an absolute path, is ${JSON.stringify(v)}`);
    }
    if (/Timeout$|Ttl$/.test(k)) {
      check(durationSeconds(v) > 0, `${label}: config.yaml ${k}: '${v}' is not a positive Go duration`);
    }
    if (k === 'leaveBpfAttachedOnExit') check(typeof v === 'boolean', `${label}: config.yaml ${k} must be true or false`);
  }
  check(flat.leaveBpfAttachedOnExit !== false, `${label}: leaveBpfAttachedOnExit must not be false (upgrades would unmesh the node)`);
  check(durationSeconds(flat.drainTimeout) > 0, `${label}: config.yaml drainTimeout missing or not a duration: ${flat.drainTimeout}`);
}

function configFrom(objects, label) {
  const cms = byKind(objects, 'ConfigMap').filter((c) => c.data && 'config.yaml' in c.data);
  if (!check(cms.length === 1, `${label}: expected one ConfigMap with config.yaml, found ${cms.length}`)) return { cm: null, config: {} };
  let config = {};
  try {
    config = YAML.parse(cms[0].data['config.yaml']);
    check(config && typeof config === 'object', `${label}: config.yaml is not a mapping`);
  } catch (e) {
    check(false, `${label}: config.yaml does not parse: ${e.message}`);
  }
  return { cm: cms[0], config: config ?? {} };
}

function volumeFor(podSpec, mount) {
  return (podSpec.volumes ?? []).find((v) => v.name === mount.name);
}

function checkDaemonSet(ds, objects, config, label, repo) {
  const spec = ds?.spec ?? {};
  const pod = spec.template?.spec ?? {};
  const containers = pod.containers ?? [];
  check(containers.length === 1, `${label}: DaemonSet should have exactly one container, has ${containers.length}`);
  const c = containers[0] ?? {};
  const sc = c.securityContext ?? {};

  check(ds?.metadata?.namespace === NAMESPACE, `${label}: DaemonSet namespace ${ds?.metadata?.namespace}`);
  check(sc.privileged === true, `${label}: container securityContext.privileged must be true`);
  check(pod.hostPID === true, `${label}: hostPID must be true (pods' netns via /proc/<pid>/ns/net)`);
  check(pod.hostNetwork === true, `${label}: hostNetwork must be true`);
  check(pod.priorityClassName === 'system-node-critical', `${label}: priorityClassName is ${pod.priorityClassName}`);
  check(spec.updateStrategy?.type === 'RollingUpdate', `${label}: updateStrategy.type is ${spec.updateStrategy?.type}`);
  check(spec.updateStrategy?.rollingUpdate?.maxUnavailable === 1, `${label}: maxUnavailable must be 1, is ${spec.updateStrategy?.rollingUpdate?.maxUnavailable}`);
  check([undefined, 0].includes(spec.updateStrategy?.rollingUpdate?.maxSurge), `${label}: maxSurge must be 0 (two agents on one node)`);
  check((pod.tolerations ?? []).some((t) => t.operator === 'Exists' && !t.key && !t.effect),
    `${label}: tolerations must include {operator: Exists} (every node, every taint)`);
  check(isDeepStrictEqual(c.command, COMMAND), `${label}: command is ${JSON.stringify(c.command)}, want ${JSON.stringify(COMMAND)}`);
  check(c.image === IMAGE, `${label}: image is ${c.image}, want ${IMAGE}`);

  // NODE_NAME from the downward API.
  const nodeName = (c.env ?? []).find((e) => e.name === 'NODE_NAME');
  check(nodeName?.valueFrom?.fieldRef?.fieldPath === 'spec.nodeName' && nodeName.value === undefined,
    `${label}: env NODE_NAME must come from fieldRef spec.nodeName`);

  // Probes on the readiness port, and kubelet can reach them (metricsAddress not loopback).
  const readinessPort = config.ports?.readiness ?? 15021;
  const metricsPort = config.ports?.metrics ?? 15020;
  check(readinessPort === 15021, `${label}: config ports.readiness ${readinessPort}, want 15021`);
  const rp = c.readinessProbe;
  check(rp?.httpGet?.path === '/healthz/ready' && rp?.httpGet?.port === readinessPort,
    `${label}: readinessProbe must be httpGet /healthz/ready on ${readinessPort}`);
  const lp = c.livenessProbe;
  const livePort = lp?.httpGet?.port ?? lp?.tcpSocket?.port;
  check(livePort === readinessPort, `${label}: livenessProbe must probe port ${readinessPort}, probes ${livePort}`);
  if (lp?.httpGet) {
    check((lp.failureThreshold ?? 3) > (rp?.failureThreshold ?? 3),
      `${label}: an httpGet livenessProbe needs a higher failureThreshold than the readinessProbe`);
  }
  check(!['127.0.0.1', 'localhost', undefined].includes(config.metricsAddress),
    `${label}: with hostNetwork, metricsAddress must not be loopback (kubelet probes the node address)`);
  const ann = ds?.spec?.template?.metadata?.annotations ?? {};
  check(ann['prometheus.io/scrape'] === 'true' && ann['prometheus.io/port'] === String(metricsPort),
    `${label}: prometheus.io/scrape "true" and prometheus.io/port "${metricsPort}" annotations`);

  // Drain before SIGKILL.
  const drain = durationSeconds(config.drainTimeout);
  check(typeof pod.terminationGracePeriodSeconds === 'number' && pod.terminationGracePeriodSeconds > drain,
    `${label}: terminationGracePeriodSeconds (${pod.terminationGracePeriodSeconds}) must exceed drainTimeout (${config.drainTimeout})`);

  // Resources: requests set, memory limited, no CPU limit.
  check(c.resources?.requests?.cpu && c.resources?.requests?.memory, `${label}: cpu and memory requests`);
  check(c.resources?.limits?.memory, `${label}: memory limit`);
  check(c.resources?.limits?.cpu === undefined, `${label}: no CPU limit (throttling stalls every meshed connection)`);

  // Host paths: only the allowed ones, the right propagation, and config paths inside them.
  const mounts = c.volumeMounts ?? [];
  const hostMounts = {};
  for (const v of pod.volumes ?? []) {
    if (v.hostPath) check(ALLOWED_HOST_PATHS.includes(v.hostPath.path), `${label}: hostPath ${v.hostPath.path} is not one the agent needs`);
  }
  for (const m of mounts) {
    const v = volumeFor(pod, m);
    check(v, `${label}: volumeMount ${m.name} has no volume`);
    if (v?.hostPath) hostMounts[v.hostPath.path] = { mount: m, volume: v };
  }
  const needHost = (hostPath, mountPath, propagation) => {
    const hm = hostMounts[hostPath];
    if (!check(hm, `${label}: hostPath ${hostPath} must be mounted`)) return;
    check(hm.mount.mountPath === mountPath, `${label}: hostPath ${hostPath} mounted at ${hm.mount.mountPath}, want ${mountPath}`);
    check((hm.mount.mountPropagation ?? 'None') === propagation,
      `${label}: hostPath ${hostPath} mountPropagation ${hm.mount.mountPropagation ?? 'None'}, want ${propagation}`);
    check(hm.mount.readOnly !== true, `${label}: hostPath ${hostPath} must be writable`);
  };
  needHost('/sys/fs/bpf', '/sys/fs/bpf', 'Bidirectional');
  needHost('/sys/fs/cgroup', '/sys/fs/cgroup', 'None');
  needHost('/run/meshtls', '/run/meshtls', 'None');
  needHost('/var/lib/meshtls', '/var/lib/meshtls', 'None');
  check(hostMounts['/run/meshtls']?.volume.hostPath.type === 'DirectoryOrCreate', `${label}: /run/meshtls hostPath type DirectoryOrCreate`);
  for (const p of ['/var/run/netns', '/run/netns']) {
    if (hostMounts[p]) {
      check(hostMounts[p].mount.mountPropagation === 'HostToContainer', `${label}: ${p} mountPropagation must be HostToContainer`);
    }
  }
  check(!(pod.volumes ?? []).some((v) => v.hostPath?.path === '/proc'), `${label}: no /proc hostPath (hostPID makes /proc the host's)`);
  check(under(config.bpfPinDir ?? '', '/sys/fs/bpf'), `${label}: bpfPinDir ${config.bpfPinDir} is not on the mounted bpffs`);
  check(under(config.cgroupRoot ?? '', '/sys/fs/cgroup'), `${label}: cgroupRoot ${config.cgroupRoot} is not under the mounted /sys/fs/cgroup`);
  check(path.dirname(config.statusSocket ?? '') === '/run/meshtls', `${label}: statusSocket ${config.statusSocket} is not in /run/meshtls`);
  check(config.stateDir === '/var/lib/meshtls', `${label}: stateDir ${config.stateDir} is not the hostPath /var/lib/meshtls`);

  // The ConfigMaps are what the pod mounts.
  const cmMount = (mountPath) => {
    const m = mounts.find((x) => x.mountPath === mountPath);
    const v = m && volumeFor(pod, m);
    return { m, cm: v?.configMap && byKind(objects, 'ConfigMap').find((o) => o.metadata.name === v.configMap.name) };
  };
  const cfg = cmMount(COMMAND[2]);
  check(cfg.cm && cfg.m.subPath === 'config.yaml' && 'config.yaml' in (cfg.cm.data ?? {}) && cfg.m.readOnly === true,
    `${label}: ${COMMAND[2]} must be mounted read-only from the rendered ConfigMap key config.yaml`);
  const pol = cmMount(config.policyDir);
  check(pol.cm && pol.m.readOnly === true, `${label}: policyDir ${config.policyDir} must be mounted read-only from a rendered ConfigMap`);
  if (pol.cm) checkPolicies(pol.cm, label, repo);

  // The service account is the one the binding names.
  check(pod.serviceAccountName === 'meshtls-agent', `${label}: serviceAccountName is ${pod.serviceAccountName}`);
  check(pod.automountServiceAccountToken !== false, `${label}: the agent needs its service account token`);
  return { pod, container: c };
}

function checkPolicies(cm, label, repo) {
  const dir = path.join(repo, 'deploy/base/policies');
  const files = readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).sort();
  check(isDeepStrictEqual(Object.keys(cm.data ?? {}).sort(), files),
    `${label}: ConfigMap ${cm.metadata.name} keys ${JSON.stringify(Object.keys(cm.data ?? {}))} != deploy/base/policies files ${JSON.stringify(files)} (list every file in configMapGenerator)`);
  for (const [key, text] of Object.entries(cm.data ?? {})) {
    const docs = YAML.parseAllDocuments(text).filter((d) => d.contents !== null);
    check(docs.length > 0, `${label}: policy ${key} is empty`);
    for (const d of docs) {
      if (!check(d.errors.length === 0, `${label}: policy ${key}: ${d.errors[0]?.message}`)) continue;
      const o = d.toJS();
      check(['security.istio.io/v1', 'security.istio.io/v1beta1'].includes(o?.apiVersion) &&
        ['PeerAuthentication', 'AuthorizationPolicy'].includes(o?.kind) && o?.metadata?.name,
        `${label}: policy ${key}: not a named security.istio.io/v1(beta1) PeerAuthentication or AuthorizationPolicy`);
    }
  }
}

function checkRbac(objects, label) {
  const sa = one(objects, 'ServiceAccount', label);
  const role = one(objects, 'ClusterRole', label);
  const binding = one(objects, 'ClusterRoleBinding', label);
  check(byKind(objects, 'Role').length === 0 && byKind(objects, 'RoleBinding').length === 0, `${label}: no Role/RoleBinding expected`);
  check(byKind(objects, 'Secret').length === 0, `${label}: no Secret may be rendered (key material stays out of the repository)`);
  check(sa?.metadata?.name === 'meshtls-agent' && sa?.metadata?.namespace === NAMESPACE,
    `${label}: ServiceAccount meshtls-agent in ${NAMESPACE}`);

  check(!role?.aggregationRule, `${label}: ClusterRole must not aggregate other roles`);
  const resources = new Set();
  for (const [i, r] of (role?.rules ?? []).entries()) {
    check(isDeepStrictEqual(r.apiGroups, ['']), `${label}: ClusterRole rule ${i}: apiGroups ${JSON.stringify(r.apiGroups)}, want [""] (core)`);
    check(Array.isArray(r.verbs) && r.verbs.length > 0 && r.verbs.every((v) => ['get', 'list', 'watch'].includes(v)),
      `${label}: ClusterRole rule ${i}: verbs ${JSON.stringify(r.verbs)}, only get/list/watch allowed`);
    check(Array.isArray(r.resources) && r.resources.every((x) => ['pods', 'namespaces'].includes(x)),
      `${label}: ClusterRole rule ${i}: resources ${JSON.stringify(r.resources)}, only pods and namespaces allowed`);
    check(!r.nonResourceURLs && !r.resourceNames, `${label}: ClusterRole rule ${i}: no nonResourceURLs/resourceNames`);
    for (const x of r.resources ?? []) resources.add(x);
  }
  check(isDeepStrictEqual([...resources].sort(), ['namespaces', 'pods']), `${label}: ClusterRole must cover pods and namespaces`);

  check(binding?.roleRef?.kind === 'ClusterRole' && binding?.roleRef?.name === role?.metadata?.name &&
    binding?.roleRef?.apiGroup === 'rbac.authorization.k8s.io', `${label}: ClusterRoleBinding must reference ClusterRole ${role?.metadata?.name}`);
  check(isDeepStrictEqual(binding?.subjects, [{ kind: 'ServiceAccount', name: sa?.metadata?.name, namespace: NAMESPACE }]),
    `${label}: ClusterRoleBinding subjects ${JSON.stringify(binding?.subjects)}, want only ServiceAccount ${NAMESPACE}/meshtls-agent`);
}

function checkNamespaces(objects, label) {
  const ns = one(objects, 'Namespace', label);
  check(ns?.metadata?.name === NAMESPACE, `${label}: Namespace ${ns?.metadata?.name}`);
  for (const o of objects) {
    if (['Namespace', 'ClusterRole', 'ClusterRoleBinding'].includes(o.kind)) {
      check(!o.metadata?.namespace, `${label}: cluster-scoped ${o.kind} ${o.metadata?.name} has a namespace`);
    } else {
      check(o.metadata?.namespace === NAMESPACE, `${label}: ${o.kind} ${o.metadata?.name} is in namespace ${o.metadata?.namespace}, want ${NAMESPACE}`);
    }
  }
}

function checkAll(objects, label, repo) {
  schemaCheck(objects, label);
  checkNamespaces(objects, label);
  checkRbac(objects, label);
  const { cm, config } = configFrom(objects, label);
  checkConfig(config, label, repo);
  const ds = one(objects, 'DaemonSet', label);
  const { pod, container } = checkDaemonSet(ds, objects, config, label, repo);
  return { ds, pod, container, cm, config };
}

function checkOverlay(base, overlay) {
  const label = 'overlay shared-ca';
  const { caDir, ...rest } = overlay.config;
  check(caDir === '/etc/meshtls/ca', `${label}: config.yaml caDir is ${caDir}, want /etc/meshtls/ca`);
  check(base.config.caDir === undefined, 'base: config.yaml must not set caDir (per-node CA under stateDir/ca)');
  check(isDeepStrictEqual(rest, base.config), `${label}: config.yaml must equal the base's plus caDir`);

  const m = (overlay.container.volumeMounts ?? []).find((x) => x.mountPath === caDir);
  const v = m && volumeFor(overlay.pod, m);
  check(v?.secret?.secretName === 'meshtls-ca', `${label}: caDir ${caDir} must be mounted from Secret meshtls-ca`);
  check(m?.readOnly === true, `${label}: the meshtls-ca mount must be readOnly`);
  check(v?.secret?.defaultMode === 0o400, `${label}: Secret meshtls-ca defaultMode is ${v?.secret?.defaultMode}, want 0400 (256): the agent refuses group/other-readable keys`);
  check(!(v?.secret?.items ?? []).some((i) => i.mode !== undefined && (i.mode & 0o077) !== 0), `${label}: no item mode may open the keys to group/others`);

  // Apart from the CA volume, the overlay's DaemonSet is the base's.
  const strip = (ds) => {
    const copy = structuredClone(ds);
    const p = copy.spec.template.spec;
    p.volumes = (p.volumes ?? []).filter((x) => x.name !== v?.name);
    p.containers[0].volumeMounts = (p.containers[0].volumeMounts ?? []).filter((x) => x.name !== v?.name);
    return copy;
  };
  if (v) check(isDeepStrictEqual(strip(overlay.ds), base.ds), `${label}: the DaemonSet differs from the base by more than the CA volume`);
}

// deploy/monitoring: the PrometheusRule is the plain rules file, the PodMonitor scrapes the
// DaemonSet's metrics port under the job the alerts use, and each dashboard reaches Grafana's sidecar.
function checkMonitoring(objects, base, repo) {
  const label = 'monitoring';
  schemaCheck(objects, label, monitoringModels);
  for (const o of objects) {
    check(o.metadata?.namespace === NAMESPACE, `${label}: ${o.kind} ${o.metadata?.name} is in namespace ${o.metadata?.namespace}, want ${NAMESPACE}`);
    check(o.metadata?.labels?.['app.kubernetes.io/part-of'] === 'meshtls', `${label}: ${o.kind} ${o.metadata?.name} lacks app.kubernetes.io/part-of: meshtls`);
  }

  // PrometheusRule == rules/meshtls-alerts.yaml (check_monitoring.py compares the text; this the YAML).
  const rules = YAML.parse(readFileSync(path.join(repo, 'deploy/monitoring/rules/meshtls-alerts.yaml'), 'utf8'));
  const pr = one(objects, 'PrometheusRule', label);
  check(isDeepStrictEqual(pr?.spec?.groups, rules?.groups),
    `${label}: PrometheusRule ${pr?.metadata?.name} spec.groups differ from deploy/monitoring/rules/meshtls-alerts.yaml (run tests/monitoring/check_monitoring.py --update)`);
  const exprs = (rules?.groups ?? []).flatMap((g) => g.rules ?? []).map((r) => r.expr ?? '').join('\n');
  const job = [...exprs.matchAll(/up\{job="([^"]+)"\}/g)].map((m) => m[1]);
  check(job.length > 0 && job.every((j) => j === job[0]), `${label}: the alerts should select up{job="..."} with one job name, found ${JSON.stringify(job)}`);

  // PodMonitor: selects the agent pods, scrapes the container port of ports.metrics, job name = the alerts'.
  const pm = one(objects, 'PodMonitor', label);
  const podLabels = base.ds?.spec?.template?.metadata?.labels ?? {};
  const sel = pm?.spec?.selector?.matchLabels ?? {};
  check(Object.keys(sel).length > 0 && Object.entries(sel).every(([k, v]) => podLabels[k] === v) && !pm?.spec?.selector?.matchExpressions,
    `${label}: PodMonitor selector ${JSON.stringify(sel)} does not select the DaemonSet's pods ${JSON.stringify(podLabels)}`);
  check(isDeepStrictEqual(pm?.spec?.namespaceSelector?.matchNames, [NAMESPACE]), `${label}: PodMonitor namespaceSelector must be [${NAMESPACE}]`);
  check(podLabels[pm?.spec?.jobLabel] === job[0],
    `${label}: PodMonitor jobLabel ${pm?.spec?.jobLabel} gives job ${JSON.stringify(podLabels[pm?.spec?.jobLabel])}, the alerts use ${JSON.stringify(job[0])}`);
  const endpoints = pm?.spec?.podMetricsEndpoints ?? [];
  check(endpoints.length === 1, `${label}: PodMonitor should have one podMetricsEndpoint, has ${endpoints.length}`);
  const port = (base.container?.ports ?? []).find((p) => p.name === endpoints[0]?.port);
  check(port && port.containerPort === (base.config.ports?.metrics ?? 15020) && (endpoints[0]?.path ?? '/metrics') === '/metrics',
    `${label}: PodMonitor port ${JSON.stringify(endpoints[0]?.port)} path ${endpoints[0]?.path} must be the DaemonSet's container port of ports.metrics, path /metrics`);

  // Dashboards: one ConfigMap each, labelled for the sidecar, holding the file as it is.
  const dir = path.join(repo, 'deploy/monitoring/dashboards');
  const files = readdirSync(dir).filter((f) => f.endsWith('.json')).sort();
  const cms = byKind(objects, 'ConfigMap');
  const keys = cms.flatMap((c) => Object.keys(c.data ?? {})).sort();
  check(isDeepStrictEqual(keys, files), `${label}: dashboard ConfigMap keys ${JSON.stringify(keys)} != deploy/monitoring/dashboards files ${JSON.stringify(files)}`);
  for (const c of cms) {
    const id = `${label}: ConfigMap ${c.metadata?.name}`;
    check(c.metadata?.labels?.grafana_dashboard === '1', `${id}: label grafana_dashboard must be "1" (Grafana's sidecar looks for it), is ${JSON.stringify(c.metadata?.labels?.grafana_dashboard)}`);
    check(Object.keys(c.data ?? {}).length === 1, `${id}: one dashboard per ConfigMap`);
    // kubectl apply (client side) stores the object in an annotation limited to 256 KiB.
    check(JSON.stringify(c).length < 200 * 1024, `${id}: ${JSON.stringify(c).length} bytes, too close to kubectl apply's 256 KiB annotation limit`);
    for (const [key, text] of Object.entries(c.data ?? {})) {
      if (files.includes(key)) check(text === readFileSync(path.join(dir, key), 'utf8'), `${id}: ${key} differs from deploy/monitoring/dashboards/${key}`);
      try {
        const d = JSON.parse(text);
        check(d.uid && d.title, `${id}: ${key} has no uid or title`);
      } catch (e) {
        check(false, `${id}: ${key} is not JSON: ${e.message}`);
      }
    }
  }
}

// Same objects from a second kubectl/kustomize (kustomize v2.0.3 adds empty annotations maps).
function normalize(objects) {
  const drop = (x) => {
    if (Array.isArray(x)) return x.map(drop);
    if (x && typeof x === 'object') {
      const out = {};
      for (const [k, v] of Object.entries(x)) {
        if (k === 'annotations' && v && typeof v === 'object' && Object.keys(v).length === 0) continue;
        out[k] = drop(v);
      }
      return out;
    }
    return x;
  };
  const key = (o) => `${o.kind}/${o.metadata?.namespace ?? ''}/${o.metadata?.name}`;
  return objects.map(drop).sort((a, b) => key(a).localeCompare(key(b)));
}

function checkContainerfile(repo) {
  const label = 'deploy/Containerfile';
  const text = readFileSync(path.join(repo, 'deploy/Containerfile'), 'utf8');
  const lines = text.split('\n').filter((l) => !/^\s*#/.test(l));
  const froms = lines.filter((l) => /^FROM\s/i.test(l));
  check(froms.length >= 2, `${label}: multi-stage build expected, ${froms.length} FROM line(s)`);
  for (const f of froms) check(/^FROM\s+debian:bookworm(-slim)?(@sha256:[0-9a-f]{64})?(\s+AS\s+\S+)?\s*$/i.test(f), `${label}: ${f.trim()}: base must be debian:bookworm`);
  check(/make deps/.test(text), `${label}: the build stage installs its packages with make deps`);
  const agentCmake = readFileSync(path.join(repo, 'agent/CMakeLists.txt'), 'utf8');
  const targets = new Set([...agentCmake.matchAll(/add_executable\(\s*([\w-]+)/g)].map((x) => x[1]));
  for (const bin of ['meshtls-agent', 'meshtlsctl']) {
    check(targets.has(bin), `${label}: ${bin} is not an add_executable target in agent/CMakeLists.txt`);
    check(new RegExp(`COPY\\s+--from=\\S+\\s+\\S*build/agent/${bin}\\s+/usr/local/bin/`).test(text),
      `${label}: ${bin} must be copied from the build stage's build/agent/ into /usr/local/bin/`);
  }
  check(COMMAND[0].startsWith('/usr/local/bin/'), `${label}: the DaemonSet runs ${COMMAND[0]}, which the image must hold`);
  // Every directory the top-level CMakeLists.txt builds must reach the build stage.
  const rootCmake = readFileSync(path.join(repo, 'CMakeLists.txt'), 'utf8');
  const subdirs = new Set([...rootCmake.matchAll(/add_subdirectory\(\s*([\w-]+)/g)].map((x) => x[1]));
  const copied = new Set(lines.filter((l) => /^COPY\s/i.test(l) && !/--from/.test(l))
    .flatMap((l) => l.trim().split(/\s+/).slice(1, -1)).map((s) => s.replace(/\/$/, '')));
  for (const d of [...subdirs, 'CMakeLists.txt', 'Makefile', 'tools']) {
    check(copied.has(d), `${label}: ${d} (needed by the build) is not COPYed into the build stage`);
  }
}

// ---- main --------------------------------------------------------------------------------------

const repo = path.resolve(args.repo);
const baseObjects = loadObjects(args.base, 'base');
const overlayObjects = loadObjects(args.overlay, 'overlay shared-ca');
const monitoringObjects = args.monitoring ? loadObjects(args.monitoring, 'monitoring') : [];
const base = checkAll(baseObjects, 'base', repo);
const overlay = checkAll(overlayObjects, 'overlay shared-ca', repo);
if (base.ds && overlay.ds) checkOverlay(base, overlay);
if (args.monitoring) checkMonitoring(monitoringObjects, base, repo);
checkContainerfile(repo);

if (args['compare-base'] || args['compare-overlay']) {
  const pairs = [[baseObjects, args['compare-base'], 'base'], [overlayObjects, args['compare-overlay'], 'overlay shared-ca']];
  if (args['compare-monitoring']) pairs.push([monitoringObjects, args['compare-monitoring'], 'monitoring']);
  for (const [mine, other, label] of pairs) {
    const theirs = loadObjects(other, `${label} (second kubectl)`);
    check(isDeepStrictEqual(normalize(mine), normalize(theirs)), `${label}: the second kubectl renders different objects`);
  }
}

if (failures.length) {
  console.error(`validate.mjs: ${failures.length} of ${checks} checks failed:`);
  for (const f of failures) console.error(`  FAIL ${f}`);
  process.exit(1);
}
console.log(`validate.mjs: ${checks} checks passed (${baseObjects.length} base objects, ${overlayObjects.length} overlay objects, ` +
  `${monitoringObjects.length} monitoring objects)`);
