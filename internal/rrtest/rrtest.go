// Package rrtest holds what the test packages share about the gateway's
// contract, written out again independently of the module's own code (a
// second signature-header parser, crypto/hmac directly), so that a mistake
// the module's code makes cannot hide in its tests.
package rrtest

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"strings"
)

// Sig is a signature header as the contract words it.
type Sig struct {
	T  string
	V  []string
	OK bool // it parses
}

// ParseSig parses a header the way the contract words it: comma-separated
// key=value items with optional surrounding spaces/tabs; exactly one t of
// 1-10 ASCII digits; one or more v of 128 hex characters; unknown keys
// ignored; any item that does not parse makes the whole header malformed.
func ParseSig(h string) Sig {
	var s Sig
	haveT := false
	for _, item := range strings.Split(h, ",") {
		k, v, found := strings.Cut(trim(item), "=")
		k, v = trim(k), trim(v)
		if !found || k == "" {
			return Sig{}
		}
		switch k {
		case "t":
			if haveT || !digits(v, 1, 10) {
				return Sig{}
			}
			haveT, s.T = true, v
		case "v":
			if !hex128(v) {
				return Sig{}
			}
			s.V = append(s.V, v)
		}
	}
	s.OK = haveT && len(s.V) > 0
	return s
}

func trim(s string) string { return strings.Trim(s, " \t") }

func digits(s string, min, max int) bool {
	if len(s) < min || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func hex128(s string) bool {
	if len(s) != 128 {
		return false
	}
	_, err := hex.DecodeString(s) // accepts either case
	return err == nil
}

// MAC is HMAC-SHA512(secret, t + "." + body), from crypto/hmac directly.
func MAC(secret, t string, body []byte) []byte {
	m := hmac.New(sha512.New, []byte(secret))
	m.Write([]byte(t + "."))
	m.Write(body)
	return m.Sum(nil)
}

// DeliveryID is the delivery id the gateway gives a delivery signed with
// sig ("t=<t>,v=<hex MAC>", one v, as an independent signer made it): the
// signed t and the first 16 bytes of SHA-256 over a domain string and the
// MAC's bytes.
func DeliveryID(sig string) (string, error) {
	ts, v, ok := strings.Cut(strings.TrimPrefix(sig, "t="), ",v=")
	mac, err := hex.DecodeString(v)
	if !ok || err != nil || len(mac) != 64 {
		return "", fmt.Errorf("signature %q: want t=<t>,v=<128 hex>", sig)
	}
	sum := sha256.Sum256(append([]byte("reready_verify delivery id\x00"), mac...))
	return ts + "-" + hex.EncodeToString(sum[:16]), nil
}
