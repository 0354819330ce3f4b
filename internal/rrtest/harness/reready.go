package harness

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Event is a ReReady delivery; its body is shaped exactly like the
// vendor's example payload.
type Event struct {
	ID     string
	State  string
	Test   bool
	Serial string // "" sends null
	Ticket string // "" sends null
	Extra  string // raw JSON members added at the end, e.g. `, "note": "..."`
}

// NewEvent is an event of a new return in state.
func NewEvent(state string) Event { return Event{ID: UUID(), State: state} }

// UUID is a random version 4 UUID, as ReReady's return ids are.
func UUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// URL is the return's page at ReReady.
func (e Event) URL() string { return "https://www.reready.co/device_returns/" + e.ID }

// Body is the payload, with < > & written as they are (not \u escapes),
// as a sender would.
func (e Event) Body() []byte {
	str := func(s string) string {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		enc.Encode(s)
		return strings.TrimSpace(b.String())
	}
	null := func(s string) string {
		if s == "" {
			return "null"
		}
		return str(s)
	}
	return []byte(fmt.Sprintf(`{ "device_return_id": %s, "serial_number": %s, "state": %s, "test": %t, "ticket_url": %s, "url": %s%s }`,
		str(e.ID), null(e.Serial), str(e.State), e.Test, null(e.Ticket), str(e.URL()), e.Extra))
}

// Signer is an independent implementation of ReReady's signature: a
// program of integration/signers, run with the secret in
// REREADY_SIGNING_SECRET, the timestamp as its argument and the body on
// its standard input.
type Signer struct {
	Name string
	Argv []string
}

// The signers of integration/signers.
var (
	Ruby    = Signer{"ruby", []string{"ruby", "sign.rb"}}
	OpenSSL = Signer{"openssl", []string{"sh", "sign.sh"}}
	Python  = Signer{"python", []string{"python3", "sign.py"}}
	Signers = []Signer{Ruby, OpenSSL, Python}
)

// SigValue is a signature value as the signers print it: one t, one v.
var SigValue = regexp.MustCompile(`^t=[0-9]+,v=[0-9a-f]{128}$`)

// Sign returns the X-ReReady-Signature-512 value s makes for body at ts.
func (s Signer) Sign(t testing.TB, secret string, ts int64, body []byte) string {
	t.Helper()
	root, err := Root()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(s.Argv[0], append(s.Argv[1:], fmt.Sprint(ts))...)
	cmd.Dir = filepath.Join(root, "integration", "signers")
	cmd.Env = append(os.Environ(), "REREADY_SIGNING_SECRET="+secret)
	cmd.Stdin = bytes.NewReader(body)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s signer: %v\n%s", s.Name, err, stderr.String())
	}
	v := strings.TrimSpace(string(out))
	if !SigValue.MatchString(v) {
		t.Fatalf("%s signer printed %q, want t=<t>,v=<128 hex>", s.Name, v)
	}
	return v
}
