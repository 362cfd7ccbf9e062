"""The Python SDK against a real sandgate server in the lab.

Run by ``crates/sandgate/tests/sdk.rs``, which builds the lab, starts the
server and passes, in the environment: the server (``SANDGATE_API_URL``),
a tier-3 key (``SANDGATE_API_KEY``), a tier-1 key
(``SANDGATE_TEST_TIER1_KEY``), and two lab servers with a TCP echo
(``SANDGATE_TEST_SERVER``, ``SANDGATE_TEST_OTHER``, ``SANDGATE_TEST_PORT``);
a key of an organization the operator gave a known egress address
(``SANDGATE_TEST_EGRESS_KEY``, ``SANDGATE_TEST_EGRESS4``), and the port of
the lab's service that answers with the address a connection came from
(``SANDGATE_TEST_WHOAMI_PORT``). Only lab (TEST-NET) addresses are ever probed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import time
import unittest
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Tuple

from sandgate import (
    AsyncSandbox,
    AsyncSandgate,
    ConflictError,
    CreateSandboxFromSnapshotParams,
    Flow,
    FlowLog,
    HttpRule,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    Sandbox,
    Sandgate,
    SandgateError,
    ValidationError,
)
from sandgate.client import _Http

TEST_NETS = [
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
]


def lab_address(var: str) -> str:
    """A lab server's address from the environment, refused unless it is
    in a TEST-NET range (the lab rule)."""
    addr = os.environ[var]
    if not any(ipaddress.ip_address(addr) in net for net in TEST_NETS):
        raise AssertionError(f"{var}={addr} is not a lab address")
    return addr


SERVER = lab_address("SANDGATE_TEST_SERVER")
OTHER = lab_address("SANDGATE_TEST_OTHER")
PORT = int(os.environ.get("SANDGATE_TEST_PORT", "7"))
EGRESS4 = lab_address("SANDGATE_TEST_EGRESS4")
WHOAMI_PORT = int(os.environ.get("SANDGATE_TEST_WHOAMI_PORT", "113"))


def echoes(sandbox: Sandbox, dest: str) -> bool:
    """Whether the lab's TCP echo at ``dest`` answers from inside."""
    r = sandbox.process.exec(f"echo sandgate | nc -w 1 {dest} {PORT}", timeout=10)
    return r.stdout == "sandgate\n"


class RecordingHttp(_Http):
    """No server: every request is kept and answered with ``view`` (a
    sandbox as the API shows it), so what the SDK sends and what it reads
    back are seen alone."""

    def __init__(self, view: Dict[str, Any]) -> None:
        super().__init__("http://sandgate.invalid", "sg_unused", 1.0)
        self.view = view
        self.sent: List[Tuple[str, str, Optional[Dict[str, Any]]]] = []

    def request(
        self,
        method: str,
        path: str,
        body: Optional[Dict[str, Any]] = None,
        timeout: Optional[float] = None,
    ) -> Any:
        self.sent.append((method, path, body))
        return self.view


class SdkTest(unittest.TestCase):
    made: List[Sandbox]

    def setUp(self) -> None:
        self.sandgate = Sandgate()
        self.made = []

    def tearDown(self) -> None:
        for s in self.made:
            try:
                s.delete()
            except NotFoundError:
                pass

    def create(self, params: CreateSandboxFromSnapshotParams) -> Sandbox:
        s = self.sandgate.create(params)
        self.made.append(s)
        return s

    def test_open_by_default_and_exec(self) -> None:
        s = self.create(CreateSandboxFromSnapshotParams())
        self.assertEqual(s.mode, "open")
        r = s.process.exec("echo out; echo err >&2; exit 3", env={"A": "b"})
        self.assertEqual((r.exit_code, r.stdout, r.stderr), (3, "out\n", "err\n"))
        self.assertEqual(r.result, "out\nerr\n")
        self.assertEqual(s.process.exec('echo "$A"', env={"A": "b"}).stdout, "b\n")
        self.assertEqual(s.process.exec("pwd", cwd="/tmp").stdout, "/tmp\n")
        r = s.process.exec("sleep 30", timeout=1)
        self.assertTrue(r.timed_out)
        self.assertTrue(echoes(s, OTHER))

    def test_the_allow_list_sample_reaches_its_entries_only(self) -> None:
        # The reference's first sample, three entries, with lab addresses.
        s = self.create(
            CreateSandboxFromSnapshotParams(
                network_allow_list=f"{SERVER}/32,192.0.2.77/32,198.51.100.128/25"
            )
        )
        self.assertEqual(s.mode, "allowlist")
        self.assertEqual(s.network_allow_list, f"{SERVER}/32,192.0.2.77/32,198.51.100.128/25")
        self.assertTrue(echoes(s, SERVER))
        self.assertFalse(echoes(s, OTHER))
        x = s.network.explain(f"{OTHER}:{PORT}")
        self.assertEqual((x.allowed, x.reason), (False, "not_in_allow_list"))
        t = s.network.test([f"{SERVER}:{PORT}", f"{OTHER}:{PORT}"])
        self.assertTrue(t.ok)
        self.assertEqual([r.observed for r in t.results], [True, False])

    def test_the_block_all_sample_reaches_nothing_and_still_runs_commands(self) -> None:
        s = self.create(CreateSandboxFromSnapshotParams(network_block_all=True))
        self.assertEqual(s.mode, "blocked")
        self.assertFalse(echoes(s, SERVER))
        self.assertFalse(echoes(s, OTHER))
        self.assertEqual(s.process.exec("echo ran").stdout, "ran\n")

    def test_block_all_wins_over_an_allow_list(self) -> None:
        s = self.create(
            CreateSandboxFromSnapshotParams(
                network_allow_list=f"{SERVER}/32", network_block_all=True
            )
        )
        self.assertEqual(s.mode, "blocked")
        inactive = s.effective_network["inactive"]
        self.assertEqual(inactive[0]["setting"], "networkAllowList")
        self.assertFalse(echoes(s, SERVER))

    def test_an_update_replaces_what_it_sends_and_keeps_the_rest(self) -> None:
        s = self.create(
            CreateSandboxFromSnapshotParams(
                network_allow_list=f"{SERVER}/32", domain_allow_list="example.com"
            )
        )
        self.assertTrue(echoes(s, SERVER))
        with self.assertRaises(ValueError):
            s.update_network_settings()
        s.update_network_settings(network_allow_list=f"{OTHER}/32")
        # The sandbox was refreshed from the answer.
        self.assertEqual(s.network_allow_list, f"{OTHER}/32")
        self.assertEqual(s.domain_allow_list, "example.com")
        self.assertTrue(echoes(s, OTHER))
        self.assertFalse(echoes(s, SERVER))
        s.update_network_settings(network_block_all=True)
        self.assertEqual(s.mode, "blocked")
        self.assertFalse(echoes(s, OTHER))

    def test_a_deny_list_subtracts_from_open_mode_and_wins_over_an_allow_list(
        self,
    ) -> None:
        s = self.create(CreateSandboxFromSnapshotParams(network_deny_list=f"{SERVER}/32"))
        self.assertEqual(s.mode, "open")
        self.assertEqual(s.network_deny_list, f"{SERVER}/32")
        self.assertFalse(echoes(s, SERVER))
        self.assertTrue(echoes(s, OTHER))
        why = s.network.explain(f"{SERVER}:{PORT}")
        self.assertEqual(
            (why.allowed, why.reason), (False, f"network_deny_list:{SERVER}/32")
        )
        # An allow list that names it does not open it: deny wins.
        s.update_network_settings(network_allow_list=f"{SERVER}/32,{OTHER}/32")
        self.assertEqual(s.mode, "allowlist")
        self.assertFalse(echoes(s, SERVER))
        self.assertTrue(echoes(s, OTHER))
        # Removed, it opens at once; the essential services can be off.
        s.update_network_settings(network_deny_list="", essential_services=False)
        self.assertIsNone(s.network_deny_list)
        self.assertFalse(s.essential_services)
        self.assertFalse(s.effective_network["essentialServices"])
        self.assertTrue(echoes(s, SERVER))
        with self.assertRaises(ValidationError) as bad:
            s.update_network_settings(domain_deny_list="https://example.com/x")
        self.assertEqual(bad.exception.code, "invalid_domain_deny_list")
        self.assertIn("example.com", bad.exception.message)
        small = Sandgate(api_key=os.environ["SANDGATE_TEST_TIER1_KEY"])
        with self.assertRaises(PermissionDeniedError) as refused:
            small.create(CreateSandboxFromSnapshotParams(network_deny_list=f"{SERVER}/32"))
        self.assertEqual(refused.exception.code, "network_restricted_by_tier")

    def test_http_rules_are_sent_without_what_is_left_out_and_read_back(self) -> None:
        rules = [
            HttpRule("api.example.com", methods=["GET", "HEAD"], paths=["/repos/**"]),
            HttpRule("*.example.net", paths=["/x"]),
            HttpRule("static.example.com"),
        ]
        wire: List[Dict[str, Any]] = [
            {"host": "api.example.com", "methods": ["GET", "HEAD"], "paths": ["/repos/**"]},
            {"host": "*.example.net", "paths": ["/x"]},
            {"host": "static.example.com"},
        ]
        self.assertEqual([r.to_json() for r in rules], wire)
        self.assertEqual(
            CreateSandboxFromSnapshotParams(name="r", http_rules=rules).to_json(),
            {"name": "r", "httpRules": wire},
        )
        self.assertNotIn("httpRules", CreateSandboxFromSnapshotParams().to_json())
        view: Dict[str, Any] = {
            "id": "sb-1",
            "name": "r",
            "state": "running",
            "snapshot": "busybox",
            "organizationId": "org-1",
            "httpRules": wire,
            "effectiveNetwork": {"mode": "open", "httpRules": wire},
            "createdAt": "2024-01-01T00:00:00Z",
            "updatedAt": "2024-01-01T00:00:00Z",
        }
        http = RecordingHttp(view)
        self.sandgate._http = http
        s = self.sandgate.create(CreateSandboxFromSnapshotParams(http_rules=rules))
        self.assertEqual(http.sent, [("POST", "/api/sandbox", {"httpRules": wire})])
        self.assertEqual(s.http_rules, rules)
        self.assertEqual(s.effective_network["httpRules"], wire)
        # `[]` is sent (it removes them); absent in the answer is None.
        http.view = {k: v for k, v in view.items() if k != "httpRules"}
        http.view["effectiveNetwork"] = {"mode": "open"}
        s.update_network_settings(http_rules=[])
        self.assertEqual(
            http.sent[-1], ("POST", "/api/sandbox/sb-1/network-settings", {"httpRules": []})
        )
        self.assertIsNone(s.http_rules)
        with self.assertRaises(ValueError) as nothing:
            s.update_network_settings()
        self.assertIn("http_rules", str(nothing.exception))

        async def twin() -> None:
            http.view = view
            a = AsyncSandbox(s)
            await a.update_network_settings(http_rules=rules[2:])
            self.assertEqual(http.sent[-1][2], {"httpRules": [{"host": "static.example.com"}]})
            self.assertEqual(a.http_rules, rules)

        asyncio.run(twin())

    def test_http_rules_are_kept_canonical_and_removed_by_an_empty_list(self) -> None:
        rules = [
            HttpRule("api.example.com", methods=["GET", "HEAD"], paths=["/repos/**"]),
            HttpRule("*.example.net"),
        ]
        s = self.create(CreateSandboxFromSnapshotParams(http_rules=rules))
        self.assertEqual(s.http_rules, rules)
        self.assertEqual(s.effective_network["httpRules"], [r.to_json() for r in rules])
        self.assertEqual(self.sandgate.get(s.id).http_rules, rules)
        # An update replaces them all; hosts come back in lower case,
        # methods sorted and without duplicates.
        s.update_network_settings(
            http_rules=[HttpRule("API.example.com", methods=["HEAD", "GET", "GET"])]
        )
        self.assertEqual(s.http_rules, [HttpRule("api.example.com", methods=["GET", "HEAD"])])
        s.update_network_settings(http_rules=[])
        self.assertIsNone(s.http_rules)
        self.assertNotIn("httpRules", s.effective_network)
        self.assertIsNone(self.sandgate.get(s.id).http_rules)
        with self.assertRaises(ValidationError) as bad:
            s.update_network_settings(http_rules=[HttpRule("api.example.com", methods=["get"])])
        self.assertEqual((bad.exception.status, bad.exception.code), (400, "invalid_http_rules"))
        self.assertEqual(bad.exception.details["problems"][0]["entry"], "api.example.com")
        small = Sandgate(api_key=os.environ["SANDGATE_TEST_TIER1_KEY"])
        with self.assertRaises(PermissionDeniedError) as refused:
            small.create(CreateSandboxFromSnapshotParams(http_rules=rules))
        self.assertEqual(refused.exception.code, "network_restricted_by_tier")

    def test_a_grant_opens_an_address_for_its_time_and_goes_when_revoked(self) -> None:
        s = self.create(CreateSandboxFromSnapshotParams(network_allow_list=f"{SERVER}/32"))
        self.assertFalse(echoes(s, OTHER))
        g = s.network.grant(OTHER, ttl_seconds=600, reason="fetch a dependency")
        self.assertEqual(g.target, f"{OTHER}/32")
        self.assertLessEqual(g.seconds_left, 600)
        self.assertTrue(echoes(s, OTHER))
        self.assertEqual([x.id for x in s.network.grants()], [g.id])
        self.assertEqual(s.network.explain(OTHER).reason, f"grant:{g.id}")
        s.network.revoke(g)
        self.assertFalse(echoes(s, OTHER))
        self.assertEqual(s.network.grants(), [])
        with self.assertRaises(ValidationError) as bad:
            s.network.grant(OTHER, ttl_seconds=0)
        self.assertEqual(bad.exception.code, "invalid_grant_ttl")
        with self.assertRaises(ConflictError) as open_mode:
            self.create(CreateSandboxFromSnapshotParams()).network.grant(OTHER, ttl_seconds=60)
        self.assertEqual(open_mode.exception.code, "grant_not_needed")

    def test_network_events_list_and_follow_what_was_denied(self) -> None:
        s = self.create(CreateSandboxFromSnapshotParams(network_allow_list=f"{SERVER}/32"))
        self.assertFalse(echoes(s, OTHER))
        denied = next(
            e for e in s.network.events(follow=True) if e.destination == OTHER
        )
        self.assertEqual((denied.kind, denied.reason), ("connection", "not_in_allow_list"))
        self.assertEqual((denied.port, denied.sandbox), (PORT, s.id))
        self.assertIn(denied, list(s.network.events()))

    def test_the_flow_log_records_allowed_and_denied_connections(self) -> None:
        s = self.create(CreateSandboxFromSnapshotParams(network_allow_list=f"{SERVER}/32"))
        self.assertTrue(echoes(s, SERVER))
        self.assertFalse(echoes(s, OTHER))

        def found(log: FlowLog) -> Tuple[Optional[Flow], Optional[Flow]]:
            to = {(f.destination, f.port, f.allowed, f.protocol): f for f in log.flows}
            return to.get((SERVER, PORT, True, "tcp")), to.get((OTHER, PORT, False, "tcp"))

        # The records reach the log as the kernel reports them: polled.
        deadline = time.monotonic() + 10
        log = s.network.flows()
        while None in found(log) and time.monotonic() < deadline:
            time.sleep(0.5)
            log = s.network.flows()
        allowed, denied = found(log)
        assert allowed is not None and denied is not None, log
        self.assertIsInstance(log.dropped, int)
        self.assertEqual(
            (allowed.verdict, allowed.via, allowed.reason),
            ("allowed", "kernel", f"allow_list:{SERVER}/32"),
        )
        self.assertIsNotNone(allowed.source_port)
        self.assertEqual(denied.verdict, "denied")
        self.assertEqual(denied.reason, "not_in_allow_list")
        ids = [f.id for f in log.flows]
        self.assertEqual(ids, sorted(ids))
        # The last `limit` only; none that ended before `since` (a denied
        # flow ends as it starts).
        last = s.network.flows(limit=1)
        self.assertEqual(len(last.flows), 1)
        self.assertGreaterEqual(last.flows[0].id, max(ids))
        later = s.network.flows(since=denied.start_ms + 1)
        self.assertNotIn(denied.id, [f.id for f in later.flows])
        # Followed: the records first (then each new one).
        followed = next(f for f in s.network.follow_flows() if f.id == denied.id)
        self.assertEqual(followed, denied)
        twin = asyncio.run(AsyncSandbox(s).network.flows())
        self.assertIn(denied, twin.flows)

    def test_flow_records_and_secrets_are_read_and_sent_as_the_api_writes_them(self) -> None:
        self.assertEqual(
            CreateSandboxFromSnapshotParams(secrets=["GH_TOKEN"]).to_json(),
            {"secrets": ["GH_TOKEN"]},
        )
        self.assertNotIn("secrets", CreateSandboxFromSnapshotParams().to_json())
        view: Dict[str, Any] = {
            "id": "sb-1",
            "name": "f",
            "state": "running",
            "snapshot": "busybox",
            "organizationId": "org-1",
            "env": {"GH_TOKEN": "sg_secret_00"},
            "secrets": ["GH_TOKEN"],
            "effectiveNetwork": {"mode": "open"},
            "createdAt": "2024-01-01T00:00:00Z",
            "updatedAt": "2024-01-01T00:00:00Z",
        }
        http = RecordingHttp(view)
        s = Sandbox(http, view)
        self.assertEqual((s.secrets, s.env), (["GH_TOKEN"], {"GH_TOKEN": "sg_secret_00"}))
        http.view = {
            "flows": [
                {
                    "id": 3,
                    "startMs": 10,
                    "endMs": None,
                    "protocol": "tcp",
                    "source": "10.77.0.3",
                    "sourcePort": 40000,
                    "destination": "192.0.2.10",
                    "port": 443,
                    "name": "a.example",
                    "nameSource": "sni",
                    "bytesOut": 1,
                    "bytesIn": 2,
                    "verdict": "allowed",
                    "reason": "domain_allow_list:a.example",
                    "rule": None,
                    "via": "gateway",
                },
                {
                    "id": 4,
                    "startMs": 11,
                    "endMs": 11,
                    "protocol": "icmp",
                    "source": "10.77.0.3",
                    "sourcePort": None,
                    "destination": "198.51.100.7",
                    "port": None,
                    "name": None,
                    "nameSource": None,
                    "bytesOut": 0,
                    "bytesIn": 0,
                    "verdict": "denied",
                    "reason": "not_in_allow_list",
                    "rule": None,
                    "via": "kernel",
                },
            ],
            "dropped": 5,
        }
        log = s.network.flows(since=1000, limit=2)
        self.assertEqual(
            http.sent[-1], ("GET", "/api/sandbox/sb-1/network/flows?since=1000&limit=2", None)
        )
        self.assertEqual(log.dropped, 5)
        self.assertEqual(
            log.flows[0],
            Flow(
                id=3,
                start_ms=10,
                protocol="tcp",
                source="10.77.0.3",
                destination="192.0.2.10",
                bytes_out=1,
                bytes_in=2,
                verdict="allowed",
                reason="domain_allow_list:a.example",
                via="gateway",
                source_port=40000,
                port=443,
                name="a.example",
                name_source="sni",
            ),
        )
        refused = log.flows[1]
        self.assertEqual((refused.end_ms, refused.port, refused.allowed), (11, None, False))
        s.network.flows()
        self.assertEqual(http.sent[-1][1], "/api/sandbox/sb-1/network/flows")
        self.sandgate._http = http
        http.view = {}
        self.sandgate.secrets.delete("GH_TOKEN")
        self.assertEqual(http.sent[-1], ("DELETE", "/api/secrets/GH_TOKEN", None))

    def test_a_secret_is_held_as_a_placeholder_and_removed_when_no_sandbox_holds_it(
        self,
    ) -> None:
        value = "tok_of_the_python_sdk"
        secret = self.sandgate.secrets.create("SDK_TOKEN", value, ["api.example.com"])
        self.assertEqual((secret.name, secret.hosts), ("SDK_TOKEN", ["api.example.com"]))
        self.assertTrue(secret.created_at)
        self.assertIn(secret, self.sandgate.secrets.list())
        self.assertIn(secret, asyncio.run(AsyncSandgate().secrets.list()))
        # Listed without its value: names, hosts and dates only.
        raw = self.sandgate._http.request("GET", "/api/secrets")
        self.assertNotIn(value, json.dumps(raw))
        self.assertEqual(
            [sorted(x) for x in raw if x["name"] == "SDK_TOKEN"], [["createdAt", "hosts", "name"]]
        )
        with self.assertRaises(ConflictError) as taken:
            self.sandgate.secrets.create("SDK_TOKEN", "another", ["api.example.com"])
        self.assertEqual(taken.exception.code, "secret_exists")
        with self.assertRaises(ValidationError) as bad:
            self.sandgate.secrets.create("not-a-variable", value, ["api.example.com"])
        self.assertEqual(bad.exception.code, "invalid_secret_name")
        # A sandbox holds a placeholder of its own, never the value.
        s = self.create(CreateSandboxFromSnapshotParams(secrets=["SDK_TOKEN"]))
        self.assertEqual(s.secrets, ["SDK_TOKEN"])
        placeholder = s.env["SDK_TOKEN"]
        self.assertTrue(placeholder.startswith("sg_secret_"), placeholder)
        self.assertNotIn(value, placeholder)
        self.assertEqual(s.process.exec('echo "$SDK_TOKEN"').stdout, f"{placeholder}\n")
        self.assertEqual(self.sandgate.get(s.id).env["SDK_TOKEN"], placeholder)
        with self.assertRaises(ValidationError) as unknown:
            self.sandgate.create(CreateSandboxFromSnapshotParams(secrets=["NO_SUCH_SECRET"]))
        self.assertEqual(unknown.exception.code, "unknown_secret")
        with self.assertRaises(ConflictError) as held:
            self.sandgate.secrets.delete(secret)
        self.assertEqual(held.exception.code, "secret_in_use")
        s.delete()
        self.sandgate.secrets.delete("SDK_TOKEN")
        self.assertNotIn("SDK_TOKEN", [x.name for x in self.sandgate.secrets.list()])
        with self.assertRaises(NotFoundError):
            self.sandgate.secrets.delete("SDK_TOKEN")

    def test_a_refused_connection_asks_and_its_owner_approves_or_denies(self) -> None:
        s = self.create(
            CreateSandboxFromSnapshotParams(
                network_allow_list=f"{SERVER}/32", network_approvals=True
            )
        )
        self.assertTrue(s.network_approvals)
        self.assertEqual(s.effective_network["approvals"], {"holdSeconds": 0})
        self.assertFalse(echoes(s, OTHER))
        # The callback style: follow the pending requests, decide each.
        for request in s.network.requests(follow=True, state="pending"):
            if request.target == OTHER:
                self.assertEqual((request.kind, request.port), ("address", PORT))
                approved = s.network.approve(request, ttl_seconds=600)
                break
        self.assertEqual(approved.state, "approved")
        self.assertTrue(echoes(s, OTHER))
        self.assertEqual([g.id for g in s.network.grants()], [approved.grant_id])
        # A refused name: denied, it stays so.
        s.process.exec("nslookup denied.example.org", timeout=10)
        # Its request opens as the refusal reaches the server: followed.
        name = next(r for r in s.network.requests(follow=True) if r.kind == "name")
        self.assertEqual((name.target, name.pending), ("denied.example.org", True))
        self.assertEqual(s.network.deny(name.id).state, "denied")
        with self.assertRaises(ConflictError) as decided:
            s.network.approve(name)
        self.assertEqual(decided.exception.code, "request_decided")
        self.assertEqual([r.state for r in s.network.requests(state="denied")], ["denied"])
        with self.assertRaises(ValidationError) as bad:
            s.update_network_settings(approval_hold_seconds=61)
        self.assertEqual(bad.exception.code, "invalid_approval_hold")

    def test_an_egress_budget_is_asked_at_create_and_changed_by_update(self) -> None:
        s = self.create(CreateSandboxFromSnapshotParams(egress_mbps=25))
        self.assertEqual((s.egress_mbps, s.egress_budget_mbps), (25, 25))
        self.assertTrue(echoes(s, OTHER))
        s.update_network_settings(egress_mbps=80)
        self.assertEqual(s.egress_budget_mbps, 80)
        s.update_network_settings(egress_mbps="default")
        self.assertIsNone(s.egress_mbps)
        self.assertIsNone(s.egress_budget_mbps)
        with self.assertRaises(ValidationError) as bad:
            s.update_network_settings(egress_mbps=0)
        self.assertEqual(bad.exception.code, "invalid_budget")

    def test_a_busy_server_is_asked_again_after_the_wait_it_says(self) -> None:
        # The organization's every exec permit held by a sleep: one more is
        # 429 with Retry-After; a client that retries gets through once a
        # sleep ends, one that does not is told how long to wait.
        n = int(os.environ["SANDGATE_TEST_EXECS_PER_ORG"])
        s = self.create(CreateSandboxFromSnapshotParams())
        with ThreadPoolExecutor(n) as pool:
            busy = [pool.submit(s.process.exec, "sleep 3", timeout=30) for _ in range(n)]
            time.sleep(1)
            with self.assertRaises(RateLimitError) as refused:
                Sandgate(max_retries=0).get(s.id).process.exec("true")
            self.assertEqual(refused.exception.retry_after, 1)
            patient = Sandgate(max_retries=20).get(s.id)
            self.assertEqual(patient.process.exec("echo through").stdout, "through\n")
            self.assertTrue(all(b.result().exit_code == 0 for b in busy))

    def test_a_transfer_quota_stops_the_sandbox_once_spent(self) -> None:
        day = 86_400
        s = self.create(CreateSandboxFromSnapshotParams(transfer_quota_mib=1))
        self.assertEqual((s.transfer_quota_mib, s.transfer_quota), (1, (1, day)))
        spent_on = int(time.time()) // day
        # The lab's byte stream, read until the quota stops it.
        got = s.process.exec(f"timeout 3 nc {OTHER} 19 | wc -c", timeout=20).stdout
        self.assertLess(int(got.strip()), 1 << 20)
        self.assertGreater(int(got.strip()), 1 << 19)
        if int(time.time()) // day == spent_on:
            self.assertFalse(echoes(s, OTHER))
        budget = next(e for e in s.network.events(follow=True) if e.kind == "budget")
        self.assertEqual(budget.reason, "transfer_quota")
        usage = s.network.transfer_usage()
        assert usage is not None
        self.assertEqual((usage.quota_bytes, usage.used_bytes), (1 << 20, 1 << 20))
        self.assertEqual(usage.period_end_ms - usage.period_start_ms, day * 1000)
        if int(time.time()) // day == spent_on:
            self.assertTrue(usage.spent)
        # No quota of its own, and none by default: it reaches again.
        s.update_network_settings(transfer_quota_mib="default")
        self.assertEqual((s.transfer_quota_mib, s.transfer_quota), (None, None))
        self.assertIsNone(s.network.transfer_usage())
        self.assertTrue(echoes(s, OTHER))
        with self.assertRaises(ValidationError) as bad:
            s.update_network_settings(transfer_quota_mib=0)
        self.assertEqual(bad.exception.code, "invalid_budget")

    def test_a_connection_budget_caps_what_the_sandbox_holds_at_once(self) -> None:
        # Two connections held open for 3 s, then a third tried.
        third = (
            f"for i in 1 2; do (sleep 3 | nc {OTHER} {PORT} >/dev/null 2>&1 &); done; "
            f"sleep 1; echo third | nc -w 1 {OTHER} {PORT}"
        )
        s = self.create(CreateSandboxFromSnapshotParams(max_connections=2))
        self.assertEqual((s.max_connections, s.connection_budget[0]), (2, 2))
        self.assertNotIn("third", s.process.exec(third, timeout=15).stdout)
        s.update_network_settings(max_connections="default")
        self.assertIsNone(s.max_connections)
        self.assertGreater(s.connection_budget[0], 2)
        self.assertIn("third", s.process.exec(third, timeout=15).stdout)
        with self.assertRaises(ValidationError) as bad:
            s.update_network_settings(new_connections_per_second=0)
        self.assertEqual(bad.exception.code, "invalid_budget")

    def test_a_known_egress_address_is_where_connections_leave_from(self) -> None:
        def seen_from(sandbox: Sandbox) -> str:
            r = sandbox.process.exec(f"nc -w 2 {SERVER} {WHOAMI_PORT} </dev/null", timeout=10)
            return r.stdout.strip()

        known = Sandgate(api_key=os.environ["SANDGATE_TEST_EGRESS_KEY"])
        s = known.create(CreateSandboxFromSnapshotParams())
        self.made.append(s)
        self.assertEqual((s.egress_address or {}).get("ipv4"), EGRESS4)
        self.assertEqual(seen_from(s), EGRESS4)
        other = self.create(CreateSandboxFromSnapshotParams())
        self.assertIsNone(other.egress_address)
        self.assertNotEqual(seen_from(other), EGRESS4)

    def test_a_sandbox_runs_under_its_tiers_runtime_class_and_no_other(self) -> None:
        s = self.create(CreateSandboxFromSnapshotParams())
        self.assertEqual(s.runtime_class, "runc")
        # The test server's tiers allow runc alone.
        with self.assertRaises(PermissionDeniedError) as refused:
            self.sandgate.create(CreateSandboxFromSnapshotParams(runtime_class="runsc"))
        self.assertEqual(
            (refused.exception.status, refused.exception.code),
            (403, "runtime_class_not_allowed"),
        )

    def test_bad_input_and_tiers_raise_typed_errors_with_code_and_message(self) -> None:
        with self.assertRaises(ValidationError) as bad:
            self.sandgate.create(
                CreateSandboxFromSnapshotParams(network_allow_list="192.0.2.300/32")
            )
        self.assertEqual(bad.exception.code, "invalid_network_allow_list")
        self.assertEqual(bad.exception.status, 400)
        self.assertIn("192.0.2.300", bad.exception.message)
        small = Sandgate(api_key=os.environ["SANDGATE_TEST_TIER1_KEY"])
        with self.assertRaises(PermissionDeniedError) as refused:
            small.create(CreateSandboxFromSnapshotParams(network_allow_list=f"{SERVER}/32"))
        self.assertEqual(refused.exception.code, "network_restricted_by_tier")
        restricted = small.create(CreateSandboxFromSnapshotParams())
        self.made.append(restricted)
        self.assertEqual(restricted.mode, "restricted")
        self.assertFalse(echoes(restricted, OTHER))
        with self.assertRaises(SandgateError) as unauthorized:
            Sandgate(api_key="sg_not-a-key").list()
        self.assertEqual(unauthorized.exception.status, 401)

    def test_the_operator_makes_a_snapshot_from_an_image_that_sandboxes_start_from(
        self,
    ) -> None:
        image = os.environ["SANDGATE_TEST_IMAGE"]
        self.assertIn("busybox", [x.name for x in self.sandgate.snapshots.list()])
        # An organization's key lists, never makes.
        with self.assertRaises(PermissionDeniedError):
            self.sandgate.snapshots.create("py-app", image)
        operator = Sandgate(api_key=os.environ["SANDGATE_TEST_OPERATOR_TOKEN"])
        made = operator.snapshots.create("py-app", image)
        self.assertEqual((made.name, made.image, made.runners), ("py-app", image, ["main"]))
        self.assertTrue((made.digest or "").startswith("sha256:"), made)
        with self.assertRaises(ValidationError) as refused:
            operator.snapshots.create("py-other", "python:3.12-slim")
        self.assertEqual(refused.exception.code, "registry_not_allowed")
        s = self.create(CreateSandboxFromSnapshotParams(snapshot="py-app"))
        self.assertEqual(s.process.exec("cat /etc/app.conf").stdout, "from the image\n")
        with self.assertRaises(ConflictError) as busy:
            operator.snapshots.delete(made)
        self.assertEqual(busy.exception.code, "snapshot_in_use")
        s.delete()
        operator.snapshots.delete("py-app")
        self.assertNotIn("py-app", [x.name for x in operator.snapshots.list()])
        # From an archive instead.
        up = operator.snapshots.upload("py-up", os.environ["SANDGATE_TEST_ARCHIVE"])
        self.assertEqual((up.name, up.runners), ("py-up", ["main"]))
        s = self.create(CreateSandboxFromSnapshotParams(snapshot="py-up"))
        self.assertEqual(s.process.exec("cat /etc/app.conf").stdout, "from the archive\n")
        s.delete()
        operator.snapshots.delete(up)

    def test_get_list_and_delete(self) -> None:
        s = self.create(CreateSandboxFromSnapshotParams(name="sdk-named"))
        self.assertEqual(self.sandgate.get("sdk-named").id, s.id)
        self.assertIn(s.id, [x.id for x in self.sandgate.list()])
        self.sandgate.delete(s)
        with self.assertRaises(NotFoundError):
            self.sandgate.get(s.id)

    def test_the_async_twin(self) -> None:
        async def run() -> None:
            client = AsyncSandgate()
            s = await client.create(CreateSandboxFromSnapshotParams(network_block_all=True))
            try:
                self.assertEqual(s.mode, "blocked")
                r = await s.process.exec("echo async")
                self.assertEqual(r.stdout, "async\n")
                await s.update_network_settings(network_block_all=False)
                self.assertEqual(s.mode, "open")
                await s.update_network_settings(
                    network_allow_list=f"{SERVER}/32", network_approvals=True
                )
                self.assertTrue(s.network_approvals)
                await s.process.exec(f"nc -w 1 {OTHER} {PORT} </dev/null")
                async for request in s.network.requests(follow=True):
                    if request.target == OTHER:
                        break
                self.assertEqual(request.state, "pending")
                await s.network.approve(request)
                await s.refresh()
                self.assertIn(f"{OTHER}/32", s.sync.network_allow_list or "")
            finally:
                await client.delete(s)

        asyncio.run(run())


if __name__ == "__main__":
    unittest.main()
