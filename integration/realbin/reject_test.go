//go:build fullsuite

package realbin

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// Every way a delivery can be refused, spread over the three apps: the
// status, the reason logged, and that no app received anything.
func TestRejectedNeverReachApp(t *testing.T) {
	const secret = "ssk_reject_31415926"
	g := startGateway(t, `
	reready_verify /hooks/* {
		secret `+secret+`
		max_body 1KiB
	}
	reverse_proxy /hooks/python {{python}}
	reverse_proxy /hooks/node {{node}}
	reverse_proxy /hooks/php {{php}}`, nil, secret)

	// signed returns a fresh event's body and a valid signature for it.
	signed := func(t *testing.T, s harness.Signer, ev harness.Event) ([]byte, string) {
		body := ev.Body()
		return body, s.Sign(t, secret, now(), body)
	}
	padding := `, "note": "` + strings.Repeat("x", 1200) + `"` // pushes the body over 1 KiB

	cases := []struct {
		name   string
		app    *upstream
		send   func(t *testing.T, path string) reply
		status int
		reason string
	}{
		{"stale timestamp", python, func(t *testing.T, path string) reply {
			body := harness.NewEvent("complete").Body()
			return g.post(t, path, body, "X-ReReady-Signature-512", harness.Ruby.Sign(t, secret, now()-600, body))
		}, 401, "timestamp_stale"},
		{"future timestamp", node, func(t *testing.T, path string) reply {
			body := harness.NewEvent("complete").Body()
			return g.post(t, path, body, "X-ReReady-Signature-512", harness.OpenSSL.Sign(t, secret, now()+600, body))
		}, 401, "timestamp_future"},
		{"forged: wrong secret", php, func(t *testing.T, path string) reply {
			body := harness.NewEvent("complete").Body()
			return g.post(t, path, body, "X-ReReady-Signature-512", harness.Python.Sign(t, "ssk_guessed_secret", now(), body))
		}, 401, "signature_mismatch"},
		{"tampered body", python, func(t *testing.T, path string) reply {
			ev := harness.NewEvent("not_returned")
			_, sig := signed(t, harness.OpenSSL, ev)
			ev.State = "complete" // same event, another state: the signature no longer fits
			return g.post(t, path, ev.Body(), "X-ReReady-Signature-512", sig)
		}, 401, "signature_mismatch"},
		{"tampered timestamp", node, func(t *testing.T, path string) reply {
			body := harness.NewEvent("complete").Body()
			ts := now()
			mac := macOf(harness.Ruby.Sign(t, secret, ts, body))
			return g.post(t, path, body, "X-ReReady-Signature-512", fmt.Sprintf("t=%d,v=%s", ts-1, mac))
		}, 401, "signature_mismatch"},
		{"no signature", php, func(t *testing.T, path string) reply {
			return g.post(t, path, harness.NewEvent("complete").Body())
		}, 401, "signature_missing"},
		{"malformed signature", python, func(t *testing.T, path string) reply {
			body, sig := signed(t, harness.Python, harness.NewEvent("complete"))
			return g.post(t, path, body, "X-ReReady-Signature-512", sig[:len(sig)-2])
		}, 401, "signature_malformed"},
		{"two signature headers", node, func(t *testing.T, path string) reply {
			body, sig := signed(t, harness.Ruby, harness.NewEvent("complete"))
			return g.post(t, path, body, "X-ReReady-Signature-512", sig, "X-ReReady-Signature-512", sig)
		}, 401, "signature_duplicated"},
		{"oversized, Content-Length", php, func(t *testing.T, path string) reply {
			body, sig := signed(t, harness.OpenSSL, harness.Event{ID: harness.UUID(), State: "complete", Extra: padding})
			return g.post(t, path, body, "X-ReReady-Signature-512", sig)
		}, 413, "body_too_large"},
		{"oversized, chunked", python, func(t *testing.T, path string) reply {
			body, sig := signed(t, harness.Python, harness.Event{ID: harness.UUID(), State: "complete", Extra: padding})
			return g.curlChunked(t, path, body, "X-ReReady-Signature-512", sig)
		}, 413, "body_too_large"},
		{"GET", node, func(t *testing.T, path string) reply {
			return g.request(t, http.MethodGet, path, nil)
		}, 405, "method_not_allowed"},
		{"PUT, validly signed", python, func(t *testing.T, path string) reply {
			body, sig := signed(t, harness.Ruby, harness.NewEvent("complete"))
			return g.request(t, http.MethodPut, path, body, "X-ReReady-Signature-512", sig)
		}, 405, "method_not_allowed"},
		{"signed, but no state", php, func(t *testing.T, path string) reply {
			body := []byte(`{ "device_return_id": "` + harness.UUID() + `", "serial_number": null, "test": false }`)
			return g.post(t, path, body, "X-ReReady-Signature-512", harness.OpenSSL.Sign(t, secret, now(), body))
		}, 400, "payload_missing_field"},
		{"signed, but newline in device_return_id", node, func(t *testing.T, path string) reply {
			body := []byte(`{ "device_return_id": "abc\nX-Injected: 1", "state": "complete", "test": false }`)
			return g.post(t, path, body, "X-ReReady-Signature-512", harness.Python.Sign(t, secret, now(), body))
		}, 400, "payload_invalid_string"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := mark(t)
			r := c.send(t, "/hooks/"+c.app.name)
			if r.status != c.status {
				t.Errorf("reply %d %q, want %d", r.status, r.body, c.status)
			}
			if c.status == http.StatusMethodNotAllowed && r.header.Get("Allow") != "POST" {
				t.Errorf("405 with Allow %q, want POST", r.header.Get("Allow"))
			}
			m.none(t)
			g.waitLog(t, `"rejected webhook"`, `"reason":"`+c.reason+`"`, `"status":`+fmt.Sprint(c.status))
		})
	}

	// A declared Content-Length over max_body is refused before the body is
	// read: the client waiting on Expect: 100-continue gets 413, not 100.
	t.Run("oversized, Expect: 100-continue", func(t *testing.T) {
		m := mark(t)
		conn, err := net.DialTimeout("tcp", strings.TrimPrefix(g.Base, "http://"), replyTimeout)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(replyTimeout))
		fmt.Fprintf(conn, "POST /hooks/php HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"+
			"Content-Length: 2048\r\nExpect: 100-continue\r\nX-ReReady-Signature-512: t=%d,v=%s\r\n\r\n",
			strings.TrimPrefix(g.Base, "http://"), now(), strings.Repeat("ab", 64))
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			t.Fatalf("reading the status line: %v", err)
		}
		if !strings.HasPrefix(line, "HTTP/1.1 413 ") {
			t.Errorf("first status line %q, want HTTP/1.1 413 (and no 100 Continue)", strings.TrimSpace(line))
		}
		m.none(t)
	})
}

// handle_errors renders the module's rejections: the status and error are
// Caddy's usual {err.*} placeholders, and nothing secret is in them.
func TestHandleErrorsRenders401(t *testing.T) {
	const secret = "ssk_errors_27182818"
	g := startGateway(t, `
	reready_verify /webhooks/reready {
		secret `+secret+`
	}
	reverse_proxy /webhooks/reready {{python}}
	handle_errors {
		respond "denied: {err.status_code}
{err.message}"
	}`, nil, secret)

	t.Run("forged", func(t *testing.T) {
		ev := harness.NewEvent("complete")
		body := ev.Body()
		ts := now()
		forged := harness.Ruby.Sign(t, "ssk_attacker", ts, body)
		expected := macOf(harness.OpenSSL.Sign(t, secret, ts, body))
		m := mark(t)
		r := g.post(t, "/webhooks/reready", body, "X-ReReady-Signature-512", forged)
		first, rest, _ := strings.Cut(r.body, "\n")
		if r.status != http.StatusUnauthorized || first != "denied: 401" {
			t.Errorf("reply %d %q, want 401 \"denied: 401\\n...\"", r.status, r.body)
		}
		if !strings.Contains(rest, "signature_mismatch") {
			t.Errorf("{err.message} %q lacks the reason code signature_mismatch", rest)
		}
		for _, s := range []string{secret, expected, strings.ToUpper(expected)} {
			if strings.Contains(r.body, s) {
				t.Errorf("reply %q contains the secret or the expected MAC", r.body)
			}
		}
		m.none(t)
	})
	t.Run("GET", func(t *testing.T) {
		m := mark(t)
		r := g.request(t, http.MethodGet, "/webhooks/reready", nil)
		if r.status != http.StatusMethodNotAllowed || !strings.HasPrefix(r.body, "denied: 405\n") {
			t.Errorf("reply %d %q, want 405 \"denied: 405\\n...\"", r.status, r.body)
		}
		if r.header.Get("Allow") != "POST" {
			t.Errorf("405 with Allow %q, want POST", r.header.Get("Allow"))
		}
		m.none(t)
	})
}
