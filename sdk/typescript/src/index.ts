/**
 * sandgate for TypeScript: sandboxes whose network egress is enforced in
 * the kernel. No runtime dependencies beyond Node 20 (its global `fetch`).
 *
 * ```ts
 * const sandgate = new Sandgate() // SANDGATE_API_URL, SANDGATE_API_KEY
 * const sandbox = await sandgate.create({ networkAllowList: '192.0.2.0/24' })
 * const r = await sandbox.process.exec('echo hello')
 * ```
 */

import { openAsBlob } from 'node:fs'

/** The default server. */
export const DEFAULT_API_URL = 'http://127.0.0.1:8080'

/** An error from sandgate: HTTP status (0: no answer), stable code, message. */
export class SandgateError extends Error {
  readonly code: string
  readonly status: number
  readonly details: Record<string, unknown>
  /** Seconds the server asked to wait before sending the same request
   * again (`Retry-After`, on a 429 or a 503 that did nothing). */
  retryAfter?: number

  constructor(message: string, code = 'error', status = 0, details: Record<string, unknown> = {}) {
    super(message)
    this.name = new.target.name
    this.code = code
    this.status = status
    this.details = details
  }
}

/** 400 or 422: the request is malformed. */
export class ValidationError extends SandgateError {}
/** 401: no key, or an unknown or revoked one. */
export class AuthenticationError extends SandgateError {}
/** 403: not allowed (an admin route, or a list the tier refuses). */
export class PermissionDeniedError extends SandgateError {}
/** 404: no such sandbox (or not this organization's). */
export class NotFoundError extends SandgateError {}
/** 409: a name taken, a quota reached, a sandbox not running. */
export class ConflictError extends SandgateError {}
/** 413: the body is over the server's limit. */
export class PayloadTooLargeError extends SandgateError {}
/** 429: too many commands running at once. */
export class RateLimitError extends SandgateError {}
/** 5xx: the server failed; the message carries an id for its log. */
export class ServerError extends SandgateError {}
/** The server did not answer (refused, unreachable, timed out). */
export class APIConnectionError extends SandgateError {}

function errorFor(status: number, code: string, message: string, details: Record<string, unknown>): SandgateError {
  const cls =
    status === 400 || status === 422 ? ValidationError
    : status === 401 ? AuthenticationError
    : status === 403 ? PermissionDeniedError
    : status === 404 ? NotFoundError
    : status === 409 ? ConflictError
    : status === 413 ? PayloadTooLargeError
    : status === 429 ? RateLimitError
    : status >= 500 ? ServerError
    : SandgateError
  return new cls(message, code, status, details)
}

/** An HTTP rule: the methods and paths a sandbox may ask of a host,
 * enforced by the gateway on each request (tier 3/4). Rules add up: a
 * request to a name some rule covers passes only if one of that name's
 * rules allows its method and its path; a refused one is answered 403
 * with `x-sandgate-deny: http_method_not_allowed`,
 * `http_path_not_allowed` or `http_path_ambiguous`. The server keeps
 * them canonical (hosts in lower case, methods sorted, duplicates
 * merged) and shows them so. */
export interface HttpRule {
  /** A name or a `*.` wildcard, as in `domainAllowList`. */
  host: string
  /** HTTP methods, upper case as on the wire (absent: any). */
  methods?: string[]
  /** Globs over the request's decoded path, the query left out: `*` is
   * any run of characters within a segment, `**` a whole segment
   * standing for any number of them (`/repos/**` matches `/repos` and
   * all below it). Absent: any path. */
  paths?: string[]
}

/** Rules with their own fields only (the API refuses a rule with any
 * other), those left out absent: as sent, and as read back. */
function httpRulesOnly(rules: HttpRule[]): HttpRule[] {
  return rules.map(({ host, methods, paths }) => ({
    host,
    ...(methods === undefined ? {} : { methods }),
    ...(paths === undefined ? {} : { paths }),
  }))
}

/** What a new sandbox may be given. */
export interface CreateSandboxParams {
  /** Its name, unique in the organization (default: its id). */
  name?: string
  /** The snapshot (default `busybox`). */
  snapshot?: string
  /** Environment variables of every command. */
  env?: Record<string, string>
  /** Comma-separated CIDRs the sandbox may reach. */
  networkAllowList?: string
  /** No egress at all; wins over both lists. */
  networkBlockAll?: boolean
  /** Comma-separated names and `*.` wildcards. */
  domainAllowList?: string
  /** Comma-separated CIDRs never reached: wins over every list and the
   * essential services (tier 3/4). */
  networkDenyList?: string
  /** Comma-separated names and `*.` wildcards never reached (tier 3/4). */
  domainDenyList?: string
  /** `false` turns the essential services off. */
  essentialServices?: boolean
  /** What the sandbox may send, Mbit/s, within its tier's maximum
   * (default: the tier's default). */
  egressMbps?: number
  /** Connections at once, within the tier's fair share (default: the
   * tier's). */
  maxConnections?: number
  /** New connections a second, within the tier's fair share (default:
   * the tier's). */
  newConnectionsPerSecond?: number
  /** What the sandbox is refused opens access requests for its owner to
   * approve or deny (tier 3/4). */
  networkApprovals?: boolean
  /** How long a refused DNS query waits for an approval, 0 to 60 s. */
  approvalHoldSeconds?: number
  /** What the sandbox may send and receive in all each period, MiB,
   * within its tier's maximum (default: the tier's default; the period
   * is the operator's). */
  transferQuotaMiB?: number
  /** The methods and paths the sandbox may ask of hosts (tier 3/4),
   * enforced by the gateway. */
  httpRules?: HttpRule[]
  /** Names of the organization's secrets the sandbox holds: each is an
   * environment variable of its commands whose value is a placeholder of
   * its own; the gateway puts the value in the placeholder's place in
   * requests to the secret's hosts (the value never enters the sandbox).
   * Needs the `secrets:write` scope. */
  secrets?: string[]
  /** The OCI runtime it runs under, among those its tier allows: `runc`,
   * or `runsc` (gVisor: a kernel of its own between the sandbox and the
   * host's). Default: the tier's first. */
  runtimeClass?: RuntimeClass
}

/** An OCI runtime a sandbox runs under. */
export type RuntimeClass = 'runc' | 'runsc'

/** New network settings: what is given replaces, the rest is kept. */
export interface NetworkSettings {
  networkBlockAll?: boolean
  networkAllowList?: string
  domainAllowList?: string
  networkDenyList?: string
  domainDenyList?: string
  essentialServices?: boolean
  /** Mbit/s; `null` goes back to the tier's default. */
  egressMbps?: number | null
  /** `null` goes back to the tier's fair share. */
  maxConnections?: number | null
  /** `null` goes back to the tier's fair share. */
  newConnectionsPerSecond?: number | null
  networkApprovals?: boolean
  approvalHoldSeconds?: number
  /** MiB a period; `null` goes back to the tier's default (what the
   * period counted is kept). */
  transferQuotaMiB?: number | null
  /** Replaces every rule; `[]` removes them. */
  httpRules?: HttpRule[]
}

/** Options of a command. */
export interface ExecOptions {
  cwd?: string
  env?: Record<string, string>
  /** Seconds before the command and its children are killed. */
  timeout?: number
}

/** What a command did. */
export interface ExecuteResponse {
  exitCode: number
  stdout: string
  stderr: string
  /** stdout then stderr. */
  result: string
  timedOut: boolean
  truncated: boolean
}

/** A sandbox's transfer quota this period, as the kernel counts it at
 * the call: bytes both ways (IP packets, headers included). */
export interface TransferUsage {
  quotaBytes: number
  usedBytes: number
  /** Nothing passes until the period ends. */
  spent: boolean
  periodStart: string
  periodEnd: string
  periodStartMs: number
  periodEndMs: number
}

/** Time-bounded access of a sandbox to a CIDR, an address or a name. */
export interface Grant {
  id: string
  target: string
  reason?: string
  createdAt: string
  expiresAt: string
  expiresAtMs: number
  secondsLeft: number
  /** In force (allowlist mode); kept but without effect otherwise. */
  inForce: boolean
}

/** A network event of a sandbox: a denied connection (`connection`), a
 * refused or stripped DNS answer (`dns`), a grant added or ended
 * (`grant`), a budget reached (`budget`), or events its rate held back
 * (`dropped`, with `count`). */
export interface NetworkEvent {
  timeMs: number
  sandbox: string
  kind: 'connection' | 'dns' | 'grant' | 'budget' | 'dropped'
  protocol: string
  reason: string
  destination?: string
  port?: number
  domain?: string
  count?: number
}

/** Whether a flow was let through. */
export type FlowVerdict = 'allowed' | 'denied'
/** Who carried (or refused) a flow: the kernel, or the gateway (a
 * connection steered to it for its name). */
export type FlowVia = 'kernel' | 'gateway'
/** Where a flow's name came from: a DNS answer sandgate gave the sandbox,
 * the TLS ClientHello's server name, or the HTTP request's `Host`. */
export type FlowNameSource = 'dns' | 'sni' | 'host'

/** One connection of a sandbox in its flow log, allowed or denied. */
export interface Flow {
  /** Increasing in the order the flows were seen; an open flow is sent
   * again, with the same id, when it ends. */
  id: number
  /** Milliseconds since the Unix epoch: when it opened (or was refused). */
  startMs: number
  /** When it ended; null while it is open (a denied flow ends as it
   * starts). */
  endMs: number | null
  /** `tcp`, `udp`, `icmp`, `icmpv6`, or the IP protocol's number. */
  protocol: string
  /** The sandbox's address, and its port (TCP and UDP). */
  source: string
  sourcePort: number | null
  /** The destination address, and its port (TCP and UDP). */
  destination: string
  port: number | null
  /** The name it was for, where known, and where that came from. */
  name: string | null
  nameSource: FlowNameSource | null
  /** Bytes both ways (final once it ended). */
  bytesOut: number
  bytesIn: number
  verdict: FlowVerdict
  /** The reason code, as `explain` writes it (`allow_list:192.0.2.0/24`,
   * `not_in_allow_list`, ...). */
  reason: string
  /** The rule, in words, where known. */
  rule: string | null
  via: FlowVia
}

/** A sandbox's flow log as it stands: its records (each flow once, as it
 * is now, in increasing `id`) and how many records it could not keep. */
export interface FlowLog {
  flows: Flow[]
  dropped: number
}

/** A flow as the API writes it, its fields that may be empty null (never
 * undefined). */
function flowOf(f: Flow): Flow {
  return {
    ...f,
    endMs: f.endMs ?? null,
    sourcePort: f.sourcePort ?? null,
    port: f.port ?? null,
    name: f.name ?? null,
    nameSource: f.nameSource ?? null,
    rule: f.rule ?? null,
  }
}

/** A secret of the organization, as shown: never its value. */
export interface Secret {
  name: string
  /** The names and `*.` wildcards it is sent to, canonical. */
  hosts: string[]
  createdAt: string
}

/** A snapshot sandboxes start from: its name and the runners that hold
 * it; one just made from an image also says the image (its reference in
 * full), the digest of the manifest it was made from and its layers. */
export interface Snapshot {
  name: string
  runners: string[]
  image?: string
  digest?: string
  layers?: number
}

/** A target a sandbox with approvals was refused, for its owner to
 * approve or deny. */
export interface AccessRequest {
  id: string
  sandbox: string
  /** The name (lowercase) or the address. */
  target: string
  /** `name`: refused by the DNS service; `address`: a connection denied
   * by the kernel. */
  kind: 'name' | 'address'
  /** The last denied connection's protocol and port (an address only). */
  protocol?: string
  port?: number
  attempts: number
  state: 'pending' | 'approved' | 'denied'
  firstSeen: string
  firstSeenMs: number
  lastSeenMs: number
  decidedAtMs?: number
  /** The grant that approved it for a time (absent for an approval for
   * good, which added the target to the allow list). */
  grantId?: string
}

/** Whether a sandbox may reach a destination, and by which rule. */
export interface Explanation {
  destination: string
  allowed: boolean
  reason: string
  rule: string
  mode: string
}

/** One probed destination. */
export interface NetworkTestRow {
  target: string
  expected: boolean
  observed: boolean
  ok: boolean
  reason: string
  detail: string
  addresses: string[]
}

/** A network test of a sandbox. */
export interface NetworkTestResult {
  sandbox: string
  mode: string
  ok: boolean
  results: NetworkTestRow[]
}

/** The effective network of a sandbox (see the API's `effectiveNetwork`). */
export interface EffectiveNetwork {
  tier: number
  mode: 'open' | 'allowlist' | 'restricted' | 'blocked'
  networkAllowList: string[]
  domainAllowList: string[]
  networkDenyList: string[]
  domainDenyList: string[]
  essentialServices: boolean
  /** The HTTP rules in force (absent: none; none when `blocked`). */
  httpRules?: HttpRule[]
  /** The grants in force. */
  grants: Array<{ id: string; target: string; expiresAtMs: number }>
  /** The known egress address its connections leave from, when the
   * operator gave its organization one (absent: the host's own). */
  egressAddress?: { ipv4?: string; ipv6?: string }
  /** Its budgets in force (absent: no limit of its own). */
  budgets?: { egressMbps?: number; transferQuotaMiB?: number; transferPeriodSeconds?: number }
  /** Approvals in force (allowlist mode with `networkApprovals`). */
  approvals?: { holdSeconds: number; declined?: string[] }
  /** What it may take of what every sandbox of its host shares: its
   * tier's fair shares, the connection budgets narrowed as it asked. */
  fairShares: {
    connections: number
    newConnectionsPerSecond: number
    dnsQueriesPerSecond: number
    dnsInFlight: number
    dnsTcpConnections: number
    admittedAddresses: number
    eventsPerSecond: number
  }
  inactive: Array<{ setting: string; value: string; reason: string; message: string }>
}

interface SandboxData {
  id: string
  name: string
  state: string
  snapshot: string
  runtimeClass?: RuntimeClass
  organizationId: string
  env?: Record<string, string>
  networkBlockAll?: boolean
  networkAllowList?: string
  domainAllowList?: string
  networkDenyList?: string
  domainDenyList?: string
  essentialServices?: boolean
  egressMbps?: number
  transferQuotaMiB?: number
  maxConnections?: number
  newConnectionsPerSecond?: number
  networkApprovals?: boolean
  approvalHoldSeconds?: number
  httpRules?: HttpRule[]
  secrets?: string[]
  effectiveNetwork: EffectiveNetwork
  createdAt: string
  updatedAt: string
}

/** The error of an answer that is not a success (its body `text`): the
 * API's code, message and details, and its `Retry-After`. */
function failure(response: Response, text: string): SandgateError {
  const status = response.status
  let err: Record<string, unknown> = { code: 'http_error', message: text }
  try {
    const parsed = (JSON.parse(text) as { error?: unknown }).error
    if (parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed)) {
      err = parsed as Record<string, unknown>
    }
  } catch {
    // Not the API's error shape: keep the text.
  }
  const { code, message, ...details } = err
  const error = errorFor(status, String(code ?? 'http_error'), String(message ?? ''), details)
  error.retryAfter = retryAfter(response)
  return error
}

/** The longest a client waits on one `Retry-After` before it retries. */
const MAX_RETRY_WAIT = 60

/** The seconds of a 429's or a 503's `Retry-After` (a count of seconds,
 * as sandgate sends it), if it has one. */
function retryAfter(response: Response): number | undefined {
  if (response.status !== 429 && response.status !== 503) return undefined
  const value = response.headers.get('retry-after')
  if (value === null || !/^\d+$/.test(value.trim())) return undefined
  return Number(value.trim())
}

/** @internal Requests to one server with one key. */
export class Http {
  // A real private field: never shown by console.log or util.inspect.
  readonly #apiKey: string

  constructor(
    readonly apiUrl: string,
    apiKey: string,
    readonly timeout: number,
    readonly maxRetries = 2,
  ) {
    this.#apiKey = apiKey
  }

  /** Sends a request; a 429 or a 503 that says `Retry-After` (the server
   * did nothing) is sent again after that wait, up to `maxRetries` times. */
  async request<T>(method: string, path: string, body?: unknown, timeoutSeconds?: number): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.requestOnce<T>(method, path, body, timeoutSeconds)
      } catch (e) {
        if (!(e instanceof SandgateError) || e.retryAfter === undefined || attempt >= this.maxRetries) throw e
        const wait = Math.min(e.retryAfter, MAX_RETRY_WAIT)
        await new Promise((resolve) => setTimeout(resolve, wait * 1000))
      }
    }
  }

  /** `PUT`s the file at `file` to `path` as a tar archive, read as it is
   * sent: the JSON answer. */
  async upload<T>(path: string, file: string, timeoutSeconds?: number): Promise<T> {
    return this.requestOnce<T>('PUT', path, await openAsBlob(file), timeoutSeconds)
  }

  private async requestOnce<T>(method: string, path: string, body?: unknown, timeoutSeconds?: number): Promise<T> {
    const headers: Record<string, string> = { Authorization: `Bearer ${this.#apiKey}` }
    const raw = body instanceof Blob
    if (body !== undefined) headers['Content-Type'] = raw ? 'application/x-tar' : 'application/json'
    let response: Response
    let text: string
    try {
      response = await fetch(this.apiUrl + path, {
        method,
        headers,
        body: body === undefined ? undefined : raw ? body : JSON.stringify(body),
        signal: AbortSignal.timeout((timeoutSeconds ?? this.timeout) * 1000),
      })
      text = await response.text()
    } catch (e) {
      const cause = e instanceof Error && e.cause !== undefined ? ` (${String(e.cause)})` : ''
      throw new APIConnectionError(`no answer from ${this.apiUrl}: ${String(e)}${cause}`, 'unreachable')
    }
    if (!response.ok) throw failure(response, text)
    try {
      return (text ? JSON.parse(text) : undefined) as T
    } catch {
      throw new SandgateError(`not JSON from ${this.apiUrl}${path}`, 'invalid_response', response.status)
    }
  }

  /** Server-sent events from `path`, each `data` decoded from JSON, until
   * the server ends the stream or the caller stops iterating (which
   * closes it). */
  async *stream<T>(path: string): AsyncGenerator<{ event: string; data: T }> {
    let response: Response
    try {
      response = await fetch(this.apiUrl + path, {
        headers: { Authorization: `Bearer ${this.#apiKey}`, Accept: 'text/event-stream' },
      })
    } catch (e) {
      throw new APIConnectionError(`no answer from ${this.apiUrl}: ${String(e)}`, 'unreachable')
    }
    if (!response.ok) throw failure(response, await response.text())
    if (response.body === null) return
    const reader = response.body.getReader()
    const decoder = new TextDecoder()
    let buffered = ''
    let event = 'message'
    try {
      for (;;) {
        const { value, done } = await reader.read()
        if (done) return
        buffered += decoder.decode(value, { stream: true })
        let end: number
        while ((end = buffered.indexOf('\n')) >= 0) {
          const line = buffered.slice(0, end).replace(/\r$/, '')
          buffered = buffered.slice(end + 1)
          if (line.startsWith('event:')) {
            event = line.slice(6).trim()
          } else if (line.startsWith('data:')) {
            let data: T
            try {
              data = JSON.parse(line.slice(5).trim()) as T
            } catch {
              continue
            }
            yield { event, data }
          } else if (line === '') {
            event = 'message'
          }
        }
      }
    } finally {
      await reader.cancel().catch(() => undefined)
    }
  }
}

/** Which records of a flow log. */
export interface FlowOptions {
  /** Milliseconds since the Unix epoch: flows still open or ended at or
   * after it (default: all). */
  since?: number
  /** The last this many (default 100, at most 1000). */
  limit?: number
}

/** Commands in a sandbox. */
export class Process {
  constructor(private readonly sandbox: Sandbox) {}

  /** Runs `command` with `/bin/sh -c`; on `timeout` (seconds) it and its
   * children are killed and `timedOut` is set. */
  async exec(command: string, options: ExecOptions = {}): Promise<ExecuteResponse> {
    // Only the fields the API takes (an options object may carry more).
    const body: Record<string, unknown> = { command, cwd: options.cwd, env: options.env, timeout: options.timeout }
    const wait = options.timeout === undefined ? undefined : options.timeout + 30
    const r = await this.sandbox.http.request<ExecuteResponse>('POST', this.sandbox.path('/process/execute'), body, wait)
    return { ...r, timedOut: r.timedOut ?? false, truncated: r.truncated ?? false }
  }
}

/** A sandbox's network: tests and explanations. */
export class Network {
  constructor(private readonly sandbox: Sandbox) {}

  /** Probes `targets` (`host:port`; default: the server's list) from
   * inside the sandbox's network namespace. */
  test(targets?: string[]): Promise<NetworkTestResult> {
    return this.sandbox.http.request('POST', this.sandbox.path('/network/test'), targets ? { targets } : {})
  }

  /** Whether the sandbox may reach `dest`, and why; nothing is sent. */
  explain(dest: string): Promise<Explanation> {
    return this.sandbox.http.request('GET', this.sandbox.path(`/network/explain?dest=${encodeURIComponent(dest)}`))
  }

  /** Gives the sandbox access to `target` (a CIDR, an address, a name or a
   * `*.` wildcard) for `ttlSeconds` (1 to 604800), in force when this
   * resolves; it ends by itself. */
  grant(target: string, ttlSeconds: number, reason?: string): Promise<Grant> {
    const body = reason === undefined ? { target, ttlSeconds } : { target, ttlSeconds, reason }
    return this.sandbox.http.request('POST', this.sandbox.path('/network/grants'), body)
  }

  /** The grants in force, with the time each has left. */
  async grants(): Promise<Grant[]> {
    const r = await this.sandbox.http.request<{ grants: Grant[] }>('GET', this.sandbox.path('/network/grants'))
    return r.grants
  }

  /** What the sandbox has used of its transfer quota this period;
   * undefined: it has no quota. */
  async transferUsage(): Promise<TransferUsage | undefined> {
    const r = await this.sandbox.http.request<{ transfer: TransferUsage | null }>('GET', this.sandbox.path('/network/usage'))
    return r.transfer ?? undefined
  }

  /** Revokes a grant; its connections stop when this resolves. */
  async revoke(grant: Grant | string): Promise<void> {
    const id = typeof grant === 'string' ? grant : grant.id
    await this.sandbox.http.request('DELETE', this.sandbox.path(`/network/grants/${encodeURIComponent(id)}`))
  }

  /** The sandbox's recent network events (up to 256), oldest first. */
  async events(): Promise<NetworkEvent[]> {
    const all: NetworkEvent[] = []
    for await (const e of this.eventStream(false)) all.push(e)
    return all
  }

  /** The recent network events, then each new one as it happens: `for
   * await (const e of sandbox.network.followEvents()) { ... }`; breaking
   * out of the loop closes the stream. */
  followEvents(): AsyncGenerator<NetworkEvent> {
    return this.eventStream(true)
  }

  private async *eventStream(follow: boolean): AsyncGenerator<NetworkEvent> {
    const path = this.sandbox.path(`/network/events?follow=${follow}`)
    for await (const { event, data } of this.sandbox.http.stream<NetworkEvent>(path)) {
      if (event !== 'lagged') yield data
    }
  }

  /** The sandbox's flow log: its connections, allowed and denied, in
   * increasing `id`; the last `limit` (default 100, at most 1000) of those
   * still open or ended at or after `since` (milliseconds since the Unix
   * epoch; default: all), and how many records it could not keep. */
  async flows(options: FlowOptions = {}): Promise<FlowLog> {
    const r = await this.sandbox.http.request<FlowLog>('GET', this.flowsPath(options, false))
    return { flows: r.flows.map(flowOf), dropped: r.dropped ?? 0 }
  }

  /** The records of `flows()`, then each new one as it is written (a flow
   * is sent when it opens and again, with the same id, when it ends):
   * `for await (const f of sandbox.network.followFlows()) { ... }`;
   * breaking out of the loop closes the stream. */
  async *followFlows(options: FlowOptions = {}): AsyncGenerator<Flow> {
    for await (const { event, data } of this.sandbox.http.stream<Flow>(this.flowsPath(options, true))) {
      if (event === 'flow') yield flowOf(data)
    }
  }

  private flowsPath(options: FlowOptions, follow: boolean): string {
    const query = new URLSearchParams()
    if (options.since !== undefined) query.set('since', String(options.since))
    if (options.limit !== undefined) query.set('limit', String(options.limit))
    if (follow) query.set('follow', 'true')
    const q = query.toString()
    return this.sandbox.path(q ? `/network/flows?${q}` : '/network/flows')
  }

  /** The access requests of the sandbox (with `networkApprovals`), oldest
   * first; `state` keeps those in one state. */
  async requests(options: { state?: AccessRequest['state'] } = {}): Promise<AccessRequest[]> {
    const query = options.state === undefined ? '' : `?state=${options.state}`
    const r = await this.sandbox.http.request<{ requests: AccessRequest[] }>(
      'GET',
      this.sandbox.path(`/network/requests${query}`),
    )
    return r.requests
  }

  /** The access requests as they stand, then each change (opened,
   * counted, decided) as it happens: `for await (const r of
   * sandbox.network.followRequests()) { ... }`; breaking out of the loop
   * closes the stream. */
  async *followRequests(options: { state?: AccessRequest['state'] } = {}): AsyncGenerator<AccessRequest> {
    const state = options.state === undefined ? '' : `&state=${options.state}`
    const path = this.sandbox.path(`/network/requests?follow=true${state}`)
    for await (const { event, data } of this.sandbox.http.stream<AccessRequest>(path)) {
      if (event === 'request') yield data
    }
  }

  /** Approves an access request: a grant for `ttlSeconds`, or without it
   * the target added to the allow list for good; in force when this
   * resolves (a DNS query held for it is answered then). */
  approve(request: AccessRequest | string, ttlSeconds?: number): Promise<AccessRequest> {
    const body = ttlSeconds === undefined ? {} : { ttlSeconds }
    return this.sandbox.http.request('POST', this.requestPath(request, 'approve'), body)
  }

  /** Denies an access request: it is not asked again (its attempts are
   * still counted). */
  deny(request: AccessRequest | string): Promise<AccessRequest> {
    return this.sandbox.http.request('POST', this.requestPath(request, 'deny'), {})
  }

  private requestPath(request: AccessRequest | string, action: string): string {
    const id = typeof request === 'string' ? request : request.id
    return this.sandbox.path(`/network/requests/${encodeURIComponent(id)}/${action}`)
  }
}

/** A sandbox, as the server last described it. */
export class Sandbox {
  id!: string
  name!: string
  state!: string
  snapshot!: string
  /** The OCI runtime it runs under. */
  runtimeClass!: RuntimeClass
  organizationId!: string
  env!: Record<string, string>
  networkBlockAll!: boolean
  networkAllowList?: string
  domainAllowList?: string
  networkDenyList?: string
  domainDenyList?: string
  essentialServices!: boolean
  /** `egressMbps` as asked (absent: the tier's default). */
  egressMbps?: number
  /** `transferQuotaMiB` as asked (absent: the tier's default). */
  transferQuotaMiB?: number
  /** `maxConnections` as asked (absent: the tier's fair share). */
  maxConnections?: number
  /** `newConnectionsPerSecond` as asked (absent: the tier's fair share). */
  newConnectionsPerSecond?: number
  /** Stored `networkApprovals`. */
  networkApprovals!: boolean
  /** Stored `approvalHoldSeconds`. */
  approvalHoldSeconds!: number
  /** Stored `httpRules` (undefined: none). */
  httpRules?: HttpRule[]
  /** The names of the secrets it holds (`env` holds their placeholders). */
  secrets!: string[]
  effectiveNetwork!: EffectiveNetwork
  createdAt!: string
  updatedAt!: string
  readonly process: Process
  readonly network: Network

  /** @internal */
  constructor(readonly http: Http, data: SandboxData) {
    this.process = new Process(this)
    this.network = new Network(this)
    this.load(data)
  }

  private load(d: SandboxData): void {
    this.id = d.id
    this.name = d.name
    this.state = d.state
    this.snapshot = d.snapshot
    this.runtimeClass = d.runtimeClass ?? 'runc'
    this.organizationId = d.organizationId
    this.env = d.env ?? {}
    this.networkBlockAll = d.networkBlockAll ?? false
    this.networkAllowList = d.networkAllowList
    this.domainAllowList = d.domainAllowList
    this.networkDenyList = d.networkDenyList
    this.domainDenyList = d.domainDenyList
    this.essentialServices = d.essentialServices ?? true
    this.egressMbps = d.egressMbps
    this.transferQuotaMiB = d.transferQuotaMiB
    this.maxConnections = d.maxConnections
    this.newConnectionsPerSecond = d.newConnectionsPerSecond
    this.networkApprovals = d.networkApprovals ?? false
    this.approvalHoldSeconds = d.approvalHoldSeconds ?? 0
    this.httpRules = d.httpRules !== undefined && d.httpRules.length > 0 ? httpRulesOnly(d.httpRules) : undefined
    this.secrets = d.secrets ?? []
    this.effectiveNetwork = d.effectiveNetwork
    this.createdAt = d.createdAt
    this.updatedAt = d.updatedAt
  }

  /** @internal */
  path(rest = ''): string {
    return `/api/sandbox/${encodeURIComponent(this.id)}${rest}`
  }

  /** The effective network mode. */
  get mode(): EffectiveNetwork['mode'] {
    return this.effectiveNetwork.mode
  }

  /** The egress bandwidth in force, Mbit/s (undefined: no limit of its
   * own). */
  get egressBudgetMbps(): number | undefined {
    return this.effectiveNetwork.budgets?.egressMbps
  }

  /** The transfer quota in force: MiB both ways a period and the period
   * in seconds (periods start at its multiples since the Unix epoch);
   * undefined: no quota. Past it nothing passes until the next period
   * (a `budget` event with reason `transfer_quota` says so). */
  get transferQuota(): { mib: number; periodSeconds: number } | undefined {
    const b = this.effectiveNetwork.budgets
    if (b?.transferQuotaMiB === undefined) return undefined
    return { mib: b.transferQuotaMiB, periodSeconds: b.transferPeriodSeconds ?? 0 }
  }

  /** The connection budgets in force: connections at once and new
   * connections a second (what it asked for, or its tier's fair shares,
   * never above them). */
  get connectionBudget(): { connections: number; newConnectionsPerSecond: number } {
    const shares = this.effectiveNetwork.fairShares
    return {
      connections: shares.connections,
      newConnectionsPerSecond: shares.newConnectionsPerSecond,
    }
  }

  /** The known egress address its connections leave from, if any. */
  get egressAddress(): EffectiveNetwork['egressAddress'] {
    return this.effectiveNetwork.egressAddress
  }

  /** Reloads the sandbox from the server. */
  async refresh(): Promise<void> {
    this.load(await this.http.request<SandboxData>('GET', this.path()))
  }

  /** Changes the network settings (in force in the kernel when this
   * resolves) and refreshes the sandbox from the answer. */
  async updateNetworkSettings(settings: NetworkSettings): Promise<void> {
    const body = Object.fromEntries(Object.entries(settings).filter(([, v]) => v !== undefined))
    if (Array.isArray(settings.httpRules)) body.httpRules = httpRulesOnly(settings.httpRules)
    if (Object.keys(body).length === 0) {
      throw new TypeError(
        'updateNetworkSettings: give networkBlockAll, networkAllowList, domainAllowList, networkDenyList, domainDenyList, essentialServices, egressMbps, maxConnections, newConnectionsPerSecond, networkApprovals, approvalHoldSeconds, transferQuotaMiB or httpRules',
      )
    }
    this.load(await this.http.request<SandboxData>('POST', this.path('/network-settings'), body))
  }

  /** Deletes the sandbox. */
  async delete(): Promise<void> {
    await this.http.request('DELETE', this.path())
  }
}

/** Configuration of a client; each defaults to the environment. */
export interface SandgateConfig {
  /** Default `SANDGATE_API_URL`, else http://127.0.0.1:8080. */
  apiUrl?: string
  /** Default `SANDGATE_API_KEY`. */
  apiKey?: string
  /** Seconds an HTTP call may take (default 120). */
  timeout?: number
  /** How many times a request answered 429 or 503 with `Retry-After`
   * (the server did nothing) is sent again after the wait it asks for,
   * at most 60 s each (default 2); the last answer's error is thrown,
   * with its `retryAfter`. */
  maxRetries?: number
}

/** The organization's secrets: stored sealed on the server, never shown
 * again; a sandbox created with `secrets: [name, ...]` holds placeholders
 * for them. Storing and removing them needs the `secrets:write` scope,
 * and a server given a secrets key (else 503 `secrets_not_configured`). */
export class Secrets {
  /** @internal */
  constructor(private readonly http: Http) {}

  /** Stores a secret: `name` is an environment variable's (`A-Z`, `0-9`,
   * `_`), `value` 1 byte to 8 KiB without a control character but tab,
   * `hosts` the 1 to 16 names or `*.` wildcards it is sent to. A taken
   * name is a `ConflictError` (`secret_exists`). */
  create(name: string, value: string, hosts: string[]): Promise<Secret> {
    return this.http.request('POST', '/api/secrets', { name, value, hosts })
  }

  /** The organization's secrets: names, hosts and dates, never values. */
  list(): Promise<Secret[]> {
    return this.http.request('GET', '/api/secrets')
  }

  /** Removes a secret (itself or its name); a `ConflictError`
   * (`secret_in_use`) while a sandbox holds it. */
  async delete(secret: Secret | string): Promise<void> {
    const name = typeof secret === 'string' ? secret : secret.name
    await this.http.request('DELETE', `/api/secrets/${encodeURIComponent(name)}`)
  }
}

/** The snapshots sandboxes start from. Listing needs the operator token
 * or a key with `sandboxes:read`; making and removing them, the operator
 * token (an organization's key: `PermissionDeniedError`). */
export class Snapshots {
  /** @internal */
  constructor(private readonly http: Http) {}

  /** Makes snapshot `name` from the OCI image `image` (`python:3.12-slim`,
   * `registry.example.com/team/tool@sha256:...`) on every runner, each
   * pulling it from a registry the operator configured (another:
   * `ValidationError`, `registry_not_allowed`). One of that name is
   * replaced, unless a sandbox uses it (`ConflictError`,
   * `snapshot_in_use`). A large image takes a while: `timeoutSeconds` is
   * how long to wait. */
  create(name: string, image: string, timeoutSeconds?: number): Promise<Snapshot> {
    return this.http.request('POST', '/api/snapshots', { name, image }, timeoutSeconds)
  }

  /** Makes snapshot `name` on every runner from the root filesystem tar
   * archive at the path `archive` (plain or gzip: what `docker export`
   * writes), read as it is sent. A hostile or broken archive is a
   * `ValidationError` (`invalid_request`); one over the server's limit, a
   * `PayloadTooLargeError`. */
  upload(name: string, archive: string, timeoutSeconds?: number): Promise<Snapshot> {
    return this.http.upload(`/api/snapshots/${encodeURIComponent(name)}`, archive, timeoutSeconds)
  }

  /** The snapshots, with the runners that hold each. */
  list(): Promise<Snapshot[]> {
    return this.http.request('GET', '/api/snapshots')
  }

  /** Removes a snapshot (itself or its name) from every runner; a
   * `ConflictError` (`snapshot_in_use`) while a sandbox uses it. */
  async delete(snapshot: Snapshot | string): Promise<void> {
    const name = typeof snapshot === 'string' ? snapshot : snapshot.name
    await this.http.request('DELETE', `/api/snapshots/${encodeURIComponent(name)}`)
  }
}

/** A client of a sandgate server. */
export class Sandgate {
  private readonly http: Http
  /** The organization's secrets: `create`, `list`, `delete`. */
  readonly secrets: Secrets
  /** The snapshots sandboxes start from: `create` (from an OCI image),
   * `list`, `delete`. */
  readonly snapshots: Snapshots

  constructor(config: SandgateConfig = {}) {
    // An empty value is no value.
    const apiUrl = config.apiUrl || process.env.SANDGATE_API_URL || DEFAULT_API_URL
    const apiKey = config.apiKey || process.env.SANDGATE_API_KEY
    if (!apiKey) {
      throw new SandgateError('no API key: pass apiKey or set SANDGATE_API_KEY', 'missing_api_key')
    }
    this.http = new Http(apiUrl.replace(/\/+$/, ''), apiKey, config.timeout ?? 120, config.maxRetries ?? 2)
    this.secrets = new Secrets(this.http)
    this.snapshots = new Snapshots(this.http)
  }

  /** Creates a sandbox; it is running, its policy enforced, when this
   * resolves. */
  async create(params: CreateSandboxParams = {}): Promise<Sandbox> {
    const body = Array.isArray(params.httpRules) ? { ...params, httpRules: httpRulesOnly(params.httpRules) } : params
    return new Sandbox(this.http, await this.http.request<SandboxData>('POST', '/api/sandbox', body))
  }

  /** One sandbox, by id or name. */
  async get(idOrName: string): Promise<Sandbox> {
    return new Sandbox(this.http, await this.http.request<SandboxData>('GET', `/api/sandbox/${encodeURIComponent(idOrName)}`))
  }

  /** The organization's sandboxes. */
  async list(): Promise<Sandbox[]> {
    const all = await this.http.request<SandboxData[]>('GET', '/api/sandbox')
    return all.map((d) => new Sandbox(this.http, d))
  }

  /** Deletes a sandbox (itself, its id or its name). */
  async delete(sandbox: Sandbox | string): Promise<void> {
    const key = typeof sandbox === 'string' ? sandbox : sandbox.id
    await this.http.request('DELETE', `/api/sandbox/${encodeURIComponent(key)}`)
  }
}
