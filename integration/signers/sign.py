#!/usr/bin/env python3
"""Prints an X-ReReady-Signature-512 value using Python's hmac module:
hex(HMAC-SHA512(secret, timestamp + "." + body)).

    REREADY_SIGNING_SECRET=ssk_... python3 sign.py TIMESTAMP < body.json
"""
import hashlib
import hmac
import os
import sys

key = os.environb.get(b"REREADY_SIGNING_SECRET", b"")
if not key:
    sys.exit("sign.py: set REREADY_SIGNING_SECRET")
if len(sys.argv) != 2:
    sys.exit("usage: sign.py TIMESTAMP < body")
t = sys.argv[1]
body = sys.stdin.buffer.read()
mac = hmac.new(key, t.encode() + b"." + body, hashlib.sha512).hexdigest()
print(f"t={t},v={mac}")
