//go:build fullsuite

package realbin

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// The `caddy reready` subcommand of the built binary, against a real
// gateway and the independent signers: send delivers a vendor-shaped event
// the app receives; sign agrees with Ruby's OpenSSL::HMAC; verify accepts
// what Ruby signed and names the check that fails.
func TestCLIReReadyCommand(t *testing.T) {
	const secret, token = "ssk_cli_real_6e7f8a9b", "tok_cli_real_0c1d"
	g := startGateway(t, `
	reready_verify /hook {
		secret `+secret+`
	}
	reready_verify /both {
		secret `+secret+`
		token `+token+`
	}
	@test vars {http.reready.test} true
	respond @test "ack" 202
	reverse_proxy {{python}}`, nil, secret, token)
	env := []string{"REREADY_SIGNING_SECRET=" + secret}

	t.Run("send delivers through the gateway", func(t *testing.T) {
		m := mark(t)
		res := caddyCmd(t, env, "reready", "send", "--url", g.Base+"/hook", "--state", "not_returned", "--serial-number", "SN-42")
		if res.code != 0 || !strings.Contains(res.output, "200") {
			t.Fatalf("send exit %d:\n%s", res.code, res.output)
		}
		rec := m.one(t, python)
		var p map[string]any
		if err := json.Unmarshal(rec.body(t), &p); err != nil {
			t.Fatal(err)
		}
		id, _ := p["device_return_id"].(string)
		if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(id) {
			t.Fatalf("device_return_id %q is not a UUID v4", id)
		}
		want := map[string]any{"state": "not_returned", "device_return_id": id, "verified": "hmac", "serial_number": "SN-42", "test": "false"}
		for k, v := range want {
			if fmt.Sprint(rec[k]) != fmt.Sprint(v) {
				t.Errorf("app recorded %s = %v, want %v (%s)", k, rec[k], v, rec)
			}
		}
		if p["url"] != "https://www.reready.co/device_returns/"+id || p["ticket_url"] != nil {
			t.Errorf("payload %v", p)
		}
	})

	t.Run("send with token and signature", func(t *testing.T) {
		m := mark(t)
		res := caddyCmd(t, env, "reready", "send", "--url", g.Base+"/both?x=1", "--token", token, "--state", "complete")
		if res.code != 0 {
			t.Fatalf("send exit %d:\n%s", res.code, res.output)
		}
		if strings.Contains(res.output, token) {
			t.Fatalf("send printed the token:\n%s", res.output)
		}
		rec := m.one(t, python)
		if rec["verified"] != "hmac,token" || rec["query"] != "x=1" {
			t.Fatalf("app recorded %s", rec)
		}
	})

	t.Run("test event acknowledged by Caddy", func(t *testing.T) {
		m := mark(t)
		res := caddyCmd(t, env, "reready", "send", "--url", g.Base+"/hook", "--state", "complete", "--test")
		if res.code != 0 || !strings.Contains(res.output, "202") {
			t.Fatalf("send exit %d:\n%s", res.code, res.output)
		}
		m.none(t)
	})

	t.Run("wrong secret fails non-zero", func(t *testing.T) {
		m := mark(t)
		res := caddyCmd(t, []string{"REREADY_SIGNING_SECRET=ssk_not_this_one"}, "reready", "send", "--url", g.Base+"/hook", "--state", "complete")
		if res.code == 0 || !strings.Contains(res.output, "401") {
			t.Fatalf("send exit %d:\n%s", res.code, res.output)
		}
		m.none(t)
	})

	t.Run("unknown state lists the seven", func(t *testing.T) {
		res := caddyCmd(t, env, "reready", "send", "--url", g.Base+"/hook", "--state", "lost")
		if res.code == 0 || !strings.Contains(res.output, "pending_outbound_shipment_delivery") || !strings.Contains(res.output, "not_returned") {
			t.Fatalf("send exit %d:\n%s", res.code, res.output)
		}
	})

	body := harness.NewEvent("complete").Body()
	file := filepath.Join(t.TempDir(), "body.json")
	if err := os.WriteFile(file, body, 0o600); err != nil {
		t.Fatal(err)
	}
	ts := time.Now().Unix()
	ruby := harness.Ruby.Sign(t, secret, ts, body)

	t.Run("sign agrees with Ruby", func(t *testing.T) {
		res := caddyCmd(t, env, "reready", "sign", "--timestamp", fmt.Sprint(ts), "--file", file)
		if res.code != 0 || strings.TrimSpace(lastLine(res.output)) != ruby {
			t.Fatalf("sign exit %d, printed %q; Ruby signed %q", res.code, res.output, ruby)
		}
	})

	t.Run("verify", func(t *testing.T) {
		res := caddyCmd(t, env, "reready", "verify", "--header", ruby, "--file", file)
		if res.code != 0 || !strings.Contains(res.output, "valid") {
			t.Fatalf("verify exit %d:\n%s", res.code, res.output)
		}
		for _, tc := range []struct{ header, reason string }{
			{harness.Ruby.Sign(t, "ssk_other", ts, body), "signature_mismatch"},
			{harness.Ruby.Sign(t, secret, ts-3600, body), "timestamp_stale"},
			{"t=" + fmt.Sprint(ts), "signature_malformed"},
		} {
			res := caddyCmd(t, env, "reready", "verify", "--header", tc.header, "--file", file)
			if res.code == 0 || !strings.Contains(res.output, tc.reason) {
				t.Errorf("verify %q: exit %d, want %s:\n%s", tc.header, res.code, tc.reason, res.output)
			}
		}
	})
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}
