# frozen_string_literal: true

# The Ruby SDK against a real sandgate server in the lab: run by
# crates/sandgate/tests/sdk.rs, which builds the lab, starts the server and
# passes the server, a tier-3 key, a tier-1 key and two lab echo servers
# in the environment. Only lab (TEST-NET) addresses are ever probed.

require "ipaddr"
require "minitest/autorun"
require_relative "../lib/sandgate"

TEST_NETS = %w[192.0.2.0/24 198.51.100.0/24 203.0.113.0/24 2001:db8::/32].map { |n| IPAddr.new(n) }

def lab_address(var)
  addr = ENV.fetch(var)
  raise "#{var}=#{addr} is not a lab address" unless TEST_NETS.any? { |n| n.include?(IPAddr.new(addr)) }

  addr
end

SERVER = lab_address("SANDGATE_TEST_SERVER")
OTHER = lab_address("SANDGATE_TEST_OTHER")
PORT = Integer(ENV.fetch("SANDGATE_TEST_PORT", "7"))
# An organization the operator gave a known egress address, and the lab's
# service that answers with the address a connection came from.
EGRESS4 = lab_address("SANDGATE_TEST_EGRESS4")
WHOAMI_PORT = Integer(ENV.fetch("SANDGATE_TEST_WHOAMI_PORT", "113"))

# No server: every request is kept and answered with view (a sandbox as
# the API shows it), and a stream with events ([name, data] pairs), so
# what the SDK sends and what it reads back are seen alone.
class RecordingHttp
  attr_accessor :view, :events
  attr_reader :sent

  def initialize(view)
    @view = view
    @events = []
    @sent = []
  end

  def request(method, path, body = nil, timeout: nil)
    @sent << [method, path, body && JSON.parse(JSON.generate(body)), timeout]
    @view
  end

  def stream(path, &block)
    @sent << ["GET", path, nil, nil]
    @events.each { |event, data| block.call(event, data) }
    nil
  end
end

class SandgateTest < Minitest::Test
  def setup
    @sandgate = Sandgate::Sandgate.new
    @made = []
  end

  def teardown
    @made.each do |s|
      s.delete
    rescue Sandgate::NotFoundError
      nil
    end
  end

  def create(**kw)
    s = @sandgate.create(Sandgate::CreateSandboxFromSnapshotParams.new(**kw))
    @made << s
    s
  end

  def echoes(sandbox, dest)
    sandbox.process.exec("echo sandgate | nc -w 1 #{dest} #{PORT}", timeout: 10).stdout == "sandgate\n"
  end

  def test_open_by_default_and_exec
    s = create
    assert_equal "open", s.mode
    r = s.process.exec("echo out; echo err >&2; exit 3")
    assert_equal [3, "out\n", "err\n", "out\nerr\n"], [r.exit_code, r.stdout, r.stderr, r.result]
    assert_equal "b\n/tmp\n", s.process.exec('echo "$A"; pwd', env: { "A" => "b" }, cwd: "/tmp").stdout
    assert s.process.exec("sleep 30", timeout: 1).timed_out
    assert echoes(s, OTHER)
  end

  def test_the_allow_list_sample_reaches_its_entries_only
    list = "#{SERVER}/32,192.0.2.77/32,198.51.100.128/25"
    s = create(network_allow_list: list)
    assert_equal "allowlist", s.mode
    assert_equal list, s.network_allow_list
    assert echoes(s, SERVER)
    refute echoes(s, OTHER)
    x = s.network.explain("#{OTHER}:#{PORT}")
    assert_equal [false, "not_in_allow_list"], [x.allowed, x.reason]
    t = s.network.test(["#{SERVER}:#{PORT}", "#{OTHER}:#{PORT}"])
    assert t.ok
    assert_equal [true, false], t.results.map(&:observed)
  end

  def test_the_block_all_sample_reaches_nothing_and_still_runs_commands
    s = create(network_block_all: true)
    assert_equal "blocked", s.mode
    refute echoes(s, SERVER)
    assert_equal "ran\n", s.process.exec("echo ran").stdout
  end

  def test_block_all_wins_over_an_allow_list
    s = create(network_allow_list: "#{SERVER}/32", network_block_all: true)
    assert_equal "blocked", s.mode
    assert_equal "networkAllowList", s.effective_network["inactive"][0]["setting"]
    refute echoes(s, SERVER)
  end

  def test_an_update_replaces_what_it_sends_and_keeps_the_rest
    s = create(network_allow_list: "#{SERVER}/32", domain_allow_list: "example.com")
    assert echoes(s, SERVER)
    assert_raises(ArgumentError) { s.update_network_settings }
    s.update_network_settings(network_allow_list: "#{OTHER}/32")
    assert_equal "#{OTHER}/32", s.network_allow_list
    assert_equal "example.com", s.domain_allow_list
    assert echoes(s, OTHER)
    refute echoes(s, SERVER)
  end

  def test_a_deny_list_subtracts_from_open_mode_until_removed
    s = create(network_deny_list: "#{OTHER}/32")
    assert_equal "open", s.mode
    assert_equal "#{OTHER}/32", s.network_deny_list
    refute echoes(s, OTHER)
    assert echoes(s, SERVER)
    s.update_network_settings(network_deny_list: "", essential_services: false)
    assert_nil s.network_deny_list
    assert_equal false, s.essential_services
    assert echoes(s, OTHER)
  end

  def test_http_rules_are_sent_without_what_is_left_out_and_read_back
    rules = [
      Sandgate::HttpRule.new(host: "api.example.com", methods: %w[GET HEAD], paths: ["/repos/**"]),
      Sandgate::HttpRule.new(host: "*.example.net", paths: ["/x"]),
      { host: "static.example.com" }
    ]
    wire = [
      { "host" => "api.example.com", "methods" => %w[GET HEAD], "paths" => ["/repos/**"] },
      { "host" => "*.example.net", "paths" => ["/x"] },
      { "host" => "static.example.com" }
    ]
    params = Sandgate::CreateSandboxFromSnapshotParams.new(name: "r", http_rules: rules)
    assert_equal({ "name" => "r", "httpRules" => wire }, params.to_h)
    refute_includes Sandgate::CreateSandboxFromSnapshotParams.new.to_h, "httpRules"
    assert_raises(ArgumentError) { Sandgate::HttpRule.list([{ host: "a.example.com", path: ["/"] }]) }
    view = {
      "id" => "sb-1", "name" => "r", "state" => "running", "snapshot" => "busybox",
      "organizationId" => "org-1", "httpRules" => wire,
      "effectiveNetwork" => { "mode" => "open", "httpRules" => wire },
      "createdAt" => "2024-01-01T00:00:00Z", "updatedAt" => "2024-01-01T00:00:00Z"
    }
    http = RecordingHttp.new(view)
    @sandgate.instance_variable_set(:@http, http)
    s = @sandgate.create(Sandgate::CreateSandboxFromSnapshotParams.new(http_rules: rules))
    assert_equal [["POST", "/api/sandbox", { "httpRules" => wire }, nil]], http.sent
    assert_equal Sandgate::HttpRule.new(host: "static.example.com"), s.http_rules[2]
    assert_equal wire, s.http_rules.map(&:to_h)
    assert_equal wire, s.effective_network["httpRules"]
    # [] is sent (it removes them); absent in the answer is nil.
    http.view = view.reject { |k, _| k == "httpRules" }.merge("effectiveNetwork" => { "mode" => "open" })
    s.update_network_settings(http_rules: [])
    assert_equal ["POST", "/api/sandbox/sb-1/network-settings", { "httpRules" => [] }, nil], http.sent[-1]
    assert_nil s.http_rules
    e = assert_raises(ArgumentError) { s.update_network_settings }
    assert_includes e.message, "http_rules"
  end

  def test_http_rules_are_kept_canonical_and_removed_by_an_empty_list
    rules = [
      Sandgate::HttpRule.new(host: "api.example.com", methods: %w[GET HEAD], paths: ["/repos/**"]),
      Sandgate::HttpRule.new(host: "*.example.net")
    ]
    s = create(http_rules: rules)
    assert_equal rules, s.http_rules
    assert_equal rules.map(&:to_h), s.effective_network["httpRules"]
    assert_equal rules, @sandgate.get(s.id).http_rules
    # An update replaces them all; hosts come back in lower case, methods
    # sorted and without duplicates.
    s.update_network_settings(http_rules: [{ host: "API.example.com", methods: %w[HEAD GET GET] }])
    assert_equal [Sandgate::HttpRule.new(host: "api.example.com", methods: %w[GET HEAD])], s.http_rules
    s.update_network_settings(http_rules: [])
    assert_nil s.http_rules
    refute_includes s.effective_network, "httpRules"
    assert_nil @sandgate.get(s.id).http_rules
    lower = Sandgate::HttpRule.new(host: "api.example.com", methods: ["get"])
    e = assert_raises(Sandgate::ValidationError) { s.update_network_settings(http_rules: [lower]) }
    assert_equal [400, "invalid_http_rules"], [e.status, e.code]
    assert_equal "api.example.com", e.details["problems"][0]["entry"]
    small = Sandgate::Sandgate.new(api_key: ENV.fetch("SANDGATE_TEST_TIER1_KEY"))
    e = assert_raises(Sandgate::PermissionDeniedError) do
      small.create(Sandgate::CreateSandboxFromSnapshotParams.new(http_rules: rules))
    end
    assert_equal "network_restricted_by_tier", e.code
  end

  def test_a_grant_opens_an_address_until_revoked
    s = create(network_allow_list: "#{SERVER}/32")
    refute echoes(s, OTHER)
    g = s.network.grant(OTHER, ttl_seconds: 600, reason: "a dependency")
    assert_equal "#{OTHER}/32", g.target
    assert echoes(s, OTHER)
    assert_equal [g.id], s.network.grants.map(&:id)
    s.network.revoke(g)
    refute echoes(s, OTHER)
  end

  def test_network_events_list_and_follow_what_was_denied
    s = create(network_allow_list: "#{SERVER}/32")
    refute echoes(s, OTHER)
    denied = nil
    s.network.events(follow: true) do |e|
      if e.destination == OTHER
        denied = e
        break
      end
    end
    assert_equal %w[connection not_in_allow_list], [denied.kind, denied.reason]
    assert_equal [PORT, s.id], [denied.port, denied.sandbox]
    assert_includes s.network.events, denied
  end

  def test_the_flow_log_records_allowed_and_denied_connections
    s = create(network_allow_list: "#{SERVER}/32")
    assert echoes(s, SERVER)
    refute echoes(s, OTHER)
    found = lambda do |log|
      to = log.flows.to_h { |f| [[f.destination, f.port, f.verdict, f.protocol], f] }
      [to[[SERVER, PORT, "allowed", "tcp"]], to[[OTHER, PORT, "denied", "tcp"]]]
    end
    # The records reach the log as the kernel reports them: polled.
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
    log = s.network.flows
    while found.call(log).include?(nil) && Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline
      sleep 0.5
      log = s.network.flows
    end
    allowed, denied = found.call(log)
    refute_nil allowed, log.inspect
    refute_nil denied, log.inspect
    assert_kind_of Integer, log.dropped
    assert_equal ["kernel", "allow_list:#{SERVER}/32"], [allowed.via, allowed.reason]
    assert_kind_of Integer, allowed.source_port
    assert allowed.allowed?
    assert_equal "not_in_allow_list", denied.reason
    ids = log.flows.map(&:id)
    assert_equal ids.sort, ids
    # The last limit only; none that ended before since (a denied flow ends
    # as it starts).
    last = s.network.flows(limit: 1)
    assert_equal 1, last.flows.size
    assert_operator last.flows[0].id, :>=, ids.max
    refute_includes s.network.flows(since: denied.start_ms + 1).flows.map(&:id), denied.id
    # Followed: the records first (then each new one).
    followed = nil
    s.network.flows(follow: true) do |f|
      if f.id == denied.id
        followed = f
        break
      end
    end
    assert_equal denied, followed
    assert_raises(ArgumentError) { s.network.flows(follow: true) }
  end

  def test_flow_records_and_secrets_are_read_and_sent_as_the_api_writes_them
    params = Sandgate::CreateSandboxFromSnapshotParams.new(secrets: ["GH_TOKEN"])
    assert_equal({ "secrets" => ["GH_TOKEN"] }, params.to_h)
    refute_includes Sandgate::CreateSandboxFromSnapshotParams.new.to_h, "secrets"
    view = {
      "id" => "sb-1", "name" => "f", "state" => "running", "snapshot" => "busybox",
      "organizationId" => "org-1", "env" => { "GH_TOKEN" => "sg_secret_00" },
      "secrets" => ["GH_TOKEN"], "effectiveNetwork" => { "mode" => "open" },
      "createdAt" => "2024-01-01T00:00:00Z", "updatedAt" => "2024-01-01T00:00:00Z"
    }
    http = RecordingHttp.new(view)
    s = Sandgate::Sandbox.new(http, view)
    assert_equal [["GH_TOKEN"], { "GH_TOKEN" => "sg_secret_00" }], [s.secrets, s.env]
    opened = {
      "id" => 3, "startMs" => 10, "endMs" => nil, "protocol" => "tcp", "source" => "10.77.0.3",
      "sourcePort" => 40_000, "destination" => "192.0.2.10", "port" => 443, "name" => "a.example",
      "nameSource" => "sni", "bytesOut" => 1, "bytesIn" => 2, "verdict" => "allowed",
      "reason" => "domain_allow_list:a.example", "rule" => nil, "via" => "gateway"
    }
    refused = {
      "id" => 4, "startMs" => 11, "endMs" => 11, "protocol" => "icmp", "source" => "10.77.0.3",
      "destination" => "198.51.100.7", "bytesOut" => 0, "bytesIn" => 0, "verdict" => "denied",
      "reason" => "not_in_allow_list", "via" => "kernel"
    }
    http.view = { "flows" => [opened, refused], "dropped" => 5 }
    log = s.network.flows(since: 1000, limit: 2)
    assert_equal ["GET", "/api/sandbox/sb-1/network/flows?since=1000&limit=2", nil, nil], http.sent[-1]
    assert_equal 5, log.dropped
    assert_equal Sandgate::Flow.new(id: 3, start_ms: 10, end_ms: nil, protocol: "tcp", source: "10.77.0.3",
                                    source_port: 40_000, destination: "192.0.2.10", port: 443,
                                    name: "a.example", name_source: "sni", bytes_out: 1, bytes_in: 2,
                                    verdict: "allowed", reason: "domain_allow_list:a.example",
                                    rule: nil, via: "gateway"), log.flows[0]
    assert_equal [11, nil, false], [log.flows[1].end_ms, log.flows[1].port, log.flows[1].allowed?]
    s.network.flows
    assert_equal "/api/sandbox/sb-1/network/flows", http.sent[-1][1]
    # Followed: the flow events only (a lagged one is skipped).
    http.events = [["flow", opened], ["lagged", { "lost" => 2 }], ["flow", refused]]
    followed = []
    s.network.flows(since: 5, follow: true) { |f| followed << f.id }
    assert_equal ["GET", "/api/sandbox/sb-1/network/flows?since=5&follow=true", nil, nil], http.sent[-1]
    assert_equal [3, 4], followed
    @sandgate.instance_variable_set(:@http, http)
    @sandgate.secrets.delete("GH_TOKEN")
    assert_equal ["DELETE", "/api/secrets/GH_TOKEN", nil, nil], http.sent[-1]
  end

  def test_a_secret_is_held_as_a_placeholder_and_removed_when_no_sandbox_holds_it
    value = "tok_of_the_ruby_sdk"
    secret = @sandgate.secrets.create("SDK_TOKEN", value: value, hosts: ["api.example.com"])
    assert_equal ["SDK_TOKEN", ["api.example.com"]], [secret.name, secret.hosts]
    assert_kind_of String, secret.created_at
    assert_includes @sandgate.secrets.list, secret
    # Listed without its value: names, hosts and dates only.
    raw = @sandgate.instance_variable_get(:@http).request("GET", "/api/secrets")
    refute_includes JSON.generate(raw), value
    assert_equal [%w[createdAt hosts name]], raw.select { |x| x["name"] == "SDK_TOKEN" }.map { |x| x.keys.sort }
    e = assert_raises(Sandgate::ConflictError) do
      @sandgate.secrets.create("SDK_TOKEN", value: "another", hosts: ["api.example.com"])
    end
    assert_equal "secret_exists", e.code
    e = assert_raises(Sandgate::ValidationError) do
      @sandgate.secrets.create("not-a-variable", value: value, hosts: ["api.example.com"])
    end
    assert_equal "invalid_secret_name", e.code
    # A sandbox holds a placeholder of its own, never the value.
    s = create(secrets: ["SDK_TOKEN"])
    assert_equal ["SDK_TOKEN"], s.secrets
    placeholder = s.env["SDK_TOKEN"]
    assert_match(/\Asg_secret_/, placeholder)
    refute_includes placeholder, value
    assert_equal "#{placeholder}\n", s.process.exec('echo "$SDK_TOKEN"').stdout
    assert_equal placeholder, @sandgate.get(s.id).env["SDK_TOKEN"]
    e = assert_raises(Sandgate::ValidationError) { create(secrets: ["NO_SUCH_SECRET"]) }
    assert_equal "unknown_secret", e.code
    e = assert_raises(Sandgate::ConflictError) { @sandgate.secrets.delete(secret) }
    assert_equal "secret_in_use", e.code
    s.delete
    @sandgate.secrets.delete("SDK_TOKEN")
    refute_includes @sandgate.secrets.list.map(&:name), "SDK_TOKEN"
    assert_raises(Sandgate::NotFoundError) { @sandgate.secrets.delete("SDK_TOKEN") }
  end

  def test_a_refused_connection_asks_and_its_owner_approves_or_denies
    s = create(network_allow_list: "#{SERVER}/32", network_approvals: true)
    assert s.network_approvals
    assert_equal({ "holdSeconds" => 0 }, s.effective_network["approvals"])
    refute echoes(s, OTHER)
    asked = nil
    s.network.requests(follow: true, state: "pending") do |r|
      if r.target == OTHER
        asked = r
        break
      end
    end
    assert_equal ["address", PORT], [asked.kind, asked.port]
    approved = s.network.approve(asked, ttl_seconds: 600)
    assert_equal "approved", approved.state
    assert echoes(s, OTHER)
    assert_equal [approved.grant_id], s.network.grants.map(&:id)
    s.process.exec("nslookup denied.example.org", timeout: 10)
    # Its request opens as the refusal reaches the server: followed.
    name = nil
    s.network.requests(follow: true) do |r|
      if r.kind == "name"
        name = r
        break
      end
    end
    assert_equal "denied.example.org", name.target
    assert name.pending?
    assert_equal "denied", s.network.deny(name.id).state
    e = assert_raises(Sandgate::ConflictError) { s.network.approve(name) }
    assert_equal "request_decided", e.code
    assert_equal [name.id], s.network.requests(state: "denied").map(&:id)
  end

  def test_the_gem_is_built_from_its_version_file
    spec = Gem::Specification.load(File.expand_path("../sandgate.gemspec", __dir__))
    assert_equal Sandgate::VERSION, spec.version.to_s
    assert_includes spec.files, "lib/sandgate/version.rb"
  end

  def test_a_busy_server_is_asked_again_after_the_wait_it_says
    # Every exec permit of the organization held by a sleep: one more is
    # 429 with Retry-After; a client that retries gets through once a
    # sleep ends.
    n = Integer(ENV.fetch("SANDGATE_TEST_EXECS_PER_ORG"))
    s = create
    busy = Array.new(n) { Thread.new { s.process.exec("sleep 3", timeout: 30) } }
    sleep 1
    impatient = Sandgate::Sandgate.new(max_retries: 0).get(s.id)
    e = assert_raises(Sandgate::RateLimitError) { impatient.process.exec("true") }
    assert_equal 1, e.retry_after
    patient = Sandgate::Sandgate.new(max_retries: 20).get(s.id)
    assert_equal "through\n", patient.process.exec("echo through").stdout
    assert(busy.map(&:value).all? { |r| r.exit_code.zero? })
  end

  def test_a_transfer_quota_is_asked_at_create_and_changed_by_an_update
    s = create(transfer_quota_mib: 64)
    assert_equal [64, [64, 86_400]], [s.transfer_quota_mib, s.transfer_quota]
    assert echoes(s, OTHER)
    s.update_network_settings(transfer_quota_mib: 128)
    assert_equal [128, 86_400], s.transfer_quota
    usage = s.network.transfer_usage
    assert_equal [128 << 20, false], [usage.quota_bytes, usage.spent]
    assert_equal 86_400_000, usage.period_end_ms - usage.period_start_ms
    s.update_network_settings(transfer_quota_mib: :default)
    assert_nil s.transfer_quota_mib
    assert_nil s.transfer_quota
    assert_nil s.network.transfer_usage
    e = assert_raises(Sandgate::ValidationError) { s.update_network_settings(transfer_quota_mib: 0) }
    assert_equal "invalid_budget", e.code
  end

  def test_an_egress_budget_is_asked_at_create_and_changed_by_an_update
    s = create(egress_mbps: 25)
    assert_equal [25, 25], [s.egress_mbps, s.egress_budget_mbps]
    assert echoes(s, OTHER)
    s.update_network_settings(egress_mbps: 80)
    assert_equal 80, s.egress_budget_mbps
    s.update_network_settings(egress_mbps: :default)
    assert_nil s.egress_mbps
    assert_nil s.egress_budget_mbps
    e = assert_raises(Sandgate::ValidationError) { s.update_network_settings(egress_mbps: 0) }
    assert_equal "invalid_budget", e.code
  end

  def test_connection_budgets_are_asked_at_create_and_changed_by_an_update
    s = create(max_connections: 3, new_connections_per_second: 7)
    assert_equal [3, 7], [s.max_connections, s.new_connections_per_second]
    assert_equal [3, 7], s.connection_budget
    assert echoes(s, OTHER)
    s.update_network_settings(new_connections_per_second: :default)
    assert_nil s.new_connections_per_second
    assert_operator s.connection_budget[1], :>, 7
    e = assert_raises(Sandgate::ValidationError) { s.update_network_settings(max_connections: 0) }
    assert_equal "invalid_budget", e.code
  end

  def test_a_known_egress_address_is_where_connections_leave_from
    seen_from = ->(s) { s.process.exec("nc -w 2 #{SERVER} #{WHOAMI_PORT} </dev/null", timeout: 10).stdout.strip }
    known = Sandgate::Sandgate.new(api_key: ENV.fetch("SANDGATE_TEST_EGRESS_KEY"))
    s = known.create(Sandgate::CreateSandboxFromSnapshotParams.new)
    @made << s
    assert_equal EGRESS4, s.egress_address["ipv4"]
    assert_equal EGRESS4, seen_from.call(s)
    other = create
    assert_nil other.egress_address
    refute_equal EGRESS4, seen_from.call(other)
  end

  def test_a_sandbox_runs_under_its_tiers_runtime_class_and_no_other
    assert_equal "runc", create.runtime_class
    # The test server's tiers allow runc alone.
    e = assert_raises(Sandgate::PermissionDeniedError) { create(runtime_class: "runsc") }
    assert_equal [403, "runtime_class_not_allowed"], [e.status, e.code]
  end

  def test_the_operator_makes_a_snapshot_from_an_image_that_sandboxes_start_from
    image = ENV.fetch("SANDGATE_TEST_IMAGE")
    assert_includes @sandgate.snapshots.list.map(&:name), "busybox"
    # An organization's key lists, never makes.
    assert_raises(Sandgate::PermissionDeniedError) { @sandgate.snapshots.create("rb-app", image: image) }
    operator = Sandgate::Sandgate.new(api_key: ENV.fetch("SANDGATE_TEST_OPERATOR_TOKEN"))
    made = operator.snapshots.create("rb-app", image: image)
    assert_equal ["rb-app", image, ["main"]], [made.name, made.image, made.runners]
    assert_match(/\Asha256:/, made.digest)
    e = assert_raises(Sandgate::ValidationError) { operator.snapshots.create("rb-other", image: "python:3.12-slim") }
    assert_equal "registry_not_allowed", e.code
    s = create(snapshot: "rb-app")
    assert_equal "from the image\n", s.process.exec("cat /etc/app.conf").stdout
    e = assert_raises(Sandgate::ConflictError) { operator.snapshots.delete(made) }
    assert_equal "snapshot_in_use", e.code
    s.delete
    @made.delete(s)
    operator.snapshots.delete("rb-app")
    refute_includes operator.snapshots.list.map(&:name), "rb-app"
    # From an archive instead.
    up = operator.snapshots.upload("rb-up", archive: ENV.fetch("SANDGATE_TEST_ARCHIVE"))
    assert_equal ["rb-up", ["main"]], [up.name, up.runners]
    s = create(snapshot: "rb-up")
    assert_equal "from the archive\n", s.process.exec("cat /etc/app.conf").stdout
    s.delete
    @made.delete(s)
    operator.snapshots.delete(up)
  end

  def test_bad_input_and_tiers_raise_typed_errors_with_code_and_message
    e = assert_raises(Sandgate::ValidationError) { create(network_allow_list: "192.0.2.300/32") }
    assert_equal ["invalid_network_allow_list", 400], [e.code, e.status]
    assert_includes e.message, "192.0.2.300"
    small = Sandgate::Sandgate.new(api_key: ENV.fetch("SANDGATE_TEST_TIER1_KEY"))
    e = assert_raises(Sandgate::PermissionDeniedError) do
      small.create(Sandgate::CreateSandboxFromSnapshotParams.new(network_allow_list: "#{SERVER}/32"))
    end
    assert_equal "network_restricted_by_tier", e.code
    restricted = small.create
    @made << restricted
    assert_equal "restricted", restricted.mode
    e = assert_raises(Sandgate::AuthenticationError) { Sandgate::Sandgate.new(api_key: "sg_not-a-key").list }
    assert_equal 401, e.status
  end

  def test_get_list_and_delete
    s = create(name: "rb-named")
    assert_equal s.id, @sandgate.get("rb-named").id
    assert_includes @sandgate.list.map(&:id), s.id
    @sandgate.delete(s)
    assert_raises(Sandgate::NotFoundError) { @sandgate.get(s.id) }
  end
end
