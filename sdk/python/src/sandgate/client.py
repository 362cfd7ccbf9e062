"""The synchronous client: :class:`Sandgate`, its parameter classes, and
:class:`Sandbox` with its ``process`` and ``network`` parts.

Only the standard library: HTTP through ``urllib``, JSON through ``json``.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Literal, Optional, Tuple, Union

from .errors import APIConnectionError, SandgateError, error_for

DEFAULT_API_URL = "http://127.0.0.1:8080"


@dataclass
class HttpRule:
    """An HTTP rule: the methods and paths a sandbox may ask of a host,
    enforced by the gateway on each request (tier 3/4).

    ``host``: a name or a ``*.`` wildcard, as in ``domain_allow_list``.
    ``methods``: HTTP methods, upper case as on the wire (``None``: any).
    ``paths``: globs over the request's decoded path, the query left out:
    ``*`` is any run of characters within a segment, ``**`` a whole
    segment standing for any number of them (``/repos/**`` matches
    ``/repos`` and all below it); ``None``: any path.

    Rules add up: a request to a name some rule covers passes only if one
    of that name's rules allows its method and its path; a refused one is
    answered 403 with ``x-sandgate-deny: http_method_not_allowed``,
    ``http_path_not_allowed`` or ``http_path_ambiguous``. The server keeps
    them canonical (hosts in lower case, methods sorted, duplicates
    merged) and shows them so.
    """

    host: str
    methods: Optional[List[str]] = None
    paths: Optional[List[str]] = None

    def to_json(self) -> Dict[str, Any]:
        """The API's form (fields left out are absent)."""
        body: Dict[str, Any] = {"host": self.host}
        if self.methods is not None:
            body["methods"] = list(self.methods)
        if self.paths is not None:
            body["paths"] = list(self.paths)
        return body

    @staticmethod
    def _from(r: Dict[str, Any]) -> "HttpRule":
        methods = r.get("methods")
        paths = r.get("paths")
        return HttpRule(
            host=r["host"],
            methods=None if methods is None else list(methods),
            paths=None if paths is None else list(paths),
        )


def _http_rules(data: Optional[List[Dict[str, Any]]]) -> Optional[List[HttpRule]]:
    """``httpRules`` as the API shows them; ``None`` when absent or empty."""
    return [HttpRule._from(r) for r in data] if data else None


@dataclass
class CreateSandboxBaseParams:
    """What any new sandbox may be given.

    ``network_allow_list``: comma-separated CIDRs the sandbox may reach.
    ``domain_allow_list``: comma-separated names and ``*.`` wildcards.
    ``network_block_all``: no egress at all; wins over both lists.
    ``network_deny_list`` and ``domain_deny_list``: CIDRs and names the
    sandbox may never reach; they win over every list and the essential
    services (tier 3/4).
    ``essential_services``: ``False`` turns the essential services off.
    ``egress_mbps``: what the sandbox may send, Mbit/s, within its tier's
    maximum (default: the tier's default).
    ``max_connections`` and ``new_connections_per_second``: connections at
    once and new connections a second, within the tier's fair shares
    (default: the tier's).
    ``network_approvals``: what the sandbox is refused opens access
    requests for its owner to approve or deny (tier 3/4).
    ``approval_hold_seconds``: how long a refused DNS query waits for an
    approval (0 to 60).
    ``transfer_quota_mib``: what the sandbox may send and receive in all
    each period, MiB, within its tier's maximum (default: the tier's
    default; the period is the operator's).
    ``http_rules``: the methods and paths the sandbox may ask of hosts
    (:class:`HttpRule`; tier 3/4), enforced by the gateway.
    ``secrets``: names of the organization's secrets (:class:`Secret`) the
    sandbox holds: each is an environment variable of its commands whose
    value is a placeholder of its own; the gateway puts the value in the
    placeholder's place in requests to the secret's hosts (the value never
    enters the sandbox). Needs the ``secrets:write`` scope.
    ``runtime_class``: the OCI runtime it runs under, among those its tier
    allows: ``"runc"``, or ``"runsc"`` (gVisor: a kernel of its own
    between the sandbox and the host's). Default: the tier's first.
    """

    name: Optional[str] = None
    env: Optional[Dict[str, str]] = None
    network_allow_list: Optional[str] = None
    network_block_all: Optional[bool] = None
    domain_allow_list: Optional[str] = None
    network_deny_list: Optional[str] = None
    domain_deny_list: Optional[str] = None
    essential_services: Optional[bool] = None
    egress_mbps: Optional[int] = None
    max_connections: Optional[int] = None
    new_connections_per_second: Optional[int] = None
    network_approvals: Optional[bool] = None
    approval_hold_seconds: Optional[int] = None
    transfer_quota_mib: Optional[int] = None
    http_rules: Optional[List[HttpRule]] = None
    secrets: Optional[List[str]] = None
    runtime_class: Optional[Literal["runc", "runsc"]] = None

    def to_json(self) -> Dict[str, Any]:
        """The API's request body (camelCase; fields left out are absent)."""
        body: Dict[str, Any] = {}
        for key, value in (
            ("name", self.name),
            ("env", self.env),
            ("networkAllowList", self.network_allow_list),
            ("networkBlockAll", self.network_block_all),
            ("domainAllowList", self.domain_allow_list),
            ("networkDenyList", self.network_deny_list),
            ("domainDenyList", self.domain_deny_list),
            ("essentialServices", self.essential_services),
            ("egressMbps", self.egress_mbps),
            ("maxConnections", self.max_connections),
            ("newConnectionsPerSecond", self.new_connections_per_second),
            ("networkApprovals", self.network_approvals),
            ("approvalHoldSeconds", self.approval_hold_seconds),
            ("transferQuotaMiB", self.transfer_quota_mib),
            ("runtimeClass", self.runtime_class),
        ):
            if value is not None:
                body[key] = value
        if self.http_rules is not None:
            body["httpRules"] = [r.to_json() for r in self.http_rules]
        if self.secrets is not None:
            body["secrets"] = list(self.secrets)
        return body


@dataclass
class CreateSandboxFromSnapshotParams(CreateSandboxBaseParams):
    """A new sandbox from a snapshot (default ``busybox``)."""

    snapshot: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        body = super().to_json()
        if self.snapshot is not None:
            body["snapshot"] = self.snapshot
        return body


@dataclass
class ExecuteResponse:
    """What a command did."""

    exit_code: int
    stdout: str
    stderr: str
    result: str
    timed_out: bool = False
    truncated: bool = False


@dataclass
class Explanation:
    """Whether a sandbox may reach a destination, and by which rule."""

    destination: str
    allowed: bool
    reason: str
    rule: str
    mode: str


@dataclass
class Grant:
    """Time-bounded access of a sandbox to a CIDR, an address or a name."""

    id: str
    target: str
    reason: Optional[str]
    created_at: str
    expires_at: str
    expires_at_ms: int
    seconds_left: int
    in_force: bool

    @staticmethod
    def _from(r: Dict[str, Any]) -> "Grant":
        return Grant(
            id=r["id"],
            target=r["target"],
            reason=r.get("reason"),
            created_at=r["createdAt"],
            expires_at=r["expiresAt"],
            expires_at_ms=int(r["expiresAtMs"]),
            seconds_left=int(r["secondsLeft"]),
            in_force=bool(r.get("inForce", True)),
        )


@dataclass
class TransferUsage:
    """A sandbox's transfer quota this period, as the kernel counts it at
    the call: bytes both ways (IP packets, headers included)."""

    quota_bytes: int
    used_bytes: int
    spent: bool
    period_start: str
    period_end: str
    period_start_ms: int
    period_end_ms: int

    @staticmethod
    def _from(r: Dict[str, Any]) -> "TransferUsage":
        return TransferUsage(
            quota_bytes=int(r["quotaBytes"]),
            used_bytes=int(r["usedBytes"]),
            spent=bool(r["spent"]),
            period_start=r["periodStart"],
            period_end=r["periodEnd"],
            period_start_ms=int(r["periodStartMs"]),
            period_end_ms=int(r["periodEndMs"]),
        )


@dataclass
class NetworkEvent:
    """A network event of a sandbox: a denied connection (``kind``
    ``"connection"``), a refused or stripped DNS answer (``"dns"``), a
    grant added or ended (``"grant"``), a budget reached (``"budget"``), or
    events held back by its rate (``"dropped"``, with ``count``)."""

    time_ms: int
    sandbox: str
    kind: str
    protocol: str
    reason: str
    destination: Optional[str] = None
    port: Optional[int] = None
    domain: Optional[str] = None
    count: Optional[int] = None

    @staticmethod
    def _from(r: Dict[str, Any]) -> "NetworkEvent":
        return NetworkEvent(
            time_ms=int(r["timeMs"]),
            sandbox=r["sandbox"],
            kind=r["kind"],
            protocol=r.get("protocol", ""),
            reason=r["reason"],
            destination=r.get("destination"),
            port=r.get("port"),
            domain=r.get("domain"),
            count=r.get("count"),
        )


@dataclass
class Flow:
    """One connection of a sandbox in its flow log, allowed or denied.

    ``verdict``: ``"allowed"`` or ``"denied"``; ``via``: who carried or
    refused it, ``"kernel"`` or ``"gateway"``; ``reason``: the reason code
    as :meth:`Network.explain` writes it (``"allow_list:192.0.2.0/24"``,
    ``"not_in_allow_list"``, ...). ``protocol``: ``"tcp"``, ``"udp"``,
    ``"icmp"``, ``"icmpv6"`` or the IP protocol's number. ``end_ms`` is
    ``None`` while it is open (a denied flow ends as it starts);
    ``name`` is the name it was for where known, and ``name_source``
    where that came from (``"dns"``, ``"sni"``, ``"host"``). Bytes are
    counted both ways (final once it ended)."""

    id: int
    start_ms: int
    protocol: str
    source: str
    destination: str
    bytes_out: int
    bytes_in: int
    verdict: str
    reason: str
    via: str
    end_ms: Optional[int] = None
    source_port: Optional[int] = None
    port: Optional[int] = None
    name: Optional[str] = None
    name_source: Optional[str] = None
    rule: Optional[str] = None

    @property
    def allowed(self) -> bool:
        """Whether it was let through."""
        return self.verdict == "allowed"

    @staticmethod
    def _from(r: Dict[str, Any]) -> "Flow":
        return Flow(
            id=int(r["id"]),
            start_ms=int(r["startMs"]),
            protocol=str(r["protocol"]),
            source=r["source"],
            destination=r["destination"],
            bytes_out=int(r.get("bytesOut", 0)),
            bytes_in=int(r.get("bytesIn", 0)),
            verdict=r["verdict"],
            reason=r["reason"],
            via=r["via"],
            end_ms=r.get("endMs"),
            source_port=r.get("sourcePort"),
            port=r.get("port"),
            name=r.get("name"),
            name_source=r.get("nameSource"),
            rule=r.get("rule"),
        )


@dataclass
class FlowLog:
    """A sandbox's flow log as it stands: its records (each flow once, as
    it is now, in increasing ``id``) and how many records it could not
    keep since the sandbox was made (``dropped``)."""

    flows: List[Flow]
    dropped: int


@dataclass
class Secret:
    """A secret of the organization, as shown: never its value."""

    name: str
    hosts: List[str]
    created_at: str

    @staticmethod
    def _from(r: Dict[str, Any]) -> "Secret":
        return Secret(name=r["name"], hosts=list(r["hosts"]), created_at=r["createdAt"])


@dataclass
class Snapshot:
    """A snapshot sandboxes start from: its name and the runners that hold
    it; one just made from an image also says the image (its reference in
    full), the digest of the manifest it was made from and its layers."""

    name: str
    runners: List[str]
    image: Optional[str] = None
    digest: Optional[str] = None
    layers: Optional[int] = None

    @staticmethod
    def _from(r: Dict[str, Any]) -> "Snapshot":
        return Snapshot(
            name=r["name"],
            runners=list(r.get("runners", [])),
            image=r.get("image"),
            digest=r.get("digest"),
            layers=r.get("layers"),
        )


@dataclass
class AccessRequest:
    """A target a sandbox with approvals was refused: a name (``kind``
    ``"name"``) or an address (``"address"``), with its attempts, for its
    owner to approve or deny."""

    id: str
    sandbox: str
    target: str
    kind: str
    attempts: int
    state: str
    first_seen_ms: int
    last_seen_ms: int
    protocol: Optional[str] = None
    port: Optional[int] = None
    decided_at_ms: Optional[int] = None
    grant_id: Optional[str] = None

    @property
    def pending(self) -> bool:
        """Whether it waits for a decision."""
        return self.state == "pending"

    @staticmethod
    def _from(r: Dict[str, Any]) -> "AccessRequest":
        return AccessRequest(
            id=r["id"],
            sandbox=r["sandbox"],
            target=r["target"],
            kind=r["kind"],
            attempts=int(r["attempts"]),
            state=r["state"],
            first_seen_ms=int(r["firstSeenMs"]),
            last_seen_ms=int(r["lastSeenMs"]),
            protocol=r.get("protocol"),
            port=r.get("port"),
            decided_at_ms=r.get("decidedAtMs"),
            grant_id=r.get("grantId"),
        )


@dataclass
class NetworkTestRow:
    """One probed destination: what the policy expects, what happened."""

    target: str
    expected: bool
    observed: bool
    ok: bool
    reason: str
    detail: str
    addresses: List[str] = field(default_factory=list)


@dataclass
class NetworkTestResult:
    """A network test of a sandbox."""

    sandbox: str
    mode: str
    ok: bool
    results: List[NetworkTestRow]


# The longest a client waits on one ``Retry-After`` before it retries.
MAX_RETRY_WAIT = 60


def _retry_after(e: urllib.error.HTTPError) -> Optional[int]:
    """The seconds of a 429's or a 503's ``Retry-After`` (a count of
    seconds, as sandgate sends it), if it has one."""
    if e.code not in (429, 503):
        return None
    value = e.headers.get("Retry-After") if e.headers else None
    try:
        return max(0, int(value)) if value is not None else None
    except ValueError:
        return None


def _http_error(e: urllib.error.HTTPError) -> SandgateError:
    """The error of an answer that is not a success: the API's code,
    message and details (or the body as it came), and its
    ``Retry-After``."""
    raw = e.read().decode(errors="replace")
    err: Any = None
    try:
        err = json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        pass
    if not isinstance(err, dict):
        err = {"code": "http_error", "message": raw or e.reason}
    details = {k: v for k, v in err.items() if k not in ("code", "message")}
    code = str(err.get("code") or "http_error")
    error = error_for(e.code, code, str(err.get("message") or ""), details)
    error.retry_after = _retry_after(e)
    return error


class _Http:
    """Requests to one server with one key."""

    def __init__(self, api_url: str, api_key: str, timeout: float, max_retries: int = 2) -> None:
        self.api_url = api_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries

    def request(
        self,
        method: str,
        path: str,
        body: Optional[Dict[str, Any]] = None,
        timeout: Optional[float] = None,
    ) -> Any:
        """Sends a request; a 429 or a 503 that says ``Retry-After`` (the
        server did nothing) is sent again after that wait, up to
        ``max_retries`` times."""
        attempt = 0
        while True:
            try:
                return self._request_once(method, path, body, timeout)
            except SandgateError as e:
                if e.retry_after is None or attempt >= self.max_retries:
                    raise
                attempt += 1
                time.sleep(min(e.retry_after, MAX_RETRY_WAIT))

    def _request_once(
        self,
        method: str,
        path: str,
        body: Optional[Dict[str, Any]],
        timeout: Optional[float],
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api_url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.api_key}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        return self._send(req, path, timeout)

    def _send(self, req: urllib.request.Request, path: str, timeout: Optional[float]) -> Any:
        """Sends ``req`` (to ``path``): its JSON answer (``None`` for none),
        or the typed error."""
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as e:
            raise _http_error(e) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise APIConnectionError(
                f"no answer from {self.api_url}: {reason}", code="unreachable"
            ) from None
        try:
            return json.loads(text) if text else None
        except ValueError:
            raise SandgateError(
                f"not JSON from {self.api_url}{path}", code="invalid_response"
            ) from None

    def upload(self, path: str, file: str, timeout: Optional[float] = None) -> Any:
        """``PUT``s the file at ``file`` to ``path`` as a tar archive, read
        as it is sent: the JSON answer."""
        size = os.path.getsize(file)
        with open(file, "rb") as body:
            req = urllib.request.Request(self.api_url + path, data=body, method="PUT")
            req.add_header("Authorization", f"Bearer {self.api_key}")
            req.add_header("Content-Type", "application/x-tar")
            req.add_header("Content-Length", str(size))
            return self._send(req, path, timeout)

    def stream(self, path: str, timeout: Optional[float] = None) -> Iterator[Tuple[str, Any]]:
        """Server-sent events from ``path``: ``(event, data)`` pairs, each
        ``data`` decoded from JSON, until the server ends the stream (the
        server sends a keep-alive at least every 15 seconds)."""
        req = urllib.request.Request(self.api_url + path, method="GET")
        req.add_header("Authorization", f"Bearer {self.api_key}")
        req.add_header("Accept", "text/event-stream")
        try:
            resp = urllib.request.urlopen(req, timeout=timeout or max(self.timeout, 60.0))
        except urllib.error.HTTPError as e:
            raise _http_error(e) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            raise APIConnectionError(
                f"no answer from {self.api_url}: {reason}", code="unreachable"
            ) from None
        with resp:
            event = "message"
            for raw_line in resp:
                line = raw_line.decode(errors="replace").rstrip("\r\n")
                if line.startswith("event:"):
                    event = line[len("event:") :].strip()
                elif line.startswith("data:"):
                    try:
                        data = json.loads(line[len("data:") :].strip())
                    except ValueError:
                        continue
                    yield event, data
                elif not line:
                    event = "message"


class Process:
    """Commands in a sandbox."""

    def __init__(self, sandbox: "Sandbox") -> None:
        self._sandbox = sandbox

    def exec(
        self,
        command: str,
        cwd: Optional[str] = None,
        env: Optional[Dict[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> ExecuteResponse:
        """Runs ``command`` with ``/bin/sh -c``; on ``timeout`` (seconds) the
        command and its children are killed and ``timed_out`` is set."""
        body: Dict[str, Any] = {"command": command}
        if cwd is not None:
            body["cwd"] = cwd
        if env is not None:
            body["env"] = env
        if timeout is not None:
            body["timeout"] = timeout
        # The HTTP wait outlasts the command's own timeout.
        wait = None if timeout is None else timeout + 30
        r = self._sandbox._http.request(
            "POST", self._sandbox._path("/process/execute"), body, timeout=wait
        )
        return ExecuteResponse(
            exit_code=r["exitCode"],
            stdout=r["stdout"],
            stderr=r["stderr"],
            result=r["result"],
            timed_out=r.get("timedOut", False),
            truncated=r.get("truncated", False),
        )


class Network:
    """A sandbox's network: tests and explanations."""

    def __init__(self, sandbox: "Sandbox") -> None:
        self._sandbox = sandbox

    def test(self, targets: Optional[List[str]] = None) -> NetworkTestResult:
        """Probes ``targets`` (``host:port``; default: the server's list)
        from inside the sandbox's network namespace."""
        body: Dict[str, Any] = {} if targets is None else {"targets": targets}
        r = self._sandbox._http.request("POST", self._sandbox._path("/network/test"), body)
        return NetworkTestResult(
            sandbox=r["sandbox"],
            mode=r["mode"],
            ok=r["ok"],
            results=[
                NetworkTestRow(
                    target=x["target"],
                    expected=x["expected"],
                    observed=x["observed"],
                    ok=x["ok"],
                    reason=x["reason"],
                    detail=x["detail"],
                    addresses=list(x.get("addresses", [])),
                )
                for x in r["results"]
            ],
        )

    def grant(self, target: str, ttl_seconds: int, reason: Optional[str] = None) -> Grant:
        """Gives the sandbox access to ``target`` (a CIDR, an address, a
        name or a ``*.`` wildcard) for ``ttl_seconds`` (1 to 604800), in
        force when this returns; it ends by itself."""
        body: Dict[str, Any] = {"target": target, "ttlSeconds": ttl_seconds}
        if reason is not None:
            body["reason"] = reason
        r = self._sandbox._http.request("POST", self._sandbox._path("/network/grants"), body)
        return Grant._from(r)

    def grants(self) -> List[Grant]:
        """The grants in force, with the time each has left."""
        r = self._sandbox._http.request("GET", self._sandbox._path("/network/grants"))
        return [Grant._from(g) for g in r["grants"]]

    def transfer_usage(self) -> Optional[TransferUsage]:
        """What the sandbox has used of its transfer quota this period;
        ``None``: it has no quota."""
        r = self._sandbox._http.request("GET", self._sandbox._path("/network/usage"))
        transfer = r.get("transfer")
        return TransferUsage._from(transfer) if transfer else None

    def revoke(self, grant: Union[Grant, str]) -> None:
        """Revokes a grant; its connections stop when this returns."""
        grant_id = grant.id if isinstance(grant, Grant) else grant
        self._sandbox._http.request(
            "DELETE",
            self._sandbox._path(f"/network/grants/{urllib.parse.quote(grant_id, safe='')}"),
        )

    def events(self, follow: bool = False) -> Iterator[NetworkEvent]:
        """The sandbox's recent network events (up to 256), oldest first;
        with ``follow=True``, then each new one as it happens, until the
        sandbox is deleted or the server stops::

            for event in sandbox.network.events(follow=True):
                print(event.reason, event.destination or event.domain)
        """
        path = self._sandbox._path(f"/network/events?follow={'true' if follow else 'false'}")
        return (
            NetworkEvent._from(data)
            for event, data in self._sandbox._http.stream(path)
            if event != "lagged"
        )

    def flows(self, since: Optional[int] = None, limit: Optional[int] = None) -> FlowLog:
        """The sandbox's flow log: its connections, allowed and denied, in
        increasing ``id``; the last ``limit`` (default 100, at most 1000)
        of those still open or ended at or after ``since`` (milliseconds
        since the Unix epoch; default: all), and how many records it
        could not keep (``dropped``)."""
        r = self._sandbox._http.request("GET", self._flows_path(since, limit, False))
        return FlowLog(
            flows=[Flow._from(f) for f in r["flows"]], dropped=int(r.get("dropped", 0))
        )

    def follow_flows(
        self, since: Optional[int] = None, limit: Optional[int] = None
    ) -> Iterator[Flow]:
        """The records of :meth:`flows`, then each new one as it is written
        (a flow is sent when it opens and again, with the same ``id``, when
        it ends), until the sandbox is deleted or the server stops::

            for flow in sandbox.network.follow_flows():
                print(flow.verdict, flow.destination, flow.port, flow.reason)
        """
        path = self._flows_path(since, limit, True)
        return (
            Flow._from(data)
            for event, data in self._sandbox._http.stream(path)
            if event == "flow"
        )

    def _flows_path(self, since: Optional[int], limit: Optional[int], follow: bool) -> str:
        query: Dict[str, str] = {}
        if since is not None:
            query["since"] = str(since)
        if limit is not None:
            query["limit"] = str(limit)
        if follow:
            query["follow"] = "true"
        path = self._sandbox._path("/network/flows")
        return path + "?" + urllib.parse.urlencode(query) if query else path

    def requests(
        self, follow: bool = False, state: Optional[str] = None
    ) -> Iterator[AccessRequest]:
        """The access requests of the sandbox (with ``network_approvals``),
        oldest first; ``state`` keeps those in one state (``"pending"``,
        ``"approved"``, ``"denied"``). With ``follow=True``, then each
        change as it happens, until the server ends the stream::

            for request in sandbox.network.requests(follow=True, state="pending"):
                if request.target.endswith(".example.org"):
                    sandbox.network.approve(request, ttl_seconds=600)
                else:
                    sandbox.network.deny(request)
        """
        query: Dict[str, str] = {}
        if state is not None:
            query["state"] = state
        if follow:
            query["follow"] = "true"
        path = self._sandbox._path("/network/requests")
        if query:
            path += "?" + urllib.parse.urlencode(query)
        if not follow:
            r = self._sandbox._http.request("GET", path)
            return iter([AccessRequest._from(x) for x in r["requests"]])
        return (
            AccessRequest._from(data)
            for event, data in self._sandbox._http.stream(path)
            if event == "request"
        )

    def approve(
        self, request: Union[AccessRequest, str], ttl_seconds: Optional[int] = None
    ) -> AccessRequest:
        """Approves an access request: a grant for ``ttl_seconds``, or,
        without it, the target added to the allow list for good; in force
        when this returns (a DNS query held for it is answered then)."""
        body: Dict[str, Any] = {} if ttl_seconds is None else {"ttlSeconds": ttl_seconds}
        return AccessRequest._from(
            self._sandbox._http.request("POST", self._request_path(request, "approve"), body)
        )

    def deny(self, request: Union[AccessRequest, str]) -> AccessRequest:
        """Denies an access request: it is not asked again (its attempts
        are still counted)."""
        return AccessRequest._from(
            self._sandbox._http.request("POST", self._request_path(request, "deny"), {})
        )

    def _request_path(self, request: Union[AccessRequest, str], action: str) -> str:
        rid = request.id if isinstance(request, AccessRequest) else request
        return self._sandbox._path(
            f"/network/requests/{urllib.parse.quote(rid, safe='')}/{action}"
        )

    def explain(self, dest: str) -> Explanation:
        """Whether the sandbox may reach ``dest`` (an address or a name,
        optionally with ``:port``) and why; nothing is sent."""
        query = urllib.parse.urlencode({"dest": dest})
        r = self._sandbox._http.request("GET", self._sandbox._path(f"/network/explain?{query}"))
        return Explanation(
            destination=r["destination"],
            allowed=r["allowed"],
            reason=r["reason"],
            rule=r["rule"],
            mode=r["mode"],
        )


class Sandbox:
    """A sandbox, as the server last described it."""

    id: str
    name: str
    state: str
    snapshot: str
    runtime_class: str
    organization_id: str
    env: Dict[str, str]
    network_block_all: bool
    network_allow_list: Optional[str]
    domain_allow_list: Optional[str]
    network_deny_list: Optional[str]
    domain_deny_list: Optional[str]
    essential_services: bool
    egress_mbps: Optional[int]
    max_connections: Optional[int]
    new_connections_per_second: Optional[int]
    network_approvals: bool
    approval_hold_seconds: int
    transfer_quota_mib: Optional[int]
    http_rules: Optional[List[HttpRule]]
    secrets: List[str]
    effective_network: Dict[str, Any]
    created_at: str
    updated_at: str

    def __init__(self, http: _Http, data: Dict[str, Any]) -> None:
        self._http = http
        self.process = Process(self)
        self.network = Network(self)
        self._load(data)

    def _load(self, data: Dict[str, Any]) -> None:
        self.id = data["id"]
        self.name = data["name"]
        self.state = data["state"]
        self.snapshot = data["snapshot"]
        self.runtime_class = str(data.get("runtimeClass", "runc"))
        self.organization_id = data["organizationId"]
        self.env = dict(data.get("env", {}))
        self.network_block_all = bool(data.get("networkBlockAll", False))
        self.network_allow_list = data.get("networkAllowList")
        self.domain_allow_list = data.get("domainAllowList")
        self.network_deny_list = data.get("networkDenyList")
        self.domain_deny_list = data.get("domainDenyList")
        self.essential_services = bool(data.get("essentialServices", True))
        self.egress_mbps = data.get("egressMbps")
        self.max_connections = data.get("maxConnections")
        self.new_connections_per_second = data.get("newConnectionsPerSecond")
        self.network_approvals = bool(data.get("networkApprovals", False))
        self.approval_hold_seconds = int(data.get("approvalHoldSeconds", 0))
        self.transfer_quota_mib = data.get("transferQuotaMiB")
        self.http_rules = _http_rules(data.get("httpRules"))
        self.secrets = list(data.get("secrets", []))
        self.effective_network = dict(data.get("effectiveNetwork", {}))
        self.created_at = data["createdAt"]
        self.updated_at = data["updatedAt"]

    def _path(self, rest: str = "") -> str:
        return f"/api/sandbox/{urllib.parse.quote(self.id, safe='')}{rest}"

    @property
    def mode(self) -> str:
        """The effective network mode: ``open``, ``allowlist``,
        ``restricted`` or ``blocked``."""
        return str(self.effective_network.get("mode", ""))

    @property
    def egress_budget_mbps(self) -> Optional[int]:
        """The egress bandwidth in force, Mbit/s (what it asked for or its
        tier's default, within the tier's maximum); ``None``: no limit of
        its own."""
        value = self.effective_network.get("budgets", {}).get("egressMbps")
        return int(value) if value is not None else None

    @property
    def transfer_quota(self) -> Optional[Tuple[int, int]]:
        """The transfer quota in force: MiB both ways a period, and the
        period in seconds (periods start at its multiples since the Unix
        epoch); ``None``: no quota. Past it, nothing passes until the next
        period (a ``budget`` event with reason ``transfer_quota`` says
        so)."""
        budgets = self.effective_network.get("budgets", {})
        mib = budgets.get("transferQuotaMiB")
        if mib is None:
            return None
        return int(mib), int(budgets.get("transferPeriodSeconds", 0))

    @property
    def connection_budget(self) -> Tuple[int, int]:
        """The connection budgets in force: connections at once and new
        connections a second (what it asked for, or its tier's fair
        shares, never above them)."""
        shares = self.effective_network.get("fairShares", {})
        return int(shares.get("connections", 0)), int(shares.get("newConnectionsPerSecond", 0))

    @property
    def egress_address(self) -> Optional[Dict[str, str]]:
        """The known egress address its connections leave from
        (``{"ipv4": ..., "ipv6": ...}``, each family optional), when the
        operator gave its organization one; ``None``: the host's own."""
        egress = self.effective_network.get("egressAddress")
        return dict(egress) if egress else None

    def refresh(self) -> None:
        """Reloads the sandbox from the server."""
        self._load(self._http.request("GET", self._path()))

    def update_network_settings(
        self,
        network_block_all: Optional[bool] = None,
        network_allow_list: Optional[str] = None,
        domain_allow_list: Optional[str] = None,
        network_deny_list: Optional[str] = None,
        domain_deny_list: Optional[str] = None,
        essential_services: Optional[bool] = None,
        egress_mbps: Union[int, Literal["default"], None] = None,
        max_connections: Union[int, Literal["default"], None] = None,
        new_connections_per_second: Union[int, Literal["default"], None] = None,
        network_approvals: Optional[bool] = None,
        approval_hold_seconds: Optional[int] = None,
        transfer_quota_mib: Union[int, Literal["default"], None] = None,
        http_rules: Optional[List[HttpRule]] = None,
    ) -> None:
        """Changes the network settings: what is given replaces the stored
        value, the rest is kept; in force in the kernel when this returns.
        ``"default"`` for a budget (``egress_mbps``, ``max_connections``,
        ``new_connections_per_second``, ``transfer_quota_mib``) goes back
        to the tier's (a new quota keeps what the period counted).
        ``http_rules`` replaces every rule; ``[]`` removes them.
        Refreshes the sandbox from the answer."""
        body: Dict[str, Any] = {}
        for key, budget in (
            ("egressMbps", egress_mbps),
            ("maxConnections", max_connections),
            ("newConnectionsPerSecond", new_connections_per_second),
            ("transferQuotaMiB", transfer_quota_mib),
        ):
            if budget is not None:
                body[key] = None if budget == "default" else budget
        for key, value in (
            ("networkBlockAll", network_block_all),
            ("networkAllowList", network_allow_list),
            ("domainAllowList", domain_allow_list),
            ("networkDenyList", network_deny_list),
            ("domainDenyList", domain_deny_list),
            ("essentialServices", essential_services),
            ("networkApprovals", network_approvals),
            ("approvalHoldSeconds", approval_hold_seconds),
        ):
            if value is not None:
                body[key] = value
        if http_rules is not None:
            body["httpRules"] = [r.to_json() for r in http_rules]
        if not body:
            raise ValueError(
                "update_network_settings: give network_block_all, network_allow_list, "
                "domain_allow_list, network_deny_list, domain_deny_list, "
                "essential_services, egress_mbps, max_connections, "
                "new_connections_per_second, network_approvals, approval_hold_seconds, "
                "transfer_quota_mib or http_rules"
            )
        self._load(self._http.request("POST", self._path("/network-settings"), body))

    def delete(self) -> None:
        """Deletes the sandbox."""
        self._http.request("DELETE", self._path())

    def __repr__(self) -> str:
        return f"Sandbox(id={self.id!r}, name={self.name!r}, mode={self.mode!r})"


class Secrets:
    """The organization's secrets: stored sealed on the server, never
    shown again; a sandbox created with ``secrets=[name, ...]`` holds
    placeholders for them. Storing and removing them needs the
    ``secrets:write`` scope, and a server given a secrets key (else 503
    ``secrets_not_configured``)."""

    def __init__(self, http: _Http) -> None:
        self._http = http

    def create(self, name: str, value: str, hosts: List[str]) -> Secret:
        """Stores a secret: ``name`` is an environment variable's (``A-Z``,
        ``0-9``, ``_``), ``value`` 1 byte to 8 KiB without a control
        character but tab, ``hosts`` the 1 to 16 names or ``*.`` wildcards
        it is sent to. A taken name is a :class:`ConflictError`
        (``secret_exists``)."""
        body: Dict[str, Any] = {"name": name, "value": value, "hosts": list(hosts)}
        return Secret._from(self._http.request("POST", "/api/secrets", body))

    def list(self) -> List[Secret]:
        """The organization's secrets: names, hosts and dates, never
        values."""
        return [Secret._from(x) for x in self._http.request("GET", "/api/secrets")]

    def delete(self, secret: Union[Secret, str]) -> None:
        """Removes a secret (given as itself or its name); a
        :class:`ConflictError` (``secret_in_use``) while a sandbox holds
        it."""
        name = secret.name if isinstance(secret, Secret) else secret
        self._http.request("DELETE", f"/api/secrets/{urllib.parse.quote(name, safe='')}")


class Snapshots:
    """The snapshots sandboxes start from. Listing needs the operator
    token or a key with ``sandboxes:read``; making and removing them, the
    operator token (an organization's key: :class:`PermissionDeniedError`)."""

    def __init__(self, http: _Http) -> None:
        self._http = http

    def create(self, name: str, image: str, timeout: Optional[float] = None) -> Snapshot:
        """Makes snapshot ``name`` from the OCI image ``image``
        (``python:3.12-slim``, ``registry.example.com/team/tool@sha256:...``)
        on every runner, each pulling it from a registry the operator
        configured (another: :class:`ValidationError`,
        ``registry_not_allowed``). One of that name is replaced, unless a
        sandbox uses it (:class:`ConflictError`, ``snapshot_in_use``). A
        large image takes a while: ``timeout`` is the seconds to wait."""
        body: Dict[str, Any] = {"name": name, "image": image}
        return Snapshot._from(self._http.request("POST", "/api/snapshots", body, timeout))

    def upload(self, name: str, archive: str, timeout: Optional[float] = None) -> Snapshot:
        """Makes snapshot ``name`` on every runner from the root filesystem
        tar archive at the path ``archive`` (plain or gzip: what ``docker
        export`` writes), sent as it is read. A hostile or broken archive
        is a :class:`ValidationError` (``invalid_request``); one over the
        server's limit, a :class:`PayloadTooLargeError`."""
        path = f"/api/snapshots/{urllib.parse.quote(name, safe='')}"
        return Snapshot._from(self._http.upload(path, archive, timeout))

    def list(self) -> List[Snapshot]:
        """The snapshots, with the runners that hold each."""
        return [Snapshot._from(x) for x in self._http.request("GET", "/api/snapshots")]

    def delete(self, snapshot: Union[Snapshot, str]) -> None:
        """Removes a snapshot (given as itself or its name) from every
        runner; a :class:`ConflictError` (``snapshot_in_use``) while a
        sandbox uses it."""
        name = snapshot.name if isinstance(snapshot, Snapshot) else snapshot
        self._http.request("DELETE", f"/api/snapshots/{urllib.parse.quote(name, safe='')}")


class Sandgate:
    """A client of a sandgate server.

    ``api_url`` and ``api_key`` default to ``SANDGATE_API_URL`` (else
    ``http://127.0.0.1:8080``) and ``SANDGATE_API_KEY``. ``timeout`` is the
    seconds an HTTP call may take (an exec with a timeout gets more).
    ``max_retries``: how many times a request answered 429 or 503 with
    ``Retry-After`` (the server did nothing) is sent again after the wait
    it asks for (at most 60 s each); the last answer's error is raised,
    with its ``retry_after``.
    """

    def __init__(
        self,
        api_url: Optional[str] = None,
        api_key: Optional[str] = None,
        timeout: float = 120.0,
        max_retries: int = 2,
    ) -> None:
        # An empty value is no value, as in the other SDKs.
        url = api_url or os.environ.get("SANDGATE_API_URL") or DEFAULT_API_URL
        key = api_key or os.environ.get("SANDGATE_API_KEY")
        if not key:
            raise SandgateError(
                "no API key: pass api_key= or set SANDGATE_API_KEY", code="missing_api_key"
            )
        self._http = _Http(url, key, timeout, max_retries)

    @property
    def secrets(self) -> Secrets:
        """The organization's secrets: ``create``, ``list``, ``delete``."""
        return Secrets(self._http)

    @property
    def snapshots(self) -> Snapshots:
        """The snapshots sandboxes start from: ``create`` (from an OCI
        image), ``list``, ``delete``."""
        return Snapshots(self._http)

    def create(
        self, params: Optional[CreateSandboxBaseParams] = None, timeout: Optional[float] = None
    ) -> Sandbox:
        """Creates a sandbox; it is running, its policy enforced, when this
        returns."""
        body = (params or CreateSandboxFromSnapshotParams()).to_json()
        return Sandbox(self._http, self._http.request("POST", "/api/sandbox", body, timeout))

    def get(self, sandbox_id_or_name: str) -> Sandbox:
        """One sandbox, by id or name."""
        path = f"/api/sandbox/{urllib.parse.quote(sandbox_id_or_name, safe='')}"
        return Sandbox(self._http, self._http.request("GET", path))

    def list(self) -> List[Sandbox]:
        """The organization's sandboxes."""
        return [Sandbox(self._http, s) for s in self._http.request("GET", "/api/sandbox")]

    def delete(self, sandbox: Union[Sandbox, str]) -> None:
        """Deletes a sandbox (given as itself, its id or its name)."""
        key = sandbox.id if isinstance(sandbox, Sandbox) else sandbox
        self._http.request("DELETE", f"/api/sandbox/{urllib.parse.quote(key, safe='')}")
