# frozen_string_literal: true

module Sandgate
  # The gem's version (the gemspec reads it from here).
  VERSION = "0.1.0"
end
