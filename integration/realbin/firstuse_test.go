//go:build fullsuite

package realbin

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// First use of `caddy reready` from the built binary: a failed verify is
// printed once, as plain text, and exits 1; ages read as durations; sign
// refuses an empty body; the help describes the subcommands and points at
// this module's documentation.
func TestCLIFirstUse(t *testing.T) {
	const secret = "ssk_first_use_3c5e7a9b"
	env := []string{"REREADY_SIGNING_SECRET=" + secret}
	body := harness.NewEvent("complete").Body()
	file := filepath.Join(t.TempDir(), "body.json")
	if err := os.WriteFile(file, body, 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-(14*time.Hour + 12*time.Minute + 5*time.Second)).Unix()
	sig := harness.Ruby.Sign(t, secret, old, body)

	t.Run("verify failure printed once, plainly", func(t *testing.T) {
		res := caddyCmd(t, env, "reready", "verify", "--header", sig, "--file", file)
		if res.code != 1 {
			t.Errorf("exit %d, want 1", res.code)
		}
		// The verdict, and nothing else: no JSON log line repeating it.
		lines := strings.Split(strings.TrimRight(res.output, "\n"), "\n")
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "invalid: stale timestamp (timestamp_stale): t "+fmt.Sprint(old)+" is 14h12m") ||
			!strings.HasSuffix(lines[0], " old; tolerance is 5m0s") {
			t.Errorf("output:\n%s\nwant one line: invalid: stale timestamp (timestamp_stale): t %d is 14h12m…s old; tolerance is 5m0s", res.output, old)
		}
	})

	t.Run("valid signature's age as a duration", func(t *testing.T) {
		res := caddyCmd(t, env, "reready", "verify", "--header", sig, "--file", file, "--tolerance", "1d")
		if res.code != 0 || !strings.HasPrefix(res.output, "valid: v 1 of 1 matched; t="+fmt.Sprint(old)+" is 14h12m") ||
			!strings.HasSuffix(res.output, "s old (tolerance 24h0m0s)\n") {
			t.Errorf("exit %d, output:\n%s", res.code, res.output)
		}
	})

	t.Run("other failures still exit 1 with one message", func(t *testing.T) {
		res := caddyCmd(t, nil, "reready", "verify", "--header", sig, "--file", file)
		if res.code != 1 || strings.Count(res.output, "no signing secret") != 1 {
			t.Errorf("exit %d, output:\n%s", res.code, res.output)
		}
	})

	t.Run("sign refuses an empty body", func(t *testing.T) {
		res := caddyCmd(t, env, "reready", "sign") // stdin is empty
		if res.code != 1 || !strings.Contains(res.output, "the body read from stdin is empty") || strings.Contains(res.output, "t=") {
			t.Errorf("exit %d, output:\n%s", res.code, res.output)
		}
	})

	t.Run("help describes the subcommands", func(t *testing.T) {
		for _, args := range [][]string{{"reready", "--help"}, {"help", "reready"}} {
			res := caddyCmd(t, nil, args...)
			if res.code != 0 {
				t.Errorf("caddy %s: exit %d", strings.Join(args, " "), res.code)
			}
			for _, want := range []string{
				"sign        prints the X-ReReady-Signature-512 value for a body",
				"send        POSTs a signed ReReady-shaped delivery to an endpoint",
				"verify      checks a captured X-ReReady-Signature-512 value against a body",
				"deliveries  shows the delivery journal of a running gateway",
				"queue       lists, retries and drops a running gateway's queued deliveries",
				`Use "caddy reready [command] --help" for more information about a command.`,
				"README.md of the module github.com/reready-verify/caddy-reready-verify",
			} {
				if !strings.Contains(res.output, want) {
					t.Errorf("caddy %s lacks %q:\n%s", strings.Join(args, " "), want, res.output)
				}
			}
			if strings.Contains(res.output, "caddyserver.com/docs/command-line") {
				t.Errorf("caddy %s points at Caddy's command-line docs, which do not describe reready:\n%s", strings.Join(args, " "), res.output)
			}
		}
		res := caddyCmd(t, nil, "reready", "verify", "--help")
		if !strings.Contains(res.output, "README.md of the module") {
			t.Errorf("caddy reready verify --help:\n%s", res.output)
		}
	})
}

// readmeCaddyfile returns the README's one Caddyfile example containing
// marker, as a runnable config: its site address replaced by a free port on
// 127.0.0.1, its upstream 127.0.0.1:9000 by upstreamAddr, and a free admin
// port added to its global options (or a global block of its own). It
// returns the config and the site's base URL.
func readmeCaddyfile(t *testing.T, marker, upstreamAddr string) (string, string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, b := range strings.Split(string(data), "```caddy\n")[1:] {
		if src := b[:strings.Index(b, "```")]; strings.Contains(src, marker) {
			found = append(found, src)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d README Caddyfile examples contain %q, want 1", len(found), marker)
	}
	adminPort, port := sitePorts(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	src := found[0]
	for _, r := range []struct{ old, new string }{
		{"webhooks.example.com", base},
		{"127.0.0.1:9000", upstreamAddr},
	} {
		if !strings.Contains(src, r.old) {
			t.Fatalf("the README example no longer contains %q; update this test:\n%s", r.old, src)
		}
		src = strings.ReplaceAll(src, r.old, r.new)
	}
	global := fmt.Sprintf("\tadmin 127.0.0.1:%d\n\tpersist_config off\n\tdefault_bind 127.0.0.1\n", adminPort)
	if rest, ok := strings.CutPrefix(src, "{\n"); ok {
		return "{\n" + global + rest, base
	}
	return "{\n" + global + "}\n\n" + src, base
}

// The README's opt-in handle_errors example, on the real binary: each
// rejection is answered with its status and reason code, a delivery still
// reaches the app, and an upstream failure keeps its 502 with no body.
func TestReadmeHandleErrorsExample(t *testing.T) {
	const secret = "ssk_readme_errors_1f3e5d7c"
	env := []string{"REREADY_SIGNING_SECRET=" + secret}
	config, base := readmeCaddyfile(t, "handle_errors", python.addr)
	g := runCaddyfile(t, config, base, env, secret)
	const path = "/webhooks/reready"
	sign := func(body []byte) string { return harness.OpenSSL.Sign(t, secret, now(), body) }
	big := harness.Event{ID: harness.UUID(), State: "complete", Extra: `, "note": "` + strings.Repeat("x", 70<<10) + `"`}.Body()

	for _, tc := range []struct {
		name   string
		send   func() reply
		status int
		reason string
	}{
		{"forged", func() reply {
			body := harness.NewEvent("complete").Body()
			return g.post(t, path, body, "X-ReReady-Signature-512", harness.Python.Sign(t, "ssk_forger", now(), body))
		}, 401, "signature_mismatch"},
		{"stale", func() reply {
			body := harness.NewEvent("complete").Body()
			return g.post(t, path, body, "X-ReReady-Signature-512", harness.Ruby.Sign(t, secret, now()-600, body))
		}, 401, "timestamp_stale"},
		{"unsigned", func() reply { return g.post(t, path, harness.NewEvent("complete").Body()) }, 401, "signature_missing"},
		{"GET", func() reply { return g.request(t, "GET", path, nil) }, 405, "method_not_allowed"},
		{"over 64KiB", func() reply { return g.post(t, path, big, "X-ReReady-Signature-512", sign(big)) }, 413, "body_too_large"},
		{"not JSON", func() reply {
			body := []byte("not json")
			return g.post(t, path, body, "X-ReReady-Signature-512", sign(body))
		}, 400, "payload_invalid_json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := mark(t)
			r := tc.send()
			if r.status != tc.status || r.body != tc.reason {
				t.Errorf("answer %d %q, want %d %q", r.status, r.body, tc.status, tc.reason)
			}
			m.none(t)
		})
	}

	t.Run("delivered", func(t *testing.T) {
		ev := harness.NewEvent("complete")
		body, ts := ev.Body(), now()
		sig := harness.Ruby.Sign(t, secret, ts, body)
		m := mark(t)
		ok(t, g.post(t, path, body, "X-ReReady-Signature-512", sig))
		delivered(t, m.one(t, python), ev, body, "hmac", fmt.Sprint(ts), sig)
	})

	t.Run("upstream down", func(t *testing.T) {
		port, err := harness.ReservePort() // nothing listens there
		if err != nil {
			t.Fatal(err)
		}
		config, base := readmeCaddyfile(t, "handle_errors", fmt.Sprintf("127.0.0.1:%d", port))
		g := runCaddyfile(t, config, base, env, secret)
		body := harness.NewEvent("complete").Body()
		if r := g.post(t, path, body, "X-ReReady-Signature-512", sign(body)); r.status != 502 || r.body != "" {
			t.Errorf("answer %d %q, want 502 with no body", r.status, r.body)
		}
	})
}

// The README's log filter, on the real binary's default (error) log and
// access log: the token is logged under no name a client might send it
// under, nor the signature under the three spellings the filter names, in
// answers 401 (access log), 400 and 502 (access and error log). The
// filter the reliability tests use is the README's, word for word.
func TestReadmeLogFilter(t *testing.T) {
	const token = "tok_log_filter_GENUINE_4d6f8b0a"
	port, err := harness.ReservePort() // the app is down: each accepted request is a 502
	if err != nil {
		t.Fatal(err)
	}
	config, base := readmeCaddyfile(t, "log default", fmt.Sprintf("127.0.0.1:%d", port))
	if !strings.Contains(config, strings.TrimPrefix(relLogFilter, "\n")) {
		t.Errorf("the README's global log filter is not relLogFilter:\n%s", config)
	}
	g := runCaddyfile(t, config, base, []string{"REREADY_TOKEN=" + token}, token)
	body := harness.NewEvent("complete").Body()
	sigs := map[string]string{ // header as sent: its value, to be found nowhere
		"X-ReReady-Signature-512": "t=1,v=" + strings.Repeat("a1", 64),
		"X_ReReady_Signature_512": "t=1,v=" + strings.Repeat("b2", 64),
		"X.ReReady.Signature.512": "t=1,v=" + strings.Repeat("c3", 64),
		"x_reready_signature_512": "t=1,v=" + strings.Repeat("d4", 64),
	}
	sent := 0
	for _, tc := range []struct {
		query  string
		body   []byte
		status int
	}{
		{"token=" + token, body, 502},
		{"%74oken=" + token, body, 502}, // the token parameter too, to the module
		{"a=1&token=" + token + "&b=2", body, 502},
		{"token=" + token, []byte(`{"state":"complete"}`), 400},
		{"TOKEN=" + token, body, 401},
		{"token[]=" + token, body, 401},
		{"token%5B%5D=" + token, body, 401},
		{"Token=" + token + "&x=1", body, 401},
		{"note=" + token, body, 401},
		{token, body, 401},
	} {
		for name, v := range sigs {
			r := g.post(t, "/?"+tc.query, tc.body, name, v)
			if r.status != tc.status {
				t.Errorf("?%s with %s: status %d, want %d", tc.query, name, r.status, tc.status)
			}
			sent++
		}
	}
	g.Cmd.Process.Signal(syscall.SIGTERM) // flush and stop
	select {
	case <-g.Exited:
	case <-time.After(10 * time.Second):
		t.Fatal("caddy did not stop within 10s")
	}
	logs := g.Logs.String()
	if n := strings.Count(logs, `"uri":"/?REDACTED"`); n < sent {
		t.Errorf("caddy logged %d filtered request URIs, want at least %d (one access log line per request): is its output captured?", n, sent)
	}
	if n := strings.Count(logs, `"logger":"http.log.error`); n < 3*len(sigs) {
		t.Errorf("caddy logged %d error lines, want at least one per 502 (%d)", n, 3*len(sigs))
	}
	for _, leak := range []string{token, strings.Repeat("a1", 64), strings.Repeat("b2", 64), strings.Repeat("c3", 64), strings.Repeat("d4", 64)} {
		if strings.Contains(logs, leak) {
			t.Errorf("caddy's log holds %.20s…:\n%s", leak, grepLines(logs, leak))
		}
	}
}

// The README's Build section leads with a build that works from a checkout:
// its first shell block, run in this checkout (without the clone and cd
// lines), builds a Caddy that has the module, where the block says.
func TestReadmeBuild(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(data), "\n## Build\n")
	if !ok {
		t.Fatal("the README has no Build section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	_, block, ok := strings.Cut(section, "```sh\n")
	if !ok {
		t.Fatal("the README's Build section has no sh block")
	}
	block, _, _ = strings.Cut(block, "```")
	var lines []string
	for _, l := range strings.Split(block, "\n") {
		if !strings.HasPrefix(l, "git clone ") && !strings.HasPrefix(l, "cd ") {
			lines = append(lines, l)
		}
	}
	script := strings.Join(lines, "\n")
	// Build elsewhere than bin/caddy, which the other tests run.
	out := filepath.Join(t.TempDir(), "caddy")
	if !strings.Contains(script, "--output bin/caddy") || !strings.Contains(script, "bin/caddy list-modules") {
		t.Fatalf("the README's build block no longer builds bin/caddy; update this test:\n%s", script)
	}
	script = strings.ReplaceAll(script, "bin/caddy", out)

	ctx, cancel := context.WithTimeout(context.Background(), harness.BuildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = root
	output, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the README's build block failed: %v\n%s\n%s", err, script, output)
	}
	if !strings.Contains(string(output), "http.handlers.reready_verify") {
		t.Errorf("the built caddy does not list the module:\n%s", output)
	}
	res := caddyCmd(t, nil, "version")
	if built, err := exec.Command(out, "version").Output(); err != nil || string(built) != res.output {
		t.Errorf("the README's build says %q (%v); bin/caddy says %q", built, err, res.output)
	}
}
