//go:build fullsuite

package realbin

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// Early rejections (405, 408, 413) close the connection within a second of
// the answer, whatever the client does with the body it declared: withholds
// it, stalls mid-way, or sends all of it at once. Net/http would otherwise
// wait, without a deadline, for up to 256 KiB of the unread body after the
// handler returns, so one small request could hold a connection (and a
// goroutine) for as long as its client liked.
func TestEarlyRejectionsCloseConnection(t *testing.T) {
	// Caddy bounds the drain by its read_body_idle timeout (1m by
	// default) through a body wrapper the handler's deadline goes
	// through; with that timeout off, the deadline is the connection's.
	for _, global := range []string{"", "\tservers {\n\t\ttimeouts {\n\t\t\tread_body_idle -1s\n\t\t}\n\t}"} {
		name := "default timeouts"
		if global != "" {
			name = "read_body_idle off"
		}
		t.Run(name, func(t *testing.T) { testEarlyRejectionsClose(t, global) })
	}
}

func testEarlyRejectionsClose(t *testing.T, global string) {
	const secret = "ssk_hardening_5b7c9d1e"
	g := startGatewayWith(t, global, `
	reready_verify /webhooks/reready {
		secret `+secret+`
		max_body 1KiB
		body_timeout 1s
	}
	reverse_proxy /webhooks/reready {{python}}`, nil, secret)
	host := strings.TrimPrefix(g.Base, "http://")
	sig := relSign(secret, now(), []byte("{}"))

	cases := []struct {
		name   string
		send   string // the request as written; nothing follows it
		status int
	}{
		{"POST declares 4000 bytes over a 1 KiB max_body, sends none",
			relHead(g, "/webhooks/reready", 4000, "X-ReReady-Signature-512", sig), 413},
		{"GET declares 1000 bytes, sends none",
			"GET /webhooks/reready HTTP/1.1\r\nHost: " + host + "\r\nContent-Length: 1000\r\n\r\n", 405},
		{"chunked upload passes max_body, then stalls",
			relHead(g, "/webhooks/reready", -1, "X-ReReady-Signature-512", sig) +
				fmt.Sprintf("%x\r\n%s\r\n", 1500, strings.Repeat("x", 1500)), 413},
		{"POST declares 500 bytes, sends 20, then stalls",
			relHead(g, "/webhooks/reready", 500, "X-ReReady-Signature-512", sig) + `{"device_return_id":`, 408},
		{"POST declares 100 bytes with Expect: 100-continue, sends none",
			relHead(g, "/webhooks/reready", 100, "X-ReReady-Signature-512", sig, "Expect", "100-continue"), 408},
		// A client that sends its whole oversized body right away gets its
		// 413 and a clean close (no reset), as before.
		{"POST sends 4000 bytes over a 1 KiB max_body at once",
			relHead(g, "/webhooks/reready", 4000, "X-ReReady-Signature-512", sig) + strings.Repeat("x", 4000), 413},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := mark(t)
			status, closedAfter := rawExchange(t, g, tc.send)
			if status != tc.status {
				t.Errorf("status %d, want %d", status, tc.status)
			}
			// The bound is the contract's second plus room for a loaded
			// machine; before the fix the connection stayed open until the
			// client gave up.
			if closedAfter > 2*time.Second {
				t.Errorf("connection closed %s after the answer, want within 1s", closedAfter)
			}
			t.Logf("closed %s after the %d", closedAfter.Round(time.Millisecond), status)
			m.none(t)
		})
	}

	// The gateway still serves deliveries afterwards.
	ev := harness.NewEvent("complete")
	body, ts := ev.Body(), now()
	s := relSign(secret, ts, body)
	m := mark(t)
	ok(t, g.post(t, "/webhooks/reready", body, "X-ReReady-Signature-512", s))
	delivered(t, m.one(t, python), ev, body, "hmac", fmt.Sprint(ts), s)
}

// rawExchange writes req on a fresh connection and sends nothing more. It
// returns the answer's status and how long after the whole answer was read
// the gateway closed the connection. It fails the test if the gateway
// resets the connection or keeps it open for 5s.
func rawExchange(t *testing.T, g *gateway, req string) (status int, closedAfter time.Duration) {
	t.Helper()
	conn := relDial(t, g)
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatalf("writing the request: %v", err)
	}
	br := bufio.NewReader(conn)
	var resp *http.Response
	for resp == nil || resp.StatusCode < 200 { // skip a 100 Continue
		var err error
		if resp, err = http.ReadResponse(br, nil); err != nil {
			t.Fatalf("no answer: %v", err)
		}
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatalf("reading the answer's body: %v", err)
	}
	answered := time.Now()
	conn.SetReadDeadline(answered.Add(5 * time.Second))
	n, err := br.Read(make([]byte, 1))
	closedAfter = time.Since(answered)
	switch {
	case n > 0:
		t.Fatalf("the gateway sent more after its %d answer", resp.StatusCode)
	case errors.Is(err, os.ErrDeadlineExceeded):
		t.Fatalf("the connection is still open %s after the %d answer", closedAfter.Round(time.Millisecond), resp.StatusCode)
	case err != io.EOF:
		var op *net.OpError
		if errors.As(err, &op) {
			t.Fatalf("the connection ended with %v after the %d answer, want a clean close (EOF)", err, resp.StatusCode)
		}
		t.Fatalf("after the %d answer: %v, want EOF", resp.StatusCode, err)
	}
	return resp.StatusCode, closedAfter
}

// Strict JSON where it becomes headers, through the real binary: a
// header-bound string with an escaped lone surrogate is refused (it would
// reach the app as U+FFFD, so the header would not say what the signed body
// says), nesting counts the payload object as level 1, and a body that is
// not JSON is logged as not a JSON object.
func TestStrictPayloadThroughGateway(t *testing.T) {
	const secret = "ssk_strict_json_8a2c4e6f"
	g := startGateway(t, `
	reready_verify /webhooks/reready {
		secret `+secret+`
	}
	reverse_proxy /webhooks/reready {{node}}`, nil, secret)
	id := harness.UUID()
	levels := func(n int) string { // the payload object and n-1 arrays
		return strings.Repeat("[", n-1) + strings.Repeat("]", n-1)
	}
	for _, tc := range []struct {
		name, body     string
		status         int
		reason, detail string
	}{
		{"lone high surrogate", `{"device_return_id":"` + id + `","state":"complete","serial_number":"SN\ud800"}`,
			400, "payload_invalid_string", `serial_number contains the unpaired UTF-16 surrogate \\ud800`},
		{"lone low surrogate", `{"device_return_id":"` + id + `\udc00","state":"complete"}`,
			400, "payload_invalid_string", `device_return_id contains the unpaired UTF-16 surrogate \\udc00`},
		{"257 levels", `{"device_return_id":"` + id + `","state":"complete","x":` + levels(257) + `}`,
			400, "payload_invalid_json", "nesting deeper than 256 levels"},
		{"not json", `not json`, 400, "payload_invalid_json", "body is not a JSON object: it starts with 'n'"},
		{"256 levels", `{"device_return_id":"` + id + `","state":"complete","x":` + levels(256) + `}`, 200, "", ""},
		{"surrogate pair", `{"device_return_id":"` + id + `","state":"complete","serial_number":"SN\ud83d\ude00"}`, 200, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := []byte(tc.body)
			m, off := mark(t), logOffset(g)
			r := g.post(t, "/webhooks/reready", body, "X-ReReady-Signature-512", relSign(secret, now(), body))
			if r.status != tc.status {
				t.Fatalf("status %d %q, want %d", r.status, r.body, tc.status)
			}
			if tc.status != 200 {
				waitLogSince(t, g, off, `"reason":"`+tc.reason+`"`, `"detail":"`+tc.detail+`"`)
				m.none(t)
				return
			}
			rec := m.one(t, node)
			if rec["device_return_id"] != id {
				t.Errorf("app recorded %s", rec)
			}
			// Node reads header bytes as Latin-1.
			var latin1 []rune
			for _, b := range []byte("SN😀") {
				latin1 = append(latin1, rune(b))
			}
			if sn := rec["serial_number"]; strings.Contains(tc.body, "serial_number") && sn != string(latin1) {
				t.Errorf("app recorded serial_number %q, want the UTF-8 bytes of SN😀", sn)
			}
		})
	}
}
