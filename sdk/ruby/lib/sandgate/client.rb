# frozen_string_literal: true

require "json"
require "net/http"
require "uri"

module Sandgate
  DEFAULT_API_URL = "http://127.0.0.1:8080"

  # An HTTP rule: the methods and paths a sandbox may ask of a host,
  # enforced by the gateway on each request (tier 3/4). host: a name or a
  # "*." wildcard, as in domain_allow_list; methods: HTTP methods, upper
  # case as on the wire (nil: any); paths: globs over the request's
  # decoded path, the query left out ("*" any run of characters within a
  # segment, "**" a whole segment standing for any number of them:
  # "/repos/**" matches "/repos" and all below it; nil: any path).
  #
  # Rules add up: a request to a name some rule covers passes only if one
  # of that name's rules allows its method and its path; a refused one is
  # answered 403 with "x-sandgate-deny: http_method_not_allowed",
  # "http_path_not_allowed" or "http_path_ambiguous". The server keeps
  # them canonical (hosts in lower case, methods sorted, duplicates
  # merged) and shows them so.
  HttpRule = Struct.new(:host, :methods, :paths, keyword_init: true) do
    def self.from(r)
      new(host: r["host"], methods: r["methods"], paths: r["paths"])
    end

    # Rules (HttpRules, or hashes with :host, :methods and :paths) as the
    # API takes them.
    def self.list(rules)
      rules.map do |r|
        (r.is_a?(Hash) ? new(**r.transform_keys(&:to_sym)) : r).to_h
      end
    end

    # The API's form (fields left out are absent).
    def to_h
      { "host" => host, "methods" => methods, "paths" => paths }.compact
    end
  end

  # What any new sandbox may be given. network_allow_list: comma-separated
  # CIDRs; domain_allow_list: names and "*." wildcards; network_block_all:
  # no egress at all (wins over both lists); network_deny_list and
  # domain_deny_list: never reached, whatever allows them (tier 3/4);
  # essential_services: false turns the essential services off;
  # egress_mbps: what the sandbox may send, Mbit/s, within its tier's
  # maximum; max_connections and new_connections_per_second: connections at
  # once and new connections a second, within its tier's fair shares;
  # network_approvals: what the sandbox is refused opens access requests
  # for its owner (tier 3/4); approval_hold_seconds: how long a refused
  # DNS query waits for an approval (0 to 60); transfer_quota_mib: what
  # the sandbox may send and receive in all each period, MiB, within its
  # tier's maximum (the period is the operator's); http_rules: the methods
  # and paths the sandbox may ask of hosts (HttpRules; tier 3/4); secrets:
  # names of the organization's secrets the sandbox holds, each an
  # environment variable of its commands whose value is a placeholder of
  # its own, which the gateway replaces with the value in requests to the
  # secret's hosts (the value never enters the sandbox; scope
  # secrets:write); runtime_class: the OCI runtime it runs under, among
  # those its tier allows: "runc", or "runsc" (gVisor: a kernel of its own
  # between the sandbox and the host's); default: the tier's first.
  class CreateSandboxBaseParams
    attr_accessor :name, :env, :network_allow_list, :network_block_all, :domain_allow_list,
                  :network_deny_list, :domain_deny_list, :essential_services, :egress_mbps,
                  :max_connections, :new_connections_per_second, :network_approvals,
                  :approval_hold_seconds, :transfer_quota_mib, :http_rules, :secrets,
                  :runtime_class

    def initialize(name: nil, env: nil, network_allow_list: nil, network_block_all: nil,
                   domain_allow_list: nil, network_deny_list: nil, domain_deny_list: nil,
                   essential_services: nil, egress_mbps: nil, max_connections: nil,
                   new_connections_per_second: nil, network_approvals: nil,
                   approval_hold_seconds: nil, transfer_quota_mib: nil, http_rules: nil,
                   secrets: nil, runtime_class: nil)
      @name = name
      @env = env
      @network_allow_list = network_allow_list
      @network_block_all = network_block_all
      @domain_allow_list = domain_allow_list
      @network_deny_list = network_deny_list
      @domain_deny_list = domain_deny_list
      @essential_services = essential_services
      @egress_mbps = egress_mbps
      @max_connections = max_connections
      @new_connections_per_second = new_connections_per_second
      @network_approvals = network_approvals
      @approval_hold_seconds = approval_hold_seconds
      @transfer_quota_mib = transfer_quota_mib
      @http_rules = http_rules
      @secrets = secrets
      @runtime_class = runtime_class
    end

    # The API's request body (camelCase; fields left out are absent).
    def to_h
      {
        "name" => name,
        "env" => env,
        "networkAllowList" => network_allow_list,
        "networkBlockAll" => network_block_all,
        "domainAllowList" => domain_allow_list,
        "networkDenyList" => network_deny_list,
        "domainDenyList" => domain_deny_list,
        "essentialServices" => essential_services,
        "egressMbps" => egress_mbps,
        "maxConnections" => max_connections,
        "newConnectionsPerSecond" => new_connections_per_second,
        "networkApprovals" => network_approvals,
        "approvalHoldSeconds" => approval_hold_seconds,
        "transferQuotaMiB" => transfer_quota_mib,
        "httpRules" => http_rules && HttpRule.list(http_rules),
        "secrets" => secrets,
        "runtimeClass" => runtime_class
      }.compact
    end
  end

  # A new sandbox from a snapshot (default "busybox").
  class CreateSandboxFromSnapshotParams < CreateSandboxBaseParams
    attr_accessor :snapshot

    def initialize(snapshot: nil, **rest)
      super(**rest)
      @snapshot = snapshot
    end

    def to_h
      super.merge({ "snapshot" => snapshot }.compact)
    end
  end

  # What a command did.
  ExecuteResponse = Struct.new(:exit_code, :stdout, :stderr, :result, :timed_out, :truncated,
                               keyword_init: true)
  # Whether a sandbox may reach a destination, and by which rule.
  Explanation = Struct.new(:destination, :allowed, :reason, :rule, :mode, keyword_init: true)
  # Time-bounded access of a sandbox to a CIDR, an address or a name.
  Grant = Struct.new(:id, :target, :reason, :created_at, :expires_at, :expires_at_ms,
                     :seconds_left, :in_force, keyword_init: true) do
    def self.from(r)
      new(id: r["id"], target: r["target"], reason: r["reason"], created_at: r["createdAt"],
          expires_at: r["expiresAt"], expires_at_ms: r["expiresAtMs"], seconds_left: r["secondsLeft"],
          in_force: r.fetch("inForce", true))
    end
  end
  # A sandbox's transfer quota this period, as the kernel counts it at the
  # call: bytes both ways (IP packets, headers included).
  TransferUsage = Struct.new(:quota_bytes, :used_bytes, :spent, :period_start, :period_end,
                             :period_start_ms, :period_end_ms, keyword_init: true) do
    def self.from(r)
      new(quota_bytes: r["quotaBytes"], used_bytes: r["usedBytes"], spent: r["spent"],
          period_start: r["periodStart"], period_end: r["periodEnd"],
          period_start_ms: r["periodStartMs"], period_end_ms: r["periodEndMs"])
    end
  end
  # A network event of a sandbox: a denied connection (kind "connection"),
  # a refused or stripped DNS answer ("dns"), a grant added or ended
  # ("grant"), a budget reached ("budget"), or events its rate held back
  # ("dropped", with count).
  NetworkEvent = Struct.new(:time_ms, :sandbox, :kind, :protocol, :reason, :destination, :port,
                            :domain, :count, keyword_init: true) do
    def self.from(r)
      new(time_ms: r["timeMs"], sandbox: r["sandbox"], kind: r["kind"], protocol: r["protocol"],
          reason: r["reason"], destination: r["destination"], port: r["port"],
          domain: r["domain"], count: r["count"])
    end
  end
  # One connection of a sandbox in its flow log, allowed or denied.
  # verdict: "allowed" or "denied"; via: who carried or refused it,
  # "kernel" or "gateway"; reason: the reason code as explain writes it
  # ("allow_list:192.0.2.0/24", "not_in_allow_list", ...); protocol:
  # "tcp", "udp", "icmp", "icmpv6" or the IP protocol's number; end_ms:
  # nil while it is open (a denied flow ends as it starts); name: the name
  # it was for where known, name_source where that came from ("dns",
  # "sni", "host"); bytes both ways, final once it ended. An open flow is
  # sent again, with the same id, when it ends.
  Flow = Struct.new(:id, :start_ms, :end_ms, :protocol, :source, :source_port, :destination,
                    :port, :name, :name_source, :bytes_out, :bytes_in, :verdict, :reason, :rule,
                    :via, keyword_init: true) do
    def self.from(r)
      new(id: r["id"], start_ms: r["startMs"], end_ms: r["endMs"], protocol: r["protocol"],
          source: r["source"], source_port: r["sourcePort"], destination: r["destination"],
          port: r["port"], name: r["name"], name_source: r["nameSource"],
          bytes_out: r.fetch("bytesOut", 0), bytes_in: r.fetch("bytesIn", 0),
          verdict: r["verdict"], reason: r["reason"], rule: r["rule"], via: r["via"])
    end

    # Whether it was let through.
    def allowed?
      verdict == "allowed"
    end
  end
  # A sandbox's flow log as it stands: its records (Flows, each once, as it
  # is now, in increasing id) and how many records it could not keep.
  FlowLog = Struct.new(:flows, :dropped, keyword_init: true)
  # A secret of the organization, as shown: never its value.
  Secret = Struct.new(:name, :hosts, :created_at, keyword_init: true) do
    def self.from(r)
      new(name: r["name"], hosts: r["hosts"], created_at: r["createdAt"])
    end
  end
  # A snapshot sandboxes start from: its name and the runners that hold
  # it; one just made from an image also says the image (its reference in
  # full), the digest of the manifest it was made from and its layers.
  Snapshot = Struct.new(:name, :runners, :image, :digest, :layers, keyword_init: true) do
    def self.from(r)
      new(name: r["name"], runners: r["runners"] || [], image: r["image"], digest: r["digest"],
          layers: r["layers"])
    end
  end
  # A target a sandbox with approvals was refused (kind "name" or
  # "address"), with its attempts, for its owner to approve or deny.
  AccessRequest = Struct.new(:id, :sandbox, :target, :kind, :protocol, :port, :attempts, :state,
                             :first_seen_ms, :last_seen_ms, :decided_at_ms, :grant_id,
                             keyword_init: true) do
    def self.from(r)
      new(id: r["id"], sandbox: r["sandbox"], target: r["target"], kind: r["kind"],
          protocol: r["protocol"], port: r["port"], attempts: r["attempts"], state: r["state"],
          first_seen_ms: r["firstSeenMs"], last_seen_ms: r["lastSeenMs"],
          decided_at_ms: r["decidedAtMs"], grant_id: r["grantId"])
    end

    # Whether it waits for a decision.
    def pending?
      state == "pending"
    end
  end
  # One probed destination.
  NetworkTestRow = Struct.new(:target, :expected, :observed, :ok, :reason, :detail, :addresses,
                              keyword_init: true)
  # A network test of a sandbox.
  NetworkTestResult = Struct.new(:sandbox, :mode, :ok, :results, keyword_init: true)

  # Requests to one server with one key.
  class Http
    # A path segment, percent-encoded (a space as %20, not +).
    def self.escape(segment)
      segment.to_s.b.gsub(/[^A-Za-z0-9\-._~]/) { |c| format("%%%02X", c.ord) }
    end

    # Never shows the key (irb prints objects it returns).
    def inspect
      "#<Sandgate::Http #{@uri}>"
    end

    # The longest a client waits on one Retry-After before it retries.
    MAX_RETRY_WAIT = 60

    def initialize(api_url, api_key, timeout, max_retries = 2)
      @uri = URI(api_url.sub(%r{/+\z}, ""))
      @api_key = api_key
      @timeout = timeout
      @max_retries = max_retries
    end

    # Sends a request; a 429 or a 503 that says Retry-After (the server
    # did nothing) is sent again after that wait, up to max_retries times.
    def request(method, path, body = nil, timeout: nil)
      attempt = 0
      begin
        request_once(method, path, body, timeout)
      rescue Error => e
        raise if e.retry_after.nil? || attempt >= @max_retries

        attempt += 1
        sleep([e.retry_after, MAX_RETRY_WAIT].min)
        retry
      end
    end

    # Server-sent events from path: yields each event's name and its data
    # decoded from JSON, until the server ends the stream or the block
    # breaks out (which closes it).
    def stream(path)
      uri = URI("#{@uri}#{path}")
      req = Net::HTTP::Get.new(uri.request_uri)
      req["Authorization"] = "Bearer #{@api_key}"
      req["Accept"] = "text/event-stream"
      begin
        Net::HTTP.start(uri.hostname, uri.port, use_ssl: uri.scheme == "https",
                                                open_timeout: @timeout,
                                                read_timeout: [@timeout, 60].max,
                                                max_retries: 0) do |h|
          h.request(req) do |res|
            status = res.code.to_i
            raise failure(res, res.body.to_s) unless (200..299).cover?(status)

            each_event(res) { |event, data| yield event, data }
          end
        end
      rescue Error
        raise
      rescue StandardError => e
        raise APIConnectionError.new("no answer from #{@uri}: #{e.message}", code: "unreachable")
      end
      nil
    end

    # PUTs the file at file to path as a tar archive, read as it is sent:
    # the JSON answer.
    def upload(path, file, timeout: nil)
      uri = URI("#{@uri}#{path}")
      wait = timeout || @timeout
      File.open(file, "rb") do |body|
        req = Net::HTTP::Put.new(uri.request_uri)
        req["Authorization"] = "Bearer #{@api_key}"
        req["Content-Type"] = "application/x-tar"
        req.content_length = body.size
        req.body_stream = body
        send_request(uri, req, wait)
      end
    end

    private

    def request_once(method, path, body, timeout)
      uri = URI("#{@uri}#{path}")
      req = Net::HTTPGenericRequest.new(method, !body.nil?, true, uri.request_uri)
      req["Authorization"] = "Bearer #{@api_key}"
      if body
        req["Content-Type"] = "application/json"
        req.body = JSON.generate(body)
      end
      send_request(uri, req, timeout || @timeout)
    end

    # Sends req to uri, waiting at most wait seconds: its JSON answer (nil
    # for none), or the typed error.
    def send_request(uri, req, wait)
      begin
        # hostname: an IPv6 address without its brackets; no silent retry
        # of a GET or DELETE that timed out.
        res = Net::HTTP.start(uri.hostname, uri.port, use_ssl: uri.scheme == "https",
                                                      open_timeout: wait, read_timeout: wait,
                                                      max_retries: 0) do |h|
          h.request(req)
        end
      rescue StandardError => e
        raise APIConnectionError.new("no answer from #{@uri}: #{e.message}", code: "unreachable")
      end
      text = res.body.to_s
      status = res.code.to_i
      raise failure(res, text) unless (200..299).cover?(status)

      text.empty? ? nil : JSON.parse(text)
    end

    # The seconds of a 429's or a 503's Retry-After (a count of seconds, as
    # sandgate sends it), if it has one.
    def retry_after(status, value)
      return nil unless [429, 503].include?(status) && value.to_s.strip.match?(/\A\d+\z/)

      value.to_s.strip.to_i
    end

    def each_event(res)
      buffered = +""
      event = "message"
      res.read_body do |chunk|
        buffered << chunk
        while (line = buffered.slice!(/\A[^\n]*\n/))
          line = line.chomp
          if line.start_with?("event:")
            event = line.delete_prefix("event:").strip
          elsif line.start_with?("data:")
            data = begin
              JSON.parse(line.delete_prefix("data:").strip)
            rescue JSON::ParserError
              next
            end
            yield event, data
          elsif line.empty?
            event = "message"
          end
        end
      end
    end

    # The error of an answer (res, its body text) that is not a success:
    # the API's code, message and details, and its Retry-After.
    def failure(res, text)
      status = res.code.to_i
      err = begin
        JSON.parse(text).fetch("error")
      rescue StandardError
        nil
      end
      err = { "code" => "http_error", "message" => text } unless err.is_a?(Hash)
      details = err.reject { |k, _| %w[code message].include?(k) }
      error = ::Sandgate.error_class(status).new(err["message"].to_s, code: err["code"].to_s,
                                                                     status: status, details: details)
      error.retry_after = retry_after(status, res["Retry-After"])
      error
    end
  end

  # Commands in a sandbox.
  class Process
    def initialize(sandbox)
      @sandbox = sandbox
    end

    # Runs command with /bin/sh -c; on timeout (seconds) it and its children
    # are killed and timed_out is set.
    def exec(command, cwd: nil, env: nil, timeout: nil)
      body = { "command" => command, "cwd" => cwd, "env" => env, "timeout" => timeout }.compact
      r = @sandbox.http.request("POST", @sandbox.path("/process/execute"), body,
                                timeout: timeout && (timeout + 30))
      ExecuteResponse.new(exit_code: r["exitCode"], stdout: r["stdout"], stderr: r["stderr"],
                          result: r["result"], timed_out: r.fetch("timedOut", false),
                          truncated: r.fetch("truncated", false))
    end
  end

  # A sandbox's network: tests and explanations.
  class Network
    def initialize(sandbox)
      @sandbox = sandbox
    end

    # Probes targets ("host:port"; default: the server's list) from inside
    # the sandbox's network namespace.
    def test(targets = nil)
      r = @sandbox.http.request("POST", @sandbox.path("/network/test"),
                                targets ? { "targets" => targets } : {})
      rows = r["results"].map do |x|
        NetworkTestRow.new(target: x["target"], expected: x["expected"], observed: x["observed"],
                           ok: x["ok"], reason: x["reason"], detail: x["detail"],
                           addresses: x.fetch("addresses", []))
      end
      NetworkTestResult.new(sandbox: r["sandbox"], mode: r["mode"], ok: r["ok"], results: rows)
    end

    # Whether the sandbox may reach dest, and why; nothing is sent.
    def explain(dest)
      r = @sandbox.http.request("GET", @sandbox.path("/network/explain?#{URI.encode_www_form(dest: dest)}"))
      Explanation.new(destination: r["destination"], allowed: r["allowed"], reason: r["reason"],
                      rule: r["rule"], mode: r["mode"])
    end

    # Gives the sandbox access to target (a CIDR, an address, a name or a
    # "*." wildcard) for ttl_seconds (1 to 604800), in force on return; it
    # ends by itself.
    def grant(target, ttl_seconds:, reason: nil)
      body = { "target" => target, "ttlSeconds" => ttl_seconds, "reason" => reason }.compact
      Grant.from(@sandbox.http.request("POST", @sandbox.path("/network/grants"), body))
    end

    # The grants in force, with the time each has left.
    def grants
      @sandbox.http.request("GET", @sandbox.path("/network/grants"))["grants"].map { |g| Grant.from(g) }
    end

    # What the sandbox has used of its transfer quota this period; nil: it
    # has no quota.
    def transfer_usage
      transfer = @sandbox.http.request("GET", @sandbox.path("/network/usage"))["transfer"]
      transfer && TransferUsage.from(transfer)
    end

    # The sandbox's recent network events (up to 256), oldest first. With
    # follow: true and a block, yields them, then each new one as it
    # happens, until the block breaks out:
    #
    #   sandbox.network.events(follow: true) { |e| puts e.reason }
    def events(follow: false, &block)
      path = @sandbox.path("/network/events?follow=#{follow}")
      raise ArgumentError, "events(follow: true) needs a block" if follow && block.nil?

      seen = []
      @sandbox.http.stream(path) do |event, data|
        next if event == "lagged"

        e = NetworkEvent.from(data)
        block ? block.call(e) : seen << e
      end
      block ? nil : seen
    end

    # The sandbox's flow log (a FlowLog): its connections, allowed and
    # denied, in increasing id; the last limit (default 100, at most 1000)
    # of those still open or ended at or after since (milliseconds since
    # the Unix epoch; default: all), and how many records it could not
    # keep. With follow: true and a block, yields those records, then each
    # new one as it is written (a flow when it opens, and again when it
    # ends), until the block breaks out:
    #
    #   sandbox.network.flows(follow: true) { |f| puts "#{f.verdict} #{f.destination}" }
    def flows(since: nil, limit: nil, follow: false, &block)
      query = { "since" => since, "limit" => limit, "follow" => (follow ? "true" : nil) }.compact
      path = @sandbox.path("/network/flows")
      path += "?#{URI.encode_www_form(query)}" unless query.empty?
      unless follow
        r = @sandbox.http.request("GET", path)
        return FlowLog.new(flows: r["flows"].map { |f| Flow.from(f) }, dropped: r.fetch("dropped", 0))
      end
      raise ArgumentError, "flows(follow: true) needs a block" unless block

      @sandbox.http.stream(path) do |event, data|
        block.call(Flow.from(data)) if event == "flow"
      end
    end

    # The access requests of the sandbox (with network_approvals), oldest
    # first; state: keeps those in one state ("pending", "approved",
    # "denied"). With follow: true and a block, yields them as they stand,
    # then each change as it happens, until the block breaks out:
    #
    #   sandbox.network.requests(follow: true, state: "pending") do |request|
    #     sandbox.network.approve(request, ttl_seconds: 600)
    #   end
    def requests(follow: false, state: nil, &block)
      query = { "state" => state, "follow" => (follow ? "true" : nil) }.compact
      path = @sandbox.path("/network/requests")
      path += "?#{URI.encode_www_form(query)}" unless query.empty?
      unless follow
        return @sandbox.http.request("GET", path)["requests"].map { |r| AccessRequest.from(r) }
      end
      raise ArgumentError, "requests(follow: true) needs a block" unless block

      @sandbox.http.stream(path) do |event, data|
        block.call(AccessRequest.from(data)) if event == "request"
      end
    end

    # Approves an access request (an AccessRequest or its id): a grant for
    # ttl_seconds, or without it the target added to the allow list for
    # good; in force on return (a DNS query held for it is answered then).
    def approve(request, ttl_seconds: nil)
      body = ttl_seconds.nil? ? {} : { "ttlSeconds" => ttl_seconds }
      AccessRequest.from(@sandbox.http.request("POST", request_path(request, "approve"), body))
    end

    # Denies an access request: it is not asked again (its attempts are
    # still counted).
    def deny(request)
      AccessRequest.from(@sandbox.http.request("POST", request_path(request, "deny"), {}))
    end

    # Revokes a grant (a Grant or its id); its connections stop on return.
    def revoke(grant)
      id = grant.is_a?(Grant) ? grant.id : grant
      @sandbox.http.request("DELETE", @sandbox.path("/network/grants/#{Http.escape(id)}"))
      nil
    end

    private

    def request_path(request, action)
      id = request.is_a?(AccessRequest) ? request.id : request
      @sandbox.path("/network/requests/#{Http.escape(id)}/#{action}")
    end
  end

  # A sandbox, as the server last described it.
  class Sandbox
    attr_reader :id, :name, :state, :snapshot, :runtime_class, :organization_id, :env,
                :network_block_all,
                :network_allow_list, :domain_allow_list, :network_deny_list, :domain_deny_list,
                :essential_services, :egress_mbps, :max_connections, :new_connections_per_second,
                :network_approvals, :approval_hold_seconds, :transfer_quota_mib, :http_rules,
                :secrets, :effective_network, :created_at, :updated_at, :process,
                :network, :http

    def initialize(http, data)
      @http = http
      @process = Process.new(self)
      @network = Network.new(self)
      load(data)
    end

    # The effective network mode: open, allowlist, restricted or blocked.
    def mode
      effective_network["mode"]
    end

    # The known egress address its connections leave from ({"ipv4" =>,
    # "ipv6" =>}, each optional), when the operator gave its organization
    # one; nil: the host's own.
    def egress_address
      effective_network["egressAddress"]
    end

    # The egress bandwidth in force, Mbit/s; nil: no limit of its own.
    def egress_budget_mbps
      effective_network.dig("budgets", "egressMbps")
    end

    # The transfer quota in force: [MiB both ways a period, the period in
    # seconds] (periods start at its multiples since the Unix epoch); nil:
    # no quota. Past it nothing passes until the next period (a budget
    # event with reason transfer_quota says so).
    def transfer_quota
      budgets = effective_network.fetch("budgets", {})
      mib = budgets["transferQuotaMiB"]
      mib && [mib, budgets["transferPeriodSeconds"]]
    end

    # The connection budgets in force: [connections at once, new
    # connections a second] (what it asked for, or its tier's fair shares,
    # never above them).
    def connection_budget
      shares = effective_network.fetch("fairShares", {})
      [shares["connections"], shares["newConnectionsPerSecond"]]
    end

    # The API path of this sandbox.
    def path(rest = "")
      "/api/sandbox/#{Http.escape(id)}#{rest}"
    end

    # Reloads the sandbox from the server.
    def refresh
      load(http.request("GET", path))
    end

    # Changes the network settings (what is given replaces, the rest is
    # kept; in force in the kernel on return) and refreshes from the answer.
    # :default for a budget (egress_mbps, max_connections,
    # new_connections_per_second, transfer_quota_mib) goes back to the
    # tier's (a new quota keeps what the period counted). http_rules
    # replaces every rule; [] removes them.
    def update_network_settings(network_block_all: nil, network_allow_list: nil,
                                domain_allow_list: nil, network_deny_list: nil,
                                domain_deny_list: nil, essential_services: nil, egress_mbps: nil,
                                max_connections: nil, new_connections_per_second: nil,
                                network_approvals: nil, approval_hold_seconds: nil,
                                transfer_quota_mib: nil, http_rules: nil)
      body = { "networkBlockAll" => network_block_all, "networkAllowList" => network_allow_list,
               "domainAllowList" => domain_allow_list, "networkDenyList" => network_deny_list,
               "domainDenyList" => domain_deny_list,
               "essentialServices" => essential_services,
               "networkApprovals" => network_approvals,
               "approvalHoldSeconds" => approval_hold_seconds }.compact
      { "egressMbps" => egress_mbps, "maxConnections" => max_connections,
        "newConnectionsPerSecond" => new_connections_per_second,
        "transferQuotaMiB" => transfer_quota_mib }.each do |key, budget|
        body[key] = budget == :default ? nil : budget unless budget.nil?
      end
      body["httpRules"] = HttpRule.list(http_rules) unless http_rules.nil?
      if body.empty?
        raise ArgumentError,
              "update_network_settings: give network_block_all, network_allow_list, " \
              "domain_allow_list, network_deny_list, domain_deny_list, essential_services, " \
              "egress_mbps, max_connections, new_connections_per_second, network_approvals, " \
              "approval_hold_seconds, transfer_quota_mib or http_rules"
      end

      load(http.request("POST", path("/network-settings"), body))
      nil
    end

    # Deletes the sandbox.
    def delete
      http.request("DELETE", path)
      nil
    end

    private

    def load(d)
      @id = d["id"]
      @name = d["name"]
      @state = d["state"]
      @snapshot = d["snapshot"]
      @runtime_class = d.fetch("runtimeClass", "runc")
      @organization_id = d["organizationId"]
      @env = d.fetch("env", {})
      @network_block_all = d.fetch("networkBlockAll", false)
      @network_allow_list = d["networkAllowList"]
      @domain_allow_list = d["domainAllowList"]
      @network_deny_list = d["networkDenyList"]
      @domain_deny_list = d["domainDenyList"]
      @essential_services = d.fetch("essentialServices", true)
      @egress_mbps = d["egressMbps"]
      @max_connections = d["maxConnections"]
      @new_connections_per_second = d["newConnectionsPerSecond"]
      @network_approvals = d.fetch("networkApprovals", false)
      @approval_hold_seconds = d.fetch("approvalHoldSeconds", 0)
      @transfer_quota_mib = d["transferQuotaMiB"]
      rules = d["httpRules"]
      @http_rules = rules.nil? || rules.empty? ? nil : rules.map { |r| HttpRule.from(r) }
      @secrets = d.fetch("secrets", [])
      @effective_network = d.fetch("effectiveNetwork", {})
      @created_at = d["createdAt"]
      @updated_at = d["updatedAt"]
      self
    end
  end

  # The organization's secrets: stored sealed on the server, never shown
  # again; a sandbox created with secrets: [name, ...] holds placeholders
  # for them. Storing and removing them needs the secrets:write scope, and
  # a server given a secrets key (else 503 secrets_not_configured).
  class Secrets
    def initialize(http)
      @http = http
    end

    # Stores a secret (a Secret): name is an environment variable's (A-Z,
    # 0-9, _), value 1 byte to 8 KiB without a control character but tab,
    # hosts the 1 to 16 names or "*." wildcards it is sent to. A taken name
    # is a ConflictError (secret_exists).
    def create(name, value:, hosts:)
      body = { "name" => name, "value" => value, "hosts" => hosts }
      Secret.from(@http.request("POST", "/api/secrets", body))
    end

    # The organization's secrets: names, hosts and dates, never values.
    def list
      @http.request("GET", "/api/secrets").map { |r| Secret.from(r) }
    end

    # Removes a secret (a Secret or its name); a ConflictError
    # (secret_in_use) while a sandbox holds it.
    def delete(secret)
      name = secret.is_a?(Secret) ? secret.name : secret
      @http.request("DELETE", "/api/secrets/#{Http.escape(name)}")
      nil
    end
  end

  # The snapshots sandboxes start from. Listing needs the operator token or
  # a key with sandboxes:read; making and removing them, the operator token
  # (an organization's key: PermissionDeniedError).
  class Snapshots
    def initialize(http)
      @http = http
    end

    # Makes snapshot name (a Snapshot) from the OCI image image
    # ("python:3.12-slim", "registry.example.com/team/tool@sha256:...") on
    # every runner, each pulling it from a registry the operator configured
    # (another: ValidationError, registry_not_allowed). One of that name is
    # replaced, unless a sandbox uses it (ConflictError, snapshot_in_use). A
    # large image takes a while: timeout is the seconds to wait.
    def create(name, image:, timeout: nil)
      body = { "name" => name, "image" => image }
      Snapshot.from(@http.request("POST", "/api/snapshots", body, timeout: timeout))
    end

    # Makes snapshot name (a Snapshot) on every runner from the root
    # filesystem tar archive at the path archive (plain or gzip: what
    # docker export writes), read as it is sent. A hostile or broken
    # archive is a ValidationError (invalid_request); one over the
    # server's limit, a PayloadTooLargeError.
    def upload(name, archive:, timeout: nil)
      Snapshot.from(@http.upload("/api/snapshots/#{Http.escape(name)}", archive, timeout: timeout))
    end

    # The snapshots, with the runners that hold each.
    def list
      @http.request("GET", "/api/snapshots").map { |r| Snapshot.from(r) }
    end

    # Removes a snapshot (a Snapshot or its name) from every runner; a
    # ConflictError (snapshot_in_use) while a sandbox uses it.
    def delete(snapshot)
      name = snapshot.is_a?(Snapshot) ? snapshot.name : snapshot
      @http.request("DELETE", "/api/snapshots/#{Http.escape(name)}")
      nil
    end
  end

  # A client of a sandgate server. api_url and api_key default to
  # SANDGATE_API_URL (else http://127.0.0.1:8080) and SANDGATE_API_KEY;
  # timeout is the seconds an HTTP call may take; max_retries, how many
  # times a request answered 429 or 503 with Retry-After (the server did
  # nothing) is sent again after the wait it asks for (at most 60 s each;
  # the last answer's error is raised, with its retry_after).
  class Sandgate
    def initialize(api_url: nil, api_key: nil, timeout: 120, max_retries: 2)
      present = ->(v) { v.nil? || v.empty? ? nil : v }
      url = present.(api_url) || present.(ENV["SANDGATE_API_URL"]) || DEFAULT_API_URL
      key = present.(api_key) || present.(ENV.fetch("SANDGATE_API_KEY", nil))
      if key.nil? || key.empty?
        raise Error.new("no API key: pass api_key: or set SANDGATE_API_KEY", code: "missing_api_key")
      end

      @http = Http.new(url, key, timeout, max_retries)
    end

    # The organization's secrets: create, list, delete.
    def secrets
      Secrets.new(@http)
    end

    # The snapshots sandboxes start from: create (from an OCI image), list,
    # delete.
    def snapshots
      Snapshots.new(@http)
    end

    # Creates a sandbox; it is running, its policy enforced, on return.
    def create(params = CreateSandboxFromSnapshotParams.new)
      Sandbox.new(@http, @http.request("POST", "/api/sandbox", params.to_h))
    end

    # One sandbox, by id or name.
    def get(id_or_name)
      Sandbox.new(@http, @http.request("GET", "/api/sandbox/#{Http.escape(id_or_name)}"))
    end

    # The organization's sandboxes.
    def list
      @http.request("GET", "/api/sandbox").map { |d| Sandbox.new(@http, d) }
    end

    # Deletes a sandbox (itself, its id or its name).
    def delete(sandbox)
      key = sandbox.is_a?(Sandbox) ? sandbox.id : sandbox
      @http.request("DELETE", "/api/sandbox/#{Http.escape(key)}")
      nil
    end
  end
end
