# frozen_string_literal: true

# sandgate: sandboxes whose network egress is enforced in the kernel.
#
#   sandgate = Sandgate::Sandgate.new # SANDGATE_API_URL, SANDGATE_API_KEY
#   sandbox = sandgate.create(
#     Sandgate::CreateSandboxFromSnapshotParams.new(network_allow_list: "192.0.2.0/24")
#   )
#   sandbox.process.exec("echo hello").stdout # => "hello\n"
module Sandgate
end

require_relative "sandgate/version"
require_relative "sandgate/errors"
require_relative "sandgate/client"
