#!/usr/bin/env ruby
# Prints an X-ReReady-Signature-512 value the way ReReady's docs say to build
# one: OpenSSL::HMAC.hexdigest('SHA512', key, data), where data is the unix
# timestamp, ".", and the exact JSON body.
#
#   REREADY_SIGNING_SECRET=ssk_... ruby sign.rb TIMESTAMP < body.json
require 'openssl'

key = ENV['REREADY_SIGNING_SECRET'].to_s
abort 'sign.rb: set REREADY_SIGNING_SECRET' if key.empty?
abort 'usage: sign.rb TIMESTAMP < body' unless ARGV.length == 1
t = ARGV[0]
body = $stdin.binmode.read
data = "#{t}.".b + body
puts "t=#{t},v=#{OpenSSL::HMAC.hexdigest('SHA512', key, data)}"
