// Package rrtest holds what the integration test packages share about the
// gateway's contract, computed independently of the module's own code.
package rrtest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

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
