//go:build fullsuite

package realbin

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// Caddyfile.example, as `make run` serves it, in front of the Python demo
// app: a real event arrives (and the app prints it), a test event is
// acknowledged at the gateway, anything else is refused, and the page
// answers behind basic_auth. The file runs unchanged: its ports come from
// the environment, as make run sets them, here free ones on 127.0.0.1.
func TestCaddyfileExample(t *testing.T) {
	const secret = "ssk_demo_0123456789abcdef" // scripts/run-demo.sh's default
	src, err := os.ReadFile(filepath.Join(root, "Caddyfile.example"))
	if err != nil {
		t.Fatal(err)
	}
	adminPort, port := sitePorts(t)
	pagePort, err := harness.ReservePort()
	if err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	_, appPort, _ := strings.Cut(python.addr, ":")
	for _, v := range []string{"{$REREADY_ADMIN_PORT:2019}", "{$REREADY_PORT:8080}", "{$REREADY_APP_PORT:9000}", "{$REREADY_PAGE_PORT:8081}", "{$REREADY_UI_HASH}"} {
		if !strings.Contains(string(src), v) {
			t.Fatalf("Caddyfile.example no longer reads %s; update this test and scripts/run-demo.sh", v)
		}
	}
	const pagePassword = "demo page password"
	hash := caddyCmd(t, nil, "hash-password", "--plaintext", pagePassword)
	if hash.code != 0 {
		t.Fatalf("caddy hash-password: exit %d\n%s", hash.code, hash.output)
	}
	g := runCaddyfile(t, string(src), base, []string{
		"REREADY_SIGNING_SECRET=" + secret,
		fmt.Sprintf("REREADY_ADMIN_PORT=%d", adminPort),
		fmt.Sprintf("REREADY_PORT=%d", port),
		"REREADY_APP_PORT=" + appPort,
		fmt.Sprintf("REREADY_PAGE_PORT=%d", pagePort),
		"REREADY_UI_USER=demo",
		"REREADY_UI_HASH=" + strings.TrimSpace(hash.output),
	}, secret, pagePassword)

	t.Run("page behind basic_auth", func(t *testing.T) {
		page := fmt.Sprintf("http://127.0.0.1:%d/", pagePort)
		for _, c := range []struct {
			user, password string
			want           int
		}{{"", "", http.StatusUnauthorized}, {"demo", "wrong", http.StatusUnauthorized}, {"demo", pagePassword, http.StatusOK}} {
			req, _ := http.NewRequest(http.MethodGet, page+"api/queue", nil)
			if c.user != "" {
				req.SetBasicAuth(c.user, c.password)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Errorf("GET %sapi/queue as %q: %d %s, want %d", page, c.user, resp.StatusCode, body, c.want)
			}
		}
	})
	t.Run("real event", func(t *testing.T) {
		ev := harness.NewEvent("complete")
		ev.Serial = "C02DEMO12345"
		body := ev.Body()
		ts := now()
		sig := harness.Ruby.Sign(t, secret, ts, body)
		m := mark(t)
		ok(t, g.post(t, "/webhooks/reready", body, "X-ReReady-Signature-512", sig))
		delivered(t, m.one(t, python), ev, body, "hmac", fmt.Sprint(ts), sig)
		if want := "device return " + ev.ID + " is complete"; !strings.Contains(python.out.String(), want) {
			t.Errorf("the demo app did not print %q:\n%s", want, python.out.String())
		}
	})
	t.Run("test event", func(t *testing.T) {
		ev := harness.NewEvent("pending_outbound_shipment")
		ev.Test = true
		body := ev.Body()
		m := mark(t)
		r := g.post(t, "/webhooks/reready", body, "X-ReReady-Signature-512", harness.OpenSSL.Sign(t, secret, now(), body))
		if r.status != http.StatusAccepted {
			t.Errorf("reply %d %q, want 202", r.status, r.body)
		}
		m.none(t)
	})
	t.Run("forged", func(t *testing.T) {
		body := harness.NewEvent("complete").Body()
		m := mark(t)
		r := g.post(t, "/webhooks/reready", body, "X-ReReady-Signature-512", harness.Python.Sign(t, "ssk_not_the_demo_secret", now(), body))
		if r.status != http.StatusUnauthorized {
			t.Errorf("reply %d %q, want 401", r.status, r.body)
		}
		m.none(t)
	})
	// As its comment says: the module's series are on the admin endpoint
	// with the metrics option commented out, Caddy's HTTP series are not,
	// and a test event the @test route answers counts as passed on.
	t.Run("metrics on the admin endpoint", func(t *testing.T) {
		admin := fmt.Sprintf("127.0.0.1:%d", adminPort)
		key := seriesKey("caddy_reready_events_total", "state", "not_returned", "test", "true")
		before, _ := scrape(t, admin)
		ev := harness.NewEvent("not_returned")
		ev.Test = true
		body := ev.Body()
		if r := g.post(t, "/webhooks/reready", body, "X-ReReady-Signature-512", harness.Ruby.Sign(t, secret, now(), body)); r.status != http.StatusAccepted {
			t.Fatalf("reply %d %q, want 202", r.status, r.body)
		}
		after, raw := scrape(t, admin)
		if got := after[key] - before[key]; got != 1 {
			t.Errorf("%s moved by %v, want 1", key, got)
		}
		if !strings.Contains(raw, "# HELP caddy_reready_events_total Verified ReReady events reready_verify passed on to the next handler") {
			t.Errorf("/metrics lacks the events_total help text:\n%s", grepLines(raw, "caddy_reready_events_total"))
		}
		if strings.Contains(raw, "caddy_http_requests_total") {
			t.Errorf("/metrics has Caddy's HTTP series with the metrics option commented out")
		}
	})
	// As the README's quick start says: the journal shows what arrived, and
	// the queue (on in the example) is there, empty while the app is up.
	t.Run("journal and queue on the admin endpoint", func(t *testing.T) {
		admin := fmt.Sprintf("127.0.0.1:%d", adminPort)
		out := caddyCmd(t, nil, "reready", "deliveries", "--address", admin, "--outcome", "rejected", "--json")
		if out.code != 0 || !strings.Contains(out.output, `"reason": "signature_mismatch"`) {
			t.Errorf("caddy reready deliveries: exit %d\n%s", out.code, out.output)
		}
		out = caddyCmd(t, nil, "reready", "queue", "--address", admin)
		if out.code != 0 || strings.TrimSpace(out.output) != "the queue is empty" {
			t.Errorf("caddy reready queue: exit %d\n%s", out.code, out.output)
		}
	})
	t.Run("other path", func(t *testing.T) {
		m := mark(t)
		if r := g.post(t, "/elsewhere", harness.NewEvent("complete").Body()); r.status != http.StatusNotFound {
			t.Errorf("reply %d %q, want 404", r.status, r.body)
		}
		m.none(t)
	})
}
