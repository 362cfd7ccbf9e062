# frozen_string_literal: true

require_relative "lib/sandgate/version"

Gem::Specification.new do |s|
  s.name = "sandgate"
  s.version = Sandgate::VERSION
  s.summary = "Ruby SDK for sandgate: sandboxes whose network egress is enforced in the kernel."
  s.description = "Create sandboxes, run commands in them and control where they may connect, " \
                  "through a sandgate server's API. Standard library only."
  s.authors = ["sandgate"]
  s.license = "Apache-2.0"
  # Relative to this file, wherever `gem build` runs.
  s.files = Dir.chdir(__dir__) { Dir["lib/**/*.rb"] + ["README.md"] }
  s.require_paths = ["lib"]
  s.required_ruby_version = ">= 3.0"
end
