// The TypeScript SDK against a real sandgate server in the lab: run by
// crates/sandgate/tests/sdk.rs, which builds the lab, starts the server and
// passes the server, a tier-3 key, a tier-1 key and two lab echo servers
// in the environment. Only lab (TEST-NET) addresses are ever probed.

import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { createServer } from 'node:http'
import { AddressInfo, isIPv4 } from 'node:net'
import {
  AccessRequest,
  ConflictError,
  Flow,
  FlowLog,
  HttpRule,
  NetworkEvent,
  NotFoundError,
  PermissionDeniedError,
  RateLimitError,
  Sandbox,
  Sandgate,
  SandgateError,
  ValidationError,
} from '../src/index'

const TEST_NETS = ['192.0.2.', '198.51.100.', '203.0.113.']

function labAddress(name: string): string {
  const addr = process.env[name] ?? ''
  if (!isIPv4(addr) || !TEST_NETS.some((p) => addr.startsWith(p))) {
    throw new Error(`${name}=${addr} is not a lab address`)
  }
  return addr
}

const SERVER = labAddress('SANDGATE_TEST_SERVER')
const OTHER = labAddress('SANDGATE_TEST_OTHER')
const PORT = Number(process.env.SANDGATE_TEST_PORT ?? '7')
// An organization the operator gave a known egress address, and the lab's
// service that answers with the address a connection came from.
const EGRESS4 = labAddress('SANDGATE_TEST_EGRESS4')
const WHOAMI_PORT = Number(process.env.SANDGATE_TEST_WHOAMI_PORT ?? '113')

const sandgate = new Sandgate()
const made: Sandbox[] = []

async function create(params: Parameters<Sandgate['create']>[0]): Promise<Sandbox> {
  const s = await sandgate.create(params)
  made.push(s)
  return s
}

async function echoes(s: Sandbox, dest: string): Promise<boolean> {
  const r = await s.process.exec(`echo sandgate | nc -w 1 ${dest} ${PORT}`, { timeout: 10 })
  return r.stdout === 'sandgate\n'
}

after(async () => {
  for (const s of made) {
    await s.delete().catch((e: unknown) => {
      if (!(e instanceof NotFoundError)) throw e
    })
  }
})

test('open by default, and exec', async () => {
  const s = await create({})
  assert.equal(s.mode, 'open')
  const r = await s.process.exec('echo out; echo err >&2; exit 3')
  assert.deepEqual([r.exitCode, r.stdout, r.stderr, r.result], [3, 'out\n', 'err\n', 'out\nerr\n'])
  assert.equal((await s.process.exec('echo "$A"; pwd', { env: { A: 'b' }, cwd: '/tmp' })).stdout, 'b\n/tmp\n')
  assert.equal((await s.process.exec('sleep 30', { timeout: 1 })).timedOut, true)
  assert.equal(await echoes(s, OTHER), true)
})

test("the reference's allow-list sample reaches its entries only", async () => {
  const list = `${SERVER}/32,192.0.2.77/32,198.51.100.128/25`
  const s = await create({ networkAllowList: list })
  assert.equal(s.mode, 'allowlist')
  assert.equal(s.networkAllowList, list)
  assert.equal(await echoes(s, SERVER), true)
  assert.equal(await echoes(s, OTHER), false)
  const x = await s.network.explain(`${OTHER}:${PORT}`)
  assert.deepEqual([x.allowed, x.reason], [false, 'not_in_allow_list'])
  const t = await s.network.test([`${SERVER}:${PORT}`, `${OTHER}:${PORT}`])
  assert.equal(t.ok, true)
  assert.deepEqual(t.results.map((r) => r.observed), [true, false])
})

test("the reference's block-all sample reaches nothing and still runs commands", async () => {
  const s = await create({ networkBlockAll: true })
  assert.equal(s.mode, 'blocked')
  assert.equal(await echoes(s, SERVER), false)
  assert.equal((await s.process.exec('echo ran')).stdout, 'ran\n')
})

test('block-all wins over an allow list', async () => {
  const s = await create({ networkAllowList: `${SERVER}/32`, networkBlockAll: true })
  assert.equal(s.mode, 'blocked')
  assert.equal(s.effectiveNetwork.inactive[0]?.setting, 'networkAllowList')
  assert.equal(await echoes(s, SERVER), false)
})

test('an update replaces what it sends and keeps the rest', async () => {
  const s = await create({ networkAllowList: `${SERVER}/32`, domainAllowList: 'example.com' })
  assert.equal(await echoes(s, SERVER), true)
  await assert.rejects(s.updateNetworkSettings({}), TypeError)
  await s.updateNetworkSettings({ networkAllowList: `${OTHER}/32` })
  assert.equal(s.networkAllowList, `${OTHER}/32`)
  assert.equal(s.domainAllowList, 'example.com')
  assert.equal(await echoes(s, OTHER), true)
  assert.equal(await echoes(s, SERVER), false)
})

test('a deny list wins over an allow list, and goes with an update', async () => {
  const s = await create({ networkAllowList: `${SERVER}/32,${OTHER}/32`, networkDenyList: `${SERVER}/32` })
  assert.equal(s.networkDenyList, `${SERVER}/32`)
  assert.deepEqual(s.effectiveNetwork.networkDenyList, [`${SERVER}/32`])
  assert.equal(await echoes(s, SERVER), false)
  assert.equal(await echoes(s, OTHER), true)
  await s.updateNetworkSettings({ networkDenyList: '' })
  assert.equal(s.networkDenyList, undefined)
  assert.equal(await echoes(s, SERVER), true)
})

test('httpRules are sent without what is left out, and read back', async () => {
  // No server of sandgate: a local one keeps what it is sent and answers
  // with a sandbox view, so what the SDK sends and reads back is seen alone.
  const rules: HttpRule[] = [
    { host: 'api.example.com', methods: ['GET', 'HEAD'], paths: ['/repos/**'] },
    { host: '*.example.net', methods: undefined, paths: ['/x'] },
    { host: 'static.example.com', extra: true } as HttpRule,
  ]
  const wire = [
    { host: 'api.example.com', methods: ['GET', 'HEAD'], paths: ['/repos/**'] },
    { host: '*.example.net', paths: ['/x'] },
    { host: 'static.example.com' },
  ]
  const withRules = {
    id: 'sb-1',
    name: 'r',
    state: 'running',
    snapshot: 'busybox',
    organizationId: 'org-1',
    httpRules: wire,
    effectiveNetwork: { mode: 'open', httpRules: wire },
    createdAt: '2024-01-01T00:00:00Z',
    updatedAt: '2024-01-01T00:00:00Z',
  }
  const { httpRules: _, ...withoutRules } = { ...withRules, effectiveNetwork: { mode: 'open' } }
  let view: object = withRules
  const sent: Array<[string, string, unknown]> = []
  const server = createServer((req, res) => {
    let text = ''
    req.on('data', (chunk: Buffer) => (text += chunk.toString()))
    req.on('end', () => {
      sent.push([req.method ?? '', req.url ?? '', text ? JSON.parse(text) : undefined])
      res.setHeader('Content-Type', 'application/json')
      res.end(JSON.stringify(view))
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  try {
    const { port } = server.address() as AddressInfo
    const client = new Sandgate({ apiUrl: `http://127.0.0.1:${port}`, apiKey: 'sg_unused' })
    const s = await client.create({ name: 'r', httpRules: rules })
    assert.deepEqual(sent, [['POST', '/api/sandbox', { name: 'r', httpRules: wire }]])
    assert.deepEqual(s.httpRules, wire)
    assert.deepEqual(s.effectiveNetwork.httpRules, wire)
    // `[]` is sent (it removes them); absent in the answer is undefined.
    view = withoutRules
    await s.updateNetworkSettings({ httpRules: [] })
    assert.deepEqual(sent[1], ['POST', '/api/sandbox/sb-1/network-settings', { httpRules: [] }])
    assert.equal(s.httpRules, undefined)
    assert.equal(s.effectiveNetwork.httpRules, undefined)
    await assert.rejects(s.updateNetworkSettings({}), /httpRules/)
  } finally {
    server.closeAllConnections()
    server.close()
  }
})

test('httpRules are kept canonical and removed by an empty list', async () => {
  const rules: HttpRule[] = [
    { host: 'api.example.com', methods: ['GET', 'HEAD'], paths: ['/repos/**'] },
    { host: '*.example.net' },
  ]
  const s = await create({ httpRules: rules })
  assert.deepEqual(s.httpRules, rules)
  assert.deepEqual(s.effectiveNetwork.httpRules, rules)
  assert.deepEqual((await sandgate.get(s.id)).httpRules, rules)
  // An update replaces them all; hosts come back in lower case, methods
  // sorted and without duplicates.
  await s.updateNetworkSettings({ httpRules: [{ host: 'API.example.com', methods: ['HEAD', 'GET', 'GET'] }] })
  assert.deepEqual(s.httpRules, [{ host: 'api.example.com', methods: ['GET', 'HEAD'] }])
  await s.updateNetworkSettings({ httpRules: [] })
  assert.equal(s.httpRules, undefined)
  assert.equal(s.effectiveNetwork.httpRules, undefined)
  assert.equal((await sandgate.get(s.id)).httpRules, undefined)
  await assert.rejects(s.updateNetworkSettings({ httpRules: [{ host: 'api.example.com', methods: ['get'] }] }), (e: unknown) => {
    assert.ok(e instanceof ValidationError)
    assert.deepEqual([e.status, e.code], [400, 'invalid_http_rules'])
    assert.equal((e.details.problems as Array<{ entry: string }>)[0]?.entry, 'api.example.com')
    return true
  })
  const small = new Sandgate({ apiKey: process.env.SANDGATE_TEST_TIER1_KEY })
  await assert.rejects(small.create({ httpRules: rules }), (e: unknown) => e instanceof PermissionDeniedError && e.code === 'network_restricted_by_tier')
})

test('a grant opens an address until revoked', async () => {
  const s = await create({ networkAllowList: `${SERVER}/32` })
  assert.equal(await echoes(s, OTHER), false)
  const g = await s.network.grant(OTHER, 600, 'a dependency')
  assert.equal(g.target, `${OTHER}/32`)
  assert.equal(await echoes(s, OTHER), true)
  assert.deepEqual((await s.network.grants()).map((x) => x.id), [g.id])
  await s.network.revoke(g)
  assert.equal(await echoes(s, OTHER), false)
})

test('network events list and follow what was denied', async () => {
  const s = await create({ networkAllowList: `${SERVER}/32` })
  assert.equal(await echoes(s, OTHER), false)
  let denied: NetworkEvent | undefined
  for await (const e of s.network.followEvents()) {
    if (e.destination === OTHER) {
      denied = e
      break
    }
  }
  assert.ok(denied)
  assert.equal(denied.kind, 'connection')
  assert.equal(denied.reason, 'not_in_allow_list')
  assert.equal(denied.port, PORT)
  assert.ok((await s.network.events()).some((e) => e.destination === OTHER && e.timeMs === denied?.timeMs))
})

test('the flow log records allowed and denied connections', async () => {
  const s = await create({ networkAllowList: `${SERVER}/32` })
  assert.equal(await echoes(s, SERVER), true)
  assert.equal(await echoes(s, OTHER), false)
  const found = (log: FlowLog): [Flow | undefined, Flow | undefined] => [
    log.flows.find((f) => f.verdict === 'allowed' && f.protocol === 'tcp' && f.destination === SERVER && f.port === PORT),
    log.flows.find((f) => f.verdict === 'denied' && f.destination === OTHER && f.port === PORT),
  ]
  // The records reach the log as the kernel reports them: polled.
  const deadline = Date.now() + 10_000
  let log = await s.network.flows()
  while (found(log).includes(undefined) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 500))
    log = await s.network.flows()
  }
  const [allowed, denied] = found(log)
  assert.ok(allowed && denied, JSON.stringify(log))
  assert.ok(Number.isInteger(log.dropped))
  assert.deepEqual([allowed.via, allowed.reason], ['kernel', `allow_list:${SERVER}/32`])
  assert.equal(typeof allowed.sourcePort, 'number')
  assert.deepEqual([denied.protocol, denied.reason], ['tcp', 'not_in_allow_list'])
  const ids = log.flows.map((f) => f.id)
  assert.deepEqual(ids, [...ids].sort((a, b) => a - b))
  // The last `limit` only; none that ended before `since` (a denied flow
  // ends as it starts).
  const last = await s.network.flows({ limit: 1 })
  assert.equal(last.flows.length, 1)
  assert.ok(last.flows[0]!.id >= Math.max(...ids))
  const later = await s.network.flows({ since: denied.startMs + 1 })
  assert.ok(!later.flows.some((f) => f.id === denied.id))
  // Followed: the records first (then each new one).
  let followed: Flow | undefined
  for await (const f of s.network.followFlows()) {
    if (f.id === denied.id) {
      followed = f
      break
    }
  }
  assert.deepEqual(followed, denied)
})

test('flow records and secrets are read and sent as the API writes them', async () => {
  // A local server stands for sandgate: what the SDK sends is kept, the
  // answers are the API's shapes (a flow with its empty fields null, or
  // absent), and the followed log has a `lagged` event to skip.
  const open = {
    id: 3, startMs: 10, endMs: null, protocol: 'tcp', source: '10.77.0.3', sourcePort: 40000,
    destination: '192.0.2.10', port: 443, name: 'a.example', nameSource: 'sni', bytesOut: 1, bytesIn: 2,
    verdict: 'allowed', reason: 'domain_allow_list:a.example', rule: null, via: 'gateway',
  }
  const refused = {
    id: 4, startMs: 11, endMs: 11, protocol: 'icmp', source: '10.77.0.3', destination: '198.51.100.7',
    bytesOut: 0, bytesIn: 0, verdict: 'denied', reason: 'not_in_allow_list', via: 'kernel',
  }
  const sandboxView = {
    id: 'sb-1', name: 'f', state: 'running', snapshot: 'busybox', organizationId: 'org-1',
    env: { GH_TOKEN: 'sg_secret_00' }, secrets: ['GH_TOKEN'], effectiveNetwork: { mode: 'open' },
    createdAt: '2024-01-01T00:00:00Z', updatedAt: '2024-01-01T00:00:00Z',
  }
  const sent: Array<[string, string, unknown]> = []
  const server = createServer((req, res) => {
    let text = ''
    req.on('data', (chunk: Buffer) => (text += chunk.toString()))
    req.on('end', () => {
      const url = req.url ?? ''
      sent.push([req.method ?? '', url, text ? JSON.parse(text) : undefined])
      if (url.includes('follow=true')) {
        res.setHeader('Content-Type', 'text/event-stream')
        res.end(`event: flow\ndata: ${JSON.stringify(open)}\n\nevent: lagged\ndata: {"lost": 2}\n\nevent: flow\ndata: ${JSON.stringify(refused)}\n\n`)
      } else if (url.includes('/network/flows')) {
        res.setHeader('Content-Type', 'application/json')
        res.end(JSON.stringify({ flows: [open, refused], dropped: 5 }))
      } else if (req.method === 'DELETE') {
        res.statusCode = 204
        res.end()
      } else {
        res.setHeader('Content-Type', 'application/json')
        res.end(JSON.stringify(sandboxView))
      }
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  try {
    const { port } = server.address() as AddressInfo
    const client = new Sandgate({ apiUrl: `http://127.0.0.1:${port}`, apiKey: 'sg_unused' })
    const s = await client.create({ secrets: ['GH_TOKEN'] })
    assert.deepEqual(sent[0], ['POST', '/api/sandbox', { secrets: ['GH_TOKEN'] }])
    assert.deepEqual([s.secrets, s.env], [['GH_TOKEN'], { GH_TOKEN: 'sg_secret_00' }])
    const log = await s.network.flows({ since: 1000, limit: 2 })
    assert.deepEqual(sent[1], ['GET', '/api/sandbox/sb-1/network/flows?since=1000&limit=2', undefined])
    const refusedAsRead = { ...refused, sourcePort: null, port: null, name: null, nameSource: null, rule: null }
    assert.deepEqual(log, { flows: [open, refusedAsRead], dropped: 5 })
    await s.network.flows()
    assert.equal(sent[2]?.[1], '/api/sandbox/sb-1/network/flows')
    const followed: Flow[] = []
    for await (const f of s.network.followFlows({ since: 5 })) followed.push(f)
    assert.equal(sent[3]?.[1], '/api/sandbox/sb-1/network/flows?since=5&follow=true')
    assert.deepEqual(followed, [open, refusedAsRead])
    await client.secrets.delete('GH_TOKEN')
    assert.deepEqual(sent[4], ['DELETE', '/api/secrets/GH_TOKEN', undefined])
  } finally {
    server.closeAllConnections()
    server.close()
  }
})

test('a secret is held as a placeholder, and removed when no sandbox holds it', async () => {
  const value = 'tok_of_the_typescript_sdk'
  const secret = await sandgate.secrets.create('SDK_TOKEN', value, ['api.example.com'])
  assert.deepEqual([secret.name, secret.hosts], ['SDK_TOKEN', ['api.example.com']])
  assert.equal(typeof secret.createdAt, 'string')
  // Listed without its value: names, hosts and dates only.
  const listed = await sandgate.secrets.list()
  assert.deepEqual(listed.find((x) => x.name === 'SDK_TOKEN'), secret)
  assert.deepEqual(Object.keys(secret).sort(), ['createdAt', 'hosts', 'name'])
  assert.ok(!JSON.stringify(listed).includes(value))
  await assert.rejects(sandgate.secrets.create('SDK_TOKEN', 'another', ['api.example.com']), (e: unknown) => e instanceof ConflictError && e.code === 'secret_exists')
  await assert.rejects(sandgate.secrets.create('not-a-variable', value, ['api.example.com']), (e: unknown) => e instanceof ValidationError && e.code === 'invalid_secret_name')
  // A sandbox holds a placeholder of its own, never the value.
  const s = await create({ secrets: ['SDK_TOKEN'] })
  assert.deepEqual(s.secrets, ['SDK_TOKEN'])
  const placeholder = s.env.SDK_TOKEN ?? ''
  assert.match(placeholder, /^sg_secret_/)
  assert.ok(!placeholder.includes(value))
  assert.equal((await s.process.exec('echo "$SDK_TOKEN"')).stdout, `${placeholder}\n`)
  assert.equal((await sandgate.get(s.id)).env.SDK_TOKEN, placeholder)
  await assert.rejects(sandgate.create({ secrets: ['NO_SUCH_SECRET'] }), (e: unknown) => e instanceof ValidationError && e.code === 'unknown_secret')
  await assert.rejects(sandgate.secrets.delete(secret), (e: unknown) => e instanceof ConflictError && e.code === 'secret_in_use')
  await s.delete()
  await sandgate.secrets.delete('SDK_TOKEN')
  assert.ok(!(await sandgate.secrets.list()).some((x) => x.name === 'SDK_TOKEN'))
  await assert.rejects(sandgate.secrets.delete('SDK_TOKEN'), NotFoundError)
})

test('a refused connection asks, and its owner approves or denies', async () => {
  const s = await create({ networkAllowList: `${SERVER}/32`, networkApprovals: true })
  assert.equal(s.networkApprovals, true)
  assert.deepEqual(s.effectiveNetwork.approvals, { holdSeconds: 0 })
  assert.equal(await echoes(s, OTHER), false)
  let asked: AccessRequest | undefined
  for await (const r of s.network.followRequests({ state: 'pending' })) {
    if (r.target === OTHER) {
      asked = r
      break
    }
  }
  assert.ok(asked)
  assert.equal(asked.kind, 'address')
  assert.equal(asked.port, PORT)
  // For good: the address joins the allow list.
  const approved = await s.network.approve(asked)
  assert.equal(approved.state, 'approved')
  assert.equal(approved.grantId, undefined)
  assert.equal(await echoes(s, OTHER), true)
  await s.refresh()
  assert.equal(s.networkAllowList, `${SERVER}/32,${OTHER}/32`)
  // A refused name, denied.
  await s.process.exec('nslookup denied.example.org', { timeout: 10 })
  // Its request opens as the refusal reaches the server: followed.
  let name: AccessRequest | undefined
  for await (const r of s.network.followRequests()) {
    if (r.kind === 'name') {
      name = r
      break
    }
  }
  assert.ok(name)
  assert.equal(name.target, 'denied.example.org')
  assert.equal((await s.network.deny(name)).state, 'denied')
  await assert.rejects(s.network.approve(name.id, 60), (e: unknown) => e instanceof SandgateError && e.code === 'request_decided')
  assert.deepEqual((await s.network.requests({ state: 'denied' })).map((r) => r.id), [name.id])
})

test('an egress budget is asked at create and changed by an update', async () => {
  const s = await create({ egressMbps: 25 })
  assert.deepEqual([s.egressMbps, s.egressBudgetMbps], [25, 25])
  assert.equal(await echoes(s, OTHER), true)
  await s.updateNetworkSettings({ egressMbps: 80 })
  assert.equal(s.egressBudgetMbps, 80)
  await s.updateNetworkSettings({ egressMbps: null })
  assert.deepEqual([s.egressMbps, s.egressBudgetMbps], [undefined, undefined])
  await assert.rejects(s.updateNetworkSettings({ egressMbps: 0 }), (e: unknown) => e instanceof ValidationError && e.code === 'invalid_budget')
})

test('a busy server is asked again after the wait it says', async () => {
  // Every exec permit of the organization held by a sleep: one more is 429
  // with Retry-After; a client that retries gets through once a sleep ends.
  const n = Number(process.env.SANDGATE_TEST_EXECS_PER_ORG)
  const s = await create({})
  const busy = Array.from({ length: n }, () => s.process.exec('sleep 3', { timeout: 30 }))
  await new Promise((resolve) => setTimeout(resolve, 1000))
  const impatient = await new Sandgate({ maxRetries: 0 }).get(s.id)
  await assert.rejects(impatient.process.exec('true'), (e: unknown) => e instanceof RateLimitError && e.retryAfter === 1)
  const patient = await new Sandgate({ maxRetries: 20 }).get(s.id)
  assert.equal((await patient.process.exec('echo through')).stdout, 'through\n')
  for (const r of await Promise.all(busy)) assert.equal(r.exitCode, 0)
})

test('a transfer quota is asked at create and changed by an update', async () => {
  const s = await create({ transferQuotaMiB: 64 })
  assert.deepEqual([s.transferQuotaMiB, s.transferQuota], [64, { mib: 64, periodSeconds: 86400 }])
  assert.equal(await echoes(s, OTHER), true)
  await s.updateNetworkSettings({ transferQuotaMiB: 128 })
  assert.deepEqual(s.transferQuota, { mib: 128, periodSeconds: 86400 })
  const usage = await s.network.transferUsage()
  assert.equal(usage?.quotaBytes, 128 * 1048576)
  assert.equal(usage?.spent, false)
  assert.equal(usage!.periodEndMs - usage!.periodStartMs, 86400 * 1000)
  await s.updateNetworkSettings({ transferQuotaMiB: null })
  assert.deepEqual([s.transferQuotaMiB, s.transferQuota], [undefined, undefined])
  assert.equal(await s.network.transferUsage(), undefined)
  await assert.rejects(s.updateNetworkSettings({ transferQuotaMiB: 0 }), (e: unknown) => e instanceof ValidationError && e.code === 'invalid_budget')
})

test('connection budgets are asked at create and changed by an update', async () => {
  const s = await create({ maxConnections: 3, newConnectionsPerSecond: 7 })
  assert.deepEqual([s.maxConnections, s.newConnectionsPerSecond], [3, 7])
  assert.deepEqual(s.connectionBudget, { connections: 3, newConnectionsPerSecond: 7 })
  assert.equal(await echoes(s, OTHER), true)
  await s.updateNetworkSettings({ maxConnections: null })
  assert.equal(s.maxConnections, undefined)
  assert.ok(s.connectionBudget.connections > 3)
  await assert.rejects(s.updateNetworkSettings({ maxConnections: 0 }), (e: unknown) => e instanceof ValidationError && e.code === 'invalid_budget')
})

test('a known egress address is where connections leave from', async () => {
  const seenFrom = async (s: Sandbox): Promise<string> =>
    (await s.process.exec(`nc -w 2 ${SERVER} ${WHOAMI_PORT} </dev/null`, { timeout: 10 })).stdout.trim()
  const known = new Sandgate({ apiKey: process.env.SANDGATE_TEST_EGRESS_KEY })
  const s = await known.create({})
  made.push(s)
  assert.equal(s.egressAddress?.ipv4, EGRESS4)
  assert.equal(await seenFrom(s), EGRESS4)
  const other = await create({})
  assert.equal(other.egressAddress, undefined)
  assert.notEqual(await seenFrom(other), EGRESS4)
})

test("a sandbox runs under its tier's runtime class and no other", async () => {
  const s = await create({})
  assert.equal(s.runtimeClass, 'runc')
  // The test server's tiers allow runc alone.
  await assert.rejects(sandgate.create({ runtimeClass: 'runsc' }), (e: unknown) => {
    assert.ok(e instanceof PermissionDeniedError)
    assert.deepEqual([e.status, e.code], [403, 'runtime_class_not_allowed'])
    return true
  })
})

test('the operator makes a snapshot from an image that sandboxes start from', async () => {
  const image = process.env.SANDGATE_TEST_IMAGE ?? ''
  assert.ok((await sandgate.snapshots.list()).some((x) => x.name === 'busybox'))
  // An organization's key lists, never makes.
  await assert.rejects(sandgate.snapshots.create('ts-app', image), PermissionDeniedError)
  const operator = new Sandgate({ apiKey: process.env.SANDGATE_TEST_OPERATOR_TOKEN })
  const made = await operator.snapshots.create('ts-app', image)
  assert.deepEqual([made.name, made.image, made.runners], ['ts-app', image, ['main']])
  assert.match(made.digest ?? '', /^sha256:/)
  await assert.rejects(operator.snapshots.create('ts-other', 'python:3.12-slim'), (e: unknown) => {
    assert.ok(e instanceof ValidationError)
    assert.equal(e.code, 'registry_not_allowed')
    return true
  })
  const s = await sandgate.create({ snapshot: 'ts-app' })
  try {
    assert.equal((await s.process.exec('cat /etc/app.conf')).stdout, 'from the image\n')
    await assert.rejects(operator.snapshots.delete(made), (e: unknown) => {
      assert.ok(e instanceof ConflictError)
      assert.equal(e.code, 'snapshot_in_use')
      return true
    })
  } finally {
    await s.delete()
  }
  await operator.snapshots.delete('ts-app')
  assert.ok(!(await operator.snapshots.list()).some((x) => x.name === 'ts-app'))
  // From an archive instead.
  const up = await operator.snapshots.upload('ts-up', process.env.SANDGATE_TEST_ARCHIVE ?? '')
  assert.deepEqual([up.name, up.runners], ['ts-up', ['main']])
  const fromUp = await sandgate.create({ snapshot: 'ts-up' })
  try {
    assert.equal((await fromUp.process.exec('cat /etc/app.conf')).stdout, 'from the archive\n')
  } finally {
    await fromUp.delete()
  }
  await operator.snapshots.delete(up)
})

test('bad input and tiers reject with typed errors carrying code and message', async () => {
  await assert.rejects(sandgate.create({ networkAllowList: '192.0.2.300/32' }), (e: unknown) => {
    assert.ok(e instanceof ValidationError)
    assert.equal(e.code, 'invalid_network_allow_list')
    assert.equal(e.status, 400)
    assert.match(e.message, /192\.0\.2\.300/)
    return true
  })
  const small = new Sandgate({ apiKey: process.env.SANDGATE_TEST_TIER1_KEY })
  await assert.rejects(small.create({ networkAllowList: `${SERVER}/32` }), (e: unknown) => {
    assert.ok(e instanceof PermissionDeniedError)
    assert.equal(e.code, 'network_restricted_by_tier')
    return true
  })
  const restricted = await small.create({})
  made.push(restricted)
  assert.equal(restricted.mode, 'restricted')
  await assert.rejects(new Sandgate({ apiKey: 'sg_not-a-key' }).list(), (e: unknown) => {
    assert.ok(e instanceof SandgateError)
    assert.equal(e.status, 401)
    return true
  })
})

test('get, list and delete', async () => {
  const s = await create({ name: 'ts-named' })
  assert.equal((await sandgate.get('ts-named')).id, s.id)
  assert.ok((await sandgate.list()).some((x) => x.id === s.id))
  await sandgate.delete(s)
  await assert.rejects(sandgate.get(s.id), NotFoundError)
})
