# frozen_string_literal: true

module Sandgate
  # An error from sandgate: its HTTP status (0 when the server did not
  # answer), its stable code and a message for a person.
  class Error < StandardError
    attr_reader :code, :status, :details
    # Seconds the server asked to wait before sending the same request
    # again (Retry-After, on a 429 or a 503 that did nothing).
    attr_accessor :retry_after

    def initialize(message, code: "error", status: 0, details: {})
      super(message)
      @code = code
      @status = status
      @details = details
    end
  end

  # 400 or 422: the request is malformed.
  class ValidationError < Error; end
  # 401: no key, or an unknown or revoked one.
  class AuthenticationError < Error; end
  # 403: not allowed (an admin route, or a list the tier refuses).
  class PermissionDeniedError < Error; end
  # 404: no such sandbox (or not this organization's).
  class NotFoundError < Error; end
  # 409: a name taken, a quota reached, a sandbox not running.
  class ConflictError < Error; end
  # 413: the body is over the server's limit.
  class PayloadTooLargeError < Error; end
  # 429: too many commands running at once.
  class RateLimitError < Error; end
  # 5xx: the server failed; the message carries an id for its log.
  class ServerError < Error; end
  # The server did not answer (refused, unreachable, timed out).
  class APIConnectionError < Error; end

  # The error class for an HTTP status.
  def self.error_class(status)
    case status
    when 400, 422 then ValidationError
    when 401 then AuthenticationError
    when 403 then PermissionDeniedError
    when 404 then NotFoundError
    when 409 then ConflictError
    when 413 then PayloadTooLargeError
    when 429 then RateLimitError
    when 500..599 then ServerError
    else Error
    end
  end
end
