package rereadyverify

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"
)

func TestSignedDeliveryID(t *testing.T) {
	body := []byte(`{"state":"complete"}`)
	var mac, other [verify.MACSize]byte
	hex.Decode(mac[:], []byte(verify.MAC("ssk_test", "1744831201", body)))
	hex.Decode(other[:], []byte(verify.MAC("ssk_other_endpoint", "1744831201", body)))
	id := signedDeliveryID(1744831201, &mac)
	if id != signedDeliveryID(1744831201, &mac) {
		t.Fatal("signedDeliveryID is not deterministic")
	}
	if id == signedDeliveryID(1744831202, &mac) {
		t.Fatal("a different t gives the same id")
	}
	if id == signedDeliveryID(1744831201, &other) {
		t.Fatal("the same payload under another secret gives the same id")
	}
	sum := sha256.Sum256(append([]byte("reready_verify delivery id\x00"), mac[:]...))
	if want := "1744831201-" + hex.EncodeToString(sum[:16]); id.String() != want {
		t.Fatalf("id = %q, want %q", id, want)
	}
	macHex := hex.EncodeToString(mac[:])
	for i := 0; i+8 <= len(macHex); i += 8 {
		if strings.Contains(id.String(), macHex[i:i+8]) {
			t.Fatalf("id %q shows part of the MAC", id)
		}
	}
	if id.name() != id.String() {
		t.Fatalf("replay name %q differs from the delivery id %q", id.name(), id)
	}
}

func TestParseDeliveryID(t *testing.T) {
	good := randomDeliveryID(1744831201)
	if got, ok := parseDeliveryID(good.String()); !ok || got != good {
		t.Fatalf("parseDeliveryID(%q) = %v, %v", good, got, ok)
	}
	for _, bad := range []string{
		"", "-", "1744831201", "1744831201-", "x-" + strings.Repeat("0", 32),
		"1744831201-" + strings.Repeat("0", 31), "1744831201-" + strings.Repeat("0", 33),
		"1744831201-" + strings.Repeat("A", 32), "1744831201-" + strings.Repeat("g", 32),
		"../../etc-" + strings.Repeat("0", 32), "12345678901-" + strings.Repeat("0", 32),
		"1744831201-" + strings.Repeat("0", 30) + "/x",
	} {
		if _, ok := parseDeliveryID(bad); ok {
			t.Errorf("parseDeliveryID(%q) accepted it", bad)
		}
	}
	if a, b := randomDeliveryID(1), randomDeliveryID(1); a == b {
		t.Fatal("two random ids are equal")
	}
}
