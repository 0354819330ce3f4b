//go:build fullsuite

package realbin

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// The seven states ReReady documents.
var states = []string{
	"pending_outbound_shipment",
	"pending_outbound_shipment_delivery",
	"pending_return_shipment",
	"pending_return_shipment_delivery",
	"failed",
	"not_returned",
	"complete",
}

// fanOut is a site with one gateway for three apps, one path each.
const fanOut = `
	reready_verify /hooks/* {
		secret ssk_fanout_5f1c2d3e4b
	}
	reverse_proxy /hooks/python {{python}}
	reverse_proxy /hooks/node {{node}}
	reverse_proxy /hooks/php {{php}}`

const fanOutSecret = "ssk_fanout_5f1c2d3e4b"

// Every documented state reaches every app, signed by each independent
// signer in turn, with its fields as trusted headers and its body intact.
func TestAllSevenStates(t *testing.T) {
	g := startGateway(t, fanOut, nil, fanOutSecret)
	for i, u := range allApps {
		for j, state := range states {
			s := harness.Signers[(i+j)%len(harness.Signers)]
			t.Run(u.name+"/"+state+"/"+s.Name, func(t *testing.T) {
				ev := harness.NewEvent(state)
				switch state {
				case "pending_return_shipment_delivery", "complete":
					ev.Serial = "C02XK0ABJGH" + fmt.Sprint(j)
				case "failed", "not_returned":
					ev.Ticket = "https://support.example.com/tickets/" + fmt.Sprint(4200+j)
				}
				body := ev.Body()
				ts := now()
				sig := s.Sign(t, fanOutSecret, ts, body)
				m := mark(t)
				ok(t, g.post(t, "/hooks/"+u.name, body, "X-ReReady-Signature-512", sig))
				delivered(t, m.one(t, u), ev, body, "hmac", fmt.Sprint(ts), sig)
			})
		}
	}
}

// Test events (ReReady's "Test" button) are forwarded like any other, with
// X-ReReady-Test: true, when nothing acknowledges them first.
func TestTestEventsForwarded(t *testing.T) {
	g := startGateway(t, fanOut, nil, fanOutSecret)
	for _, test := range []bool{true, false} {
		t.Run(fmt.Sprint("test=", test), func(t *testing.T) {
			ev := harness.NewEvent("pending_outbound_shipment")
			ev.Test = test
			body := ev.Body()
			ts := now()
			sig := harness.Ruby.Sign(t, fanOutSecret, ts, body)
			m := mark(t)
			ok(t, g.post(t, "/hooks/node", body, "X-ReReady-Signature-512", sig))
			delivered(t, m.one(t, node), ev, body, "hmac", fmt.Sprint(ts), sig)
		})
	}
}

// `@test vars {http.reready.test} true` + `respond @test 202` answers
// verified test events at the gateway; the app sees only real events, and
// an unverified "test" event is still refused.
func TestTestEventAcknowledged(t *testing.T) {
	const secret = "ssk_ack_a1b2c3d4"
	g := startGateway(t, `
	reready_verify /webhooks/reready {
		secret `+secret+`
	}
	@test {
		path /webhooks/reready
		vars {http.reready.test} true
	}
	respond @test "test event acknowledged" 202
	reverse_proxy /webhooks/reready {{php}}`, nil, secret)

	t.Run("test event", func(t *testing.T) {
		ev := harness.NewEvent("complete")
		ev.Test = true
		body := ev.Body()
		m := mark(t)
		r := g.post(t, "/webhooks/reready", body, "X-ReReady-Signature-512", harness.OpenSSL.Sign(t, secret, now(), body))
		if r.status != http.StatusAccepted || r.body != "test event acknowledged" {
			t.Errorf("reply %d %q, want 202 \"test event acknowledged\"", r.status, r.body)
		}
		m.none(t)
	})
	t.Run("real event", func(t *testing.T) {
		ev := harness.NewEvent("complete")
		body := ev.Body()
		ts := now()
		sig := harness.Python.Sign(t, secret, ts, body)
		m := mark(t)
		ok(t, g.post(t, "/webhooks/reready", body, "X-ReReady-Signature-512", sig))
		delivered(t, m.one(t, php), ev, body, "hmac", fmt.Sprint(ts), sig)
	})
	t.Run("forged test event", func(t *testing.T) {
		ev := harness.NewEvent("complete")
		ev.Test = true
		body := ev.Body()
		m := mark(t)
		r := g.post(t, "/webhooks/reready", body, "X-ReReady-Signature-512", harness.Ruby.Sign(t, "ssk_not_the_secret", now(), body))
		if r.status != http.StatusUnauthorized {
			t.Errorf("reply %d %q, want 401", r.status, r.body)
		}
		m.none(t)
	})
}

// With two secrets (rotation), a delivery signed under either reaches the
// app, one signed under neither does not, and a header carrying several v
// values is accepted when any of them matches.
func TestTwoSecrets(t *testing.T) {
	const oldSecret, newSecret = "ssk_old_0011223344", "ssk_new_5566778899"
	g := startGateway(t, `
	reready_verify /webhooks/reready {
		secret `+oldSecret+`
		secret `+newSecret+`
	}
	reverse_proxy /webhooks/reready {{php}}`, nil, oldSecret, newSecret)

	for _, c := range []struct {
		name   string
		secret string
		s      harness.Signer
	}{
		{"old secret", oldSecret, harness.Ruby},
		{"new secret", newSecret, harness.OpenSSL},
	} {
		t.Run(c.name, func(t *testing.T) {
			ev := harness.NewEvent("pending_return_shipment")
			body := ev.Body()
			ts := now()
			sig := c.s.Sign(t, c.secret, ts, body)
			m := mark(t)
			ok(t, g.post(t, "/webhooks/reready", body, "X-ReReady-Signature-512", sig))
			delivered(t, m.one(t, php), ev, body, "hmac", fmt.Sprint(ts), sig)
		})
	}
	t.Run("several v, last one valid", func(t *testing.T) {
		ev := harness.NewEvent("failed")
		body := ev.Body()
		ts := now()
		wrong := macOf(harness.Python.Sign(t, "ssk_retired_secret", ts, body))
		right := macOf(harness.Python.Sign(t, newSecret, ts, body))
		sig := fmt.Sprintf("t=%d, v=%s, v=%s", ts, wrong, strings.ToUpper(right))
		m := mark(t)
		ok(t, g.post(t, "/webhooks/reready", body, "X-ReReady-Signature-512", sig))
		delivered(t, m.one(t, php), ev, body, "hmac", fmt.Sprint(ts), sig)
	})
	t.Run("neither secret", func(t *testing.T) {
		body := harness.NewEvent("complete").Body()
		m := mark(t)
		r := g.post(t, "/webhooks/reready", body, "X-ReReady-Signature-512", harness.Ruby.Sign(t, "ssk_third_secret", now(), body))
		if r.status != http.StatusUnauthorized {
			t.Errorf("reply %d %q, want 401", r.status, r.body)
		}
		m.none(t)
		g.waitLog(t, `"reason":"signature_mismatch"`)
	})
}

// Token mode: the app sees the query without ?token=, other parameters kept
// byte for byte and in order, and no X-ReReady-Timestamp.
func TestTokenMode(t *testing.T) {
	const token = "tok_Zx9+/q="
	g := startGateway(t, `
	reready_verify /webhooks/reready {
		token "`+token+`"
	}
	reverse_proxy /webhooks/reready {{python}}`, nil, token, url.QueryEscape(token))
	tok := url.QueryEscape(token)

	t.Run("valid", func(t *testing.T) {
		ev := harness.NewEvent("pending_outbound_shipment_delivery")
		ev.Serial = "FVFXC2ABCDEF"
		body := ev.Body()
		m := mark(t)
		ok(t, g.post(t, "/webhooks/reready?src=rr&token="+tok+"&b=%2F2&src=again", body))
		rec := m.one(t, python)
		delivered(t, rec, ev, body, "token", "", "")
		if rec["path"] != "/webhooks/reready" || rec["query"] != "src=rr&b=%2F2&src=again" {
			t.Errorf("app saw path %v query %v, want /webhooks/reready and src=rr&b=%%2F2&src=again", rec["path"], rec["query"])
		}
	})
	t.Run("token only parameter", func(t *testing.T) {
		ev := harness.NewEvent("complete")
		body := ev.Body()
		m := mark(t)
		ok(t, g.post(t, "/webhooks/reready?token="+tok, body))
		rec := m.one(t, python)
		delivered(t, rec, ev, body, "token", "", "")
		if rec["query"] != "" {
			t.Errorf("app saw query %q, want none", rec["query"])
		}
	})
	for _, c := range []struct{ name, query, reason string }{
		{"missing", "?src=rr", "token_missing"},
		{"wrong", "?token=tok_Zx9", "token_mismatch"},
		{"unescaped plus", "?token=tok_Zx9+/q=", "token_mismatch"},
		{"duplicated", "?token=" + tok + "&token=" + tok, "token_duplicated"},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := mark(t)
			r := g.post(t, "/webhooks/reready"+c.query, harness.NewEvent("complete").Body())
			if r.status != http.StatusUnauthorized {
				t.Errorf("reply %d %q, want 401", r.status, r.body)
			}
			if strings.Contains(r.body, token) || strings.Contains(r.body, tok) {
				t.Errorf("reply %q contains the token", r.body)
			}
			m.none(t)
			g.waitLog(t, `"reason":"`+c.reason+`"`)
		})
	}
}

// Signature and token together: both are required (no downgrade to either),
// and the app is told "hmac,token".
func TestTokenAndSignature(t *testing.T) {
	const secret, token = "ssk_both_77aa88bb", "tok_both_0c0d0e0f"
	g := startGateway(t, `
	reready_verify /webhooks/reready {
		secret `+secret+`
		token `+token+`
	}
	reverse_proxy /webhooks/reready {{node}}`, nil, secret, token)

	ev := harness.NewEvent("not_returned")
	ev.Ticket = "https://support.example.com/tickets/77"
	body := ev.Body()
	ts := now()
	sig := harness.OpenSSL.Sign(t, secret, ts, body)

	t.Run("signature without token", func(t *testing.T) {
		m := mark(t)
		if r := g.post(t, "/webhooks/reready", body, "X-ReReady-Signature-512", sig); r.status != http.StatusUnauthorized {
			t.Errorf("reply %d %q, want 401", r.status, r.body)
		}
		m.none(t)
	})
	t.Run("token without signature", func(t *testing.T) {
		m := mark(t)
		if r := g.post(t, "/webhooks/reready?token="+token, body); r.status != http.StatusUnauthorized {
			t.Errorf("reply %d %q, want 401", r.status, r.body)
		}
		m.none(t)
	})
	t.Run("both", func(t *testing.T) {
		m := mark(t)
		ok(t, g.post(t, "/webhooks/reready?token="+token+"&tenant=acme", body, "X-ReReady-Signature-512", sig))
		rec := m.one(t, node)
		delivered(t, rec, ev, body, "hmac,token", fmt.Sprint(ts), sig)
		if rec["query"] != "tenant=acme" {
			t.Errorf("app saw query %q, want tenant=acme", rec["query"])
		}
	})
}

// Client-sent X-ReReady-* headers, in any case, never reach the app: it
// gets the gateway's values only.
func TestSpoofedHeadersReplaced(t *testing.T) {
	g := startGateway(t, fanOut, nil, fanOutSecret)
	for i, u := range allApps {
		t.Run(u.name, func(t *testing.T) {
			spoofDelivery(t, g, u, harness.Signers[i],
				"X-ReReady-State", "complete",
				"X-ReReady_State", "complete",
				"x-reready-device-return-id", "00000000-0000-0000-0000-000000000000",
				"X-REREADY-TEST", "false",
				"X-ReReady-Verified", "hmac,token",
				"X-ReReady-Timestamp", "1",
				"X-ReReady-Serial-Number", "SPOOFED",
				"X-ReReady_Ticket_Url", "https://evil.example/ticket",
				"X-ReReady-Url", "https://evil.example/",
				"X-ReReady-Admin", "yes",
			)
		})
	}
}

// Caddy drops header names with '_' or '.' by default, because PHP/CGI
// backends fold them onto '-' ($_SERVER['HTTP_X_REREADY_STATE'] for all of
// X-ReReady-State, X-ReReady_State and X-ReReady.State). When a server
// allowlists those spellings, the gateway must still remove them.
func TestSpoofedAliasHeadersReplaced(t *testing.T) {
	g := startGatewayWith(t, `
	servers {
		expected_underscore_headers X-ReReady_State X-ReReady_Verified
		expected_dot_headers X-ReReady.State X-ReReady.Verified
	}`, fanOut, nil, fanOutSecret)
	for i, u := range allApps {
		t.Run(u.name+"/underscore", func(t *testing.T) {
			spoofDelivery(t, g, u, harness.Signers[i],
				"X-ReReady_State", "complete",
				"X-ReReady_Verified", "hmac,token")
		})
		t.Run(u.name+"/dot", func(t *testing.T) {
			spoofDelivery(t, g, u, harness.Signers[(i+1)%len(harness.Signers)],
				"X-ReReady.State", "complete",
				"X-ReReady.Verified", "hmac,token")
		})
	}
}

// spoofDelivery sends a valid test event for pending_return_shipment (null
// serial number and ticket URL) to app u with the extra headers spoof and
// checks the app saw only the gateway's values.
func spoofDelivery(t *testing.T, g *gateway, u *upstream, s harness.Signer, spoof ...string) {
	t.Helper()
	ev := harness.NewEvent("pending_return_shipment")
	ev.Test = true
	body := ev.Body()
	ts := now()
	sig := s.Sign(t, fanOutSecret, ts, body)
	m := mark(t)
	ok(t, g.post(t, "/hooks/"+u.name, body, append([]string{"X-ReReady-Signature-512", sig}, spoof...)...))
	delivered(t, m.one(t, u), ev, body, "hmac", fmt.Sprint(ts), sig)
}

// A valid chunked delivery reaches each app byte for byte (unusual
// whitespace, CRLF, raw and escaped non-ASCII, trailing newline) with a
// Content-Length instead of chunking.
func TestChunkedBodyByteIdentical(t *testing.T) {
	g := startGateway(t, fanOut, nil, fanOutSecret)
	for i, u := range allApps {
		t.Run(u.name, func(t *testing.T) {
			ev := harness.NewEvent("complete")
			ev.Serial = "C02ZQ1ABMD6T" // sent as "\u004302ZQ1ABMD6T"
			body := []byte(fmt.Sprintf("{\r\n\t\"device_return_id\" : %q,\n  \"serial_number\": \"\\u004302ZQ1ABMD6T\",\n"+
				"  \"state\":\"complete\", \"test\":false, \"ticket_url\":null,\n  \"url\": %q,\n"+
				"  \"note\": \"Zo\u00eb\u2019s MacBook, caf\\u00e9 %s\"\n}\n",
				ev.ID, ev.URL(), strings.Repeat("chunk ", 2000)))
			ts := now()
			sig := harness.Signers[(i+1)%len(harness.Signers)].Sign(t, fanOutSecret, ts, body)
			m := mark(t)
			ok(t, g.curlChunked(t, "/hooks/"+u.name, body, "X-ReReady-Signature-512", sig))
			delivered(t, m.one(t, u), ev, body, "hmac", fmt.Sprint(ts), sig)
		})
	}
}

// Secrets from {env.*} and {file.*} are read when Caddy starts; `caddy
// adapt` keeps the placeholders rather than the secrets.
func TestSecretsFromEnvAndFile(t *testing.T) {
	const envSecret, fileSecret = "ssk_from_env_9e8d7c6b", "ssk_from_file_1a2b3c4d"
	secretFile := filepath.Join(t.TempDir(), "reready-secret")
	// As `echo ssk_... > file` writes it: Caddy trims the trailing newline.
	if err := os.WriteFile(secretFile, []byte(fileSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	site := `
	reready_verify /env {
		secret {env.RR_TEST_SECRET}
	}
	reready_verify /file {
		secret {file.` + secretFile + `}
	}
	reverse_proxy /env {{node}}
	reverse_proxy /file {{php}}`
	g := startGateway(t, site, []string{"RR_TEST_SECRET=" + envSecret}, envSecret, fileSecret)

	for _, c := range []struct {
		path, secret string
		s            harness.Signer
		u            *upstream
	}{
		{"/env", envSecret, harness.Python, node},
		{"/file", fileSecret, harness.Ruby, php},
	} {
		t.Run(c.path, func(t *testing.T) {
			ev := harness.NewEvent("pending_return_shipment_delivery")
			body := ev.Body()
			ts := now()
			sig := c.s.Sign(t, c.secret, ts, body)
			m := mark(t)
			ok(t, g.post(t, c.path, body, "X-ReReady-Signature-512", sig))
			delivered(t, m.one(t, c.u), ev, body, "hmac", fmt.Sprint(ts), sig)
		})
	}
	t.Run("secrets are not interchangeable", func(t *testing.T) {
		body := harness.NewEvent("complete").Body()
		m := mark(t)
		r := g.post(t, "/file", body, "X-ReReady-Signature-512", harness.OpenSSL.Sign(t, envSecret, now(), body))
		if r.status != http.StatusUnauthorized {
			t.Errorf("reply %d %q, want 401", r.status, r.body)
		}
		m.none(t)
	})
	t.Run("adapt keeps placeholders", func(t *testing.T) {
		out := caddyCmd(t, []string{"RR_TEST_SECRET=" + envSecret}, "adapt", "--config", g.Config, "--adapter", "caddyfile")
		if out.err != nil {
			t.Fatalf("caddy adapt: %v\n%s", out.err, out.output)
		}
		if !strings.Contains(out.output, `{env.RR_TEST_SECRET}`) || !strings.Contains(out.output, `{file.`+secretFile+`}`) {
			t.Errorf("caddy adapt output lacks the placeholders:\n%s", out.output)
		}
		for _, s := range []string{envSecret, fileSecret} {
			if strings.Contains(out.output, s) {
				t.Errorf("caddy adapt output contains the secret %q", s)
			}
		}
	})
}
