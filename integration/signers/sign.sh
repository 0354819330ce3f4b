#!/bin/sh
# Prints an X-ReReady-Signature-512 value using openssl:
# hex(HMAC-SHA512(secret, timestamp + "." + body)).
#
#   REREADY_SIGNING_SECRET=ssk_... sh sign.sh TIMESTAMP < body.json
#
# openssl takes the key on its command line, where other local users can
# see it (ps); fine for tests and demos, not for a shared production host.
set -eu
: "${REREADY_SIGNING_SECRET:?sign.sh: set REREADY_SIGNING_SECRET}"
[ $# -eq 1 ] || { echo 'usage: sign.sh TIMESTAMP < body' >&2; exit 2; }
t=$1
mac=$( { printf '%s.' "$t"; cat; } | openssl dgst -sha512 -hmac "$REREADY_SIGNING_SECRET" -r | cut -d' ' -f1)
printf 't=%s,v=%s\n' "$t" "$mac"
